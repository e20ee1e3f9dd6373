"""Run folders: atomic writes, the manifest, overwrite of only our files, the lock.

The configuration check.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from memspace import MemspaceError, ResidualMLP, _runs, fit
from memspace._runs import LOCK, MANIFEST, TMP_SUFFIX, RunFolder, write_atomic
from memspace.train import load_checkpoint


def moons_like(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    return X, (X[:, 0] * X[:, 1] > 0).long()


# -- atomic writes
# -----------------------------------------------------------------------------------------------


def test_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_atomic(target, '{"old": 1}')

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_runs.os, "replace", broken_replace)
    with pytest.raises(
        MemspaceError, match=r"cannot write .*metrics.json: No space left on device"
    ):
        write_atomic(target, '{"new": 2}')
    assert json.loads(target.read_text()) == {"old": 1}
    assert not (tmp_path / ("metrics.json" + TMP_SUFFIX)).exists()


def test_a_full_disk_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    write_atomic(target, "old report")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_runs.os, "fsync", full)
    with pytest.raises(MemspaceError, match="No space left on device"):
        write_atomic(target, "x" * 10_000)
    monkeypatch.setattr(_runs.os, "fsync", real_fsync)
    assert target.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_missing_parent_is_one_error_naming_the_path(tmp_path):
    with pytest.raises(MemspaceError, match=r"cannot write .*nowhere/file.json"):
        write_atomic(tmp_path / "nowhere" / "file.json", "{}")


# -- the manifest and overwrite
# ------------------------------------------------------------------------------------


def test_overwrite_removes_only_what_memspace_wrote(tmp_path):
    root = tmp_path / "run"
    with RunFolder.open(root, kind="demo", config={"a": 1}) as run:
        run.write("metrics.json", "{}")
        sub = run.path("train-plain")
        with RunFolder.open(sub, kind="train", config={}) as inner:
            inner.write("epoch-0001.safetensors", b"weights")
    (root / "README.txt").write_text("the user's notes")
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('mine')")
    (root / "train-plain" / "notes.txt").write_text("inside a memspace subfolder")
    with RunFolder.open(root, kind="demo", config={"a": 2}, overwrite=True) as run:
        assert run.files == [] and run.config == {"a": 2} and not run.resumed
    assert (root / "README.txt").read_text() == "the user's notes"
    assert (root / "src" / "main.py").read_text() == "print('mine')"
    assert (root / "train-plain" / "notes.txt").exists()
    assert (
        not (root / "metrics.json").exists()
        and not (root / "train-plain" / "epoch-0001.safetensors").exists()
    )


def test_a_folder_that_is_not_a_memspace_run_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")  # a user's file that happens to share our name
    (tmp_path / "main.py").write_text("")
    for overwrite in (False, True):
        with pytest.raises(
            MemspaceError, match=r"not a memspace run folder \(it holds main.py, metrics.json\)"
        ):
            RunFolder.open(tmp_path, kind="demo", overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "main.py",
        "metrics.json",
    ]  # not even a lock file


def test_a_finished_run_is_refused_without_overwrite(tmp_path):
    with RunFolder.open(tmp_path, kind="measure", finished="metrics.json") as run:
        run.write("metrics.json", "{}")
    with pytest.raises(MemspaceError, match="already exists.*--overwrite"):
        RunFolder.open(tmp_path, kind="measure", finished="metrics.json")
    with pytest.raises(MemspaceError, match="holds a memspace measure run, not a train run"):
        RunFolder.open(tmp_path, kind="train")


def test_a_damaged_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text("memspace run folder\n")  # an older memspace's plain marker
    with pytest.raises(MemspaceError, match="not a memspace manifest"):
        RunFolder.open(tmp_path, kind="demo")


# -- configuration and lock
# ------------------------------------------------------------------------------------------


def test_resume_with_other_options_names_each(tmp_path):
    with RunFolder.open(
        tmp_path, kind="train", config={"lam": 0.1, "lr": 0.003, "epochs": 5}
    ) as run:
        run.write("epoch-0001.safetensors", b"x")
    with pytest.raises(MemspaceError) as caught:
        RunFolder.open(
            tmp_path, kind="train", config={"lam": 0.2, "lr": 0.01, "epochs": 9}, ignore=("epochs",)
        )
    message = str(caught.value)
    assert "lam 0.1 → 0.2" in message and "lr 0.003 → 0.01" in message and "epochs" not in message
    assert "--overwrite" in message
    with RunFolder.open(
        tmp_path, kind="train", config={"lam": 0.1, "lr": 0.003, "epochs": 9}, ignore=("epochs",)
    ) as run:
        assert run.resumed and run.config["epochs"] == 9


def test_a_second_opener_gets_the_holders_pid(tmp_path):
    run = RunFolder.open(tmp_path, kind="train")
    try:
        with pytest.raises(
            MemspaceError, match=f"in use by another memspace process \\(PID {os.getpid()}\\)"
        ):
            RunFolder.open(tmp_path, kind="train")
    finally:
        run.close()
    RunFolder.open(tmp_path, kind="train").close()  # released: free again
    assert (tmp_path / LOCK).exists()


# -- fit's checkpoints
# -------------------------------------------------------------------------------------------


def train(tmp_path, epochs=4, **options):
    torch.manual_seed(0)
    model = ResidualMLP(2, 6, 2, 2)
    notes = []
    result = fit(
        model,
        moons_like(),
        epochs=epochs,
        batch_size=32,
        lr=1e-2,
        checkpoint_dir=tmp_path,
        progress=False,
        log=notes.append,
        **options,
    )
    return result, notes


def epochs_in(folder):
    return [
        json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    reference, _ = train(tmp_path / "reference")
    folder = tmp_path / "run"
    train(folder, epochs=3)
    latest = folder / "epoch-0003.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    result, notes = train(folder)
    assert result.resumed_from == 2
    assert len(notes) == 1 and "epoch-0003.safetensors" in notes[0] and "skipping" in notes[0]
    assert epochs_in(folder) == [1, 2, 3, 4] and [h["epoch"] for h in result.history] == [
        1,
        2,
        3,
        4,
    ]
    for name, value in reference.model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[name]), name


def test_metrics_live_in_the_checkpoint_so_a_lost_metrics_file_is_rebuilt(tmp_path):
    train(tmp_path, epochs=3)
    # Gaps and repeats
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 3}\n{"epoch": 3}\n')
    result, _ = train(tmp_path, epochs=5)
    assert epochs_in(tmp_path) == [1, 2, 3, 4, 5]
    meta = load_checkpoint(tmp_path / "epoch-0005.safetensors", ResidualMLP(2, 6, 2, 2))
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3, 4, 5]


def test_fit_refuses_a_changed_configuration_and_bad_options(tmp_path):
    train(tmp_path, epochs=2, action="predictive", lam=0.1)
    with pytest.raises(MemspaceError, match="lam 0.1 → 0.5"):
        train(tmp_path, epochs=3, action="predictive", lam=0.5)
    for bad in (
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": float("nan")},
        {"action": "predictive", "lam": -1.0},
        {"action": "predictive", "lam": float("inf")},
    ):
        options = {"epochs": 2, **bad}
        with pytest.raises(MemspaceError, match=next(iter(bad)) if "lam" not in bad else "lam"):
            fit(ResidualMLP(2, 6, 2, 2), moons_like(), progress=False, **options)


def test_a_write_failure_mid_training_loses_nothing_before_it(tmp_path, monkeypatch):
    reference, _ = train(tmp_path / "reference")
    folder = tmp_path / "run"
    real_replace, calls = os.replace, {"n": 0}

    def fails_on_the_seventh_write(src, dst):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(_runs.os, "replace", fails_on_the_seventh_write)
    with pytest.raises(MemspaceError, match=f"cannot write {folder}.*No space left on device"):
        train(folder)
    monkeypatch.setattr(_runs.os, "replace", real_replace)
    assert not list(folder.glob("*" + TMP_SUFFIX))
    result, _ = train(folder)
    assert result.resumed_from >= 1 and epochs_in(folder) == [1, 2, 3, 4]
    for name, value in reference.model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[name]), name
