"""Fisher–Rao norm, Fisher distance and the Fisher arc length of training (docs/theory.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cases import make_case
from memspace import fisher_distance, fisher_rao_norm, trajectory_length
from memspace.fisher.reference import dense_fisher


def _bias_free_relu(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 6, bias=False),
        nn.ReLU(),
        nn.Linear(6, 5, bias=False),
        nn.ReLU(),
        nn.Linear(5, 3, bias=False),
    ).double()


def test_fisher_rao_norm_closed_form_for_bias_free_relu():
    model = _bias_free_relu()
    X, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    with torch.no_grad():
        f = model(X)
        p = f.softmax(1)
        quad = ((p * f * f).sum(1) - (p * f).sum(1) ** 2).mean()  # fᵀΛ(p)f
    assert fisher_rao_norm(model, (X, y)) == pytest.approx(9 * float(quad), rel=1e-10)


def test_fisher_rao_norm_is_invariant_under_node_rescaling():
    model = _bias_free_relu()
    X, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    before = fisher_rao_norm(model, (X, y))
    with torch.no_grad():
        model[0].weight[2] *= 7.0
        model[2].weight[:, 2] /= 7.0
        model[2].weight[1] *= 0.1
        model[4].weight[:, 1] /= 0.1
    assert fisher_rao_norm(model, (X, y)) == pytest.approx(before, rel=1e-10)


@pytest.mark.parametrize("name", ["residual", "cnn"])
def test_fisher_rao_norm_and_distance_match_dense(name):
    case = make_case(name)
    data = (case.inputs, case.targets)
    dense = dense_fisher(case.model, *data)
    theta = torch.cat([p.detach().flatten() for p in case.model.parameters()])
    assert fisher_rao_norm(case.model, data) == pytest.approx(
        float(theta @ dense @ theta), rel=1e-10
    )
    reference = {
        n: p.detach() + 0.1 * torch.randn_like(p) for n, p in case.model.named_parameters()
    }
    delta = theta - torch.cat([t.flatten() for t in reference.values()])
    assert fisher_distance(case.model, reference, data) == pytest.approx(
        float(delta @ dense @ delta), rel=1e-10
    )
    with pytest.raises(ValueError, match="no entry for parameter"):
        fisher_distance(case.model, {}, data)


def test_trajectory_length_on_a_straight_line_with_constant_metric(tmp_path):
    """Gaussian regression with a linear model has F = XᵀX/N everywhere: length = Σ|Δt|·‖d‖_F."""
    torch.manual_seed(0)
    X, Y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    factory = lambda: nn.Linear(3, 2).double()  # noqa: E731
    start = {n: p.detach() for n, p in factory().named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in start.items()}
    times = [0.0, 0.5, 1.5, 1.7]
    states = [{n: start[n] + t * direction[n] for n in start} for t in times]
    paths = []
    for i, state in enumerate(states):
        paths.append(tmp_path / f"step{i}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[-1]))
    result = trajectory_length(paths, factory, (X, Y), likelihood="regression")
    F = torch.kron(torch.eye(2, dtype=torch.float64), X.T @ X / 40)  # weight block (row-major)
    d_norm = (
        float(
            direction["weight"].flatten() @ F @ direction["weight"].flatten()
            + 2 * direction["bias"] @ (direction["weight"] @ X.mean(0))
            + direction["bias"] @ direction["bias"]
        )
        ** 0.5
    )
    np.testing.assert_allclose(result.step_lengths, np.diff(times) * d_norm, rtol=1e-10)
    assert result.length == pytest.approx(1.7 * d_norm, rel=1e-10)


def test_trajectory_length_refuses_corrupt_and_untrusted_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    factory = lambda: nn.Linear(3, 2).double()  # noqa: E731
    data = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot read checkpoint .*bad.safetensors"):
        trajectory_length([bad, bad], factory, data, likelihood="regression")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pickled = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, pickled)
    with pytest.raises(ValueError, match="cannot read checkpoint .*evil.pt"):
        trajectory_length([pickled, pickled], factory, data, likelihood="regression")
    with pytest.raises(ValueError, match="at least two"):
        trajectory_length([pickled], factory, data)
