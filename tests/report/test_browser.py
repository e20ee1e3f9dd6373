"""The report renders in a real headless browser (Debian's chromium) without errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000"]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def report(demo_run) -> Path:
    return demo_run[0] / "report.html"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's chromium)")
def test_report_renders_every_figure_without_errors(report, tmp_path):
    dom = chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile").stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    loaded = re.search(r'data-figures-loaded="(\d+)/(\d+)"', body.group(0))
    errors = re.search(r'data-errors="(\d+)"', body.group(0))
    assert loaded and errors, body.group(0)
    assert loaded.group(1) == loaded.group(2) == "12"  # six of the networks, two per study, the zoo, traversals
    assert errors.group(1) == "0"
    for figure in ("fig-predictive", "fig-points", "fig-sensitivity", "fig-trajectories", "fig-spectrum",
                   "fig-training", "fig-capacity", "fig-cover", "fig-reinit", "fig-noise", "fig-zoo-scatter", "fig-traversal"):
        assert f'id="{figure}"' in dom
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri(), profile=tmp_path / "profile2")
    assert shot.exists() and shot.stat().st_size > 50_000  # a page with pictures, not a blank one
