"""Block sensitivity (J after the block) and the measured deletion KL (docs/theory.md §3.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memspace import MemspaceError
from memspace.paths import ResidualCNN, ResidualMLP, block_sensitivity, predictive_path
from model_zoo import EncoderClassifier


def _data(n=40, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(
        0, classes, (n,), generator=g
    )


def _finite_difference_sensitivity(model, x, block, layout_axis=0, eps=1e-5, output=lambda o: o):
    """s_l² by central differences.

    F(ε) with block l's displacement scaled by (1 + ε); df/dε = J_{l+1} h v_l, and s² = E (df/dε)ᵀ Λ
    (df/dε) / h².
    """

    def run(scale):
        handle = block.register_forward_hook(lambda m, args, out: args[0] + scale * (out - args[0]))
        try:
            with torch.no_grad():
                return output(model(x))
        finally:
            handle.remove()

    base = run(1.0)
    deriv = (run(1.0 + eps) - run(1.0 - eps)) / (2 * eps)
    p = base.softmax(1)
    centred = deriv - (p * deriv).sum(1, keepdim=True)
    return (p * centred**2).sum(1).mean()


def test_sensitivity_against_per_block_finite_differences():
    torch.manual_seed(0)
    model = ResidualMLP(4, 5, 4, 3).double().eval()
    X, y = _data()
    result = block_sensitivity(model, (X, y), batch_size=16)
    h = model.step
    for l, block in enumerate(model.blocks):
        expected = _finite_difference_sensitivity(model, X, block) / h**2
        assert result.sensitivity[l] ** 2 == pytest.approx(float(expected), rel=1e-7)


def test_sequence_first_transformer_blocks_match_batch_first():
    torch.manual_seed(3)
    a = EncoderClassifier(layers=3, batch_first=True).double().eval()
    b = EncoderClassifier(layers=3, batch_first=False).double().eval()
    b.load_state_dict(a.state_dict())
    X = torch.randn(6, 4, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    names = ["layers.0", "layers.1", "layers.2"]
    ra = block_sensitivity(a, (X, y), block_names=names)
    rb = block_sensitivity(b, (X.transpose(0, 1), y), block_names=names, sample_dim=1)
    np.testing.assert_allclose(rb.sensitivity, ra.sensitivity, rtol=1e-10)
    np.testing.assert_allclose(rb.euclidean_speeds, ra.euclidean_speeds, rtol=1e-10)
    np.testing.assert_allclose(rb.deletion_kl, ra.deletion_kl, rtol=1e-10)
    for l, name in enumerate(names):
        expected = _finite_difference_sensitivity(b, X.transpose(0, 1), b.layers[l]) * 9  # h = 1/3
        assert rb.sensitivity[l] ** 2 == pytest.approx(float(expected), rel=1e-6)
    pa = predictive_path(a, (X, y), block_names=names, head=a.readout)
    pb = predictive_path(b, (X.transpose(0, 1), y), block_names=names, head=b.readout, sample_dim=1)
    assert pb.action == pytest.approx(pa.action, rel=1e-12)


def test_linearised_deletion_kl_becomes_exact_as_h_shrinks():
    X, y = _data(n=60)
    errors = []
    torch.manual_seed(1)
    reference = ResidualMLP(4, 5, 1, 3).double().eval()
    for depth in (4, 16, 64):  # one flow (stem, head, velocity field), finer and finer steps
        model = ResidualMLP(4, 5, depth, 3).double().eval()
        with torch.no_grad():
            model.stem.load_state_dict(reference.stem.state_dict())
            model.head.load_state_dict(reference.head.state_dict())
            for block in model.blocks:
                block.velocity.load_state_dict(reference.blocks[0].velocity.state_dict())
        result = block_sensitivity(model, (X, y))
        errors.append(np.max(np.abs(result.linearised_kl / result.deletion_kl - 1)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05


def test_cnn_boundary_trace_and_identity_network():
    torch.manual_seed(0)
    model = ResidualCNN(1, 3, 2, 4, image_size=6).double().eval()
    X = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    result = block_sensitivity(model, (X, y))
    with torch.no_grad():
        states = model.stream(X)
        p = model(X).softmax(1)
    from torch.func import jacrev, vmap

    lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    jac = vmap(jacrev(lambda s: model.forward_from(2, s.unsqueeze(0)).squeeze(0)))(
        states[2]
    ).flatten(2)
    expected = torch.einsum("ncp,ncd,ndp->n", jac, lam, jac).mean()
    assert result.boundary["head_input"] == pytest.approx(float(expected), rel=1e-10)
    torch.manual_seed(0)
    identity = ResidualMLP(4, 5, 3, 3, identity_init=True).double().eval()
    still = block_sensitivity(identity, _data())
    assert (
        np.all(still.sensitivity == 0)
        and np.all(still.deletion_kl == 0)
        and still.kinetic_action == 0
    )


def test_a_stream_of_mixed_rows_is_refused_naming_the_block():
    torch.manual_seed(0)
    model = ResidualMLP(4, 5, 2, 3).double().eval()

    class RowStream(torch.nn.Module):
        """x [N, T, 4] → stem → blocks on [N·T, d] rows → mean over T → head."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            n, t, d = x.shape
            rows = self.inner.stem(x.reshape(n * t, d))
            for block in self.inner.blocks:
                rows = block(rows)
            return self.inner.head(rows.reshape(n, t, -1).mean(1))

    X = torch.randn(6, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    with pytest.raises(
        MemspaceError, match="residual block inner.blocks.0: no axis of its input indexes data"
    ):
        block_sensitivity(
            RowStream(model).eval(), (X, y), block_names=["inner.blocks.0", "inner.blocks.1"]
        )
