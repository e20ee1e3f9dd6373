"""Measure one trained network end to end: every quantity the report shows.

Returns a JSON-ready dict, so that a report can be re-rendered from saved results:

- accuracy (train/test) and the generalization gap (train − test accuracy);
- Fisher–Rao norm θᵀFθ, tr F (exact), the top-k eigenvalues of F (Lanczos), the
  spectral density (stochastic Lanczos quadrature) and the effective dimension
  d_eff(z) = Σ λ/(λ+z) at z = 10⁻³·λ_max;
- the predictive path (length, action, its exact least action and their ratio, speed
  per block, lens accuracy over depth) and, for up to 100 test points, each point's
  distance from its start over depth (and, for two classes, its angle on the quarter
  circle) against its geodesic;
- the block sensitivities beside the measured KL of deleting each block, the Euclidean
  speeds (kinetic action) and the boundary sensitivities. For a model whose residual
  blocks or read-out memspace does not know, these are skipped and ``path_skipped``
  says why and how to get them;
- the Fisher distance from initialisation and the Fisher arc length of training,
  when the initial parameters / the checkpoints are given;
- for 2-D inputs, the trajectories of up to 150 points through depth (projected on the
  stream's two principal axes) with each point's predictive speed d(p_l, p_{l+1})/h.

All Fisher quantities use the true Fisher on (up to ``max_points``) training points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from .._errors import MemspaceError
from ..complexity import fisher_distance, fisher_rao_norm, trajectory_length
from ..data import DataSplit
from ..fisher import FisherOperator
from ..paths import ResidualPath, block_sensitivity, predictive_path
from ..train import evaluate
from .results import NetworkMeasures

__all__ = ["measure_network"]


def _subset(data: tuple[Tensor, Tensor], n: int) -> tuple[Tensor, Tensor]:
    return data[0][:n], data[1][:n]


def _log_spectral_density(
    density, lam_max: float, decades: float = 6.0, width: float = 0.1
) -> dict[str, Any]:
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
    kernel = np.exp(-0.5 * ((grid[:, None] - logs[None, :]) / width) ** 2) / (
        width * np.sqrt(2 * np.pi)
    )
    return {
        "log10_grid": grid.tolist(),
        "mass_per_decade": (kernel @ weights[visible]).tolist(),
        "fraction_near_zero": float(weights[~visible].sum()),
        "floor": floor,
    }


def _stream_states(model: nn.Module, inputs: Tensor, block_names) -> np.ndarray:
    """x_0 … x_L of the residual stream for some inputs, flattened: [L+1, N, d]."""
    import torch

    path = ResidualPath(model, block_names)
    with torch.no_grad(), path.capture() as record:
        model(inputs)
    return torch.stack([s.flatten(1).double() for s in path.states(record)]).cpu().numpy()


def _point_paths(points: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-point distance from the start d(p_0, p_l) over depth, and for two classes the angle.

    On the sphere ξ = 2√p two classes live on a quarter circle: θ = atan2(√p_1, √p_0) and
    d(p, q) = 2|θ_p − θ_q|, so the path is a curve θ_l and its geodesic a straight line.
    """
    import torch

    from ..paths import fisher_rao_distance

    probs = torch.as_tensor(points["probabilities"])  # [N, L+1, C]
    logs = probs.clamp_min(1e-300).log()
    from_start = fisher_rao_distance(logs[:, :1], logs).numpy()  # [N, L+1]
    result = {
        "from_start": from_start.tolist(),
        "endpoint": points["endpoint_distance"].tolist(),
        "ratio": (points["action"] / np.maximum(points["endpoint_distance"] ** 2, 1e-300)).tolist(),
    }
    if probs.shape[2] == 2:
        result["angle"] = np.arctan2(
            np.sqrt(probs[..., 1].numpy()), np.sqrt(probs[..., 0].numpy())
        ).tolist()
    return result


def effective_dimension(
    F: FisherOperator,
    lam_max: float | None = None,
    relative_z: float = 1e-3,
    num_probes: int = 4,
    steps: int = 30,
):
    """d_eff = Σ_i λ_i/(λ_i + z) with z = relative_z · λ_max, by stochastic Lanczos quadrature.

    Maddox et al. 2020 (effective dimensionality); docs/theory.md §1. Returns
    ``(d_eff, z, density)``; λ_max from Lanczos when not given.
    """
    if lam_max is None:
        lam_max = float(F.eigh(1, tol=1e-4)[0][0])
    lam_max = max(lam_max, 1e-30)
    z = relative_z * lam_max
    density = F.spectral_density(num_probes=num_probes, steps=steps)
    d_eff = density.spectral_sum(lambda t: np.clip(t, 0, None) / (np.clip(t, 0, None) + z))
    return float(d_eff), z, density


def measure_network(
    model: nn.Module,
    split: DataSplit,
    *,
    block_names: Sequence[str] | None = None,
    head: Any = None,
    initial_params: Mapping[str, Tensor] | None = None,
    checkpoints: Sequence[Path] | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    top_k: int = 10,
    max_points: int = 1024,
    spectral_points: int | None = None,
    seed: int = 0,
    status: Callable[[str], None] = lambda message: None,
    distributed: bool = False,
) -> NetworkMeasures:
    """All measures of one network (module doc).

    Typed (:class:`~memspace.studies.results.NetworkMeasures`; ``.to_dict()`` is the JSON a run
    folder stores). ``status`` receives progress messages.

    ``max_points`` training points enter every Fisher quantity, except the trace,
    eigenvalues and spectral density, which use ``spectral_points`` (default: the same).
    With ``distributed`` (an initialised process group, :mod:`memspace.distributed`) those
    points are split among the ranks, each streams its share and every rank returns the same
    measures; accuracies and the per-point figures use the whole (small) split on every rank.
    """
    from ..distributed import Collective, shard

    collective = Collective(distributed, "memspace measure")
    rank, world = collective.rank, collective.world

    def share(part: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return shard(part, rank, world) if collective.active else part

    with collective.guard():  # a rank that fails anywhere in here stops the others with its message
        model.eval()
        device = next(model.parameters()).device
        train = tuple(t.to(device) for t in split.train)
        test = tuple(t.to(device) for t in split.test)
        data = share(_subset(train, max_points))
        out: dict[str, Any] = {}
        status("accuracy")
        out["train_loss"], out["train_acc"] = evaluate(model, train)
        out["test_loss"], out["test_acc"] = evaluate(model, test)
        out["gap"] = out["train_acc"] - out["test_acc"]
        status("Fisher–Rao norm")
        out["fisher_rao_norm"] = fisher_rao_norm(model, data, distributed=distributed)
        # Lanczos and SLQ need ~150 products: they may use fewer points than the rest.
        F = FisherOperator(
            model,
            share(_subset(train, spectral_points or max_points)),
            seed=seed,
            distributed=distributed,
        )
        out["num_params"] = F.shape[0]
        status("Fisher trace")
        out["fisher_trace"] = float(F.trace())
        status("top eigenvalues (Lanczos)")
        k = min(top_k, F.shape[0] - 1)
        values, _ = F.eigh(k, tol=1e-4)
        out["top_eigenvalues"] = values.tolist()
        status("spectral density (SLQ)")
        lam_max = max(float(values[0]), 1e-30)
        out["effective_dimension"], out["effective_dimension_z"], density = effective_dimension(
            F, lam_max
        )
        out["spectral_density"] = _log_spectral_density(density, lam_max)
        try:
            ResidualPath(model, block_names)
            status("predictive path")
            # v3's prior-anchored path, with v2's stem-anchored one beside it (§3.1a)
            for key, anchor in (("predictive_path", "prior"), ("predictive_path_stem", "stem")):
                out[key] = predictive_path(
                    model,
                    data,
                    block_names=block_names,
                    head=head,
                    distributed=distributed,
                    anchor=anchor,
                ).as_dict()
        except MemspaceError as error:
            out["path_skipped"] = (
                f"{error} — the path measures need the residual blocks (--blocks / block_names) "
                "and the read-out (head)"
            )
            status(f"path skipped: {error}")
        if "predictive_path" in out:
            status("block sensitivity and deletion")
            out["sensitivity"] = block_sensitivity(
                model, data, block_names=block_names, distributed=distributed
            ).as_dict()
            # One per-point pass on the first 150 test points serves both the point figure
            # (the first 100) and, for 2-D inputs, the trajectories: the blocks' part of the
            # path, from p_0 (stem-anchored), whose L steps are the trajectories' L steps.
            per_point = predictive_path(
                model,
                (test[0][:150], test[1][:150]),
                block_names=block_names,
                head=head,
                points=True,
                anchor="stem",
            ).points
            out["predictive_points"] = _point_paths({k: v[:100] for k, v in per_point.items()})
        if initial_params is not None:
            status("distance from initialisation")
            out["fisher_distance_from_init"] = fisher_distance(
                model, initial_params, data, distributed=distributed
            )
            out["euclidean_distance_from_init"] = float(
                sum(
                    (p.detach() - initial_params[n].to(p)).pow(2).sum()
                    for n, p in model.named_parameters()
                )
                ** 0.5
            )
        if checkpoints and model_factory is not None and len(checkpoints) >= 2:
            status("trajectory length")
            traj = trajectory_length(
                list(checkpoints),
                model_factory,
                share(_subset(train, min(max_points, 512))),
                distributed=distributed,
            )
            out["trajectory_length"] = traj.length
            out["trajectory_step_lengths"] = traj.step_lengths.tolist()
        if split.input_shape == (2,) and "predictive_path" in out:
            status("trajectories of points")
            points = test[0][:150]
            speeds = per_point["distances"] * out["predictive_path"]["depth"]
            states = _stream_states(model, points, block_names)
            flat = states.reshape(-1, states.shape[-1])
            centre = flat.mean(0)
            _, _, axes = np.linalg.svd(flat - centre, full_matrices=False)
            projected = (states - centre) @ axes[:2].T  # [L+1, N, 2]
            out["trajectories"] = {
                "points": projected.tolist(),
                "speeds": speeds.tolist(),
                "labels": test[1][:150].tolist(),
            }
        return NetworkMeasures(**out)


def check_measurable(
    network: nn.Module, split: DataSplit, block_names: Sequence[str] | None, head: str | None
) -> None:
    """Refuse a model, blocks or data that cannot be measured, before any work or folder.

    One forward on two training points; with ``block_names``, the blocks must exist, run once
    and keep the stream's shape, and the read-out must be found.

    Raises:
        MemspaceError: naming what does not fit (the model's error on the data, the blocks, or
            outputs that are not logits [N, C]).
    """
    import torch

    from .._params import check_eval_mode
    from ..architecture import one_line
    from ..paths import resolve_head

    check_eval_mode(network)
    x = split.train[0][:2]

    def forward():
        try:
            return network(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise MemspaceError(
                f"the model cannot run on the data's inputs (samples of shape "
                f"{tuple(x.shape[1:])}, {x.dtype}): {one_line(error)}"
            ) from None

    if block_names is not None:
        path = ResidualPath(network, block_names)
        with torch.no_grad(), path.capture() as record:
            out = forward()
        path.states(record)
        resolve_head(network, head)
    else:
        with torch.no_grad():
            out = forward()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != split.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MemspaceError(
            f"the model maps a batch of 2 inputs of shape {tuple(x.shape[1:])} to {shape}; "
            f"measure needs logits [N, {split.num_classes}] for this data set"
        )


def measure_weights(
    weights: Path,
    arch: str,
    data: str,
    *,
    blocks: Sequence[str] | None = None,
    head: str | None = None,
    out: Path = Path("runs/measure"),
    seed: int = 0,
    overwrite: bool = False,
    distributed: bool = False,
    rank: int = 0,
    world: int = 1,
    status: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, Any] | None, Path | None]:
    """``memspace measure``: a user's trained model measured into a run folder with a report.

    Sharded (``distributed``): every rank measures its share of the points, rank 0 alone owns the
    run folder, and a rank that fails anywhere here stops every rank with its message.

    Returns:
        (metrics, report path) on rank 0; (None, None) on the other ranks.
    """
    from contextlib import nullcontext

    from .._runs import RunFolder
    from ..architecture import load_network
    from ..data import load_dataset
    from ..distributed import Collective
    from ..report import render_report

    lead = rank == 0
    shared = {"processes": world} if distributed else {}
    with Collective(distributed, "memspace measure").guard():
        network = load_network(weights, arch)
        split = load_dataset(data, seed=seed)
        names = list(blocks) if blocks else None
        network = network.float().eval()
        check_measurable(network, split, names, head)
        config = {
            "data": data,
            "model": str(weights),
            "arch": arch,
            "seed": seed,
            "blocks": names,
            "head": head,
            **shared,
        }
        folder = (
            RunFolder.open(
                out, kind="measure", config=config, overwrite=overwrite, finished="metrics.json"
            )
            if lead
            else nullcontext()
        )
        with folder as run:
            say = status if lead else (lambda message: None)
            if distributed:
                say(f"{world} processes, each measuring its share of the points")
            measures = measure_network(
                network,
                split,
                block_names=names,
                head=head,
                seed=seed,
                status=say,
                distributed=distributed,
            )
            if not lead:
                return None, None
            metrics = {
                "run": {"data": data, "model": str(weights), "arch": arch, "seed": seed, **shared},
                "networks": {
                    weights.stem: {
                        "action": "n/a",
                        "lambda": "n/a",
                        "history": [],
                        "measures": measures.to_dict(),
                    }
                },
            }
            report = render_report(
                metrics, run.path("report.html"), title=f"memspace report: {weights.name}"
            )
            run.write_json("metrics.json", metrics)  # last: the marker of a finished run
    return metrics, report
