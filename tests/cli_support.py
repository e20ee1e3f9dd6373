"""Running the real command line in a child process, and what a clean failure looks like.

:func:`run_cli` runs ``memspace.cli.main(args)`` — the console entry point itself — in a
child process forked from a server that has imported memspace and torch once
(``multiprocessing``'s forkserver with those modules preloaded). Each child is a real
process of its own: its own PID, working folder, environment, file descriptors 1 and 2,
signals and exit status (negative for a signal, as with :mod:`subprocess`). What it skips
is the interpreter's start and the imports, about 2 s of CPU per call, which the suite
makes a few hundred times. :func:`start_cli` starts a plain ``python -m memspace.cli``
subprocess, for the tests that read its pipes while it runs, and :func:`run_cli_subprocess`
runs one to the end.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ARCH_FILE = """
from memspace import ResidualMLP

def make():
    return ResidualMLP(2, 6, 3, 2)
"""

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "memspace", "memspace.cli", "memspace.report"])
_STATUS = threading.Lock()
"""Held wherever multiprocessing reads a child's exit status from the forkserver: ``start()`` (whose
clean-up polls every other live child), ``exitcode`` and ``join()``. Two threads polling the same
child at once both see its status pipe ready; the one that reads second meets end-of-file and
records 255 ("the forkserver vanished") over the real code. Children still run side by side: only
these reads take turns, and the waiting is done on the sentinel, which reads nothing."""


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MPLBACKEND": "Agg", **extra}
    env.pop("MEMSPACE_DEBUG", None)
    return env


def _child(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: the caller's folder, environment and output files, then the entry point.

    Ctrl-C gets Python's usual handler, as in a command typed at a terminal: a shell that
    started the test run in the background passes SIGINT down as ignored, which would make
    the interruption tests depend on how the suite was launched.
    """
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, name in ((1, out), (2, err)):
        target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(
        1, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    sys.stderr = open(
        2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    sys.argv = ["memspace", *args]
    import atexit

    from memspace.cli import main

    try:
        main(list(args))
    finally:
        # As at a normal interpreter exit (multiprocessing ends its children with os._exit): loky's
        # hook stops the pool's workers instead of leaving them to their idle timeout.
        atexit._run_exitfuncs()


def run_to_exit(child: multiprocessing.Process, timeout: float) -> int | None:
    """Start ``child``, wait for it, return its exit code (None: killed after ``timeout``).

    Every read of an exit status is made under :data:`_STATUS` (see there).
    """
    with _STATUS:
        child.start()
    finished = multiprocessing.connection.wait([child.sentinel], timeout)
    with _STATUS:
        code = child.exitcode if finished else None
        if code is None:
            child.kill()
        child.join()
    return code


def exit_with(code: int) -> None:
    """A child that only exits with ``code`` (the harness's own test)."""
    sys.exit(code)


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``memspace ARGS`` in ``cwd``, waited for, output captured (module doc)."""
    with tempfile.TemporaryDirectory(prefix="memspace-cli-") as scratch:
        out, err = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        child = _CONTEXT.Process(
            target=_child, args=(list(args), str(cwd), env or cli_env(), out, err)
        )
        code = run_to_exit(child, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(["memspace", *args], timeout)

        def read(name: str) -> str:
            return (
                Path(name).read_text(encoding="utf-8", errors="replace")
                if os.path.exists(name)
                else ""
            )

        return subprocess.CompletedProcess(["memspace", *args], code, read(out), read(err))


def run_cli_subprocess(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m memspace.cli ARGS`` as a plain subprocess, waited for, output captured.

    For the demo: under the forkserver its quick studies ran 2.4 times slower than in a fresh
    interpreter (not understood yet), which the fixture shared by the report tests cannot afford.
    """
    return subprocess.run(
        [sys.executable, "-m", "memspace.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or cli_env(),
        timeout=900,
    )


_STARTED: list[subprocess.Popen] = []
"""Every process :func:`start_cli` started, so a failing test cannot leave one running."""


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``memspace ARGS`` started in the background as a plain subprocess (to kill or wait for).

    A process the test leaves running is killed when the test ends (:func:`kill_leftovers`): a
    failed assertion before a test's own kill would otherwise leave a 100 000-epoch run taking a
    core from every later test.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "memspace.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env or cli_env(),
    )
    _STARTED.append(process)
    return process


def kill_leftovers() -> list[str]:
    """Kill what :func:`start_cli` started and is still running; their command lines."""
    killed = []
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()
            killed.append(" ".join(map(str, process.args[3:])))
    return killed


def run_cases(
    cases: dict[str, tuple], root: Path, prepare, workers: int = 4
) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case ``{name: (args, ...)}`` once.

    Each in its own folder under ``root`` filled by ``prepare(folder)``, ``workers`` at a time:
    ``{name: (result, folder)}``.
    """
    from concurrent.futures import ThreadPoolExecutor

    folders = {}
    for index, name in enumerate(cases):
        folders[name] = root / f"case-{index:02d}"
        folders[name].mkdir()
        prepare(folders[name])
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(run_cli, *cases[name][0], cwd=folders[name]) for name in cases}
        return {name: (future.result(), folders[name]) for name, future in futures.items()}


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memspace: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
