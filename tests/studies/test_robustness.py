"""Robustness: the re-initialization protocol's exact cases, E KL ≈ (σ²/2) tr F by Monte Carlo.

Thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memspace import ResidualMLP, fit
from memspace.studies.robustness import classify_layers, layer_units, reinitialization, weight_noise


def blobs(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    X = torch.randn(n, 4, generator=g) * 0.7 + torch.nn.functional.one_hot(y, 4).double()[:, :4] * 2
    return X, y


@pytest.fixture(scope="module")
def trained():
    """A residual MLP whose block 1 never trains (frozen).

    With its initial state and epoch-2 state.
    """
    torch.manual_seed(0)
    X, y = blobs()
    model = ResidualMLP(4, 8, 3, 3).double()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for p in model.blocks[1].parameters():
        p.requires_grad_(False)
    early = fit(model, (X, y), epochs=2, lr=1e-2, progress=False).model
    at_two = {k: v.detach().clone() for k, v in early.state_dict().items()}
    final = fit(model, (X, y), epochs=8, lr=1e-2, progress=False).model.state_dict()
    return initial, at_two, {k: v.detach().clone() for k, v in final.items()}, blobs(300, seed=1)


def factory(seed=0):
    def make():
        return ResidualMLP(4, 8, 3, 3).double()

    return make


def test_reset_to_the_final_state_changes_nothing_and_a_frozen_layer_is_robust(trained):
    initial, at_two, final, test = trained
    result = reinitialization(
        factory(), final, {"0": initial, "2": at_two, "final": final}, test, rerandomize_seeds=[5]
    )
    assert result.layers == ["stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert np.all(result.error[:, result.columns.index("final")] == result.trained_error)
    frozen = result.layers.index("blocks.1")
    assert result.error[frozen, result.columns.index("0")] == result.trained_error
    assert result.distance_l2[frozen] == 0 and result.distance_linf[frozen] == 0
    assert result.labels[frozen] == "robust"
    assert result.distance_l2[result.layers.index("stem")] > 0


def test_rerandomizing_with_the_init_seed_is_resetting_to_initialisation(trained):
    initial, _, final, test = trained
    torch.manual_seed(0)  # the seed the fixture built the model under
    result = reinitialization(factory(), final, {"0": initial}, test, rerandomize_seeds=[0])
    assert np.array_equal(result.error[:, 0], result.error[:, 1])
    assert np.array_equal(result.loss[:, 0], result.loss[:, 1])


def test_layer_thresholds_of_the_protocol():
    labels = classify_layers([0.055, 0.07, 0.85, 0.95], trained_error=0.05, chance_error=0.9)
    assert labels == ["robust", "intermediate", "critical", "critical"]
    with pytest.raises(ValueError, match="no module named 'nope'"):
        layer_units(ResidualMLP(4, 8, 3, 3), ["nope"])


def test_weight_noise_kl_matches_half_sigma_squared_trace_within_monte_carlo_error(trained):
    _, _, final, (X, y) = trained
    model = ResidualMLP(4, 8, 3, 3).double()
    model.load_state_dict(final)
    model.eval()
    result = weight_noise(model, (X[:100], y[:100]), sigmas=[1e-3, 1e-2, 1.0], samples=160, seed=0)
    small = 0
    for i, name in enumerate(result.layers):
        if result.fisher_trace[i] == 0:  # the frozen block still has gradients: tr F > 0 everywhere
            continue
        gap = abs(result.measured[i, small] - result.predicted[i, small])
        assert gap <= 3 * result.stderr[i, small] + 1e-3 * result.predicted[i, small], name
        # paired with the same draws, ½ δᵀFδ is the KL up to higher orders: far inside the
        # Monte-Carlo error
        for j in (0, 1):
            assert result.measured[i, j] / result.paired[i, j] == pytest.approx(1.0, abs=5e-3), name
    assert result.layers[-1] == "all"
    assert result.fisher_trace[-1] == pytest.approx(result.fisher_trace[:-1].sum(), rel=1e-10)
    assert result.breakdown_sigma[-1] == 1.0  # the quadratic prediction fails at σ = 1, not before


def test_the_whole_network_trace_is_the_fisher_trace(trained):
    from memspace import FisherOperator

    _, _, final, (X, y) = trained
    model = ResidualMLP(4, 8, 3, 3).double()
    model.load_state_dict(final)
    model.eval()
    result = weight_noise(model, (X[:50], y[:50]), sigmas=[1e-3], samples=2)
    assert result.fisher_trace[-1] == pytest.approx(
        float(FisherOperator(model, (X[:50], y[:50])).trace()), rel=1e-10
    )


def test_tied_weights_and_non_logit_outputs_are_refused():
    from memspace import MemspaceError
    from model_zoo import TiedLinears, TupleOutput

    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    with pytest.raises(MemspaceError, match="tied weight"):
        layer_units(TiedLinears())
    with pytest.raises(MemspaceError, match="maps 20 inputs to tuple"):
        weight_noise(TupleOutput(), (X, y), sigmas=[1e-3], samples=2)
