"""``memspace measure --distributed``.

Two processes give one process's measures; a broken rank stops both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli_support import ARCH_FILE, assert_clean_failure, cli_env, run_cli, start_cli  # noqa: E402
from memspace import ResidualMLP  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed-measure")
    (root / "arch.py").write_text(ARCH_FILE)
    import torch

    torch.manual_seed(0)
    save_file(ResidualMLP(2, 6, 3, 2).state_dict(), str(root / "model.safetensors"))
    return root


def _ranks(folder: Path, *extra: str, model: list[str] | None = None):
    args = [
        "measure",
        "--model",
        "model.safetensors",
        "--arch",
        "arch.py:make",
        "--data",
        "moons",
        "--distributed",
        "--rendezvous",
        f"file://{folder}/rendezvous-{len(extra)}",
        "--timeout",
        "60",
        *extra,
    ]
    processes = [
        start_cli(
            *(model or args),
            "--out",
            "two",
            cwd=folder,
            env=cli_env(RANK=str(rank), WORLD_SIZE="2", GLOO_SOCKET_IFNAME="lo"),
        )
        for rank in range(2)
    ]
    return [(p.wait(timeout=600), *p.communicate()) for p in processes]


def test_two_processes_measure_what_one_does(folder):
    single = run_cli(
        "measure",
        "--model",
        "model.safetensors",
        "--arch",
        "arch.py:make",
        "--data",
        "moons",
        "--out",
        "one",
        cwd=folder,
    )
    assert single.returncode == 0, single.stderr
    outcomes = _ranks(folder)
    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    assert "2 processes" in outcomes[0][1] and "report:" in outcomes[0][1] and outcomes[1][1] == ""
    one = json.loads((folder / "one" / "metrics.json").read_text())["networks"]["model"]["measures"]
    two = json.loads((folder / "two" / "metrics.json").read_text())["networks"]["model"]["measures"]
    # The CLI measures in float32: sums in another order differ at 1e-7, and 30 Lanczos steps of SLQ
    # and
    # ARPACK amplify that; tests/fisher/test_distributed.py checks 1e-12 in float64.
    for key in ("fisher_rao_norm", "fisher_trace", "train_acc", "test_acc"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    assert two["effective_dimension"] == pytest.approx(one["effective_dimension"], rel=1e-3)
    assert two["top_eigenvalues"] == pytest.approx(one["top_eigenvalues"], rel=1e-3)
    for key in ("action", "least_action", "length"):
        assert two["predictive_path"][key] == pytest.approx(
            one["predictive_path"][key], rel=1e-4
        ), key
    assert two["sensitivity"]["sensitivity"] == pytest.approx(
        one["sensitivity"]["sensitivity"], rel=1e-4
    )


def test_a_rank_that_cannot_load_the_weights_stops_both_with_one_line(folder):
    (folder / "other").mkdir(exist_ok=True)
    args = [
        "measure",
        "--arch",
        "arch.py:make",
        "--data",
        "moons",
        "--distributed",
        "--rendezvous",
        f"file://{folder}/rendezvous-broken",
        "--timeout",
        "60",
    ]
    processes = []
    for rank in range(2):  # rank 1 is pointed at a missing file
        weights = "model.safetensors" if rank == 0 else "missing.safetensors"
        processes.append(
            start_cli(
                *args,
                "--model",
                weights,
                "--out",
                "broken",
                cwd=folder,
                env=cli_env(RANK=str(rank), WORLD_SIZE="2", GLOO_SOCKET_IFNAME="lo"),
            )
        )
    results = []
    for p in processes:
        code = p.wait(timeout=120)
        results.append(type("R", (), {"returncode": code, "stderr": p.communicate()[1]})())
    assert_clean_failure(results[1], "missing.safetensors")
    assert_clean_failure(results[0], "rank 1 failed", "missing.safetensors")


def test_distributed_without_torchrun_variables_is_one_line(folder):
    env = cli_env()
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = run_cli(
        "measure",
        "--model",
        "model.safetensors",
        "--arch",
        "arch.py:make",
        "--distributed",
        "--out",
        "x",
        cwd=folder,
        env=env,
    )
    assert_clean_failure(result, "torchrun")
