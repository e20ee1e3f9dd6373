"""Test configuration: caches under .cache/, tests/ importable, and a clean slate per test.

Per test: a fixed torch seed, the default dtype (float32: tests that need float64 ask for it)
restored, a fixed number of torch threads, no tap plan cached by another test, and no background
command left running by the test before.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for var, sub in {
    "MPLCONFIGDIR": "matplotlib",
    "SCIKIT_LEARN_DATA": "sklearn",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
}.items():
    os.environ.setdefault(var, str(ROOT / ".cache" / sub))
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""Set when pytest-xdist runs this process as one of several workers (``make test`` does)."""
if WORKER is not None:
    # One thread per worker, for the commands the tests start too: with two workers on two cores,
    # OpenMP's spinning threads would otherwise take each other's core (measured: the suite took
    # 7 min 39 s on 2 workers with default threads, 3 min 51 s with one each, 5 min 43 s serial).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
_DEFAULT_THREADS = 1 if WORKER is not None else min(2, os.cpu_count() or 1)
THREADS = int(os.environ.get("MEMSPACE_TEST_THREADS", _DEFAULT_THREADS))
"""Torch threads in the test process: the same on a 2-core runner and a large machine."""


@pytest.fixture(autouse=True)
def _seed_dtype_and_threads():
    from memspace.fisher import clear_plan_cache

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    clear_plan_cache()  # every test checks its own taps: no plan carries over from another test
    yield
    torch.set_default_dtype(torch.float32)  # a test that changed it leaks nothing into the next
    if "cli_support" in sys.modules:  # no background command outlives the test that started it
        sys.modules["cli_support"].kill_leftovers()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One short real demo run on two moons (2-D: the trajectory figure is drawn too).

    Shared by the command-line and browser tests: ``(run folder, the metrics printed with --json)``.
    Under pytest-xdist the workers share one run too: the first to take the lock runs the demo in
    the temporary folder all workers see, the others wait and read it (the slowest set-up of the
    suite, about 45 s, is paid once).
    """
    import fcntl
    import json

    from cli_support import run_cli_subprocess

    shared = tmp_path_factory.getbasetemp()
    if WORKER is not None:
        shared = shared.parent  # pytest-xdist: every worker's base folder is under this one
    root = shared / "demo"
    with open(shared / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "printed.json").exists():
            root.mkdir(exist_ok=True)
            result = run_cli_subprocess(
                "demo", "--data", "moons", "--epochs", "3", "--out", "run", "--json", cwd=root
            )
            assert result.returncode == 0, result.stderr
            (root / "printed.json").write_text(result.stdout)
    return root / "run", json.loads((root / "printed.json").read_text())
