"""Statistics a reviewer accepts (docs/theory.md §5, the evidence standard).

Every effect gets an interval, every comparison of two arms is paired across seeds, and a
table of several claims is corrected for multiplicity:

- :func:`sample_std` — the sample standard deviation (ddof = 1; NaN for one value, never
  "± 0.000").
- :func:`clustered_bootstrap` — a percentile bootstrap that resamples *clusters* (seeds)
  with replacement and keeps every row of a drawn cluster, so rows that share a seed are
  not counted as independent (Field & Welsh 2007). :func:`mean_ci` and :func:`kendall_ci`
  are its two common uses.
- :func:`paired_comparison` — the mean paired difference of two arms over seeds, its
  bootstrap interval, the Wilcoxon signed-rank test (exact for small n, scipy's) and a
  non-inferiority test at a stated margin.
- :func:`noninferiority` / :func:`equivalence` — one-sided t-tests against a margin: the
  non-inferiority test is one of the two one-sided tests (TOST, Schuirmann 1987);
  equivalence needs both.
- :func:`best_of_permutation` — a permutation null for "the best of M measures": permute the
  target, take the best of all M statistics each time, so choosing the winner afterwards is
  paid for.
- :func:`holm` — Holm's step-down adjustment of a family of p-values.
- :func:`logistic_threshold` — where a success probability crosses ½ along log₂ N, from a
  logistic fit to every Bernoulli outcome (a capacity N* that is not the top of a grid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from .._errors import MemspaceError

__all__ = [
    "Estimate",
    "PairedComparison",
    "best_of_permutation",
    "clustered_bootstrap",
    "equivalence",
    "holm",
    "kendall_ci",
    "logistic_threshold",
    "mean_ci",
    "noninferiority",
    "paired_comparison",
    "sample_std",
]

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval.

    Attributes:
        value: the statistic on the data.
        low, high: the interval's ends (NaN when it cannot be computed: fewer than two
            clusters).
        level: the interval's coverage, 0.95 by default.
        n: rows used; clusters: independent units resampled (seeds).
        method: how the interval was made.
    """

    value: float
    low: float
    high: float
    level: float
    n: int
    clusters: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        """The estimate as a JSON-ready dict."""
        return asdict(self)

    def excludes(self, value: float = 0.0) -> bool:
        """Whether the interval lies entirely on one side of ``value``."""
        return bool(self.low > value or self.high < value)


def _vector(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise MemspaceError(f"{name} holds NaN or Inf")
    return array


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof = 1); NaN for fewer than two values."""
    array = _vector(values, "the values")
    return float(array.std(ddof=1)) if len(array) > 1 else float("nan")


def clustered_bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    clusters: Sequence[Any] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap of ``statistic(rows)`` resampling whole clusters.

    Args:
        statistic: maps an index array into the n rows (with repeats) to a number.
        n: the number of rows.
        clusters: each row's cluster (its seed, say) [n]; default every row its own.
        resamples: bootstrap draws B.
        level: the interval's coverage.
        seed: the generator's seed (numpy's PCG64): the same seed gives the same interval.

    Returns:
        :class:`Estimate` with ``value = statistic(all rows)`` and the (1−level)/2 and
        (1+level)/2 quantiles of the B resampled statistics (draws where the statistic is
        NaN, such as τ of constant values, are dropped).
    """
    if n < 1:
        raise MemspaceError("the bootstrap needs at least one row")
    labels = np.arange(n) if clusters is None else np.asarray(clusters)
    if len(labels) != n:
        raise MemspaceError(f"{len(labels)} cluster labels for {n} rows")
    _, codes = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    value = float(statistic(np.arange(n)))
    if len(members) < 2:
        return Estimate(value, np.nan, np.nan, level, n, len(members), "too few clusters")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        picked = rng.integers(0, len(members), len(members))
        draws.append(statistic(np.concatenate([members[c] for c in picked])))
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return Estimate(value, np.nan, np.nan, level, n, len(members), "no finite resample")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    method = "percentile bootstrap" + (" over clusters" if clusters is not None else "")
    return Estimate(value, float(low), float(high), level, n, len(members), method)


def mean_ci(
    values: Sequence[float], clusters: Sequence[Any] | None = None, **options: Any
) -> Estimate:
    """The mean with a (cluster) bootstrap interval (options as :func:`clustered_bootstrap`)."""
    array = _vector(values, "the values")
    return clustered_bootstrap(lambda idx: array[idx].mean(), len(array), clusters, **options)


def kendall_ci(
    measure: Sequence[float],
    target: Sequence[float],
    clusters: Sequence[Any] | None = None,
    **options: Any,
) -> Estimate:
    """Kendall's τ-b between a measure and a target, signed, with a cluster-bootstrap interval."""
    x, y = _vector(measure, "the measure"), _vector(target, "the target")
    if len(x) != len(y):
        raise MemspaceError(f"{len(x)} measure values for {len(y)} targets")

    def tau(idx: np.ndarray) -> float:
        if np.ptp(x[idx]) == 0 or np.ptp(y[idx]) == 0:
            return float("nan")
        return float(stats.kendalltau(x[idx], y[idx]).statistic)

    return clustered_bootstrap(tau, len(x), clusters, **options)


@dataclass(frozen=True)
class PairedComparison:
    """Arm ``a`` against arm ``b``, paired over seeds (see :func:`paired_comparison`).

    Attributes:
        difference: the mean of a − b with its bootstrap interval over the pairs.
        wilcoxon_p: the two-sided Wilcoxon signed-rank p (NaN when every difference is 0).
        noninferiority_p: the one-sided p of "a is not worse than b by more than the margin"
            (None without a margin).
        margin: the stated margin (in the difference's units; a is inferior below −margin).
        n: pairs.
    """

    difference: Estimate
    wilcoxon_p: float
    noninferiority_p: float | None
    margin: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        """The comparison as a JSON-ready dict."""
        out = asdict(self)
        out["difference"] = self.difference.as_dict()
        return out


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    *,
    margin: float | None = None,
    **options: Any,
) -> PairedComparison:
    """Compare two arms run on the same seeds: ``a[i]`` and ``b[i]`` share seed i.

    Args:
        a: one value per seed for the new arm (higher is better for the non-inferiority test).
        b: one value per seed for the reference arm, in the same seed order.
        margin: the non-inferiority margin δ > 0: H0 mean(a − b) ≤ −δ against H1 > −δ.
        options: passed to :func:`clustered_bootstrap` (``resamples``, ``level``, ``seed``).
    """
    x, y = _vector(a, "arm a"), _vector(b, "arm b")
    if len(x) != len(y):
        raise MemspaceError(f"arms of {len(x)} and {len(y)} seeds cannot be paired")
    diff = x - y
    estimate = mean_ci(diff, **options)
    if len(diff) > 0 and np.any(diff != 0):
        wilcoxon_p = float(stats.wilcoxon(x, y).pvalue)
    else:
        wilcoxon_p = float("nan")
    ni = None if margin is None else noninferiority(diff, margin)
    return PairedComparison(estimate, wilcoxon_p, ni, margin, len(diff))


def noninferiority(differences: Sequence[float], margin: float) -> float:
    """One-sided p of H0: mean ≤ −margin against H1: mean > −margin (a one-sample t-test).

    ``differences`` are a − b per seed, higher better; a small p says a is not worse than b by
    the margin or more. With every difference equal the t statistic is ±∞ (p 0 or 1).
    """
    diff = _vector(differences, "the differences")
    if margin <= 0:
        raise MemspaceError(f"a non-inferiority margin must be positive, got {margin}")
    if len(diff) < 2:
        return float("nan")
    shifted = diff + margin
    spread = diff.std(ddof=1)
    if spread == 0:
        return 0.0 if shifted.mean() > 0 else 1.0
    t = shifted.mean() / (spread / np.sqrt(len(diff)))
    return float(stats.t.sf(t, len(diff) - 1))


def equivalence(differences: Sequence[float], low: float, high: float) -> float:
    """TOST p of equivalence: the larger of the two one-sided p-values for (low, high)."""
    diff = _vector(differences, "the differences")
    if not low < 0 < high:
        raise MemspaceError(f"equivalence bounds must straddle 0, got ({low}, {high})")
    above = noninferiority(diff, -low)
    below = noninferiority(-diff, high)
    return max(above, below)


def best_of_permutation(
    measures: np.ndarray,
    target: Sequence[float],
    statistic: Callable[[np.ndarray, np.ndarray], float] | None = None,
    *,
    permutations: int = 999,
    seed: int = 0,
) -> tuple[int, float, float]:
    """Is the best of M measures better than the best of M would be by chance?

    The target is permuted ``permutations`` times; each time every measure's statistic is
    recomputed and the largest kept. The p-value counts how often that null maximum reaches
    the observed best: p = (1 + #{null ≥ best}) / (1 + permutations) (Phipson & Smyth 2010).

    Args:
        measures: [M, n], one row per measure.
        target: [n], the quantity the measures should rank (the generalization gap).
        statistic: (measure row, target) → a number, larger better; default Kendall's τ
            (signed: a measure that ranks the gap backwards does not win).
        permutations: permutations of the target.
        seed: the generator's seed (the same seed, the same p).

    Returns:
        (index of the best measure, its statistic, p).
    """
    rows = np.asarray(measures, dtype=np.float64)
    y = _vector(target, "the target")
    if rows.ndim != 2 or rows.shape[1] != len(y):
        raise MemspaceError(f"measures must be [M, {len(y)}], got {list(rows.shape)}")
    if not np.isfinite(rows).all():
        raise MemspaceError("the measures hold NaN or Inf")
    statistic = statistic or (lambda x, t: float(stats.kendalltau(x, t).statistic))
    observed = np.array([statistic(row, y) for row in rows])
    best = int(np.nanargmax(observed))
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        shuffled = rng.permutation(y)
        null = max(statistic(row, shuffled) for row in rows)
        exceed += null >= observed[best]
    return best, float(observed[best]), (1 + exceed) / (1 + permutations)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input's order.

    Sorted ascending, p_(i) is multiplied by (m − i + 1), made monotone and capped at 1; a
    claim is significant at α when its adjusted p < α, controlling the family-wise error.
    NaN p-values stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    adjusted = np.full_like(p, np.nan)
    index = np.flatnonzero(np.isfinite(p))
    if len(index) == 0:
        return adjusted
    order = index[np.argsort(p[index], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


LOGISTIC_C = 100.0
"""Inverse L2 weight on the slope of :func:`logistic_threshold` (finite on a sharp transition)."""


def logistic_threshold(sizes: Sequence[float], successes: Sequence[bool]) -> dict[str, Any]:
    """N* where P(success) = σ(a + b·log₂ N) crosses ½, fitted to every outcome.

    A maximum-likelihood logistic fit over the individual trials (each size and seed one
    Bernoulli outcome), with a weak L2 weight b²/(2C) on the slope (C = ``LOGISTIC_C``;
    scikit-learn's ``LogisticRegression(C)`` objective, solved by Newton's method here because a
    bootstrap refits it thousands of times) so that a sharp
    transition, where the unpenalised estimate diverges, still puts N* between the last size
    always fitted and the first never fitted. Censored outcomes are said so, not extrapolated:
    every trial a success gives ``censored = "above"`` (N* ≥ the largest size), none gives
    ``"below"``, a fit whose success does not fall with N gives ``"no decline"``; each has
    ``log2_n_star`` NaN.

    Args:
        sizes: each trial's N [n] (positive).
        successes: whether it succeeded [n].

    Returns:
        ``{"n_star", "log2_n_star", "slope", "censored", "trials"}``; ``n_star`` is the bound
        (largest or smallest size) when censored.
    """
    x = _vector(sizes, "the sizes")
    y = np.asarray(successes, dtype=bool)
    if len(x) != len(y):
        raise MemspaceError(f"{len(x)} sizes for {len(y)} outcomes")
    if (x <= 0).any():
        raise MemspaceError("sizes must be positive")
    out = dict(n_star=float("nan"), log2_n_star=float("nan"), slope=float("nan"), trials=len(x))
    if y.all():
        return dict(out, n_star=float(x.max()), censored="above")
    if not y.any():
        return dict(out, n_star=float(x.min()), censored="below")
    intercept, slope = _penalised_logistic(np.log2(x), y.astype(float), LOGISTIC_C)
    if slope >= 0:
        return dict(out, slope=slope, censored="no decline")
    crossing = -intercept / slope
    return dict(
        out, n_star=float(2.0**crossing), log2_n_star=float(crossing), slope=slope, censored=None
    )


def _penalised_logistic(x: np.ndarray, y: np.ndarray, C: float) -> tuple[float, float]:
    """(a, b) minimising Σ log(1 + e^{z}) − y z + b²/(2C), z = a + b x (Newton, strictly convex)."""
    X = np.column_stack([np.ones_like(x), x])
    theta = np.zeros(2)
    ridge = np.array([0.0, 1.0 / C])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        gradient = X.T @ (p - y) + ridge * theta
        hessian = (X * (p * (1 - p))[:, None]).T @ X + np.diag(ridge) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])
