"""The literature's measures against hand-computed values on tiny networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from memspace import MemspaceError
from memspace.zoo.measures import (
    generalization_measures,
    is_literature_measure,
    margin,
    pac_bayes_sigma,
    path_norm,
    size_adjusted,
    size_unadjusted,
    weight_matrices,
)


def two_layer(w1, w2):
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1, dtype=torch.float64))
        net[1].weight.copy_(torch.tensor(w2, dtype=torch.float64))
    return net


def test_norms_path_norm_and_margin_by_hand():
    # W1 = diag(3, 1): ‖·‖₂² = 9, ‖·‖_F² = 10;  W2 = [[1, 0], [0, 2]]: ‖·‖₂² = 4, ‖·‖_F² = 5
    net = two_layer([[3.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 2.0]])
    init = two_layer([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    assert [name for name, _ in weight_matrices(net)] == ["0.weight", "1.weight"]
    # squared weights: diag(9, 1) then diag(1, 4); input 𝟙 → (9, 1) → (9, 4): path norm 13
    assert path_norm(net, (2,)) == 13.0
    # 20 points x = (t, 0), t = 1..20, all labelled 0: logits (3t, 0) → margins 3t; ⌊20/10⌋ = 2nd
    # smallest: 6
    X = torch.stack(
        [torch.arange(1.0, 21.0, dtype=torch.float64), torch.zeros(20, dtype=torch.float64)], 1
    )
    y = torch.zeros(20, dtype=torch.long)
    assert margin(net, (X, y)) == (6.0, 6.0)
    raw = generalization_measures(net, init, (X, y), pac_bayes=False, adjust=False)
    assert raw["PARAMS"] == 8 and raw["INVERSE_MARGIN"] == pytest.approx(1 / 36)
    assert raw["LOG_PROD_OF_SPEC"] == pytest.approx(math.log(9) + math.log(4))
    assert raw["LOG_PROD_OF_SPEC_OVER_MARGIN"] == pytest.approx(math.log(36) - 2 * math.log(6))
    assert raw["FRO_OVER_SPEC"] == pytest.approx(10 / 9 + 5 / 4)
    assert raw["LOG_SUM_OF_SPEC"] == pytest.approx(math.log(2) + math.log(36) / 2)
    assert raw["LOG_PROD_OF_FRO"] == pytest.approx(math.log(50))
    # W − W⁰: diag(2, 0) and diag(0, 1): Frobenius² 4 and 1, spectral² 4 and 1
    assert raw["FRO_DIST"] == 5 and raw["DIST_SPEC_INIT"] == pytest.approx(5)
    assert raw["LOG_SPEC_INIT_MAIN"] == pytest.approx(
        raw["LOG_PROD_OF_SPEC_OVER_MARGIN"] + math.log(4 / 9 + 1 / 4)
    )
    assert (
        raw["PARAM_NORM"] == 15
        and raw["L2"] == pytest.approx(math.sqrt(15))
        and raw["L2_DIST"] == pytest.approx(math.sqrt(5))
    )
    assert raw["PATH_NORM_OVER_MARGIN"] == pytest.approx(13 / 36)
    adjusted = generalization_measures(net, init, (X, y), pac_bayes=False)
    assert adjusted["PARAMS"] == pytest.approx(math.sqrt(8 / 20))
    assert adjusted["LOG_PROD_OF_FRO"] == pytest.approx(0.5 * (math.log(50) - math.log(20)))


def test_a_negative_tenth_percentile_margin_is_flagged():
    net = two_layer([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    X = torch.tensor([[1.0, 2.0]] * 10, dtype=torch.float64)  # logits (1, 2): class 0 has margin −1
    result = generalization_measures(
        net, net, (X, torch.zeros(10, dtype=torch.long)), pac_bayes=False
    )
    assert result["margin_signed"] == -1.0 and result["margin_flag"]


def separable_problem():
    """400 Gaussian points labelled by x₀ + 0.3 x₁ > 0.

    And a linear classifier that fits them all.
    """
    torch.manual_seed(0)
    X = torch.randn(400, 2, dtype=torch.float64)
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).long()
    net = nn.Sequential(nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-1.0, -0.3], [1.0, 0.3]]))
        net[0].bias.zero_()
    return X, y, net


def test_the_sigma_search_converges_and_restores_the_weights():
    X, y, net = separable_problem()
    before = [p.clone() for p in net.parameters()]
    for faithful in (True, False):
        for magnitude in (False, True):
            found = pac_bayes_sigma(
                net, (X, y), 1.0, faithful=faithful, magnitude_aware=magnitude, seed=1
            )
            assert found.converged and abs(found.deviation - 0.1) < 0.01 and 0 < found.sigma < 2
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    full = generalization_measures(net, net, (X, y), seed=1)
    assert full["PACBAYES_FLATNESS"] == pytest.approx(
        math.sqrt(1 / full["pacbayes_sigma"] ** 2 / 400)
    )
    # w = w⁰: the init terms reduce to log(m/σ) + 10 (and ¼ Σ log(ε²/ε²) = 0 for the magnitude-aware
    # one)
    assert full["PACBAYES_INIT"] == pytest.approx(
        math.sqrt((math.log(400 / full["pacbayes_sigma"]) + 10) / 400)
    )
    assert full["PACBAYES_MAG_INIT"] == pytest.approx(
        math.sqrt((math.log(400 / full["pacbayes_mag_sigma"]) + 10) / 400)
    )


def test_batchnorm_is_refused_by_name():
    with pytest.raises(MemspaceError, match="'1' is a BatchNorm"):
        weight_matrices(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)))


def test_the_worst_case_sharpness_search_converges_keeps_the_box_and_restores_the_weights():
    from memspace.zoo.measures import sharpness_alpha

    X, y, net = separable_problem()
    before = [p.clone() for p in net.parameters()]
    sizes = dict(iterations=15, restarts=3, eval_batches=4, ascent_steps=8, batch_size=400)
    worst = sharpness_alpha(net, (X, y), 1.0, seed=0, **sizes)
    assert worst.converged and abs(worst.deviation - 0.1) < 0.01
    # the worst case within a box of half-width α hurts at least as much as Gaussian noise of std α:
    # so the adversarial α is below the isotropic PAC-Bayes σ (clean mode: std σ)
    assert worst.alpha < pac_bayes_sigma(net, (X, y), 1.0, faithful=False).sigma
    # magnitude-aware boxes scale with |w|: here they only rotate the boundary a little (no
    # convergence
    # is promised; the search returns its last α and says whether |D − 0.1| < tolerance)
    magnitude = sharpness_alpha(net, (X, y), 1.0, magnitude_aware=True, **sizes)
    assert 0 < magnitude.alpha < 2 and magnitude.converged == (
        abs(magnitude.deviation - 0.1) < 0.01
    )
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    full = generalization_measures(net, net, (X, y), pac_bayes=False, sharpness=sizes, adjust=False)
    confidence = math.log(400 / 0.05) + 10
    assert full["SHARPNESS_INIT"] == pytest.approx(confidence)  # w = w⁰
    assert full["SHARPNESS_FLATNESS"] == pytest.approx(1 / full["sharpness_alpha"] ** 2)
    omega = 4  # the weight matrix's entries (biases are perturbed but not counted)
    expected_orig = (
        8 * 1.09 / 4 * math.log(2 * omega) / (4 * full["sharpness_alpha"] ** 2) + confidence
    )
    assert full["SHARPNESS_ORIG"] == pytest.approx(expected_orig)


class SequenceFirst(nn.Module):
    """Takes [T, N, d] (time first) and returns logits [N, 3]."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.inner = nn.Linear(d, 3)

    def forward(self, x):
        return self.inner(x).mean(0)


def test_models_the_norm_measures_do_not_cover_are_refused_by_name():
    from model_zoo import EncoderClassifier, RecurrentClassifier, TiedLinears, TupleOutput

    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    with pytest.raises(MemspaceError, match="in_proj_weight.*MultiheadAttention"):
        generalization_measures(
            EncoderClassifier(d=8),
            EncoderClassifier(d=8),
            (torch.randn(20, 5, 8), y),
            pac_bayes=False,
        )
    with pytest.raises(MemspaceError, match="weight_ih_l0.*LSTM"):
        generalization_measures(
            RecurrentClassifier(),
            RecurrentClassifier(),
            (torch.randn(20, 5, 3), y),
            pac_bayes=False,
        )
    with pytest.raises(MemspaceError, match="tied weight"):
        generalization_measures(TiedLinears(), TiedLinears(), (X, y), pac_bayes=False)
    with pytest.raises(MemspaceError, match=r"maps 20 inputs to tuple"):
        generalization_measures(TupleOutput(), TupleOutput(), (X, y), pac_bayes=False)
    with pytest.raises(MemspaceError, match="5 inputs along axis 0 and 20 labels"):
        generalization_measures(
            SequenceFirst(), SequenceFirst(), (torch.randn(5, 20, 4), y), pac_bayes=False
        )


def test_the_size_adjustment_by_hand_and_its_inverse():
    m = 400
    assert size_adjusted("LOG_PROD_OF_SPEC", 10.0, m) == pytest.approx(0.5 * (10 - math.log(400)))
    assert size_adjusted("fisher_trace", 16.0, m) == pytest.approx(0.2)
    assert size_adjusted("PATH_NORM", -16.0, m) == pytest.approx(-0.2)  # the sign is kept
    for name in ("LOG_SPEC_INIT_MAIN", "PACBAYES_MAG_FLATNESS", "predictive_action"):
        for value in (-3.5, 0.0, 2.25, 1e4):
            assert size_unadjusted(name, size_adjusted(name, value, m), m) == pytest.approx(value)
    with pytest.raises(MemspaceError, match="at least 1"):
        size_adjusted("PATH_NORM", 1.0, 0)
    assert is_literature_measure("PACBAYES_MAG_FLATNESS") and is_literature_measure("L2_DIST")
    assert not is_literature_measure("predictive_action")
