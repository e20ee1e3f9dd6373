"""EKFAC against closed forms and curvlinops.

Its eigenvalues are the exact Fisher's diagonal in the Kronecker eigenbasis (closed form against
the dense true Fisher), its trace is the exact trace, it is never farther from F than K-FAC, its
inverse product solves (F_EKFAC + δI) x = v, and it equals curvlinops' EKFAC.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cases import make_case
from memspace.fisher import EKFAC, KFAC, FisherOperator

NAMES = ["mlp", "cnn", "residual", "layernorm"]


def _block_indices(ekfac, block) -> torch.Tensor:
    """Flat parameter indices of the stacked [W, b] in row-major [O, I'] order."""
    offsets = dict(
        zip(ekfac.space.names, torch.cumsum(torch.tensor([0, *ekfac.space.sizes[:-1]]), 0).tolist())
    )
    out = block.grad_basis.shape[0]
    columns = []
    if block.weight_name is not None:
        per_row = ekfac.space.sizes[ekfac.space.names.index(block.weight_name)] // out
        columns.append(
            offsets[block.weight_name]
            + torch.arange(out)[:, None] * per_row
            + torch.arange(per_row)
        )
    if block.bias_name is not None:
        columns.append(offsets[block.bias_name] + torch.arange(out)[:, None])
    return torch.cat(columns, 1).flatten()


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    case = make_case(request.param)
    F = FisherOperator(case.model, (case.inputs, case.targets), batch_size=4)
    return case, F, F.ekfac(), F.dense()


def test_eigenvalues_are_the_exact_diagonal_in_the_kronecker_eigenbasis(built):
    _, _, ekfac, dense = built
    assert ekfac.blocks
    for block in ekfac.blocks:
        idx = _block_indices(ekfac, block)
        basis = torch.kron(block.grad_basis, block.input_basis)
        exact = (basis.T @ dense[idx][:, idx] @ basis).diagonal().reshape(block.eigenvalues.shape)
        torch.testing.assert_close(block.eigenvalues, exact, rtol=1e-10, atol=1e-13)


def test_trace_is_exact_and_ekfac_is_never_farther_from_f_than_kfac(built):
    _, F, ekfac, dense = built
    torch.testing.assert_close(ekfac.trace(), F.trace(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(ekfac.diag().sum(), F.trace(), rtol=1e-10, atol=1e-13)
    approx = ekfac.dense()
    torch.testing.assert_close(approx, approx.T, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(approx).flip(0), ekfac.eigenvalues(), rtol=1e-8, atol=1e-12
    )
    torch.testing.assert_close(ekfac.diag(), approx.diagonal(), rtol=1e-10, atol=1e-13)
    assert (approx - dense).norm() <= (F.kfac().dense() - dense).norm() + 1e-12


def test_inverse_product_solves_the_damped_system(built):
    _, _, ekfac, _ = built
    v = torch.randn(
        ekfac.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    damping = 1e-3
    x = ekfac.inverse_mv(v, damping)
    torch.testing.assert_close(ekfac @ x + damping * x, v, rtol=1e-8, atol=1e-10)
    expected = torch.linalg.solve(
        ekfac.dense() + damping * torch.eye(len(v), dtype=torch.float64), v
    )
    torch.testing.assert_close(x, expected, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="damping must be positive"):
        ekfac.inverse_mv(v, 0.0)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_equals_curvlinops_ekfac_and_its_inverse(name):
    curvlinops = pytest.importorskip("curvlinops")
    case = make_case(name)
    params = list(case.model.parameters())
    batches = [(case.inputs[:4], case.targets[:4]), (case.inputs[4:], case.targets[4:])]
    peer = curvlinops.EKFACLinearOperator(
        case.model,
        nn.CrossEntropyLoss(),
        params,
        batches,
        fisher_type="type-2",
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    ours = EKFAC(case.model, (case.inputs, case.targets), batch_size=4)
    eye = torch.eye(ours.space.numel, dtype=torch.float64)
    theirs = torch.stack([peer @ eye[:, j] for j in range(ours.space.numel)], 1)
    torch.testing.assert_close(ours.dense(), theirs, rtol=1e-9, atol=1e-12)
    damping = 1e-2
    inverse = curvlinops.KFACInverseLinearOperator(peer, damping=damping, use_exact_damping=True)
    v = torch.randn(
        ours.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(ours.inverse_mv(v, damping), inverse @ v, rtol=1e-8, atol=1e-10)


def test_mc_and_empirical_kinds_build_and_keep_the_trace_identity():
    case = make_case("mlp")
    for kind in ("mc", "empirical"):
        F = FisherOperator(case.model, (case.inputs, case.targets), kind=kind, batch_size=4)
        torch.testing.assert_close(F.ekfac().trace(), F.trace(), rtol=1e-10, atol=1e-13)
        # The same options, built anew
        built = KFAC(case.model, (case.inputs, case.targets), kind=kind, batch_size=4)
        torch.testing.assert_close(built.dense(), F.kfac().dense(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_low_memory_ekfac_equals_the_fast_one(name):
    """memory="low" holds for both EKFAC passes (K-FAC's factors, then the eigenvalues).

    With the same result.
    """
    case = make_case(name)
    fast = EKFAC(case.model, (case.inputs, case.targets), kind="mc", mc_samples=2, batch_size=8)
    low = EKFAC(
        case.model, (case.inputs, case.targets), kind="mc", mc_samples=2, batch_size=8, memory="low"
    )
    assert low.parts.collector.memory == "low" and fast.parts.collector.memory == "fast"
    torch.testing.assert_close(low.eigenvalues(), fast.eigenvalues(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(low.dense(), fast.dense(), rtol=1e-10, atol=1e-13)
