"""Running the real command line in a subprocess, and what a clean failure looks like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ARCH_FILE = '''
from memspace import ResidualMLP

def make():
    return ResidualMLP(2, 6, 3, 2)
'''


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MPLBACKEND": "Agg", **extra}
    env.pop("MEMSPACE_DEBUG", None)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``memspace ARGS`` in ``cwd``, waited for, output captured."""
    return subprocess.run([sys.executable, "-m", "memspace.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env or cli_env(), timeout=600)


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``memspace ARGS`` started in the background (to be killed or waited for)."""
    return subprocess.Popen([sys.executable, "-m", "memspace.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env or cli_env())


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memspace: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
