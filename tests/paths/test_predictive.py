"""The predictive path, its action and its exact least action (docs/theory.md §3.1)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from memspace import DataError, MemspaceError
from memspace.paths import (
    ResidualMLP,
    fisher_rao_distance,
    predictive_action,
    predictive_path,
    squared_fisher_rao_distance,
)


def _data(n=40, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(
        0, classes, (n,), generator=g
    )


def _mlp(depth=4, seed=0, **kw):
    torch.manual_seed(seed)
    return ResidualMLP(4, 5, depth, 3, **kw).double().eval()


def _arc_model(angles: list[float]) -> ResidualMLP:
    """Two classes, identity read-out, constant velocities.

    Every input's state x_l has logits (0, 2 log tan θ_l), i.e. the angle θ_l = atan2(√p₁, √p₀) on
    the quarter circle.
    """
    depth = len(angles) - 1
    model = ResidualMLP(2, 2, depth, 2).double().eval()
    logits = [torch.tensor([0.0, 2 * math.log(math.tan(a))], dtype=torch.float64) for a in angles]
    with torch.no_grad():
        model.stem.weight.zero_()
        model.stem.bias.copy_(logits[0])
        for l, block in enumerate(model.blocks):
            block.velocity[0].weight.zero_()
            block.velocity[0].bias.zero_()
            block.velocity[2].weight.zero_()
            block.velocity[2].bias.copy_((logits[l + 1] - logits[l]) * depth)
    model.head = nn.Identity()
    return model


PRIOR_ANGLE = math.pi / 4  # the uniform prior of two classes on the quarter circle


def _arc_path(angles: list[float], anchor: str):
    """The path of :func:`_arc_model` and its angles, the prior's first under ``anchor="prior"``."""
    result = predictive_path(_arc_model(angles), _data(d=2, classes=2), anchor=anchor)
    visited = ([PRIOR_ANGLE] if anchor == "prior" else []) + list(angles)
    return result, np.array(visited)


@pytest.mark.parametrize("anchor", ["prior", "stem"])
def test_equal_angular_steps_are_a_geodesic_at_constant_speed(anchor):
    # under the prior anchor the path's first step is the stem's, from π/4 to the first state
    if anchor == "prior":
        angles = list(PRIOR_ANGLE + 0.07 * np.arange(1, 10))
    else:
        angles = list(np.linspace(0.2, 1.3, 9))
    result, visited = _arc_path(angles, anchor)
    assert result.steps == len(visited) - 1
    assert result.ratio == pytest.approx(1.0, abs=1e-12)
    assert result.length == pytest.approx(result.endpoint_distance, abs=1e-12)
    span = visited[-1] - visited[0]
    assert result.endpoint_distance == pytest.approx(2 * span, abs=1e-12)  # d = 2|Δθ|
    np.testing.assert_allclose(result.speeds, 2 * span, rtol=1e-12)


@pytest.mark.parametrize("anchor", ["prior", "stem"])
def test_uneven_steps_give_the_closed_form_ratio(anchor):
    steps = np.array([0.05, 0.3, 0.1, 0.02, 0.2, 0.15]) / 2
    start = PRIOR_ANGLE if anchor == "prior" else 0.1
    angles = list(
        start + np.cumsum(steps)
        if anchor == "prior"
        else start + np.concatenate([[0], np.cumsum(steps)])
    )
    result, visited = _arc_path(angles, anchor)
    d = 2 * np.diff(visited)
    assert result.ratio == pytest.approx(len(d) * (d**2).sum() / d.sum() ** 2, rel=1e-12)
    assert result.detour_factor == pytest.approx(1.0, abs=1e-12)  # monotone on the arc
    assert result.unevenness == pytest.approx(result.ratio, rel=1e-12)


@pytest.mark.parametrize("anchor", ["prior", "stem"])
def test_a_path_that_turns_back_makes_a_detour(anchor):
    angles = [0.3, 0.9, 0.5]  # out and part of the way back (under the prior: from π/4 first)
    result, visited = _arc_path(angles, anchor)
    turns = np.abs(np.diff(visited)).sum()
    end = abs(visited[-1] - visited[0])
    assert result.detour == pytest.approx(turns / end, rel=1e-12)
    assert result.detour_factor == pytest.approx((turns / end) ** 2, rel=1e-12)  # one input
    assert result.unevenness * result.detour_factor == pytest.approx(result.ratio, rel=1e-12)


def test_distance_formula_against_arccos_form():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(200, 5, generator=g, dtype=torch.float64).log_softmax(1)
    logq = torch.randn(200, 5, generator=g, dtype=torch.float64).log_softmax(1)
    reference = 2 * torch.arccos((logp.exp() * logq.exp()).sqrt().sum(1))
    torch.testing.assert_close(fisher_rao_distance(logp, logq), reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        squared_fisher_rao_distance(logp, logq), reference**2, rtol=1e-10, atol=1e-12
    )


def test_squared_distance_has_a_finite_gradient_at_coincidence():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    value = squared_fisher_rao_distance(logits.log_softmax(1), logits.log_softmax(1)).sum()
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cauchy_schwarz_and_triangle_inequalities_per_point(seed):
    model = _mlp(depth=6, seed=seed)
    result = predictive_path(model, _data(seed=seed), points=True)
    pts = result.points
    assert np.all(pts["length"] ** 2 <= pts["action"] * (1 + 1e-12))
    assert np.all(pts["length"] >= pts["endpoint_distance"] * (1 - 1e-12))
    assert result.ratio >= 1 and result.detour >= 1 and result.unevenness >= 1
    assert result.action == pytest.approx(pts["action"].mean(), rel=1e-12)


def test_invariant_under_reparametrising_the_stream():
    """X ↦ M x with stem, velocities and head compensated: same function, same predictive path."""
    model = _mlp(depth=3, seed=1)
    X, y = _data()
    torch.manual_seed(5)
    M = torch.randn(5, 5, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    Minv = torch.linalg.inv(M)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.stem.weight.copy_(M @ model.stem.weight)
        other.stem.bias.copy_(M @ model.stem.bias)
        for old, new in zip(model.blocks, other.blocks):
            new.velocity[0].weight.copy_(old.velocity[0].weight @ Minv)
            new.velocity[2].weight.copy_(M @ old.velocity[2].weight)
            new.velocity[2].bias.copy_(M @ old.velocity[2].bias)
        other.head.weight.copy_(model.head.weight @ Minv)
    a, b = predictive_path(model, (X, y)), predictive_path(other, (X, y))
    assert b.action == pytest.approx(a.action, rel=1e-10)
    np.testing.assert_allclose(b.speeds, a.speeds, rtol=1e-10)
    np.testing.assert_allclose(b.lens_accuracy, a.lens_accuracy)


def _shared_velocity_model(depth: int) -> ResidualMLP:
    """One stem, head and velocity field at every depth: Euler discretisations of one flow."""
    reference = _mlp(depth=1, seed=4)
    model = _mlp(depth=depth, seed=4)
    with torch.no_grad():
        model.stem.load_state_dict(reference.stem.state_dict())
        model.head.load_state_dict(reference.head.state_dict())
        for block in model.blocks:
            block.velocity.load_state_dict(reference.blocks[0].velocity.state_dict())
    return model


def _infinitesimal_action(model: ResidualMLP, X: torch.Tensor) -> float:
    """H Σ_l (W v_l)ᵀ Λ(p_mid) (W v_l), Λ at the logits' midpoint of each step."""
    with torch.no_grad():
        states = model.stream(X)
        W, h = model.head.weight, model.step
        total = torch.zeros(X.shape[0], dtype=torch.float64)
        for a, b in zip(states[:-1], states[1:]):
            u = (b - a) / h @ W.T
            p = ((model.head(a) + model.head(b)) / 2).softmax(1)
            centred = u - (p * u).sum(1, keepdim=True)
            total += h * (p * centred**2).sum(1)
    return float(total.mean())


def test_infinitesimal_form_converges_at_second_order():
    X, y = _data()
    errors = []
    for depth in (8, 16, 32):
        model = _shared_velocity_model(depth)
        stem = predictive_path(model, (X, y), anchor="stem")  # the blocks' steps alone
        errors.append(abs(stem.action - _infinitesimal_action(model, X)))
    assert 3.0 < errors[0] / errors[1] < 5.0 and 3.0 < errors[1] / errors[2] < 5.0


def test_lens_accuracy_ends_at_the_model_accuracy():
    model = _mlp(depth=3)
    X, y = _data()
    result = predictive_path(model, (X, y), batch_size=7)
    assert result.lens_accuracy.shape == (4,)
    assert result.lens_accuracy[-1] == pytest.approx(
        float((model(X).argmax(1) == y).double().mean())
    )


def test_regularisers_equal_the_measured_action_on_the_batch():
    from memspace import ActionTerm

    model = _mlp(depth=5)
    X, y = _data()
    result = predictive_path(model, (X, y), batch_size=100)
    for name, expected in (
        ("predictive", result.action),
        ("predictive-excess", result.action - result.least_action),
    ):
        term = ActionTerm(name, model)
        with term.capture() as record:
            logits = model(X)
        assert float(term(record, logits)) == pytest.approx(expected, rel=1e-10)


def test_regression_uses_euclidean_distance_of_means():
    model = _mlp(depth=3)
    X = _data()[0]
    target = torch.zeros(X.shape[0], 3, dtype=torch.float64)
    result = predictive_path(model, (X, target), likelihood="regression", anchor="stem")
    with torch.no_grad():
        means = [model.head(s) for s in model.stream(X)]
    steps = torch.stack([(b - a).norm(dim=1) for a, b in zip(means[:-1], means[1:])], 1)
    assert result.length == pytest.approx(float(steps.sum(1).mean()), rel=1e-12)
    assert result.lens_accuracy is None
    assert float(predictive_action(means, likelihood="regression", anchor="stem")) == pytest.approx(
        result.action, rel=1e-12
    )
    # prior-anchored: the targets' mean is where the path starts (a step more, h = 1/(L+1))
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    anchored = predictive_path(model, (X, target), likelihood="regression", prior=mean)
    first = (means[0] - mean).norm(dim=1)
    assert anchored.length == pytest.approx(float((first + steps.sum(1)).mean()), rel=1e-12)
    assert anchored.least_action == pytest.approx(
        float((means[-1] - mean).norm(dim=1).pow(2).mean()), rel=1e-12
    )


class UserNet(nn.Module):
    def __init__(self, reference: ResidualMLP):
        super().__init__()
        self.embed = reference.stem
        self.layers = nn.ModuleList(reference.blocks)
        self.out = reference.head

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


def test_user_model_with_head_and_bad_input():
    model = _mlp(depth=3)
    X, y = _data()
    user = UserNet(model).eval()
    names = [f"layers.{i}" for i in range(3)]
    a = predictive_path(model, (X, y))
    b = predictive_path(user, (X, y), block_names=names, head="out")
    assert b.action == pytest.approx(a.action, rel=1e-14)
    with pytest.raises(MemspaceError, match="pass head="):
        predictive_path(user, (X, y), block_names=names)
    with pytest.raises(MemspaceError, match="no module named 'nothing'"):
        predictive_path(user, (X, y), block_names=names, head="nothing")
    with pytest.raises(MemspaceError, match="module embed maps .* must keep the stream's shape"):
        predictive_path(user, (X, y), block_names=["embed"], head="out")
    with pytest.raises(MemspaceError, match="between blocks layers.0 and layers.2"):
        predictive_path(user, (X, y), block_names=["layers.0", "layers.2"], head="out")
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.head.bias[0] = float("nan")
    with pytest.raises(DataError, match="NaN/Inf logits at state x_0"):
        predictive_path(broken, (X, y))


def test_prior_anchor_idle_blocks_give_l_plus_one_exactly():
    """THEORY v3 §3.1a: zero blocks, the stem does everything: one jump, then standing still."""
    torch.manual_seed(0)
    depth = 5
    model = ResidualMLP(4, 6, depth, 3, identity_init=True).double().eval()
    X = torch.randn(40, 4, dtype=torch.float64)
    path = predictive_path(model, (X, torch.zeros(40, dtype=torch.long)), anchor="prior")
    assert path.anchor == "prior" and path.steps == depth + 1
    assert path.ratio == pytest.approx(depth + 1, rel=1e-12)
    assert path.speeds[1:] == pytest.approx(np.zeros(depth), abs=1e-12)
    assert path.unevenness * path.detour_factor == pytest.approx(path.ratio, rel=1e-12)
    stem = predictive_path(model, (X, torch.zeros(len(X), dtype=torch.long)), anchor="stem")
    assert stem.least_action == pytest.approx(0.0, abs=1e-24)


def test_prior_anchor_closed_form_and_factors_on_a_trained_shape():
    torch.manual_seed(1)
    model = ResidualMLP(4, 6, 3, 3).double().eval()
    X = torch.randn(30, 4, dtype=torch.float64)
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    path = predictive_path(
        model, (X, torch.zeros(len(X), dtype=torch.long)), anchor="prior", prior=prior, points=True
    )
    probabilities = torch.from_numpy(path.points["probabilities"])  # [N, L+1, C]
    logs = [prior.log().expand(30, 3)] + [probabilities[:, l].log() for l in range(4)]
    d = torch.stack([fisher_rao_distance(a, b) for a, b in zip(logs[:-1], logs[1:])], 1)
    assert path.action == pytest.approx(float((4 * d.pow(2).sum(1)).mean()), rel=1e-10)
    end = fisher_rao_distance(logs[0], logs[-1])
    assert path.least_action == pytest.approx(float(end.pow(2).mean()), rel=1e-10)
    assert path.unevenness * path.detour_factor == pytest.approx(path.ratio, rel=1e-12)
    assert path.ratio >= 1 and path.detour_factor >= 1 and path.unevenness >= 1
    as_stem = predictive_path(model, (X, torch.zeros(len(X), dtype=torch.long)), anchor="stem")
    assert predictive_path(model, (X, torch.zeros(len(X), dtype=torch.long))).anchor == "prior"
    assert as_stem.anchor == "stem" and len(as_stem.speeds) == 3 and len(path.speeds) == 4


def test_a_bad_prior_or_anchor_is_refused():
    model = ResidualMLP(4, 6, 2, 3).eval()
    X = torch.randn(8, 4)
    with pytest.raises(MemspaceError, match="unknown anchor"):
        predictive_path(model, (X, torch.zeros(len(X), dtype=torch.long)), anchor="start")
    with pytest.raises(MemspaceError, match="sum to 1"):
        predictive_path(
            model,
            (X, torch.zeros(len(X), dtype=torch.long)),
            anchor="prior",
            prior=torch.tensor([0.5, 0.5, 0.5]),
        )
    with pytest.raises(MemspaceError, match="shape"):
        predictive_path(
            model,
            (X, torch.zeros(len(X), dtype=torch.long)),
            anchor="prior",
            prior=torch.tensor([0.5, 0.5]),
        )
    with pytest.raises(MemspaceError, match="targets' mean"):
        predictive_path(
            model,
            (X, torch.zeros(len(X), dtype=torch.long)),
            anchor="prior",
            likelihood="regression",
        )


def test_prior_anchored_regularisers_equal_the_measured_action():
    from memspace import ActionTerm

    model = _mlp(depth=4)
    X, y = _data()
    result = predictive_path(model, (X, y), batch_size=100, anchor="prior")
    for name, expected in (
        ("predictive", result.action),
        ("predictive-excess", result.action - result.least_action),
    ):
        term = ActionTerm(name, model, anchor="prior")
        with term.capture() as record:
            logits = model(X)
        assert float(term(record, logits)) == pytest.approx(expected, rel=1e-10)
