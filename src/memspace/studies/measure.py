"""Measure one trained network end to end: every quantity the report shows.

Returns a JSON-ready dict, so that a report can be re-rendered from saved results:

- accuracy (train/test) and the generalization gap (train − test accuracy);
- Fisher–Rao norm θᵀFθ, tr F (exact), the top-k eigenvalues of F (Lanczos), the
  spectral density (stochastic Lanczos quadrature) and the effective dimension
  d_eff(z) = Σ λ/(λ+z) at z = 10⁻³·λ_max;
- the path profile (Fisher and Euclidean speeds per block, action, length, gap,
  boundary sensitivities);
- the Fisher distance from initialisation and the Fisher arc length of training,
  when the initial parameters / the checkpoints are given;
- for 2-D inputs, the trajectories of up to 150 points through depth (projected on the
  stream's two principal axes) with each point's Fisher speed.

All Fisher quantities use the true Fisher on (up to ``max_points``) training points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from ..complexity import fisher_distance, fisher_rao_norm, trajectory_length
from ..data import DataSplit
from ..fisher import FisherOperator
from ..paths import path_profile, pointwise_speeds
from ..train import evaluate

__all__ = ["measure_network"]


def _subset(data: tuple[Tensor, Tensor], n: int) -> tuple[Tensor, Tensor]:
    return data[0][:n], data[1][:n]


def _log_spectral_density(density, lam_max: float, decades: float = 6.0, width: float = 0.1) -> dict[str, Any]:
    """SLQ spectral mass per decade of λ on a log grid, and the mass below the grid.

    The quadrature rules' nodes θ_j with weights τ_j² (averaged over probes) are
    smoothed with a Gaussian of ``width`` decades in log10 λ. The spectrum of a Fisher
    piles up near zero; that mass (λ < λ_max·10^-decades) is reported, not drawn.
    """
    nodes = np.concatenate(density.nodes)
    weights = np.concatenate(density.weights) / len(density.nodes)
    floor = lam_max * 10.0**-decades
    visible = nodes >= floor
    grid = np.linspace(np.log10(floor), np.log10(lam_max) + 0.3, 240)
    logs = np.log10(nodes[visible])
    kernel = np.exp(-0.5 * ((grid[:, None] - logs[None, :]) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    return {"log10_grid": grid.tolist(), "mass_per_decade": (kernel @ weights[visible]).tolist(),
            "fraction_near_zero": float(weights[~visible].sum()), "floor": floor}


def measure_network(
    model: nn.Module,
    split: DataSplit,
    *,
    block_names: Sequence[str] | None = None,
    initial_params: Mapping[str, Tensor] | None = None,
    checkpoints: Sequence[Path] | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    top_k: int = 10,
    max_points: int = 1024,
    spectral_points: int | None = None,
    seed: int = 0,
    status: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """All measures of one network (module doc). ``status`` receives progress messages.

    ``max_points`` training points enter every Fisher quantity, except the trace,
    eigenvalues and spectral density, which use ``spectral_points`` (default: the same).
    """
    model.eval()
    device = next(model.parameters()).device
    train = tuple(t.to(device) for t in split.train)
    test = tuple(t.to(device) for t in split.test)
    data = _subset(train, max_points)
    out: dict[str, Any] = {}
    status("accuracy")
    out["train_loss"], out["train_acc"] = evaluate(model, train)
    out["test_loss"], out["test_acc"] = evaluate(model, test)
    out["gap"] = out["train_acc"] - out["test_acc"]
    status("Fisher–Rao norm")
    out["fisher_rao_norm"] = fisher_rao_norm(model, data)
    # Lanczos and SLQ need ~150 products: they may use fewer points than the rest.
    F = FisherOperator(model, _subset(train, spectral_points or max_points), seed=seed)
    out["num_params"] = F.shape[0]
    status("Fisher trace")
    out["fisher_trace"] = float(F.trace())
    status("top eigenvalues (Lanczos)")
    k = min(top_k, F.shape[0] - 1)
    values, _ = F.eigh(k, tol=1e-4)
    out["top_eigenvalues"] = values.tolist()
    status("spectral density (SLQ)")
    density = F.spectral_density(num_probes=4, steps=30)
    lam_max = max(float(values[0]), 1e-30)
    z = 1e-3 * lam_max
    out["effective_dimension"] = density.spectral_sum(lambda t: np.clip(t, 0, None) / (np.clip(t, 0, None) + z))
    out["effective_dimension_z"] = z
    out["spectral_density"] = _log_spectral_density(density, lam_max)
    status("path profile")
    profile = path_profile(model, data, block_names=block_names)
    out["path"] = profile.as_dict()
    if initial_params is not None:
        status("distance from initialisation")
        out["fisher_distance_from_init"] = fisher_distance(model, initial_params, data)
        out["euclidean_distance_from_init"] = float(sum(
            (p.detach() - initial_params[n].to(p)).pow(2).sum() for n, p in model.named_parameters()) ** 0.5)
    if checkpoints and model_factory is not None and len(checkpoints) >= 2:
        status("trajectory length")
        traj = trajectory_length(list(checkpoints), model_factory, _subset(train, min(max_points, 512)))
        out["trajectory_length"] = traj.length
        out["trajectory_step_lengths"] = traj.step_lengths.tolist()
    if split.input_shape == (2,):
        status("trajectories of points")
        points = test[0][:150]
        speeds, states = pointwise_speeds(model, points, block_names=block_names)
        flat = states.reshape(-1, states.shape[-1])
        centre = flat.mean(0)
        _, _, axes = np.linalg.svd(flat - centre, full_matrices=False)
        projected = (states - centre) @ axes[:2].T  # [L+1, N, 2]
        out["trajectories"] = {"points": projected.tolist(), "speeds": speeds.tolist(),
                               "labels": test[1][:150].tolist()}
    return out
