"""Pre-registered predictions and the verdicts code reads from committed results (§5).

An experiment states each :class:`Prediction` before it runs — the claim, the test, what
would support it and what would contradict it — and its verdict is then computed from the
numbers by one of the decision rules below, never typed:

- :func:`decide_direction` — an effect predicted to lie above (or below) a threshold:
  "supported" when its whole confidence interval lies on the predicted side,
  "contradicted" when the whole interval lies on the other side, else "not established".
- :func:`decide_noninferiority` — "supported" when the non-inferiority test rejects at α
  (the new arm is not worse by the margin), "contradicted" when the interval of the
  difference lies entirely below −margin (worse by more than the margin), else "not
  established".

:func:`read_results` loads an experiment's machine-readable results file (JSON, untrusted
input: a size limit, no objects beyond JSON's), from which the report and RESULTS.md are
written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._errors import MemspaceError
from .._runs import read_regular
from .statistics import Estimate, PairedComparison

__all__ = [
    "VERDICTS",
    "Prediction",
    "Verdict",
    "decide_direction",
    "decide_noninferiority",
    "read_results",
]

VERDICTS = ("supported", "contradicted", "not established")
MAX_RESULTS_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Prediction:
    """A claim as written down before the run.

    Attributes:
        claim: its label, e.g. ``"(ii) non-inferiority"``.
        statement: what is predicted, in words.
        test: the statistic and test that decide it (with n, margin and α).
        supported_if: the outcome that supports it.
        contradicted_if: the outcome that contradicts it.
    """

    claim: str
    statement: str
    test: str
    supported_if: str
    contradicted_if: str

    def as_dict(self) -> dict[str, str]:
        """The prediction as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict, with the numbers it was read from."""

    claim: str
    verdict: str
    test: str
    n: int
    effect: float
    low: float
    high: float
    p: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise MemspaceError(f"unknown verdict {self.verdict!r}; use one of {VERDICTS}")

    def as_dict(self) -> dict[str, Any]:
        """The verdict as a JSON-ready dict."""
        return asdict(self)


def decide_direction(
    prediction: Prediction,
    estimate: Estimate,
    *,
    threshold: float = 0.0,
    predicted: str = "above",
    p: float | None = None,
) -> Verdict:
    """The verdict on "the effect lies ``predicted`` (``"above"``/``"below"``) ``threshold``."""
    if predicted not in ("above", "below"):
        raise MemspaceError(f"predicted must be 'above' or 'below', got {predicted!r}")
    low, high = estimate.low, estimate.high
    if not (low == low and high == high):  # NaN: no interval (too few seeds)
        verdict = "not established"
    elif (low > threshold) if predicted == "above" else (high < threshold):
        verdict = "supported"
    elif (high < threshold) if predicted == "above" else (low > threshold):
        verdict = "contradicted"
    else:
        verdict = "not established"
    return Verdict(
        prediction.claim,
        verdict,
        prediction.test,
        estimate.n,
        estimate.value,
        low,
        high,
        p,
        f"predicted {predicted} {threshold:g}; {round(estimate.level * 100)} % interval, "
        f"{estimate.clusters} cluster{'' if estimate.clusters == 1 else 's'}",
    )


def decide_noninferiority(
    prediction: Prediction, comparison: PairedComparison, *, alpha: float = 0.05
) -> Verdict:
    """The verdict on "arm a is not worse than arm b by the margin" (a paired comparison)."""
    if comparison.margin is None or comparison.noninferiority_p is None:
        raise MemspaceError("a non-inferiority verdict needs a comparison with a margin")
    difference, p = comparison.difference, comparison.noninferiority_p
    if p == p and p < alpha:
        verdict = "supported"
    elif difference.high == difference.high and difference.high < -comparison.margin:
        verdict = "contradicted"
    else:
        verdict = "not established"
    return Verdict(
        prediction.claim,
        verdict,
        prediction.test,
        comparison.n,
        difference.value,
        difference.low,
        difference.high,
        p,
        f"margin {comparison.margin:g}, α = {alpha:g}; Wilcoxon p = {comparison.wilcoxon_p:.3g}",
    )


def read_results(path: str | Path) -> dict[str, Any]:
    """An experiment's results file (JSON object), checked: a regular file, ≤ 64 MiB, JSON."""
    path = Path(path)
    raw = read_regular(path, "the results file", max_bytes=MAX_RESULTS_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MemspaceError(f"results file {path} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise MemspaceError(f"results file {path} does not hold a JSON object")
    return data
