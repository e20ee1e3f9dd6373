"""The zoo's SQLite store on a full or read-only disk, and with crafted rows.

One MemspaceError naming it.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from memspace import MemspaceError
from memspace.zoo import ZooStore

ROW = {
    "id": "m",
    "hparams": {"width": 8},
    "seed": 0,
    "train_acc": 1.0,
    "test_acc": 0.5,
    "train_ce": 0.1,
    "gap": 0.5,
    "epochs": 1,
    "converged": True,
    "seconds": 1.0,
    "init_file": "m-init.safetensors",
    "final_file": "m-final.safetensors",
}


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_is_one_error_naming_the_database_and_committed_rows_stay(small_disk):
    store = ZooStore(small_disk / "zoo.sqlite")
    store.add(ROW, {"a": 1.0})
    committed = 1
    with pytest.raises(MemspaceError, match=r"zoo database .*zoo.sqlite: database or disk is full"):
        for i in range(100_000):
            store.add(
                {**ROW, "id": f"m{i}"}, {f"measure-{j}-{'x' * 200}": float(j) for j in range(50)}
            )
            committed += 1
    store.close()
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    store = ZooStore(small_disk / "zoo.sqlite")
    assert len(store.models()) == committed
    store.close()


def test_a_read_only_disk_is_one_error_naming_the_database(small_disk):
    store = ZooStore(small_disk / "zoo.sqlite")
    store.add(ROW, {"a": 1.0})
    store.close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(MemspaceError, match=r"zoo database .*zoo.sqlite"):
        store = ZooStore(small_disk / "zoo.sqlite")
        store.add({**ROW, "id": "n"}, {"a": 2.0})


@pytest.mark.parametrize(
    "column, value",
    [
        ("hparams", "not json"),
        ("final_file", "../../outside.safetensors"),
        ("init_file", ".memspace-run"),
        ("seed", "zero"),
    ],
)
def test_a_crafted_row_is_refused_by_name(tmp_path, column, value):
    store = ZooStore(tmp_path / "zoo.sqlite")
    store.add(ROW, {"a": 1.0})
    store.close()
    with sqlite3.connect(tmp_path / "zoo.sqlite") as db:
        db.execute(f"UPDATE models SET {column} = ?", (value,))
    store = ZooStore(tmp_path / "zoo.sqlite")
    with pytest.raises(MemspaceError, match="not one memspace wrote"):
        store.models()
    store.close()


def test_a_link_in_place_of_the_database_is_refused(tmp_path):
    (tmp_path / "elsewhere.sqlite").write_bytes(b"")
    Path(tmp_path / "zoo.sqlite").symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(MemspaceError, match="is a link or not a regular file"):
        ZooStore(tmp_path / "zoo.sqlite")


def test_a_zoo_without_finite_measures_still_reports_and_says_so(tmp_path):
    from memspace._runs import RunFolder
    from memspace.report.html import render_zoo_report
    from memspace.zoo import evaluate_zoo, leaderboard_points, load_grid

    grid = load_grid("quick")
    with RunFolder.open(tmp_path / "z", kind="zoo", config=grid) as run:
        store = ZooStore(run.path("zoo.sqlite"))
        for i, lam in enumerate([0.0, 0.1, 0.0, 0.1]):
            store.add(
                {
                    **ROW,
                    "id": f"m{i}",
                    "hparams": {**grid["grid"], "lam": lam, "width": 8},
                    "gap": 0.1 * i,
                },
                {"fisher_trace": float("nan")},
            )
        store.close()
    evaluation = evaluate_zoo(tmp_path / "z")
    assert evaluation["leaderboard"] == []
    evaluation["points"] = leaderboard_points(tmp_path / "z", evaluation)
    page = render_zoo_report(evaluation, tmp_path / "leaderboard.html").read_text()
    assert "nothing to draw" in page
