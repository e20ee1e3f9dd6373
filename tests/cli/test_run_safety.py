"""Runs that never lose or destroy data, through the real command line.

Real ``SIGKILL`` s at named write steps (``MEMSPACE_TEST_CRASH``, so that the mid-write
states are hit for certain), at seeded random steps, and SIGTERM / Ctrl-C; after the resumes, the
metrics hold
every epoch exactly once and the weights equal an uninterrupted run's, bit for bit.
Also: ``--overwrite`` beside foreign files, two processes on one folder, resume with a
changed option, a really full disk, and user strings in figures.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_support import ARCH_FILE, assert_clean_failure, cli_env, run_cli, start_cli
from memspace import ResidualMLP
from memspace._runs import LOCK, TMP_SUFFIX

EPOCHS = 5
TRAIN = [
    "train",
    "--data",
    "moons",
    "--action",
    "kinetic",
    "--width",
    "6",
    "--depth",
    "3",
    "--epochs",
    str(EPOCHS),
]


def weights(folder: Path, epoch: int = EPOCHS) -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"epoch-{epoch:04d}.safetensors"))


def epochs_logged(folder: Path) -> list[int]:
    return [
        json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]


def assert_complete_and_exact(folder: Path, reference: Path) -> None:
    assert epochs_logged(folder) == list(range(1, EPOCHS + 1))
    ours, theirs = weights(folder), weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert not list(folder.glob("*" + TMP_SUFFIX))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    result = run_cli(*TRAIN, "--out", "run", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.mark.parametrize(
    "step", ["before-rename", "after-rename", "between-checkpoint-and-metrics"]
)
def test_kills_at_every_write_step_lose_nothing(tmp_path, reference, step):
    """Kill at the k-th time a step is reached, for growing k, resuming each time.

    Until a run finishes.
    """
    killed, k = 0, 1
    while True:
        result = run_cli(
            *TRAIN, "--out", "run", cwd=tmp_path, env=cli_env(MEMSPACE_TEST_CRASH=f"{step}:{k}")
        )
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr
        killed += 1
        k += 0 if step == "between-checkpoint-and-metrics" else 2  # there: after every epoch
        assert killed < 40
    assert killed >= 3
    assert_complete_and_exact(tmp_path / "run", reference)


def test_a_kill_during_the_first_checkpoint_leaves_a_resumable_folder(tmp_path, reference):
    # writes in a fresh run: manifest, manifest (+init), init, manifest (+epoch 1), epoch 1: the 5th
    # rename
    result = run_cli(
        *TRAIN, "--out", "run", cwd=tmp_path, env=cli_env(MEMSPACE_TEST_CRASH="before-rename:5")
    )
    assert result.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    assert (run / ("epoch-0001.safetensors" + TMP_SUFFIX)).exists() and not (
        run / "epoch-0001.safetensors"
    ).exists()
    again = run_cli(*TRAIN, "--out", "run", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_complete_and_exact(run, reference)
    assert run_cli(*TRAIN, "--out", "run", "--overwrite", cwd=tmp_path).returncode == 0


def test_kills_at_seeded_random_points_lose_nothing(tmp_path, reference):
    """Kill points drawn from a seeded generator (a step and the count at which it fires).

    As varied as random kills, but the same every run, whatever the machine's speed.
    """
    rng = random.Random(0)
    steps = ["before-rename", "after-rename", "between-checkpoint-and-metrics"]
    kills = 0
    while True:
        point = f"{rng.choice(steps)}:{rng.randint(1, 6)}"
        result = run_cli(
            *TRAIN, "--out", "run", cwd=tmp_path, env=cli_env(MEMSPACE_TEST_CRASH=point)
        )
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, (point, result.stderr)
        kills += 1
        assert kills < 40
    # The first point always fires: every step is reached at least six times in a run
    assert kills >= 1
    assert_complete_and_exact(tmp_path / "run", reference)


@pytest.mark.parametrize(
    "signame, code, word", [("TERM", 143, "terminated (SIGTERM)"), ("INT", 130, "interrupted")]
)
def test_sigterm_and_ctrl_c_end_with_one_line_and_a_resumable_run(
    tmp_path, reference, signame, code, word
):
    point = f"between-checkpoint-and-metrics:2:{signame}"
    stopped = run_cli(*TRAIN, "--out", "run", cwd=tmp_path, env=cli_env(MEMSPACE_TEST_CRASH=point))
    assert stopped.returncode == code, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memspace: error: ") and word in lines[0], (
        stopped.stderr
    )
    assert "run the same command again to resume" in lines[0]
    assert not (tmp_path / "run" / LOCK).read_text().strip()  # the lock was released on the way out
    resumed = run_cli(*TRAIN, "--out", "run", cwd=tmp_path)
    assert resumed.returncode == 0 and "resumed from epoch" in resumed.stderr, resumed.stderr
    assert_complete_and_exact(tmp_path / "run", reference)


def test_overwrite_keeps_foreign_files_and_refuses_a_folder_that_is_not_a_run(tmp_path):
    first = run_cli(*TRAIN, "--out", "run", "--epochs", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "run" / "notes.txt").write_text("mine")
    again = run_cli(*TRAIN, "--out", "run", "--epochs", "2", "--overwrite", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine" and epochs_logged(
        tmp_path / "run"
    ) == [1, 2]
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "README.txt").write_text("mine")
    (project / "metrics.json").write_text("{}")
    refused = run_cli(
        "demo", "--data", "moons", "--epochs", "1", "--out", "project", "--overwrite", cwd=tmp_path
    )
    assert_clean_failure(refused, "not a memspace run folder", "README.txt", "metrics.json", "src")
    assert sorted(p.name for p in project.iterdir()) == ["README.txt", "metrics.json", "src"]
    assert (project / "src" / "main.py").read_text() == "print('mine')"


def test_two_processes_on_one_folder(tmp_path):
    long_run = [*TRAIN[:-1], "100000"]  # killed below, long before it ends
    first = start_cli(*long_run, "--out", "run", cwd=tmp_path)
    lock = tmp_path / "run" / LOCK
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    second = run_cli(*long_run, "--out", "run", cwd=tmp_path)
    assert_clean_failure(second, "in use by another memspace process", f"PID {first.pid}")
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = run_cli(*TRAIN, "--out", "run", cwd=tmp_path)  # the lock died with its holder
    assert done.returncode == 0, done.stderr


CHANGES = {
    "--lam": "0.2",
    "--action": "jacobian",
    "--seed": "1",
    "--lr": "0.01",
    "--data": "digits",
}


def test_resume_with_a_changed_option_is_refused_naming_it(tmp_path):
    first = run_cli(*TRAIN, "--out", "run", "--epochs", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()

    # Each on its own copy of the run: two processes never contend for one lock
    def changed(option):
        args = list(TRAIN)
        if option in args:
            args[args.index(option) + 1] = CHANGES[option]
        else:
            args += [option, CHANGES[option]]
        copy = tmp_path / f"copy{option}"
        shutil.copytree(tmp_path / "run", copy / "run")
        result = run_cli(*args, "--out", "run", cwd=copy)
        assert (copy / "run" / "metrics.jsonl").read_bytes() == before
        return result

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(CHANGES, pool.map(changed, CHANGES)))
    for option, result in results.items():
        name = option.lstrip("-").replace("-", "_")
        assert_clean_failure(result, f"{name} ", "other options", "--overwrite")
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
    longer = run_cli(*TRAIN, "--out", "run", cwd=tmp_path)  # only the epoch count may grow
    assert longer.returncode == 0 and "resumed from epoch 2" in longer.stderr


def _mount_small_disk(path: Path, size: str) -> bool:
    path.mkdir()
    if shutil.which("mount") is None:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return result.returncode == 0


def test_a_really_full_disk_is_one_line_and_the_run_resumes_with_space(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_small_disk(disk, "600k"):
        pytest.skip(
            "cannot mount a small tmpfs here (needs root); the monkeypatched ENOSPC tests still run"
        )
    try:
        args = ["train", "--data", "moons", "--epochs", "8", "--out", str(disk / "run")]
        full = run_cli(*args, cwd=tmp_path)
        assert_clean_failure(full, "cannot write", "No space left on device")
        written = epochs_logged(disk / "run")
        assert written == list(range(1, len(written) + 1)) and written
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        resumed = run_cli(*args, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert epochs_logged(disk / "run") == list(range(1, 9))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_user_strings_in_figures_are_literal(tmp_path):
    (tmp_path / "arch.py").write_text(ARCH_FILE)
    torch.manual_seed(0)
    save_file(ResidualMLP(2, 6, 3, 2).state_dict(), str(tmp_path / "a$x^$.safetensors"))
    result = run_cli(
        "measure",
        "--model",
        "a$x^$.safetensors",
        "--arch",
        "arch.py:make",
        "--data",
        "moons",
        "--out",
        "m",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "report.html").exists() and (tmp_path / "m" / "metrics.json").exists()
