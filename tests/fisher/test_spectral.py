"""Trace, eigenpairs, spectral density, log-det and effective dimension."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cases import make_case
from memspace.fisher import FisherOperator, hutchpp, stochastic_lanczos_quadrature


@pytest.fixture(scope="module")
def fisher_and_dense():
    case = make_case("residual")
    F = FisherOperator(case.model, (case.inputs, case.targets))
    return F, F.dense()


def test_hutchpp_exact_when_budget_covers_rank(fisher_and_dense):
    F, dense = fisher_and_dense
    rank = int(torch.linalg.matrix_rank(dense, hermitian=True))
    estimate = F.trace(method="hutchpp", num_matvecs=3 * (rank + 2))
    torch.testing.assert_close(estimate, dense.trace(), rtol=1e-8, atol=1e-10)


def test_hutchpp_converges_on_a_full_rank_matrix():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    matrix = basis @ np.diag(1.0 / np.arange(1, 201) ** 1.5) @ basis.T
    errors = [
        np.mean(
            [
                abs(hutchpp(lambda v: matrix @ v, 200, m, seed=s) / np.trace(matrix) - 1)
                for s in range(10)
            ]
        )
        for m in (12, 48, 120)
    ]
    assert errors[2] < errors[0] / 4 and errors[2] < 0.01


def test_eigh_top_k(fisher_and_dense):
    F, dense = fisher_and_dense
    values, vectors = F.eigh(4)
    exact = torch.linalg.eigvalsh(dense).flip(0)[:4]
    torch.testing.assert_close(values, exact, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(dense @ vectors, vectors * values, rtol=1e-6, atol=1e-8)


def test_logdet_and_effective_dimension_dense_and_slq(fisher_and_dense):
    F, dense = fisher_and_dense
    lam = torch.linalg.eigvalsh(dense).clamp_min(0)
    torch.testing.assert_close(F.logdet(1e-2, method="dense"), torch.log(lam + 1e-2).sum())
    torch.testing.assert_close(
        F.effective_dimension(1e-2, method="dense"), (lam / (lam + 1e-2)).sum()
    )
    # SLQ with as many steps as the dimension is exact up to the probe average
    slq = F.logdet(1e-2, method="slq", num_probes=30, steps=F.shape[0])
    assert abs(slq.item() / torch.log(lam + 1e-2).sum().item() - 1) < 0.05
    d_slq = F.effective_dimension(1e-2, method="slq", num_probes=30, steps=F.shape[0])
    assert abs(d_slq.item() - (lam / (lam + 1e-2)).sum().item()) < 0.1 * F.shape[0] ** 0.5


def test_slq_density_and_moments():
    rng = np.random.default_rng(1)
    values = np.concatenate([np.full(80, 0.1), np.full(20, 5.0)])
    basis, _ = np.linalg.qr(rng.standard_normal((100, 100)))
    matrix = basis @ np.diag(values) @ basis.T
    density = stochastic_lanczos_quadrature(
        lambda v: matrix @ v, 100, num_probes=20, steps=30, seed=0
    )
    assert abs(density.spectral_sum(lambda t: t) / values.sum() - 1) < 0.1
    grid = np.linspace(-1, 6, 2000)
    curve = density.density(grid, sigma=0.05)
    assert abs(np.trapezoid(curve, grid) - 1) < 1e-3
    mass_low = np.trapezoid(curve[grid < 2.5], grid[grid < 2.5])
    assert abs(mass_low - 0.8) < 0.1
    assert density.nodes[0].min() > 0.09 and density.nodes[0].max() < 5.01


def test_dense_refuses_over_the_memory_limit():
    case = make_case("mlp")
    F = FisherOperator(case.model, (case.inputs, case.targets), max_dense_bytes=1000)
    with pytest.raises(
        ValueError, match=r"51×51 = 20.3 KiB, over the limit of 1000 bytes \(max_dense_bytes\)"
    ):
        F.dense()


def test_lanczos_that_cannot_converge_stops_with_a_clear_error():
    """A tolerance below the products' noise would let ARPACK restart for hours.

    A bound stops it.
    """
    import numpy as np

    from memspace import MemspaceError
    from memspace.fisher.spectral import top_eigenpairs

    rng = np.random.default_rng(0)
    diagonal = np.linspace(1.0, 1.001, 200)  # clustered, and every product carries 1e-3 noise

    def noisy(v):
        return diagonal * v + 1e-3 * rng.standard_normal(v.shape) * np.linalg.norm(v)

    with pytest.raises(
        MemspaceError, match="Lanczos found .* of the top 3 eigenvalues .* in 5 restarts"
    ):
        top_eigenpairs(noisy, 200, 3, tol=1e-12, max_restarts=5)
