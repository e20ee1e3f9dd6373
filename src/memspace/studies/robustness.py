"""Robustness ↔ generalization: what survives perturbation of a trained network (docs/theory.md §5).

Three measurements of one trained network, and their agreement:

- **Layer re-initialization** (Zhang, Bengio & Singer, "Are all layers created equal?",
  arXiv 1902.01996): reset one layer θ^(ℓ) to its value θ_τ^(ℓ) at checkpoint τ
  (τ = 0 is the initialisation), or re-randomize it with a fresh draw from the
  initialisation distribution, keep every other layer trained, and measure the test
  error. A layer is *robust* when Δ_ℓ = err(reset ℓ to τ=0) − err(trained) ≤ δ_abs
  (default 0.01), *critical* when err ≥ chance − δ_chance (default 0.1), and
  *intermediate* otherwise (docs/theory.md §5.2).
- **Fisher sensitivity**: under weight noise δ ~ N(0, σ²I) on layer ℓ,
  E_δ E_x KL(p_θ ‖ p_{θ+δ}) = (σ²/2) tr F_ℓℓ + O(σ⁴), F_ℓℓ the layer's diagonal block
  of the Fisher. :func:`weight_noise` checks it by Monte Carlo over a range of σ and
  reports the σ where the quadratic prediction breaks down (measured/predicted outside
  1 ± 0.1 beyond the Monte-Carlo error).
- **Block sensitivity and deletion** of each residual block
  (:func:`memspace.block_sensitivity`).

Rank agreement: Kendall's τ (with its p-value) between the per-layer Fisher sensitivity
tr F_ℓℓ and the re-initialization damage Δ_ℓ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import Tensor, nn
from torch.func import functional_call

from .._errors import MemspaceError
from ..fisher import FisherOperator
from ..train import evaluate, snapshot
from .base import Study

__all__ = [
    "Reinitialization",
    "WeightNoise",
    "classify_layers",
    "layer_units",
    "reinitialization",
    "sensitivity_ranks_damage",
    "training_checkpoints",
    "weight_noise",
]


def _as_json(result) -> dict[str, Any]:
    """A result dataclass as a JSON-ready dict (arrays as lists)."""
    return {
        key: value.tolist() if isinstance(value, np.ndarray) else value
        for key, value in asdict(result).items()
    }


def layer_units(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The layers studied, each with its state-dict keys (parameters and buffers).

    Default for memspace's residual models: ``stem``, every block, ``head``; for any other
    model, every child module that holds parameters. A given name must be a module of
    ``model``; keys are taken with the module's prefix.

    Raises:
        MemspaceError: for a name that is not a module, a module without parameters, or a
            tied weight (resetting one layer would reset another; noise would reach both).
    """
    from .._params import shared_parameters

    tied = shared_parameters(model)
    if tied:
        name, others = next(iter(tied.items()))
        raise MemspaceError(
            f"parameter {name!r} is also registered as {others[0]!r} (a tied weight): layers "
            "cannot be reset or perturbed one at a time"
        )
    modules = dict(model.named_modules())
    if layers is None:
        if hasattr(model, "blocks") and hasattr(model, "stem") and hasattr(model, "head"):
            layers = ["stem", *(f"blocks.{i}" for i in range(len(model.blocks))), "head"]
        else:
            layers = [
                name
                for name, child in model.named_children()
                if any(True for _ in child.parameters())
            ]
    keys = list(model.state_dict())
    units = {}
    for name in layers:
        if name not in modules:
            raise MemspaceError(
                f"no module named {name!r} in the model; layers must be module names"
            )
        owned = [k for k in keys if k.startswith(name + ".")]
        if not any(True for _ in modules[name].parameters()):
            raise MemspaceError(f"layer {name!r} has no parameters")
        units[name] = owned
    return units


@dataclass(frozen=True)
class Reinitialization:
    """Test error after resetting one layer at a time (module doc).

    Attributes:
        layers: layer names [L].
        columns: ``"rnd"`` (re-randomized, mean over draws), then one per checkpoint τ.
        error: test error [L, len(columns)]; loss: test cross-entropy, same shape.
        trained_error: the trained network's test error; chance_error: 1 − 1/C.
        labels: robust / intermediate / critical per layer, from the τ = 0 column.
        distance_l2, distance_linf: ‖θ_T^(ℓ) − θ_0^(ℓ)‖ / ‖θ_0^(ℓ)‖ per layer.
        delta_abs, delta_chance: the thresholds used.
    """

    layers: list[str]
    columns: list[str]
    error: np.ndarray
    loss: np.ndarray
    trained_error: float
    chance_error: float
    labels: list[str]
    distance_l2: np.ndarray
    distance_linf: np.ndarray
    delta_abs: float
    delta_chance: float

    def damage(self, column: str = "0") -> np.ndarray:
        """Δ_ℓ = err(reset ℓ) − err(trained) for one column [L]."""
        return self.error[:, self.columns.index(column)] - self.trained_error

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (arrays as lists)."""
        return _as_json(self)


def classify_layers(
    errors_at_init: Sequence[float],
    trained_error: float,
    chance_error: float,
    delta_abs: float = 0.01,
    delta_chance: float = 0.1,
) -> list[str]:
    """Robust (Δ ≤ δ_abs), critical (err ≥ chance − δ_chance) or intermediate, per layer."""
    labels = []
    for err in errors_at_init:
        if err - trained_error <= delta_abs:
            labels.append("robust")
        elif err >= chance_error - delta_chance:
            labels.append("critical")
        else:
            labels.append("intermediate")
    return labels


def _relative_distance(
    final: Mapping[str, Tensor], initial: Mapping[str, Tensor], keys: Sequence[str]
):
    params = [k for k in keys if torch.is_floating_point(final[k])]
    diff = torch.cat([(final[k] - initial[k]).flatten().double() for k in params])
    base = torch.cat([initial[k].flatten().double() for k in params])
    l2 = float(diff.norm() / base.norm()) if float(base.norm()) > 0 else math.inf
    linf = float(diff.abs().max() / base.abs().max()) if float(base.abs().max()) > 0 else math.inf
    return l2, linf


def reinitialization(
    model_factory: Callable[[], nn.Module],
    final_state: Mapping[str, Tensor],
    checkpoints: Mapping[str, Mapping[str, Tensor]],
    test_data: tuple[Tensor, Tensor],
    *,
    layers: Sequence[str] | None = None,
    rerandomize_seeds: Sequence[int] = (1001, 1002, 1003),
    num_classes: int | None = None,
    delta_abs: float = 0.01,
    delta_chance: float = 0.1,
) -> Reinitialization:
    """The re-initialization heat map of Zhang, Bengio & Singer (module doc).

    Args:
        model_factory: builds the architecture (with fresh random weights: a draw from the
            initialisation distribution, used for re-randomization under each seed).
        final_state: the trained state dict θ_T.
        checkpoints: ``{label: state}`` for each checkpoint τ; must include ``"0"`` (the
            initialisation), e.g. ``{"0": θ_0, "1": θ_1, "3": θ_3}``.
        test_data: ``(X, y)`` for the test error.
        layers: module names (default :func:`layer_units`).
        rerandomize_seeds: torch seeds of the fresh draws; the ``"rnd"`` column is their mean.
        num_classes: C, for the chance error 1 − 1/C (default: from the model's output).
        delta_abs: a layer is robust when resetting it raises the test error by at most this.
        delta_chance: it is critical when the error comes within this of the chance error.

    Returns:
        :class:`Reinitialization`.
    """
    if "0" not in checkpoints:
        raise MemspaceError("checkpoints must include '0', the initial state")
    model = model_factory()
    model.load_state_dict(final_state)
    model.eval()
    units = layer_units(model, layers)
    _, trained_acc = evaluate(model, test_data)
    with torch.no_grad():
        classes = num_classes or int(model(test_data[0][:2]).shape[-1])
    draws = []
    for seed in rerandomize_seeds:
        torch.manual_seed(seed)
        draws.append(snapshot(model_factory()))
    columns = ["rnd", *checkpoints]
    error = np.zeros((len(units), len(columns)))
    loss = np.zeros_like(error)
    final = {k: v.detach().clone() for k, v in final_state.items()}

    def score(replacement: Mapping[str, Tensor], keys: Sequence[str]) -> tuple[float, float]:
        state = dict(final)
        for k in keys:
            state[k] = replacement[k]
        model.load_state_dict(state)
        test_loss, acc = evaluate(model, test_data)
        return 1.0 - acc, test_loss

    l2, linf = [], []
    for i, (name, keys) in enumerate(units.items()):
        scores = [score(draw, keys) for draw in draws]
        error[i, 0] = np.mean([s[0] for s in scores])
        loss[i, 0] = np.mean([s[1] for s in scores])
        for j, state in enumerate(checkpoints.values(), start=1):
            error[i, j], loss[i, j] = score(state, keys)
        distances = _relative_distance(final, checkpoints["0"], keys)
        l2.append(distances[0])
        linf.append(distances[1])
    model.load_state_dict(final)
    trained_error = 1.0 - trained_acc
    chance = 1.0 - 1.0 / classes
    labels = classify_layers(error[:, 1], trained_error, chance, delta_abs, delta_chance)
    return Reinitialization(
        list(units),
        columns,
        error,
        loss,
        trained_error,
        chance,
        labels,
        np.array(l2),
        np.array(linf),
        delta_abs,
        delta_chance,
    )


@dataclass(frozen=True)
class WeightNoise:
    """Fisher sensitivity against Monte-Carlo weight noise (module doc).

    Attributes:
        layers: layer names [L] (the whole network is ``"all"``, last).
        fisher_trace: tr F_ℓℓ per layer [L] (true Fisher, mean over data).
        sigmas: noise scales [S].
        predicted: (σ²/2) tr F_ℓℓ [L, S], the expectation; measured: Monte-Carlo E KL
            [L, S]; stderr: its standard error over noise draws [L, S].
        paired: the mean of ½ δᵀFδ over the same draws [L, S] — the quadratic prediction
            for each draw, so measured/paired is free of Monte-Carlo noise at small σ.
        breakdown_sigma: per layer, the smallest σ where |measured/paired − 1| exceeds
            ``tolerance`` (None: never in the range).
        tolerance: 0.1 by default.
        num_data, samples: data points and noise draws per σ.
    """

    layers: list[str]
    fisher_trace: np.ndarray
    sigmas: np.ndarray
    predicted: np.ndarray
    measured: np.ndarray
    stderr: np.ndarray
    paired: np.ndarray
    breakdown_sigma: list[float | None]
    tolerance: float
    num_data: int
    samples: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (arrays as lists)."""
        return _as_json(self)


def _mean_kl(model: nn.Module, params: dict[str, Tensor], x: Tensor, log_p: Tensor) -> Tensor:
    log_q = torch.log_softmax(functional_call(model, params, (x,)), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def weight_noise(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    *,
    sigmas: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    layers: Sequence[str] | None = None,
    samples: int = 16,
    tolerance: float = 0.1,
    seed: int = 0,
) -> WeightNoise:
    """E_δ E_x KL(p_θ ‖ p_{θ+δ}) against (σ²/2) tr F, per layer and for the whole network.

    Args:
        model: a classifier (logits [N, C]); measured on a float64 copy (small KLs need it).
        data: ``(X, y)``; the KL and F are means over X (y is not used: the true Fisher).
        sigmas: noise scales σ.
        layers: module names (default :func:`layer_units`).
        samples: noise draws per σ and layer.
        seed: seed of the noise.
        tolerance: the largest |E KL / ((σ²/2) tr F) − 1| still in the linear regime; the
            smallest σ past it is reported as where the regime breaks.

    Returns:
        :class:`WeightNoise`.
    """
    import copy

    # in float64: at small σ the KL is ~σ² tr F_ℓℓ/2 (1e-9 for a quiet block), below float32's
    # resolution
    model = copy.deepcopy(model).double().eval()
    data = (data[0].double() if data[0].is_floating_point() else data[0], data[1])
    X = data[0]
    units = layer_units(model, layers)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_unit = {name: [k for k in keys if k in params] for name, keys in units.items()}
    per_unit["all"] = list(params)
    with torch.no_grad():
        logits = model(X)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != len(data[1]):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise MemspaceError(
            f"weight_noise needs logits [N, C] with samples along the inputs' axis 0; the model "
            f"maps {len(data[1])} inputs to {shape}"
        )
    F = FisherOperator(model, data)
    diag = F.space.to_dict(F.diag())
    traces = np.array(
        [float(sum(diag[k].sum() for k in keys if k in diag)) for keys in per_unit.values()]
    )
    generator = torch.Generator(device=X.device).manual_seed(seed)
    log_p = torch.log_softmax(logits, dim=-1)
    shape = (len(per_unit), len(sigmas))
    measured, stderr, paired = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for i, keys in enumerate(per_unit.values()):
        for j, sigma in enumerate(sigmas):
            kls, quads = [], []
            for _ in range(samples):
                delta = {k: torch.zeros_like(v) for k, v in params.items()}
                for k in keys:
                    delta[k] = sigma * torch.randn(
                        params[k].shape, generator=generator, device=X.device, dtype=params[k].dtype
                    )
                with torch.no_grad():
                    kls.append(
                        float(_mean_kl(model, {k: params[k] + delta[k] for k in params}, X, log_p))
                    )
                quads.append(0.5 * float(F.quad(delta)))
            measured[i, j] = np.mean(kls)
            stderr[i, j] = np.std(kls, ddof=1) / math.sqrt(samples) if samples > 1 else math.nan
            paired[i, j] = np.mean(quads)
    sig = np.asarray(sigmas, dtype=float)
    predicted = 0.5 * traces[:, None] * sig[None, :] ** 2
    breakdown = []
    for i in range(len(per_unit)):
        broken = None
        for j, sigma in enumerate(sig):
            if paired[i, j] > 0 and abs(measured[i, j] / paired[i, j] - 1.0) > tolerance:
                broken = float(sigma)
                break
        breakdown.append(broken)
    return WeightNoise(
        list(per_unit),
        traces,
        sig,
        predicted,
        measured,
        stderr,
        paired,
        breakdown,
        tolerance,
        len(X),
        samples,
    )


def training_checkpoints(
    model_factory: Callable[[], nn.Module], folder, taus: Sequence[int]
) -> dict[str, dict[str, Tensor]]:
    """``{str(τ): state}`` of a training run folder: τ = 0 its initialisation, else epoch τ.

    The folder is one :func:`memspace.fit` (or a population member) wrote with checkpoints every
    epoch; ``model_factory`` builds the architecture the states are loaded into (checked).
    """
    from ..checkpoint import load_state
    from ..train import load_checkpoint

    states = {}
    for tau in taus:
        probe = model_factory()
        if tau == 0:
            probe.load_state_dict(load_state(folder / "init.safetensors"))
        else:
            load_checkpoint(folder / f"epoch-{tau:04d}.safetensors", probe)
        states[str(tau)] = snapshot(probe)
    return states


def sensitivity_ranks_damage(
    fisher_trace: Sequence[float], damage: Sequence[float]
) -> dict[str, float]:
    """Kendall's τ (τ_b, with its two-sided p-value) between tr F_ℓℓ and the damage Δ_ℓ."""
    tau, p_value = kendalltau(np.asarray(fisher_trace), np.asarray(damage))
    return {"tau": float(tau), "p_value": float(p_value), "num_layers": len(damage)}


# ---------------------------------------------------------------------------------------------- the
# study
ROBUSTNESS_CONFIGS = {
    "quick": dict(
        data="digits",
        width=16,
        depth=4,
        epochs=6,
        lr=3e-3,
        batch_size=64,
        seeds=[0],
        taus=[0, 1, 2, 3],
        sigmas=[1e-2, 1e-1, 3e-1, 1.0],
        samples=4,
        points=256,
    ),
    "full": dict(
        data="digits",
        width=32,
        depth=8,
        epochs=40,
        lr=3e-3,
        batch_size=64,
        seeds=[0, 1, 2],
        taus=[0, 1, 2, 3, 8, 20],
        sigmas=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
        samples=16,
        points=512,
    ),
}


def robustness_study(
    run,
    config: dict[str, Any],
    *,
    split=None,
    status: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Run (or resume) the robustness study in the run folder ``run`` and return its summary.

    The seeds' residual networks are trained together as one population, each exactly as
    :func:`memspace.fit` trains it alone (checkpoints every epoch, resumable, in
    ``train/seed-<s>/``); then per seed the re-initialization heat map, the
    weight-noise check of (σ²/2) tr F and block sensitivity with deletion; each seed's
    results are stored as one cell. Summary: the mean heat map, layer labels, Kendall's τ
    between tr F_ℓℓ and the damage, and the claim "bottom layers critical, top layers robust".
    """
    from ..data import load_dataset
    from ..paths import block_sensitivity, build_model
    from ..population import Member, Population, train_population
    from ._cells import CellStore

    split = split or load_dataset(config["data"], seed=0, limit=config.get("limit"))
    if config["epochs"] < max(config["taus"]):
        raise MemspaceError(
            f"checkpoint τ = {max(config['taus'])} is beyond the {config['epochs']} training epochs"
        )
    store = CellStore(run)
    factory = lambda: build_model(split.input_shape, split.num_classes, config)  # noqa: E731
    seeds = config["seeds"]
    status(f"training {len(seeds)} seeds together ({config['epochs']} epochs)")
    started = time.time()
    # every seed, finished or not, so that a resumed study reopens the same population
    trained = train_population(
        Population.from_seeds(factory, seeds),
        split.train,
        [Member(seed=seed, epochs=config["epochs"], lr=config["lr"]) for seed in seeds],
        batch_size=config["batch_size"],
        val_data=split.test,
        checkpoint_dir=run.path("train"),
        member_names=[f"seed-{seed}" for seed in seeds],
        progress=False,
        log=status,
        run_config={"data": config["data"], "width": config["width"], "depth": config["depth"]},
    )
    train_seconds = (time.time() - started) / len(seeds)
    for done, seed in enumerate(seeds):
        progress(done, len(seeds))
        key = f"seed={seed}"
        if key in store:
            continue
        result = trained.member(done)
        checkpoints = training_checkpoints(factory, trained.folders[done], config["taus"])
        final = snapshot(result.model)
        status(f"re-initialization heat map, seed {seed}")
        reinit = reinitialization(
            factory,
            final,
            checkpoints,
            split.test,
            num_classes=split.num_classes,
            rerandomize_seeds=[10_000 + 3 * seed + i for i in range(3)],
        )
        points = (split.train[0][: config["points"]], split.train[1][: config["points"]])
        status(f"weight noise against (σ²/2) tr F, seed {seed}")
        noise = weight_noise(
            result.model, points, sigmas=config["sigmas"], samples=config["samples"], seed=seed
        )
        status(f"block sensitivity and deletion, seed {seed}")
        sens = block_sensitivity(result.model, points)
        agreement = sensitivity_ranks_damage(noise.fisher_trace[:-1], reinit.damage("0"))
        store.add(
            key,
            {
                "seed": seed,
                "train_seconds": train_seconds,
                "test_error": reinit.trained_error,
                "reinit": reinit.as_dict(),
                "noise": noise.as_dict(),
                "sensitivity": sens.as_dict(),
                "kendall": agreement,
            },
        )
    progress(len(config["seeds"]), len(config["seeds"]))
    return summarise_robustness([store[f"seed={s}"] for s in config["seeds"]], config)


def summarise_robustness(cells: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Mean heat map and labels over seeds, pooled Kendall τ, and the bottom/top claim."""
    first = cells[0]["reinit"]
    error = np.mean([c["reinit"]["error"] for c in cells], axis=0)
    trained = float(np.mean([c["reinit"]["trained_error"] for c in cells]))
    chance = first["chance_error"]
    labels = classify_layers(
        error[:, first["columns"].index("0")],
        trained,
        chance,
        first["delta_abs"],
        first["delta_chance"],
    )
    traces = np.concatenate([np.asarray(c["noise"]["fisher_trace"][:-1]) for c in cells])
    damage = np.concatenate(
        [
            np.asarray(c["reinit"]["error"])[:, first["columns"].index("0")]
            - c["reinit"]["trained_error"]
            for c in cells
        ]
    )
    pooled = sensitivity_ranks_damage(traces, damage)
    layers = first["layers"]
    third = max(1, len(layers) // 3)
    bottom, top = labels[:third], labels[-third:]
    return {
        "layers": layers,
        "columns": first["columns"],
        "error": error.tolist(),
        "trained_error": trained,
        "chance_error": chance,
        "labels": labels,
        "kendall_pooled": pooled,
        "kendall_per_seed": [c["kendall"] for c in cells],
        "bottom_critical": sum(lab == "critical" for lab in bottom) / len(bottom),
        "top_robust": sum(lab == "robust" for lab in top) / len(top),
        "noise": cells[0]["noise"],
        "sensitivity": cells[0]["sensitivity"],
        "train_seconds": [c["train_seconds"] for c in cells],
        "config": config,
    }


def prepare_robustness(config: dict[str, Any]):
    """The robustness study's data, checked.

    What the residual models take, checkpoints within training.
    """
    from ..data import load_dataset
    from ..paths import check_architecture_fits

    split = load_dataset(config["data"], seed=0, limit=config.get("limit"))
    check_architecture_fits(split)
    if config["epochs"] < max(config["taus"]):
        raise MemspaceError(
            f"robustness: checkpoint τ = {max(config['taus'])} is beyond the "
            f"{config['epochs']} training epochs"
        )
    return split


STUDY = Study(
    name="robustness",
    figure="reinitialization",
    summary_keys=(
        "layers",
        "labels",
        "columns",
        "error",
        "trained_error",
        "noise",
        "kendall_pooled",
        "bottom_critical",
        "top_robust",
    ),
    title="Robustness ↔ generalization",
    summary="layer re-initialization, weight noise against tr F",
    configs=ROBUSTNESS_CONFIGS,
    prepare=prepare_robustness,
    run=robustness_study,
)
