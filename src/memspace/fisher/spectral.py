"""Matrix-free spectral tools for a symmetric PSD operator given by its product.

- :func:`hutchpp`: Hutch++ trace estimator (Meyer, Musco, Musco, Woodruff 2021).
- :func:`lanczos`: Lanczos tridiagonalisation with full re-orthogonalisation.
- :func:`stochastic_lanczos_quadrature`: the spectral density and spectral sums
  tr f(A) by stochastic Lanczos quadrature (Golub & Meurant; Ubaru, Chen, Saad 2017).
- :func:`top_eigenpairs`: top-k eigenpairs by ARPACK's implicitly restarted Lanczos
  (scipy's ``eigsh`` on a ``LinearOperator``).

scipy is imported by the functions that call it, not with the module: ``scipy.linalg`` alone was
0.16 s of every ``import memspace``.

All work in float64 numpy on the host; a product callback maps a numpy vector [P] to
a numpy vector [P]. :func:`trace`, :func:`eigh` and :func:`spectral_density` take instead any
operator with ``mv`` (a torch vector [P] to [P]) and ``shape`` (P, P): a
:class:`~memspace.fisher.FisherOperator`, K-FAC, EKFAC, or one of the user's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .._errors import MemspaceError

__all__ = [
    "LinearOperatorLike",
    "SpectralDensity",
    "eigh",
    "hutchpp",
    "numpy_matvec",
    "spectral_density",
    "trace",
    "lanczos",
    "stochastic_lanczos_quadrature",
    "top_eigenpairs",
]

Matvec = Callable[[np.ndarray], np.ndarray]


class LinearOperatorLike(Protocol):
    """A symmetric operator given by its product: ``mv`` maps a torch vector [P] to [P]."""

    shape: tuple[int, int]

    def mv(self, v: torch.Tensor) -> Any:
        """A v for a vector v [P]."""
        ...


def numpy_matvec(operator: LinearOperatorLike) -> Matvec:
    """``operator.mv`` as a float64 numpy product.

    Vectors are cast to the operator's dtype and device when it has them (float64 on the CPU
    otherwise).
    """
    dtype = getattr(operator, "dtype", torch.float64)
    device = getattr(operator, "device", "cpu")

    def matvec(v: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.ascontiguousarray(v).ravel(), dtype=dtype, device=device)
        return operator.mv(t).detach().cpu().double().numpy()

    return matvec


def trace(operator: LinearOperatorLike, num_matvecs: int = 30, seed: int = 0) -> torch.Tensor:
    """Tr A by Hutch++ with ``num_matvecs`` products of ``operator`` (:func:`hutchpp`).

    Float64 scalar.
    """
    value = hutchpp(numpy_matvec(operator), operator.shape[0], num_matvecs, seed)
    return torch.tensor(value, dtype=torch.float64)


def eigh(
    operator: LinearOperatorLike, k: int = 1, tol: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of ``operator`` by ARPACK (:func:`top_eigenpairs`).

    Returns:
        ``(eigenvalues [k] descending, eigenvectors [P, k])`` in float64.
    """
    values, vectors = top_eigenpairs(
        numpy_matvec(operator), operator.shape[0], k, tol=tol, seed=seed
    )
    return torch.from_numpy(values.copy()), torch.from_numpy(vectors.copy())


def spectral_density(
    operator: LinearOperatorLike, num_probes: int = 8, steps: int = 40, seed: int = 0
) -> SpectralDensity:
    """The spectral density of ``operator`` by stochastic Lanczos quadrature.

    ``num_probes × steps`` products (:func:`stochastic_lanczos_quadrature`).
    """
    return stochastic_lanczos_quadrature(
        numpy_matvec(operator), operator.shape[0], num_probes, steps, seed
    )


def _rademacher(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0


def hutchpp(matvec: Matvec, dim: int, num_matvecs: int, seed: int = 0) -> float:
    """Hutch++ estimate of tr(A) with ``num_matvecs`` products (Meyer et al. 2021).

    Splits the budget in thirds: a sketch Q = orth(A S) captures the top of the
    spectrum exactly, tr(QᵀAQ), and Hutchinson's estimator with Rademacher probes
    handles the rest, (3/m) Σ gᵀ(I−QQᵀ)A(I−QQᵀ)g. Unbiased; variance O(1/m²) for PSD A.
    """
    if num_matvecs < 3:
        raise MemspaceError(f"hutchpp needs at least 3 matvecs, got {num_matvecs}")
    rng = np.random.default_rng(seed)
    k = num_matvecs // 3
    sketch = _rademacher(rng, (dim, k))
    image = np.stack([matvec(sketch[:, j]) for j in range(k)], axis=1)
    basis, _ = np.linalg.qr(image)
    top = sum(basis[:, j] @ matvec(basis[:, j]) for j in range(basis.shape[1]))
    rest_count = num_matvecs - 2 * k
    probes = _rademacher(rng, (dim, rest_count))
    probes -= basis @ (basis.T @ probes)
    rest = sum(probes[:, j] @ matvec(probes[:, j]) for j in range(rest_count))
    return float(top + rest / rest_count)


def lanczos(matvec: Matvec, start: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos tridiagonalisation T = QᵀAQ with full re-orthogonalisation.

    Args:
        matvec: product with symmetric A.
        start: starting vector [P] (normalised here).
        steps: maximal number of Lanczos steps m; stops early on an invariant subspace.

    Returns:
        ``(alpha, beta)``: the diagonal [m'] and off-diagonal [m'−1] of T, m' ≤ m.
    """
    dim = start.shape[0]
    steps = min(steps, dim)
    basis = np.zeros((steps, dim))
    alpha, beta = [], []
    q = start / np.linalg.norm(start)
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        a = float(q @ w)
        alpha.append(a)
        w -= basis[: j + 1].T @ (basis[: j + 1] @ w)  # full re-orthogonalisation
        w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        b = float(np.linalg.norm(w))
        if j == steps - 1 or b < 1e-10 * max(1.0, abs(a)):
            break
        beta.append(b)
        q = w / b
    return np.asarray(alpha), np.asarray(beta)


@dataclass(frozen=True)
class SpectralDensity:
    """A stochastic-Lanczos-quadrature estimate of the spectrum of a P×P operator.

    The spectral measure (1/P) Σ_i δ(λ − λ_i) is approximated, per probe v, by the
    Gauss quadrature rule of the Lanczos tridiagonal matrix started at v: nodes θ_j
    (Ritz values) and weights τ_j² (squared first components of its eigenvectors).

    Attributes:
        nodes: list over probes of Ritz values [m_v].
        weights: list over probes of quadrature weights [m_v], each summing to 1.
        dim: P.
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    dim: int

    def spectral_sum(self, fn: Callable[[np.ndarray], np.ndarray]) -> float:
        """Estimate tr f(A) = Σ_i f(λ_i) ≈ P · mean_v Σ_j τ_j² f(θ_j)."""
        per_probe = [float(w @ fn(t)) for t, w in zip(self.nodes, self.weights)]
        return self.dim * float(np.mean(per_probe))

    def density(self, grid: np.ndarray, sigma: float | None = None) -> np.ndarray:
        """Gaussian-broadened density on ``grid`` (integrates to ≈1 over the support).

        Args:
            grid: points [G] where the density is evaluated.
            sigma: kernel width; default 1 % of the Ritz-value range.
        """
        grid = np.asarray(grid, dtype=np.float64)
        nodes = np.concatenate(self.nodes)
        weights = np.concatenate(self.weights) / len(self.nodes)
        if sigma is None:
            span = float(nodes.max() - nodes.min()) if nodes.size else 1.0
            sigma = 0.01 * span if span > 0 else 1e-3
        diff = (grid[:, None] - nodes[None, :]) / sigma
        kernel = np.exp(-0.5 * diff**2) / (sigma * np.sqrt(2 * np.pi))
        return kernel @ weights


def stochastic_lanczos_quadrature(
    matvec: Matvec, dim: int, num_probes: int = 8, steps: int = 40, seed: int = 0
) -> SpectralDensity:
    """Run Lanczos from ``num_probes`` Rademacher vectors; return the quadrature rules.

    Cost: num_probes × steps products. With E[v vᵀ] = I, tr f(A) = E[vᵀ f(A) v] and
    vᵀ f(A) v ≈ ‖v‖² Σ_j τ_j² f(θ_j) (Ubaru, Chen & Saad 2017).
    """
    from scipy.linalg import eigh_tridiagonal  # module docstring

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for _ in range(num_probes):
        probe = _rademacher(rng, (dim,))
        alpha, beta = lanczos(matvec, probe, steps)
        theta, vecs = eigh_tridiagonal(alpha, beta)
        nodes.append(theta)
        weights.append(vecs[0] ** 2)
    return SpectralDensity(nodes=nodes, weights=weights, dim=dim)


def top_eigenpairs(
    matvec: Matvec, dim: int, k: int, tol: float = 0.0, seed: int = 0, max_restarts: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (largest algebraic) eigenpairs of a symmetric operator by ARPACK.

    ARPACK's own limit (10·P restarts) would let a tolerance finer than the products' rounding
    (float32 products with tol = 1e-6, say) run for hours; ``max_restarts`` stops it with an error
    that says what converged.

    Returns:
        ``(eigenvalues [k] descending, eigenvectors [P, k])``.

    Raises:
        MemspaceError: no convergence within ``max_restarts`` implicit restarts.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh  # module docstring

    if not 1 <= k < dim:
        raise MemspaceError(f"k must be in [1, {dim - 1}] for a {dim}×{dim} operator, got {k}")
    operator = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    try:
        values, vectors = eigsh(operator, k=k, which="LA", tol=tol, v0=v0, maxiter=max_restarts)
    except ArpackNoConvergence as error:
        raise MemspaceError(
            f"Lanczos found {len(error.eigenvalues)} of the top {k} eigenvalues to tol = {tol:g} "
            f"in {max_restarts} "
            "restarts: ask for a larger tol (float32 products support about 1e-4) or measure in "
            "float64"
        ) from None
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]
