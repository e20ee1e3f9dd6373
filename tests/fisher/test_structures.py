"""Diagonal and K-FAC structures against dense references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cases import make_case
from memspace.fisher import KFAC, FisherOperator
from memspace.fisher.reference import dense_fisher


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual", "regression", "layernorm"])
@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_diag_matches_reference(name, kind):
    case = make_case(name)
    ref = dense_fisher(case.model, case.inputs, case.targets, likelihood=case.likelihood, kind=kind)
    F = FisherOperator(
        case.model, (case.inputs, case.targets), kind=kind, likelihood=case.likelihood, batch_size=3
    )
    torch.testing.assert_close(F.diag(), ref.diagonal(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.trace(), ref.trace(), rtol=1e-10, atol=1e-13)


def test_diag_of_shared_weights_and_sequences():
    """A Linear applied twice (weight tying) and to [N, T, I] inputs: per-sample sums."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x):  # x: [N, T, 3]
            h = torch.tanh(self.inner(x))
            h = torch.tanh(self.inner(h))
            return self.head(h.mean(1))

    torch.manual_seed(0)
    model = Tied().double()
    X, y = torch.randn(6, 4, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    ref = dense_fisher(model, X, y)
    torch.testing.assert_close(FisherOperator(model, (X, y)).diag(), ref.diagonal())


def test_kfac_is_exact_for_one_sample_one_layer():
    """For one data point through one Linear layer, F = G ⊗ A exactly."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    X, y = torch.randn(1, 4, dtype=torch.float64), torch.tensor([1])
    ref = dense_fisher(model, X, y)
    kfac = KFAC(model, (X, y))
    torch.testing.assert_close(kfac.dense(), ref)
    torch.testing.assert_close(kfac.diag(), ref.diagonal())
    torch.testing.assert_close(kfac.trace(), ref.trace())
    torch.testing.assert_close(kfac.eigenvalues()[:3], torch.linalg.eigvalsh(ref).flip(0)[:3])
    eig = torch.linalg.eigvalsh(ref).clamp_min(0)
    torch.testing.assert_close(kfac.logdet(0.1), torch.log(eig + 0.1).sum())
    torch.testing.assert_close(kfac.effective_dimension(0.1), (eig / (eig + 0.1)).sum())


def test_kfac_factors_by_hand_and_block_structure():
    case = make_case("mlp")
    kfac = FisherOperator(case.model, (case.inputs, case.targets)).kfac()
    first = kfac.blocks[0]
    a_bar = torch.cat([case.inputs, torch.ones(11, 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(first.input_factor, a_bar.T @ a_bar / 11)
    # G of the last layer: the per-sample output Fisher Λ(p), averaged
    p = case.model(case.inputs).softmax(1).detach()
    lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    torch.testing.assert_close(kfac.blocks[1].grad_factor, lam.mean(0))
    dense = kfac.dense()
    n0 = sum(p.numel() for p in case.model[0].parameters())
    assert dense[:n0, n0:].abs().max() == 0  # block diagonal across layers
    torch.testing.assert_close(dense, dense.T)


def test_kfac_on_cnn_keeps_diagonal_trace_consistent_and_layernorm_falls_back():
    case = make_case("cnn")
    kfac = KFAC(case.model, (case.inputs, case.targets))
    torch.testing.assert_close(kfac.trace(), kfac.diag().sum())
    torch.testing.assert_close(kfac.dense().diagonal(), kfac.diag())
    ln = make_case("layernorm")
    kfac_ln = KFAC(ln.model, (ln.inputs, ln.targets))
    assert set(kfac_ln.fallback_diag) == {"1.weight", "1.bias"}
    exact = FisherOperator(ln.model, (ln.inputs, ln.targets)).diag()
    torch.testing.assert_close(kfac_ln.diag()[20:30], exact[20:30])  # LayerNorm entries exact


def test_a_layer_that_never_runs_has_zero_fisher_everywhere():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    model = WithUnused().double()
    X, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    F = FisherOperator(model, (X, y))
    v = torch.randn(F.shape[0], dtype=torch.float64)
    assert (F @ v)[8:].abs().max() == 0 and F.diag()[8:].abs().max() == 0
    kfac = KFAC(model, (X, y))
    assert kfac.diag()[8:].abs().max() == 0 and (kfac @ v)[8:].abs().max() == 0
    torch.testing.assert_close(
        F.diag()[:8], dense_fisher(model, X, y, names=["used.weight", "used.bias"]).diagonal()
    )


@pytest.mark.parametrize("shape", [(50, 7), (300, 256), (97, 600), (40, 1000)])
def test_the_blocked_gram_is_the_product_and_exactly_symmetric(shape):
    from memspace.fisher._statistics import gram

    rows = torch.randn(*shape, dtype=torch.float64)
    result = gram(rows)
    torch.testing.assert_close(result, rows.T @ rows, rtol=1e-12, atol=1e-12)
    assert torch.equal(result, result.T)


@pytest.mark.parametrize("bias", [True, False])
def test_input_moments_summed_in_chunks_are_the_whole_batch_moments(bias):
    """K-FAC's input moments added chunk by chunk into one factor equal Σ_n Σ_t ā āᵀ at once."""
    from memspace.fisher._statistics import call_input_moments
    from memspace.fisher._taps import LayerTap

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 140, 3, padding=1, bias=bias).double()  # I = 27 (+ 1): one block
    wide = nn.Conv2d(32, 8, 3, bias=bias).double()  # I = 288 (+ 1): two blocks, mirrored
    for layer, channels in ((conv, 3), (wide, 32)):
        x = torch.randn(13, channels, 6, 6, dtype=torch.float64)
        tap = LayerTap(layer, "weight", "bias" if bias else None, [0])
        tap.inputs.append(x)
        patches = nn.functional.unfold(x, 3, padding=layer.padding)  # [N, I, T]
        if bias:
            patches = torch.cat([patches, torch.ones_like(patches[:, :1])], 1)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        expected = rows.T @ rows
        for max_elements in (1 << 22, patches.shape[2] * patches.shape[1] * 2, 1):
            moments, positions = call_input_moments(tap, 0, max_elements=max_elements)
            assert positions == patches.shape[2]
            torch.testing.assert_close(moments, expected, rtol=1e-12, atol=1e-10)
            assert torch.equal(moments, moments.T)
