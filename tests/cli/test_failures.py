"""Every failure a user or an attacker can provoke is one line, exit 2, and leaves no folder behind.

The classes: damaged or crafted stores (SQLite, ``.npz``, dSprites, manifests, metrics), numbers
out of range (non-finite options, seeds past 2³² − 1), the user's own code misbehaving (an
``exit()`` or ``print`` in an ``--arch`` file), click's usage errors, and a Dask scheduler that
accepts and then says nothing. Each case runs as a real ``memspace`` process, four at a time.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cli_support import ARCH_FILE, assert_clean_failure, run_cases, run_cli
from memspace import ResidualMLP
from memspace._runs import MANIFEST
from memspace.zoo import load_grid

GRID = load_grid("quick")
MEASURE = ["measure", "--model", "model.safetensors", "--data", "moons", "--out", "out"]


def _zoo_folder(root: Path, name: str, database: bytes | None = None) -> Path:
    """A zoo folder with a valid manifest, ``database`` as its zoo.sqlite (None: an empty store)."""
    folder = root / name
    (folder / "weights").mkdir(parents=True)
    (folder / MANIFEST).write_text(
        json.dumps(
            {
                "memspace_manifest": 1,
                "kind": "zoo",
                "config": GRID,
                "files": ["weights", "zoo.sqlite"],
            }
        )
    )
    if database is not None:
        (folder / "zoo.sqlite").write_bytes(database)
    return folder


def _real_database(path: Path) -> bytes:
    from memspace.zoo import ZooStore

    store = ZooStore(path)
    row = {
        "id": "m",
        "hparams": {},
        "seed": 0,
        "train_acc": 1.0,
        "test_acc": 0.5,
        "train_ce": 0.1,
        "gap": 0.5,
        "epochs": 1,
        "converged": True,
        "seconds": 1.0,
        "init_file": "a",
        "final_file": "b",
    }
    for i in range(40):
        store.add({**row, "id": f"m{i}"}, {f"measure{j}": float(j) for j in range(20)})
    store.close()
    return path.read_bytes()


def _files(root: Path) -> None:
    (root / "arch.py").write_text(ARCH_FILE)
    (root / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (root / "factory_exits.py").write_text("import sys\n\ndef make():\n    sys.exit('bye')\n")
    (root / "talks.py").write_text("print('hello from the user')\n" + ARCH_FILE)
    torch.manual_seed(0)
    save_file(ResidualMLP(2, 6, 3, 2).state_dict(), str(root / "model.safetensors"))
    np.savez(root / "zero-rows.npz", X=np.zeros((0, 2)), y=np.zeros(0, np.int64))
    (root / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    real = _real_database(root / "real.sqlite")
    _zoo_folder(root, "corrupt-zoo", b"SQLite format 3\x00" + bytes(range(256)) * 16)
    _zoo_folder(root, "truncated-zoo", real[: len(real) // 3])
    other = root / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE models (x INTEGER)")
    _zoo_folder(root, "schema-zoo", other.read_bytes())
    _zoo_folder(root, "notes-zoo", b"these are my notes, not a database\n" * 100)
    (root / "seed.yaml").write_text("seeds: [9223372036854775808]\ngrid:\n  lr: [0.01]\n")
    (root / "nan.yaml").write_text("grid:\n  label_noise: [.nan]\n")
    (root / "inf.yaml").write_text("grid:\n  lr: [.inf]\n")
    (root / "key.yaml").write_text("grid:\n  lr: [0.01]\nstopp: {max_epochs: 3}\n")
    run = root / "finished"
    run.mkdir()
    (run / MANIFEST).write_text(
        json.dumps({"kind": "measure", "files": ["metrics.json"], "config": {}})
    )
    (run / "metrics.json").write_text(
        json.dumps({"networks": {"n": {"measures": {}, "history": []}}})
    )


CASES = {
    "an .npz whose X has no rows": (
        ["train", "--data", "zero-rows.npz", "--out", "out"],
        ["zero-rows.npz", "0 rows"],
    ),
    "random bytes as dSprites": (
        ["study", "disentanglement", "--quick", "--data", "random.npz", "--out", "out"],
        ["random.npz", "not an .npz archive"],
    ),
    "a corrupt zoo database": (
        ["zoo", "evaluate", "--out", "corrupt-zoo"],
        ["corrupt-zoo/zoo.sqlite"],
    ),
    "a truncated zoo database": (
        ["zoo", "evaluate", "--out", "truncated-zoo"],
        ["truncated-zoo/zoo.sqlite"],
    ),
    "a zoo database of another schema": (
        ["zoo", "evaluate", "--out", "schema-zoo"],
        ["schema-zoo/zoo.sqlite", "columns"],
    ),
    "notes in place of the zoo database": (
        ["zoo", "report", "--out", "notes-zoo"],
        ["notes-zoo/zoo.sqlite"],
    ),
    "a seed of 2^63 in a grid": (
        ["zoo", "run", "--grid", "seed.yaml", "--out", "out"],
        ["seeds", "4294967295"],
    ),
    "a seed of 2^64 on the command line": (
        ["train", "--data", "moons", "--seed", str(2**64), "--out", "out"],
        ["--seed"],
    ),
    "a NaN label noise": (
        ["zoo", "run", "--grid", "nan.yaml", "--out", "out"],
        ["label_noise = nan"],
    ),
    "an infinite learning rate": (
        ["zoo", "run", "--grid", "inf.yaml", "--out", "out"],
        ["lr = inf"],
    ),
    "an unknown key in a grid": (
        ["zoo", "run", "--grid", "key.yaml", "--out", "out"],
        ["unknown key 'stopp'"],
    ),
    "--min-ess nan": (["zoo", "evaluate", "--min-ess", "nan", "--out", "out"], ["--min-ess"]),
    "--min-ess -5": (["zoo", "evaluate", "--min-ess", "-5", "--out", "out"], ["--min-ess"]),
    "--min-ess inf": (["zoo", "evaluate", "--min-ess", "inf", "--out", "out"], ["--min-ess"]),
    "an unknown --size-adjustment": (
        ["zoo", "report", "--size-adjustment", "literature", "--out", "out"],
        ["--size-adjustment 'literature'", "all, none"],
    ),
    "an empty --scheduler": (
        ["zoo", "run", "--grid", "quick", "--scheduler", "", "--out", "out"],
        ["--scheduler is empty"],
    ),
    "an architecture file that exits": (
        [*MEASURE, "--arch", "exits.py:make"],
        ["exits.py", "exit(0)"],
    ),
    "a factory that exits": (
        [*MEASURE, "--arch", "factory_exits.py:make"],
        ["factory_exits.py:make", "exit('bye')"],
    ),
    "an option that does not parse": (
        ["train", "--width", "wide", "--out", "out"],
        ["--width", "see memspace train"],
    ),
    "an unknown option": (["train", "--widht", "4", "--out", "out"], ["--widht"]),
    "an unknown command": (["trian", "--out", "out"], ["trian"]),
    "a report over the manifest": (
        ["report", "finished", "--output", f"finished/{MANIFEST}"],
        [MANIFEST, "choose another"],
    ),
    "a report over its own metrics": (
        ["report", "finished", "--output", "finished/metrics.json"],
        ["metrics.json"],
    ),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_cases(CASES, tmp_path_factory.mktemp("failures"), _files)


@pytest.mark.parametrize("case", list(CASES))
def test_each_failure_is_one_line_exit_2_and_no_folder(outcomes, case):
    result, folder = outcomes[case]
    assert_clean_failure(result, *CASES[case][1])
    assert not (folder / "out").exists()


def test_the_manifest_survives_a_report_aimed_at_it(outcomes):
    _, folder = outcomes["a report over the manifest"]
    assert json.loads((folder / "finished" / MANIFEST).read_text())["kind"] == "measure"


def test_an_architecture_file_that_prints_leaves_json_on_stdout_intact(tmp_path):
    _files(tmp_path)
    result = run_cli(*MEASURE, "--arch", "talks.py:make", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["networks"]  # stdout is memspace's JSON alone
    assert "hello from the user" in result.stderr


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never says a word."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self):
        self.socket.close()
        for connection in self.held:
            connection.close()


def test_a_scheduler_that_accepts_and_says_nothing_is_refused_in_bounded_time(tmp_path):
    server = SilentServer()
    try:
        result = run_cli(
            "zoo",
            "run",
            "--grid",
            "quick",
            "--scheduler",
            server.address,
            "--connect-timeout",
            "2",
            "--out",
            "out",
            cwd=tmp_path,
        )
    finally:
        server.close()
    assert_clean_failure(result, server.address)
    assert not (tmp_path / "out").exists()
    assert server.held, "the server saw the connection"


def test_a_bug_of_ours_is_a_traceback_not_the_users_mistake(monkeypatch, capsys, tmp_path):
    """A KeyError (any non-memspace error) from inside memspace keeps its traceback and exits 1."""
    import memspace.cli
    import memspace.studies

    def broken(*args, **kwargs):
        return {}["networks"]

    monkeypatch.setattr(memspace.studies, "run_demo", broken)
    with pytest.raises(SystemExit) as stopped:
        memspace.cli.main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert stopped.value.code == 1
    assert "Traceback" in err and "KeyError: 'networks'" in err
    assert "bug in memspace" in err.splitlines()[-1]


def test_memspace_errors_keep_their_builtin_types():
    """Callers that catch ValueError or TypeError keep working with the one error family."""
    from memspace import FisherOperator, MemspaceError

    with pytest.raises(MemspaceError) as raised:
        FisherOperator(object(), (torch.zeros(2, 1), torch.zeros(2)))
    assert isinstance(raised.value, TypeError)
    with pytest.raises(ValueError):
        FisherOperator(
            torch.nn.Linear(1, 2),
            (torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)),
            memory="huge",
        )
