"""The API reference builds from the docstrings (warnings are errors) and covers the public API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DOCUMENTED = {
    "fisher": [
        "operator.FisherOperator",
        "operator.FisherOperator.mv",
        "kfac.KFAC",
        "ekfac.EKFAC",
        "ekfac.EKFAC.inverse_mv",
        "spectral.eigh",
        "_pass.DataPass",
        "_collect.FastCollector",
        "_collect.LowMemoryCollector",
        "_collect.TapPlan",
        "_rules.LinearRule",
        "_rules.Conv2dRule",
    ],
    "studies": [
        "registry.prepare_study",
        "base.Study",
        "base.StudySummary",
        "results.NetworkMeasures",
        "measure.measure_network",
    ],
    "training": ["train.fit", "train.penalised_loss", "train.optimizer_step", "action.ActionTerm"],
}


def test_the_api_reference_builds_strictly_and_covers_the_public_api(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for page, names in DOCUMENTED.items():
        html = (site / "api" / page / "index.html").read_text()
        package = (
            "memspace.fisher"
            if page == "fisher"
            else "memspace.studies"
            if page == "studies"
            else "memspace"
        )
        missing = [name for name in names if f'id="{package}.{name}"' not in html]
        assert not missing, f"{page}: {missing}"
