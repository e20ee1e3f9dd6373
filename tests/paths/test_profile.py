"""The path profile: Fisher speeds, action and length over depth (THEORY.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from memspace.paths import ResidualBlock, ResidualCNN, ResidualMLP, ResidualPathModel, action_and_length, path_profile


def _data(n=40, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _mlp(depth=4, seed=0, **kw):
    torch.manual_seed(seed)
    return ResidualMLP(4, 5, depth, 3, **kw).double().eval()


def test_identity_network_has_zero_speed_and_action():
    profile = path_profile(_mlp(identity_init=True), _data())
    assert np.all(profile.speeds == 0) and profile.action == 0 and profile.length == 0
    assert profile.boundary["stem_output"] > 0  # the boundary maps still carry the metric


def _kl_speed(model, x, layer, eps):
    """(2/ε²) E_x KL(p(·|x_l) ‖ p(·|x_l + ε v_l))."""
    with torch.no_grad():
        states = model.stream(x)
        v = (states[layer + 1] - states[layer]) / model.step
        logp = model.forward_from(layer, states[layer]).log_softmax(1)
        logq = model.forward_from(layer, states[layer] + eps * v).log_softmax(1)
        return float(2 / eps**2 * (logp.exp() * (logp - logq)).sum(1).mean())


def test_fisher_speed_is_the_kl_second_order_rate():
    model = _mlp()
    X, y = _data()
    profile = path_profile(model, (X, y), batch_size=16)
    for layer in range(model.depth):
        assert _kl_speed(model, X, layer, 1e-4) == pytest.approx(profile.fisher_speeds[layer] ** 2, rel=1e-3)


def test_fisher_speed_matches_dense_jacobian_reference():
    model = _mlp(depth=3)
    X, y = _data()
    profile = path_profile(model, (X, y))
    with torch.no_grad():
        states = model.stream(X)
        p = model(X).softmax(1)
    lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    for layer in range(3):
        jac = vmap(jacrev(lambda s: model.forward_from(layer, s.unsqueeze(0)).squeeze(0)))(states[layer])
        jv = torch.einsum("ncd,nd->nc", jac, (states[layer + 1] - states[layer]) * 3)
        expected = torch.einsum("nc,ncd,nd->n", jv, lam, jv).mean()
        assert profile.fisher_speeds[layer] ** 2 == pytest.approx(float(expected), rel=1e-10)


def test_cauchy_schwarz_and_equality_at_constant_speed():
    a, c = action_and_length([1.0, 2.0, 3.0], 1 / 3)
    assert c**2 <= a and a == pytest.approx(14 / 3)
    a, c = action_and_length([2.0] * 5, 1 / 5)
    assert a == pytest.approx(c**2)
    profile = path_profile(_mlp(depth=6, seed=3), _data())
    assert profile.length**2 <= profile.action + 1e-12 and profile.gap >= 0


class LinearFlow(ResidualPathModel):
    """Linear stem → L blocks v(x) = B x with nilpotent B → linear head."""

    def __init__(self, depth: int, nilpotent: torch.Tensor):
        super().__init__()
        d = nilpotent.shape[0]
        self.stem = nn.Linear(4, d)
        velocity = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            velocity.weight.copy_(nilpotent)
        self.blocks = nn.ModuleList(ResidualBlock(velocity, 1 / depth) for _ in range(depth))
        self.head = nn.Linear(d, 3)


def test_linear_flow_closed_form_and_constant_speed():
    """v = Bx with B² = 0: x_l = (I + lhB) x_0, J_l v_l = W B x_0 for every l (constant speed)."""
    torch.manual_seed(0)
    nilpotent = torch.triu(torch.randn(5, 5, dtype=torch.float64), diagonal=1)
    nilpotent[:, :3] = 0
    nilpotent[3:, :] = 0
    assert torch.allclose(nilpotent @ nilpotent, torch.zeros(5, 5, dtype=torch.float64))
    model = LinearFlow(4, nilpotent).double().eval()
    nilpotent = model.blocks[0].velocity.weight.detach()  # as stored (float32-rounded on creation)
    X, y = _data()
    profile = path_profile(model, (X, y))
    with torch.no_grad():
        x0 = model.stem(X)
        u = x0 @ nilpotent.T @ model.head.weight.T
        p = model(X).softmax(1)
        centred = u - (p * u).sum(1, keepdim=True)  # uᵀΛ(p)u = Σ_c p_c (u_c − ū)², stable
        expected = (p * centred**2).sum(1).mean()
    np.testing.assert_allclose(profile.fisher_speeds**2, float(expected), rtol=1e-10)
    assert profile.gap == pytest.approx(0, abs=1e-12)
    euclid = path_profile(model, (X, y), metric="euclidean")
    np.testing.assert_allclose(euclid.speeds**2, float((x0 @ nilpotent.T).pow(2).sum(1).mean()), rtol=1e-10)
    assert euclid.gap == pytest.approx(0, abs=1e-12)


def test_fisher_action_invariant_under_hidden_reparametrisation_euclidean_not():
    """x ↦ M x with stem, velocities and head compensated: same function, same Fisher speeds."""
    model = _mlp(depth=3, seed=1)
    X, y = _data()
    torch.manual_seed(5)
    M = torch.randn(5, 5, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    Minv = torch.linalg.inv(M)
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.stem.weight.copy_(M @ model.stem.weight)
        other.stem.bias.copy_(M @ model.stem.bias)
        for old, new in zip(model.blocks, other.blocks):
            new.velocity[0].weight.copy_(old.velocity[0].weight @ Minv)
            new.velocity[2].weight.copy_(M @ old.velocity[2].weight)
            new.velocity[2].bias.copy_(M @ old.velocity[2].bias)
        other.head.weight.copy_(model.head.weight @ Minv)
    torch.testing.assert_close(other(X), model(X))
    before, after = path_profile(model, (X, y)), path_profile(other, (X, y))
    np.testing.assert_allclose(after.fisher_speeds, before.fisher_speeds, rtol=1e-9)
    assert after.action == pytest.approx(before.action, rel=1e-9)
    assert abs(after.euclidean_speeds[0] / before.euclidean_speeds[0] - 1) > 0.1


def test_monte_carlo_profile_agrees_in_expectation():
    model = _mlp(seed=2)
    X, y = _data(n=60)
    exact = path_profile(model, (X, y))
    mc = np.mean([path_profile(model, (X, y), kind="mc", seed=s).fisher_speeds ** 2 for s in range(200)], axis=0)
    np.testing.assert_allclose(mc, exact.fisher_speeds**2, rtol=0.1)
    many = path_profile(model, (X, y), kind="mc", mc_samples=2000, seed=0).fisher_speeds ** 2
    np.testing.assert_allclose(many, exact.fisher_speeds**2, rtol=0.05)


class UserNet(nn.Module):
    """A user's own residual network: blocks are named modules with the skip inside."""

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


def test_adapter_on_a_user_model_matches_the_builtin():
    model = _mlp(depth=3)
    X, y = _data()
    user = UserNet(model).eval()
    names = [f"layers.{i}" for i in range(3)]
    a, b = path_profile(model, (X, y)), path_profile(user, (X, y), block_names=names)
    np.testing.assert_allclose(b.fisher_speeds, a.fisher_speeds)
    np.testing.assert_allclose(b.metric_trace, a.metric_trace)
    with pytest.raises(ValueError, match="pass block_names"):
        path_profile(user, (X, y))
    with pytest.raises(ValueError, match="no module named 'layers.9'"):
        path_profile(user, (X, y), block_names=["layers.9"])
    with pytest.raises(ValueError, match="must keep the stream's shape"):
        path_profile(user, (X, y), block_names=["embed"])


def test_cnn_profile_and_metric_trace_against_dense():
    torch.manual_seed(0)
    model = ResidualCNN(1, 3, 2, 4, image_size=6).double().eval()
    X = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    profile = path_profile(model, (X, y))
    with torch.no_grad():
        states = model.stream(X)
        p = model(X).softmax(1)
    lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    jac = vmap(jacrev(lambda s: model.forward_from(2, s.unsqueeze(0)).squeeze(0)))(states[2]).flatten(2)
    expected_trace = torch.einsum("ncp,ncd,ndp->n", jac, lam, jac).mean()
    assert profile.boundary["head_input"] == pytest.approx(float(expected_trace), rel=1e-10)
    assert np.all(profile.fisher_speeds > 0)


def test_pointwise_speeds_average_to_the_profile():
    from memspace.paths import pointwise_speeds

    model = _mlp(depth=3)
    X, y = _data()
    speeds, states = pointwise_speeds(model, X, batch_size=7)
    assert speeds.shape == (40, 3) and states.shape == (4, 40, 5)
    np.testing.assert_allclose((speeds**2).mean(0), path_profile(model, (X, y)).fisher_speeds ** 2, rtol=1e-10)
    np.testing.assert_allclose(states[-1], model.stream(X)[-1].detach().numpy())
