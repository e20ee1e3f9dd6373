"""A run folder is a boundary.

Nothing its manifest, a link or a planted file says leads memspace outside it.

A run folder may come from someone else, so every test here builds a sandbox — a run folder
beside an ``outside`` tree of files memspace must never touch — lets an attacker shape the run
folder, calls memspace, and checks that the outside tree is byte for byte what it was, and that
memspace either refused with a :class:`MemspaceError` naming the folder or did its job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memspace import MemspaceError
from memspace._runs import (
    LOCK,
    MANIFEST,
    TMP_SUFFIX,
    RunFolder,
    _unlink_inside,
    entry_parts,
    write_atomic,
)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` (links by their target, files by their bytes, folders as such)."""
    shot: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            shot[key] = "link -> " + os.readlink(path)
        elif path.is_dir():
            shot[key] = "dir"
        else:
            shot[key] = path.read_bytes()
    return shot


def sandbox(base: Path) -> tuple[Path, Path]:
    """``base/run`` (empty) and ``base/outside`` holding files, a folder and a nested file."""
    run, outside = base / "run", base / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "precious.txt").write_text("the user's thesis")
    (outside / "folder" / "data.bin").write_bytes(b"\x00\x01")
    (outside / LOCK).write_text("not a lock")
    (outside / MANIFEST).write_text(json.dumps({"kind": "demo", "files": ["precious.txt"]}))
    run.mkdir()
    return run, outside


def write_manifest(folder: Path, files: list, kind: str = "demo") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(
        json.dumps({"memspace_manifest": 1, "kind": kind, "config": {}, "files": files})
    )


# -- hostile manifests, generated
# ------------------------------------------------------------------------------


def hostile_entries(outside: Path) -> st.SearchStrategy[str]:
    """Names an attacker might list.

    Parent-relative, absolute, through links, memspace's own files, odd parts.
    """
    targets = st.sampled_from(["precious.txt", "folder", "folder/data.bin", LOCK, MANIFEST])
    return st.one_of(
        targets.map(lambda t: f"../outside/{t}"),
        targets.map(lambda t: str(outside / t)),
        targets.map(lambda t: f"through-link/{t}"),
        st.sampled_from(["link-to-file", "link-to-folder", "link-to-folder/data.bin"]),
        st.sampled_from(
            [LOCK, MANIFEST, "metrics.json" + TMP_SUFFIX, f"sub/{LOCK}", f"sub/{MANIFEST}"]
        ),
        st.sampled_from(
            ["", ".", "./x", "a//b", "a/../../outside/precious.txt", "x/..", "nul\x00byte"]
        ),
        # Honest names too
        st.sampled_from(["metrics.json", "weights", "weights/a.safetensors", "sub"]),
    )


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_manifest_can_lead_overwrite_or_resume_outside_the_folder(tmp_path_factory, data):
    base = tmp_path_factory.mktemp("sandbox")
    run, outside = sandbox(base)
    entries = data.draw(st.lists(hostile_entries(outside), min_size=1, max_size=5), label="entries")
    nested = data.draw(st.lists(hostile_entries(outside), max_size=3), label="nested entries")
    (run / "through-link").symlink_to(outside)
    (run / "link-to-file").symlink_to(outside / "precious.txt")
    (run / "link-to-folder").symlink_to(outside / "folder")
    (run / "metrics.json").write_text("{}")
    (run / "weights").mkdir()
    (run / "weights" / "a.safetensors").write_bytes(b"w")
    write_manifest(run, entries)
    if nested:
        write_manifest(run / "sub", nested, kind="train")
    before = snapshot(outside)
    top = all(_plain(e) for e in entries)
    # A nested manifest is read when listed
    below = "sub" not in entries or all(_parts_ok(e) for e in nested)
    # Resume reads the top manifest only
    for overwrite, honest in ((False, top), (True, top and below)):
        try:
            RunFolder.open(run, kind="demo", overwrite=overwrite).close()
        except MemspaceError as error:
            assert str(run) in str(error)
            assert not honest, error
        else:
            assert honest, (entries, nested)
        assert snapshot(outside) == before


def _parts_ok(name: str) -> bool:
    try:
        entry_parts(name)
    except ValueError:
        return False
    return True


def _plain(name: str) -> bool:
    """What the boundary accepts.

    A relative name whose parts are plain and none of which is a link here.
    """
    try:
        parts = entry_parts(name)
    except ValueError:
        return False
    return parts[0] not in ("through-link", "link-to-file", "link-to-folder")


def test_an_honest_nested_run_is_removed_and_the_users_files_stay(tmp_path):
    run, outside = sandbox(tmp_path)
    with RunFolder.open(run, kind="demo") as folder:
        folder.write("metrics.json", "{}")
        with RunFolder.open(folder.path("study-x"), kind="study-x") as inner:
            inner.write("cells.jsonl", "")
            inner.path("weights").mkdir()
            inner.write("weights/a.bin", b"a")
    (run / "study-x" / "weights" / "notes.txt").write_text("mine")
    RunFolder.open(run, kind="demo", overwrite=True).close()
    assert sorted(p.name for p in run.rglob("*")) == [
        LOCK,
        MANIFEST,
        "notes.txt",
        "study-x",
        "weights",
    ]
    assert (outside / "precious.txt").read_text() == "the user's thesis"


def test_a_bad_entry_deep_in_a_nested_manifest_removes_nothing_at_all(tmp_path):
    run, outside = sandbox(tmp_path)
    (run / "metrics.json").write_text("{}")
    write_manifest(run, ["metrics.json", "a"])
    write_manifest(run / "a", ["b"], kind="train")
    write_manifest(run / "a" / "b", ["../../../outside/precious.txt"], kind="train")
    with pytest.raises(MemspaceError, match=r"run/a/b.*'\.\.' component.*nothing was changed"):
        RunFolder.open(run, kind="demo", overwrite=True)
    assert (run / "metrics.json").exists() and (outside / "precious.txt").exists()


# -- memspace's own files: never through a link, never listed, never chosen as an output
# -----------------------


def test_a_lock_that_is_a_link_or_a_hard_link_is_refused_and_its_target_untouched(tmp_path):
    run, outside = sandbox(tmp_path)
    before = snapshot(outside)
    (run / LOCK).symlink_to(outside / "precious.txt")
    with pytest.raises(MemspaceError, match="not a memspace run folder.*a link"):
        RunFolder.open(run, kind="demo")  # a folder holding only the link is not ours
    write_manifest(run, [])
    with pytest.raises(MemspaceError, match="symbolic link"):
        RunFolder.open(run, kind="demo")
    (run / LOCK).unlink()
    os.link(outside / "precious.txt", run / LOCK)
    with pytest.raises(MemspaceError, match="hard link"):
        RunFolder.open(run, kind="demo")
    assert snapshot(outside) == before


def test_a_temporary_or_a_result_that_is_a_link_is_not_written_through(tmp_path):
    run, outside = sandbox(tmp_path)
    before = snapshot(outside)
    with RunFolder.open(run, kind="demo") as folder:
        (run / ("metrics.json" + TMP_SUFFIX)).symlink_to(outside / "precious.txt")
        with pytest.raises(MemspaceError, match="temporary.*symbolic link"):
            folder.write("metrics.json", "{}")
        (run / ("metrics.json" + TMP_SUFFIX)).unlink()
        (run / "report.html").symlink_to(outside / "precious.txt")
        with pytest.raises(MemspaceError, match="symbolic link"):
            folder.write("report.html", "<html>")
        (run / "weights").symlink_to(outside / "folder")
        with pytest.raises(MemspaceError, match="weights is a symbolic link"):
            folder.path("weights/a.safetensors")
        # A stale hard-linked temporary
        os.link(outside / "folder" / "data.bin", run / ("cells.jsonl" + TMP_SUFFIX))
        folder.write("cells.jsonl", "new")
        assert (run / "cells.jsonl").read_text() == "new"
    assert snapshot(outside) == before


def test_only_a_folder_with_memspaces_plain_files_counts_as_a_fresh_run(tmp_path):
    run, outside = sandbox(tmp_path)
    (run / (MANIFEST + TMP_SUFFIX)).symlink_to(outside / "precious.txt")
    with pytest.raises(MemspaceError, match="not a memspace run folder"):
        RunFolder.open(run, kind="demo")
    assert (outside / "precious.txt").read_text() == "the user's thesis"


@pytest.mark.parametrize(
    "name", [MANIFEST, LOCK, "x" + TMP_SUFFIX, f"sub/{MANIFEST}", "../escape", "/abs"]
)
def test_memspace_never_registers_its_own_files_or_a_path_outside(tmp_path, name):
    with RunFolder.open(tmp_path / "run", kind="demo") as folder:
        with pytest.raises(MemspaceError, match="cannot write into run folder"):
            folder.path(name)
        assert folder.files == []


def test_a_link_planted_after_the_check_stops_the_removal(tmp_path):
    """The race: the check saw a folder, an attacker swapped it for a link before the unlink."""
    run, outside = sandbox(tmp_path)
    (run / "a").symlink_to(outside / "folder")
    with pytest.raises(MemspaceError, match="link or not a folder"):
        _unlink_inside(run, ("a", "data.bin"))
    _unlink_inside(run, ("a",))  # the link itself goes, by its name
    assert not os.path.lexists(run / "a") and (outside / "folder" / "data.bin").exists()


def test_write_atomic_refuses_links_even_outside_a_run(tmp_path):
    (tmp_path / "target.txt").write_text("keep")
    (tmp_path / "out.html").symlink_to(tmp_path / "target.txt")
    with pytest.raises(MemspaceError, match="symbolic link"):
        write_atomic(tmp_path / "out.html", "<html>")
    assert (tmp_path / "target.txt").read_text() == "keep"
