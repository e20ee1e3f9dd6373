"""Each statistic on a worked example, against scipy or a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from memspace import MemspaceError
from memspace.evaluation import (
    best_of_permutation,
    clustered_bootstrap,
    equivalence,
    holm,
    kendall_ci,
    logistic_threshold,
    mean_ci,
    noninferiority,
    paired_comparison,
    sample_std,
)


def test_sample_std_uses_ddof_one_and_is_undefined_for_one_value():
    assert sample_std([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3), rel=1e-15)
    assert math.isnan(sample_std([0.7]))


def _slow_clustered_bootstrap(values, clusters, resamples, level, seed):
    """The same resampling, written out with Python loops (the reference)."""
    names = sorted(set(clusters))
    rows = {c: [v for v, k in zip(values, clusters) if k == c] for c in names}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        picked = rng.integers(0, len(names), len(names))
        chosen = [v for c in picked for v in rows[names[c]]]
        draws.append(sum(chosen) / len(chosen))
    return np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])


def test_clustered_bootstrap_matches_a_slow_reference():
    values = [0.3, 0.5, 0.1, 0.9, 0.8, 0.7, 0.2, 0.4]
    clusters = [0, 0, 1, 1, 2, 2, 3, 3]
    estimate = mean_ci(values, clusters, resamples=500, level=0.9, seed=7)
    low, high = _slow_clustered_bootstrap(values, clusters, 500, 0.9, 7)
    assert estimate.value == pytest.approx(np.mean(values), rel=1e-15)
    assert (estimate.low, estimate.high) == pytest.approx((low, high), rel=1e-14)
    assert estimate.clusters == 4 and estimate.n == 8 and estimate.level == 0.9


def test_rows_of_one_seed_are_not_counted_as_independent():
    per_seed = np.array([0.1, 0.4, 0.35, 0.8, 0.55])
    rows = np.repeat(per_seed, 3)  # three identical measurements per seed
    clustered = mean_ci(rows, np.repeat(np.arange(5), 3), seed=3)
    of_seeds = mean_ci(per_seed, seed=3)
    naive = mean_ci(rows, seed=3)
    assert (clustered.low, clustered.high) == pytest.approx((of_seeds.low, of_seeds.high))
    assert naive.high - naive.low < 0.8 * (clustered.high - clustered.low)


def test_one_cluster_gives_no_interval():
    estimate = mean_ci([1.0, 2.0, 3.0], [5, 5, 5])
    assert estimate.value == 2.0 and math.isnan(estimate.low) and math.isnan(estimate.high)
    with pytest.raises(MemspaceError, match="NaN or Inf"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(MemspaceError, match="2 cluster labels for 3 rows"):
        clustered_bootstrap(lambda idx: 0.0, 3, [0, 1])


def test_kendall_ci_is_scipy_tau_with_its_sign():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([6.0, 4.0, 5.0, 2.0, 3.0, 1.0])
    estimate = kendall_ci(x, y, seed=1)
    assert estimate.value == pytest.approx(stats.kendalltau(x, y).statistic, rel=1e-15)
    assert estimate.value < 0 and estimate.low <= estimate.value <= estimate.high


def test_paired_comparison_wilcoxon_is_scipy_and_exact_on_a_worked_example():
    a = np.array([0.81, 0.83, 0.80, 0.86, 0.84])
    b = a - np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    comparison = paired_comparison(a, b, margin=0.005)
    # all five differences positive: the exact two-sided signed-rank p is 2 / 2^5
    assert comparison.wilcoxon_p == pytest.approx(2 / 32, rel=1e-12)
    assert comparison.wilcoxon_p == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    assert comparison.difference.value == pytest.approx(0.03, rel=1e-12)
    assert comparison.n == 5
    with pytest.raises(MemspaceError, match="cannot be paired"):
        paired_comparison(a, b[:4])


def test_noninferiority_and_equivalence_against_scipy_t_tests():
    diff = np.array([-0.004, 0.002, -0.001, 0.003, -0.006, 0.001])
    margin = 0.005
    expected = stats.ttest_1samp(diff, -margin, alternative="greater").pvalue
    assert noninferiority(diff, margin) == pytest.approx(expected, rel=1e-12)
    tost = max(
        stats.ttest_1samp(diff, -margin, alternative="greater").pvalue,
        stats.ttest_1samp(diff, margin, alternative="less").pvalue,
    )
    assert equivalence(diff, -margin, margin) == pytest.approx(tost, rel=1e-12)
    with pytest.raises(MemspaceError, match="margin must be positive"):
        noninferiority(diff, 0.0)


def test_best_of_permutation_pays_for_choosing_the_winner():
    target = np.array([0.0, 1.0, 2.0])
    # one measure that ranks the target perfectly: a random order does so with p = 1/6
    _, tau, p_one = best_of_permutation(np.array([[0.0, 1.0, 2.0]]), target, permutations=5999)
    assert tau == pytest.approx(1.0) and p_one == pytest.approx(1 / 6, abs=0.02)
    # the same winner among two measures: either can win by chance, p = 2/6
    best, _, p_two = best_of_permutation(
        np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 2.0]]), target, permutations=5999
    )
    assert best == 1 and p_two == pytest.approx(1 / 3, abs=0.02)
    # a perfect measure among noise on 9 points: no random order reaches it
    rng = np.random.default_rng(0)
    measures = np.vstack([rng.normal(size=(3, 9)), np.arange(9.0)])
    best, _, p = best_of_permutation(measures, np.arange(9.0), permutations=499)
    assert best == 3 and p == pytest.approx(1 / 500)


def test_holm_on_a_worked_example():
    adjusted = holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; made monotone
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert math.isnan(adjusted[4])
    assert holm([0.6, 0.9]).tolist() == [1.0, 1.0]


def test_logistic_threshold_is_the_maximum_likelihood_crossing():
    rng = np.random.default_rng(0)
    sizes = np.repeat(100 * 2.0 ** np.arange(8), 300)
    truth, width = np.log2(1000.0), 0.4
    success = rng.random(len(sizes)) < 1 / (1 + np.exp((np.log2(sizes) - truth) / width))
    fit = logistic_threshold(sizes, success)

    def nll(theta):  # the unpenalised Bernoulli likelihood, minimised by scipy
        z = theta[0] + theta[1] * np.log2(sizes)
        return float(np.sum(np.logaddexp(0, z) - success * z))

    a, b = optimize.minimize(nll, [10.0, -1.0], method="Nelder-Mead", tol=1e-10).x
    assert fit["censored"] is None and fit["slope"] < 0
    assert fit["log2_n_star"] == pytest.approx(-a / b, abs=0.01)  # the penalty is negligible here
    assert fit["log2_n_star"] == pytest.approx(truth, abs=0.1)


def test_logistic_threshold_on_a_sharp_transition_and_when_censored():
    sizes = [100, 200, 400, 800, 1600, 3200] * 5
    sharp = logistic_threshold(sizes, [n <= 400 for n in sizes])
    assert 400 < sharp["n_star"] < 800  # between the last size always fitted and the first never
    from sklearn.linear_model import LogisticRegression  # the same penalised objective, a peer

    x = np.log2(sizes)[:, None]
    peer = LogisticRegression(C=100.0, tol=1e-10).fit(x, [n <= 400 for n in sizes])
    crossing = -peer.intercept_[0] / peer.coef_[0, 0]
    assert sharp["log2_n_star"] == pytest.approx(crossing, abs=1e-3)
    above = logistic_threshold(sizes, [True] * len(sizes))
    assert above["censored"] == "above" and above["n_star"] == 3200
    assert math.isnan(above["log2_n_star"])
    below = logistic_threshold(sizes, [False] * len(sizes))
    assert below["censored"] == "below" and below["n_star"] == 100
    rising = logistic_threshold(sizes, [n >= 800 for n in sizes])
    assert rising["censored"] == "no decline" and math.isnan(rising["n_star"])
    with pytest.raises(MemspaceError, match="positive"):
        logistic_threshold([0, 1], [True, False])


def test_calibration_error_on_a_worked_example():
    import torch

    from memspace.evaluation import classification_metrics, expected_calibration_error

    # four points: two at confidence 0.9 (one right), two at 0.6 (both right)
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 1])
    # bins of width 0.1: |0.5 − 0.9| · 2/4 + |1 − 0.6| · 2/4 = 0.4
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(0.4, rel=1e-12)
    metrics = classification_metrics(p.log(), y)
    assert metrics["accuracy"] == 0.75
    expected_nll = -(2 * math.log(0.6) + math.log(0.9) + math.log(0.1)) / 4
    assert metrics["nll"] == pytest.approx(expected_nll, rel=1e-12)
    with pytest.raises(MemspaceError, match="NaN or Inf"):
        classification_metrics(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
