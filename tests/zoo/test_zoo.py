"""The zoo: a CI-sized grid on the local pool and on a 127.0.0.1 Dask cluster, a real SIGKILL.

The leaderboard.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from memspace import MemspaceError
from memspace.zoo import ZooStore, evaluate_zoo, expand, load_grid, run_zoo, train_and_measure
from memspace.zoo.ranking import kendall_tau
from memspace.zoo.runner import SIZE_ADJUSTMENTS

TINY = {
    "data": "digits",
    "stop": {"target_ce": 1.0, "max_epochs": 6},
    "seeds": [0],
    "grid": {
        "width": [8],
        "depth": [2],
        "lr": [1e-2],
        "batch_size": [64],
        "lam": [0.0, 0.1],
        "train_size": [300, 600],
    },
}


def contents(folder):
    store = ZooStore(folder / "zoo.sqlite")
    try:
        rows = {r["id"]: {k: v for k, v in r.items() if k != "seconds"} for r in store.models()}
        return rows, store.measures()
    finally:
        store.close()


@pytest.fixture(scope="module")
def local_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo") / "local"
    result = run_zoo(TINY, folder, workers=2)
    assert result == {**result, "models": 4, "trained": 4}
    return folder


def test_the_zoo_commits_every_model_with_its_measures(local_zoo):
    rows, measures = contents(local_zoo)
    assert set(rows) == {m["id"] for m in expand(load_grid(TINY))}
    for model_id, row in rows.items():
        assert (local_zoo / "weights" / row["final_file"]).exists() and (
            local_zoo / "weights" / row["init_file"]
        ).exists()
        assert row["gap"] == pytest.approx(row["train_acc"] - row["test_acc"])
        assert {
            "fisher_rao_norm",
            "action_ratio",
            "fisher_arc_length",
            "PACBAYES_MAG_FLATNESS",
            "PATH_NORM",
        } <= measures[model_id].keys()
    with sqlite3.connect(local_zoo / "zoo.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = run_zoo(TINY, local_zoo, workers=2)  # idempotent: nothing to train
    assert again["trained"] == 0


def test_a_dask_cluster_on_localhost_gives_identical_results(local_zoo, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        protocol="tcp",
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        run_zoo(TINY, tmp_path / "dask", scheduler=cluster.scheduler_address)
    assert contents(tmp_path / "dask") == contents(local_zoo)


def test_the_leaderboard_uses_the_stored_values(local_zoo):
    evaluation = evaluate_zoo(local_zoo, min_ess=1, size_adjustment="reference")
    rows, measures = contents(local_zoo)
    kept = sorted(rows.values(), key=lambda r: r["id"])
    entry = next(e for e in evaluation["leaderboard"] if e["measure"] == "fisher_trace")
    assert entry["tau"] == pytest.approx(
        kendall_tau([measures[r["id"]]["fisher_trace"] for r in kept], [r["gap"] for r in kept])
    )
    assert (
        evaluation["varied"] == ["lam", "train_size"]
        and {"lam", "train_size"} == entry["psi_by_hparam"].keys()
    )
    assert entry["cmi_mode"] == "faithful" and -1 <= entry["tau"] <= 1


def test_every_measure_is_adjusted_alike_or_none_is(local_zoo):
    rows, measures = contents(local_zoo)
    kept = sorted(rows.values(), key=lambda r: r["id"])
    gaps = [r["gap"] for r in kept]
    boards = {
        mode: {
            e["measure"]: e for e in evaluate_zoo(local_zoo, size_adjustment=mode)["leaderboard"]
        }
        for mode in SIZE_ADJUSTMENTS
    }
    ours = [measures[r["id"]]["fisher_trace"] for r in kept]
    theirs = [measures[r["id"]]["LOG_PROD_OF_SPEC"] for r in kept]  # stored adjusted
    m = [r["hparams"]["train_size"] for r in kept]
    assert boards["reference"]["fisher_trace"]["tau"] == pytest.approx(kendall_tau(ours, gaps))
    assert boards["all"]["fisher_trace"]["tau"] == pytest.approx(
        kendall_tau([math.sqrt(v / n) for v, n in zip(ours, m)], gaps)
    )
    assert boards["none"]["fisher_trace"]["tau"] == boards["reference"]["fisher_trace"]["tau"]
    assert (
        boards["all"]["LOG_PROD_OF_SPEC"]["tau"] == boards["reference"]["LOG_PROD_OF_SPEC"]["tau"]
    )
    assert boards["none"]["LOG_PROD_OF_SPEC"]["tau"] == pytest.approx(
        kendall_tau([2 * v + math.log(n) for v, n in zip(theirs, m)], gaps)
    )
    # Only lam and train_size vary: Ψ without the train-size axis is ψ_lam
    entry = boards["all"]["fisher_trace"]
    assert entry["psi_without_train_size"] == pytest.approx(entry["psi_by_hparam"]["lam"])
    with pytest.raises(MemspaceError, match="size_adjustment"):
        evaluate_zoo(local_zoo, size_adjustment="literature")


def test_a_train_accuracy_target_stops_a_model_and_marks_it_converged(tmp_path):
    grid = load_grid({**TINY, "stop": {"target_acc": 0.05, "max_epochs": 6}})
    model = expand(grid)[0]
    row, _ = train_and_measure(model, grid["data"], grid["stop"], str(tmp_path), measures=False)
    assert row["epochs"] == 1 and row["converged"] and row["train_acc"] >= 0.05
    capped = load_grid({**TINY, "stop": {"target_acc": 1.0, "max_epochs": 2}})
    row, _ = train_and_measure(
        expand(capped)[0], capped["data"], capped["stop"], str(tmp_path), measures=False
    )
    assert row["epochs"] == 2 and row["converged"] == (row["train_acc"] >= 1.0)
    for bad in (0, 1.5, float("nan"), True):
        with pytest.raises(MemspaceError, match="target_acc"):
            load_grid({**TINY, "stop": {"target_acc": bad, "max_epochs": 2}})


def tagged_processes(tag: str) -> list[int]:
    """PIDs of live processes whose environment has ``MEMSPACE_TEST_TAG=tag`` (ours, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if f"MEMSPACE_TEST_TAG={tag}".encode() in environ.split(b"\0") and state != "Z":
                found.append(int(entry.name))
    return found


def test_a_kill_of_the_parent_loses_no_committed_row_and_leaves_no_orphan_worker(tmp_path):
    grid = {**TINY, "grid": {**TINY["grid"], "width": [8, 12, 16]}}  # 12 models
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    args = [
        sys.executable,
        "-m",
        "memspace.cli",
        "zoo",
        "run",
        "--grid",
        "grid.yaml",
        "--out",
        "z",
        "--workers",
        "2",
    ]
    tag = f"zoo-{os.getpid()}-{time.monotonic_ns()}"
    # Each worker trains its first model, then never finishes its second; the parent is killed
    # (SIGKILL,
    # nothing runs in it after) once it has stored the two first models.
    crash = "zoo-model-stored:2,zoo-train-start:2:HANG"
    env = {**os.environ, "MEMSPACE_TEST_TAG": tag, "MEMSPACE_TEST_CRASH": crash}
    # Not a pipe: a hung orphan would hold it open
    with open(tmp_path / "stderr.txt", "w") as stderr:
        killed = subprocess.run(
            args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
    # They notice within a second; without the watch they hang forever
    deadline = time.monotonic() + 60
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = tagged_processes(tag)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "loky workers outlived their parent"
    db = tmp_path / "z" / "zoo.sqlite"
    before, before_measures = contents(tmp_path / "z")
    assert len(before) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finished = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    after, after_measures = contents(tmp_path / "z")
    assert len(after) == 12
    for model_id, row in before.items():
        assert after[model_id] == row and after_measures[model_id] == before_measures[model_id]
    assert all(math.isfinite(v) for v in after_measures[model_id].values() if v == v)


def test_measure_adds_what_a_stored_model_lacks_with_the_same_values(local_zoo):
    import sqlite3 as sql

    from memspace.zoo import measure_zoo

    _, before = contents(local_zoo)
    victim = sorted(before)[0]
    with sql.connect(local_zoo / "zoo.sqlite") as db:
        db.execute(
            "DELETE FROM measures WHERE model_id = ? AND name IN ('PATH_NORM', "
            "'SHARPNESS_MAG_FLATNESS')",
            (victim,),
        )
    result = measure_zoo(local_zoo, workers=1)
    assert result["measured"] == 1
    _, after = contents(local_zoo)
    # Recomputed from the saved weights: identical (arc length kept from training)
    assert after == before
