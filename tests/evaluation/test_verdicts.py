"""Verdicts read by code from a results file, on constructed inputs for each outcome."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from memspace import MemspaceError
from memspace.evaluation import (
    Estimate,
    Prediction,
    decide_direction,
    decide_noninferiority,
    paired_comparison,
    read_results,
)

CLAIM = Prediction(
    claim="(ii)",
    statement="the regulariser does not hurt test accuracy",
    test="paired non-inferiority at −0.5 points",
    supported_if="the one-sided p < 0.05",
    contradicted_if="the whole interval lies below −0.5 points",
)


def _estimate(low, high):
    return Estimate((low + high) / 2, low, high, 0.95, 5, 5, "constructed")


@pytest.mark.parametrize(
    "low, high, predicted, verdict",
    [
        (0.1, 0.3, "above", "supported"),
        (-0.3, -0.1, "above", "contradicted"),
        (-0.1, 0.2, "above", "not established"),
        (-0.3, -0.1, "below", "supported"),
        (0.1, 0.3, "below", "contradicted"),
        (float("nan"), float("nan"), "above", "not established"),
    ],
)
def test_decide_direction(tmp_path, low, high, predicted, verdict):
    file = tmp_path / "results.json"
    file.write_text(json.dumps({"effect": _estimate(low, high).as_dict()}))
    stored = read_results(file)["effect"]
    decided = decide_direction(CLAIM, Estimate(**stored), predicted=predicted)
    assert decided.verdict == verdict and decided.n == 5


@pytest.mark.parametrize(
    "gain, verdict",
    [
        (np.array([0.1, -0.1, 0.2, 0.0, 0.1]), "supported"),  # within the margin
        (np.array([-2.0, -1.6, -2.4, -1.9, -2.2]), "contradicted"),  # clearly worse
        (np.array([0.3, -1.5, 0.8, -1.2, 0.1]), "not established"),  # too noisy
    ],
)
def test_decide_noninferiority(tmp_path, gain, verdict):
    base = np.array([85.0, 86.0, 84.5, 85.5, 86.5])
    file = tmp_path / "results.json"
    file.write_text(json.dumps({"regularised": (base + gain).tolist(), "plain": base.tolist()}))
    results = read_results(file)
    comparison = paired_comparison(results["regularised"], results["plain"], margin=0.5)
    decided = decide_noninferiority(CLAIM, comparison)
    assert decided.verdict == verdict
    assert decided.effect == pytest.approx(gain.mean())


def test_a_bad_results_file_is_refused(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(MemspaceError, match="does not hold a JSON object"):
        read_results(tmp_path / "list.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MemspaceError, match="is not JSON"):
        read_results(tmp_path / "broken.json")
    (tmp_path / "link.json").symlink_to(tmp_path / "list.json")
    with pytest.raises(MemspaceError, match="symbolic link"):
        read_results(tmp_path / "link.json")
    assert not math.isnan(decide_direction(CLAIM, _estimate(0.1, 0.2)).effect)
