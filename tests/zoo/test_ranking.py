"""The evaluation statistics on hand-built examples, answers worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from memspace import MemspaceError
from memspace.zoo.ranking import (
    granulated_kendall,
    granulated_taus,
    hoeffding_weight,
    kendall_tau,
    pgdl_cmi,
    robust_sign_error,
    sign_error,
)


def test_kendall_tau_a_counts_ties_as_zero_without_correction():
    # pairs (1,2): +·+ ; (1,3): +·+ ; (2,3): +·− → (1 + 1 − 1)·2 ordered / (3·2) = 1/3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # μ tie on (1,2) counts 0: (0 + 1 + 1)·2 / 6 = 2/3; scipy's τ_b corrects: 2/√(2·3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    assert kendalltau([1, 1, 2], [1, 2, 3]).statistic == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau([1], [2]))
    with pytest.raises(MemspaceError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_granulated_kendall_with_and_without_a_missing_cell():
    # models (a, b) = (0,0), (0,1), (1,0), (1,1); μ = 1..4, g = 1, 2, 4, 3
    hp = {"a": [0, 0, 1, 1], "b": [0, 1, 0, 1]}
    psi_all, psi, used = granulated_kendall([1, 2, 3, 4], [1, 2, 4, 3], hp)
    # ψ_a: groups b=0 {μ 1<3, g 1<4: +1}, b=1 {μ 2<4, g 2<3: +1} → 1
    # ψ_b: groups a=0 {1<2, 1<2: +1}, a=1 {3<4, 4>3: −1} → 0;  Ψ = ½
    assert psi == {"a": 1.0, "b": 0.0} and psi_all == 0.5 and used == {"a": 2, "b": 2}
    # without model (1,1): each ψ has one group of two left (the singleton groups are skipped)
    psi_all, psi, used = granulated_kendall([1, 2, 3], [1, 2, 4], {"a": [0, 0, 1], "b": [0, 1, 0]})
    assert psi == {"a": 1.0, "b": 1.0} and used == {"a": 1, "b": 1} and psi_all == 1.0


def test_granulated_taus_are_the_groups_behind_psi():
    hp = {"a": [0, 0, 1, 1], "b": [0, 1, 0, 1]}
    taus = granulated_taus([1, 2, 3, 4], [1, 2, 4, 3], hp)
    # the worked example above: ψ_a's groups give +1, +1; ψ_b's +1 (a = 0) and −1 (a = 1)
    assert taus["a"].tolist() == [1.0, 1.0] and taus["b"].tolist() == [1.0, -1.0]
    # two seeds per configuration: a group holds both configurations' seeds (4 models)
    hp2 = {k: v + v for k, v in hp.items()}
    taus = granulated_taus([1, 2, 3, 4, 1.5, 2.5, 3.5, 4.5], [1, 2, 4, 3] * 2, hp2)
    assert len(taus["a"]) == 2 and all(len(t) for t in taus.values())
    psi, by, _ = granulated_kendall([1, 2, 3, 4, 1.5, 2.5, 3.5, 4.5], [1, 2, 4, 3] * 2, hp2)
    assert by == {k: pytest.approx(float(np.mean(v))) for k, v in taus.items()}


def grid3(gap_of):
    rows = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    hp = {"a": [r[0] for r in rows], "b": [r[1] for r in rows], "c": [r[2] for r in rows]}
    return hp, np.array([gap_of(*r) for r in rows], dtype=float)


def test_pgdl_cmi_on_a_worked_grid():
    # g = 10(2a + b) + c: conditioning on (a, b), a slice with different (a, b) on its two sides has
    # one
    # gap sign for all 4 pairs (I = 0, H = −log2(1 + 1e-12) ≈ −1.4e-12); the 4 slices with equal
    # sides hold
    # pairs over (c_i, c_j): two self-pairs (−,−), (0,1): gap −, (1,0): gap +.
    hp, g = grid3(lambda a, b, c: 10 * (2 * a + b) + c)
    tiny = -math.log2(1 + 1e-12)
    h_quarter = -(0.75 * math.log2(0.75 + 1e-12) + 0.25 * math.log2(0.25 + 1e-12))
    # μ = g: joint (−,−) ¾, (+,+) ¼ → I = H(¼) in bits
    _, table = pgdl_cmi(g, g, hp)
    expected = (
        4 * (-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))) / (4 * h_quarter + 12 * tiny)
    )
    assert (
        table[("a", "b")] == pytest.approx(expected, abs=1e-12)
        and table[("a", "b")] == table[("b", "a")]
    )
    # μ = −g: joint (−,−) ½, (−,+) ¼, (+,−) ¼ → I = ½ log2(8/9) + ¼ log2(4/3)·2 = ½ log2(32/27): not
    # symmetric in μ
    _, table = pgdl_cmi(-g, g, hp)
    assert table[("a", "b")] == pytest.approx(
        4 * 0.5 * math.log2(32 / 27) / (4 * h_quarter + 12 * tiny), abs=1e-12
    )
    assert pgdl_cmi(np.ones(8), g, hp)[0] == 0.0  # a constant measure carries no information


def test_pgdl_cmi_with_two_hyperparameters_is_minus_zero_and_refuses_bad_grids():
    # two hyperparameters, one model per cell: every slice holds one pair → 0 / (−tiny) = −0.0
    score, _ = pgdl_cmi([1, 2, 3, 4], [1, 2, 4, 3], {"a": [0, 0, 1, 1], "b": [0, 1, 0, 1]})
    assert score == 0.0 and math.copysign(1.0, score) == -1.0
    hp, g = grid3(lambda a, b, c: a + b + c)
    with pytest.raises(MemspaceError, match="not complete"):
        pgdl_cmi(g[:-1], g[:-1], {k: v[:-1] for k, v in hp.items()})
    with pytest.raises(MemspaceError, match="not unique"):
        pgdl_cmi(np.r_[g, 0.0], np.r_[g, 0.0], {k: [*v, 0] for k, v in hp.items()})
    score, _ = pgdl_cmi(g[:-1], g[:-1], {k: v[:-1] for k, v in hp.items()}, faithful=False)
    assert 0 <= score <= 1 + 1e-9
    with pytest.raises(MemspaceError, match="at least two"):
        pgdl_cmi([1, 2], [1, 2], {"a": [0, 1]})


def test_hoeffding_weights_match_the_reference_table():
    # n = 10⁴, s = 0 (SPECS.md §3.3)
    deltas = [0.0, 0.01, 0.02, 0.03, 0.04, 0.06]
    expected = [0.0, 0.0, 0.031921, 0.456058, 0.498659, 0.5]
    assert hoeffding_weight(np.array(deltas)) == pytest.approx(expected, abs=1e-6)
    assert hoeffding_weight(0.0196) < 1e-3 and hoeffding_weight(0.0197) > 0
    assert hoeffding_weight(0.03, shift=0.01) == pytest.approx(hoeffding_weight(0.02))
    assert (
        sign_error(1, 2, 1, 2) == 0
        and sign_error(1, 2, 2, 1) == 1
        and sign_error(1, 1, 1, 2) == 0.5
    )


def test_robust_sign_error_environments_by_hand():
    # two configurations (a = 0, 1), two seeds each; g = .1, .2 | .3, .05 and μ = 1, 2 | 3, 4
    mu, g = [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.05]
    hp, seeds = {"a": [0, 0, 1, 1], "b": [5, 5, 5, 5]}, [0, 1, 0, 1]
    # unweighted: cross pairs (0,2) agree 0, (0,3) disagree 1, (1,2) 0, (1,3) 1 → loss ½; ESS = 4²/4
    # = 4
    result = robust_sign_error(mu, g, hp, seeds=seeds, filter_noise=False, min_ess=4)
    assert [
        (e["hyperparameter"], e["v1"], e["v2"], e["loss"], e["ess"], e["pairs"])
        for e in result.environments
    ] == [("a", 0, 1, 0.5, 4.0, 4), ("a", 1, 0, 0.5, 4.0, 4)]
    assert (
        result.summary["all"]["mean"] == result.summary["a"]["max"] == 0.5
        and result.summary["b"]["count"] == 0
    )
    # A step at 0.5
    assert result.summary["all"]["cdf"][49] == 1.0 and result.summary["all"]["cdf"][48] == 0.0
    # Hoeffding weights: |Δg| = .2, .05, .1, .15 → w = .5, .5 − (1 − (1 − 2e^{−12.5})²), .5, .5
    w = hoeffding_weight(np.array([0.2, 0.05, 0.1, 0.15]))
    weighted = robust_sign_error(mu, g, hp, min_ess=3.9)
    loss = (w[1] + w[3]) / w.sum()
    assert weighted.environments[0]["loss"] == pytest.approx(loss, abs=1e-15)
    assert weighted.environments[0]["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    dropped = robust_sign_error(mu, g, hp)  # min_ess = 12 > 4
    assert (
        dropped.environments == []
        and dropped.dropped == 2
        and math.isnan(dropped.summary["all"]["mean"])
    )
