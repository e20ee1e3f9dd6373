"""Grokking: the Fisher measures while a network memorises, then generalizes.

On modular addition (:func:`memspace.data.modular_arithmetic`) a network first **stores** its
training pairs (train accuracy 1, test at chance), and long after **compresses** them into a rule
(test accuracy jumps to 1) — Power et al. 2022; Nanda et al. 2023; DeMoss et al. 2024 (a
compression-based complexity rises while memorising and falls when generalizing). This study
tracks memspace's Fisher-geometric measures through that transition (docs/theory.md §5.5).

Per run (arm, seed): full-batch AdamW (the anchor's optimiser: betas (0.9, 0.98)) with the arm's
weight decay, and in the least-action arm λ · A (the prior-anchored predictive action, THEORY v3
§3.1a) added to the loss. Checkpoints on a log-spaced schedule of steps, densified online around
the transition (every ``dense_every`` steps while the test accuracy, probed every
``probe_every`` steps, lies in [0.02, 0.98]). At each checkpoint, on fixed subsets of the train
and of the test pairs (``measure_points`` each):

- accuracy and loss (on every pair of the part);
- the Fisher–Rao norm θᵀFθ and tr F (exact), with the true Fisher;
- the effective dimension Σ λ/(λ + z), z = 10⁻³ λ_max (SLQ, on the train pairs only; λ_max the
  largest Ritz value);
- the Fisher distance from initialisation (θ − θ₀)ᵀF(θ)(θ − θ₀);
- the prior-anchored predictive path (A, A_min, A/A_min);
- E KL(p_θ ‖ p_{θ+δ}) under weight noise δ ~ N(0, σ²I) at one fixed σ;

and, once per checkpoint: the Fisher arc length so far on the train subset, Σ sqrt(Δθᵀ F(θ̄) Δθ)
with F at each segment's midpoint θ̄, over every probe step (dense, as THEORY §4 asks); the weight
norm ‖θ‖₂ (Omnigrok's measure); the Fourier spectrum of the embedding with its top-k
concentration (Nanda et al.'s key frequencies).

Each run keeps its training state (model, optimiser, θ₀, the arc's last point) in its run folder,
saved after each stored checkpoint, so a killed study resumes without recomputing a stored
checkpoint and retrains, bit for bit, at most the steps since the last one.

The claims (g1)–(g4) are :data:`GROKKING_PREDICTIONS`, written before the run; the summary
carries their verdicts, read by code from the stored checkpoints (:func:`grokking_verdicts`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as nnf

from .._errors import MemspaceError
from ..evaluation import (
    Estimate,
    Prediction,
    Verdict,
    decide_direction,
    mean_ci,
    paired_comparison,
)
from .base import Study

__all__ = [
    "COMPLEXITY_MEASURES",
    "GROKKING_CONFIGS",
    "GROKKING_PREDICTIONS",
    "build_modular_model",
    "checkpoint_measures",
    "checkpoint_schedule",
    "grokking_study",
    "grokking_verdicts",
    "run_events",
    "summarise_grokking",
]

_ARMS_FULL = [
    {"name": "wd=0", "weight_decay": 0.0, "lam": 0.0},
    {"name": "wd=0.1", "weight_decay": 0.1, "lam": 0.0},
    {"name": "wd=1", "weight_decay": 1.0, "lam": 0.0},
    {"name": "wd=1+action", "weight_decay": 1.0, "lam": 0.1},
]

GROKKING_CONFIGS = {
    # quick: p = 23 with 60 % of the pairs groks in about 600 steps here (a second of training):
    # the tests' and the demo's version, which checks the plumbing, not the science
    "quick": dict(
        data="modular",
        p=23,
        op="+",
        train_fraction=0.6,
        model="mlp",
        width=64,
        depth=1,
        lr=1e-2,
        betas=[0.9, 0.98],
        steps=1500,
        arms=[_ARMS_FULL[0], _ARMS_FULL[2]],
        seeds=[0],
        checkpoints=14,
        probe_every=25,
        dense_every=100,
        measure_points=128,
        slq_probes=2,
        slq_steps=10,
        noise_sigma=0.01,
        noise_samples=4,
        fourier_k=3,
    ),
    # full (the CPU study): p = 47 with 40 % of the pairs, a one-block residual MLP of width 128
    # (Nanda et al.'s transformer at p = 113 is the GPU configuration: benchmarks/device.sh);
    # weight decay 1 groks in about 5 000 steps here
    "full": dict(
        data="modular",
        p=47,
        op="+",
        train_fraction=0.4,
        model="mlp",
        width=128,
        depth=1,
        lr=3e-3,
        betas=[0.9, 0.98],
        steps=12000,
        arms=_ARMS_FULL,
        seeds=[0, 1, 2, 3, 4],
        checkpoints=40,
        probe_every=50,
        dense_every=200,
        measure_points=256,
        slq_probes=3,
        slq_steps=16,
        noise_sigma=0.01,
        noise_samples=8,
        fourier_k=5,
    ),
}

GROKKING_CONFIGS["anchor"] = dict(
    # Nanda et al.'s configuration: their transformer at p = 113 with 30 % of the pairs, lr 10⁻³
    # (weight decay by arm); about 190 s per 1 000 steps of one seed on one core here, so it is the
    # GPU's (benchmarks/device.sh runs it through experiments/e6_grokking.py --config anchor)
    GROKKING_CONFIGS["full"],
    p=113,
    train_fraction=0.3,
    model="transformer",
    width=128,
    heads=4,
    d_mlp=512,
    depth=1,
    lr=1e-3,
    steps=20000,
    device="cuda",
)

COMPLEXITY_MEASURES = ("effective_dimension", "fisher_rao_norm", "fisher_trace")
"""The measures (g1) and (g2) are about, each read on the train pairs."""

GROKKING_PREDICTIONS = {
    "g1-rise": Prediction(
        "(g1) rise",
        "with weight decay 1, each complexity measure (effective dimension, Fisher–Rao norm, tr F "
        "on the train pairs) rises while the network memorises: its peak exceeds its value at "
        "initialisation",
        "per measure: mean over seeds of log10(peak / initial), seed bootstrap 95 % CI",
        "the interval lies above 0",
        "the interval lies below 0",
    ),
    "g1-fall": Prediction(
        "(g1) fall",
        "with weight decay 1, each complexity measure falls at the transition: its value at the "
        "end lies below its peak",
        "per measure: mean over seeds of log10(final / peak), seed bootstrap 95 % CI",
        "the interval lies below 0",
        "the interval lies above 0 (impossible by construction; a flat curve gives 0)",
    ),
    "g1-no-decay": Prediction(
        "(g1) no decay",
        "without weight decay the network does not generalize in the same steps: its final test "
        "accuracy lies below that of weight decay 1",
        "paired over seeds: final test accuracy (wd = 0) − (wd = 1), bootstrap 95 % CI",
        "the interval lies below 0",
        "the interval lies above 0",
    ),
    "g2": Prediction(
        "(g2) lead",
        "the fall leads: each complexity measure peaks before the test accuracy passes 50 % "
        "(a progress measure in Nanda et al.'s sense)",
        "per measure, weight decay 1: mean over seeds of (grok step − peak step), bootstrap 95 % "
        "CI (in steps)",
        "the interval lies above 0",
        "the interval lies below 0",
    ),
    "g3": Prediction(
        "(g3) least action",
        "the least-action regulariser changes the time to grok against weight decay alone "
        "(faster or slower)",
        "paired over seeds: log10 grok step (wd = 1 + λ A) − log10 grok step (wd = 1); a run that "
        "never groks counts at the last step (censored, said in the note); 95 % CI",
        "the interval excludes 0 (its sign says faster or slower)",
        "— (a two-sided claim: an interval around 0 leaves it not established)",
    ),
    "g4": Prediction(
        "(g4) Fourier",
        "the Fourier concentration of the embedding rises as the complexity falls: from the "
        "effective dimension's peak to the end of training it grows",
        "weight decay 1: mean over seeds of concentration(end) − concentration(peak step), "
        "bootstrap 95 % CI",
        "the interval lies above 0",
        "the interval lies below 0",
    ),
}
"""The claims of issue 22, as written before the full run (docs/theory.md §5.5)."""


# ------------------------------------------------------------------------------------- models


def build_modular_model(config: dict[str, Any], seed: int) -> nn.Module:
    """The configuration's network, drawn with ``seed``: ``model`` is ``mlp`` or ``transformer``.

    ``mlp``: :class:`~memspace.paths.ModularMLP` (width, depth); ``transformer``:
    :class:`~memspace.paths.ModularTransformer` (d_model = width, heads, d_mlp, layers = depth).
    """
    from ..paths.modular import ModularMLP, ModularTransformer

    torch.manual_seed(seed)
    if config["model"] == "mlp":
        return ModularMLP(config["p"], width=config["width"], depth=config["depth"])
    if config["model"] == "transformer":
        return ModularTransformer(
            config["p"],
            d_model=config["width"],
            heads=config.get("heads", 4),
            d_mlp=config.get("d_mlp", 4 * config["width"]),
            layers=config["depth"],
        )
    raise MemspaceError(f"unknown model {config['model']!r}; use 'mlp' or 'transformer'")


# ---------------------------------------------------------------------------------- schedule


def checkpoint_schedule(steps: int, points: int) -> list[int]:
    """The base schedule: step 0 and ``points`` log-spaced steps in [1, steps], rounded, unique.

    Small steps are every step (1, 2, 3, …) where the log grid is denser than integers; the last
    step is always in.
    """
    if steps < 1 or points < 2:
        raise MemspaceError(f"a schedule needs steps ≥ 1 and points ≥ 2, got {steps}, {points}")
    grid = np.unique(np.round(np.geomspace(1, steps, points)).astype(int))
    return [0, *[int(s) for s in grid]]


# ---------------------------------------------------------------------------------- measures


def _flat(params: dict[str, Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in params.values()])


def _accuracy_and_loss(model: nn.Module, data: tuple[Tensor, Tensor]) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(data[0])
        return (
            float((logits.argmax(1) == data[1]).double().mean()),
            float(nnf.cross_entropy(logits, data[1])),
        )


def _noise_kl(model: nn.Module, x: Tensor, sigma: float, samples: int, seed: int) -> float:
    """E_δ E_x KL(p_θ ‖ p_{θ+δ}), δ ~ N(0, σ² I) on every parameter, ``samples`` draws (float64)."""
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    model64 = _as_double(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        log_p = torch.log_softmax(functional_call(model64, params, (x,)), -1)
        total = 0.0
        for _ in range(samples):
            noisy = {
                k: v + sigma * torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device)
                for k, v in params.items()
            }
            log_q = torch.log_softmax(functional_call(model64, noisy, (x,)), -1)
            total += float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return total / samples


def _as_double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double().eval()


def _fisher_measures(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    init: dict[str, Tensor],
    config: dict[str, Any],
    seed: int,
    spectrum: bool,
) -> dict[str, Any]:
    """The Fisher measures of one checkpoint on one subset of pairs (module doc).

    ``spectrum``: also the effective dimension and λ_max (SLQ, ``slq_probes × slq_steps``
    products of F with the same seeded probes at every checkpoint, so the curve over training
    carries no probe-to-probe noise).
    """
    from ..fisher import FisherOperator
    from ..paths import predictive_path

    F = FisherOperator(model, data, kind="true", seed=seed)
    theta = {n: t.detach() for n, t in F.space.tensors().items()}
    out: dict[str, Any] = {}
    if spectrum:
        density = F.spectral_density(
            num_probes=config["slq_probes"], steps=config["slq_steps"], seed=seed
        )
        lam_max = max(float(np.max(nodes)) for nodes in density.nodes)
        z = 1e-3 * max(lam_max, 1e-30)
        out["effective_dimension"] = density.spectral_sum(
            lambda t: np.clip(t, 0, None) / (np.clip(t, 0, None) + z)
        )
        out["lambda_max"] = lam_max
    path = predictive_path(model, data, anchor="prior")
    return {
        **out,
        "fisher_rao_norm": float(F.quad(theta)),
        "fisher_trace": float(F.trace()),
        "distance_from_init": float(F.quad({n: theta[n] - init[n] for n in theta})),
        "action": path.action,
        "least_action": path.least_action,
        "action_ratio": path.ratio,
        "noise_kl": _noise_kl(model, data[0], config["noise_sigma"], config["noise_samples"], seed),
    }


def checkpoint_measures(
    model: nn.Module,
    split: Any,
    init: dict[str, Tensor],
    config: dict[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """Every measure of one checkpoint (module doc), on the train and the test pairs.

    Returns ``{"train": {...}, "test": {...}, "weight_norm", "fourier_concentration",
    "fourier_spectrum"}``; each part holds ``accuracy`` and ``loss`` on every pair of the part
    and the Fisher measures on its first ``measure_points`` pairs (the effective dimension on the
    train pairs only: its SLQ is most of a checkpoint's cost). The pairs are moved to the model's
    device.
    """
    from ..paths.modular import embedding_matrix, fourier_spectrum

    model.eval()
    n = config["measure_points"]
    device = next(model.parameters()).device
    out: dict[str, Any] = {}
    for part, (X, y) in (("train", split.train), ("test", split.test)):
        X, y = X.to(device), y.to(device)
        accuracy, loss = _accuracy_and_loss(model, (X, y))
        out[part] = {
            "accuracy": accuracy,
            "loss": loss,
            **_fisher_measures(model, (X[:n], y[:n]), init, config, seed, part == "train"),
        }
    theta = {k: v.detach() for k, v in model.named_parameters()}
    spectrum = fourier_spectrum(embedding_matrix(model))
    out["weight_norm"] = float(_flat(theta).norm())
    out["fourier_concentration"] = spectrum.concentration(config["fourier_k"])
    out["fourier_spectrum"] = (spectrum.energy / max(spectrum.total, 1e-300)).round(6).tolist()
    model.train()
    return out


def _segment_length(
    model: nn.Module, data: tuple[Tensor, Tensor], start: dict[str, Tensor], seed: int
) -> float:
    """sqrt(Δθᵀ F(θ̄) Δθ) from ``start`` to the model's θ, F at the midpoint θ̄ (true Fisher)."""
    from ..fisher import FisherOperator

    end = {k: v.detach().clone() for k, v in model.named_parameters()}
    midpoint = {k: (start[k] + end[k]) / 2 for k in end}
    with torch.no_grad():
        for k, param in model.named_parameters():
            param.copy_(midpoint[k])
    try:
        F = FisherOperator(model, data, kind="true", seed=seed)
        length = max(float(F.quad({k: end[k] - start[k] for k in F.space.names})), 0.0) ** 0.5
    finally:
        with torch.no_grad():
            for k, param in model.named_parameters():
                param.copy_(end[k])
    return length


# ---------------------------------------------------------------------------------- training


def _state_name(arm: str, seed: int) -> str:
    safe = "".join(c if c.isalnum() or c in "=.-" else "_" for c in arm)
    return f"state-{safe}-seed{seed}.safetensors"


def _save_state(run, name: str, model, optimizer, init, previous, meta: dict[str, Any]) -> None:
    """The run's training state, atomically: weights, AdamW's state, θ₀ and the arc's last point."""
    from safetensors.torch import save

    from ..train import optimizer_tensors

    tensors, optimizer_meta = optimizer_tensors(optimizer)
    tensors = {k: v.cpu() for k, v in tensors.items()}
    for k, param in model.named_parameters():
        tensors[f"model.{k}"] = param.detach().cpu().contiguous()
        tensors[f"init.{k}"] = init[k].cpu().contiguous()
        tensors[f"previous.{k}"] = previous[k].cpu().contiguous()
    metadata = {"state": json.dumps(meta), "optimizer": json.dumps(optimizer_meta)}
    run.write(name, save(tensors, metadata=metadata))


def _load_state(run, name: str, model, optimizer) -> tuple[dict, dict, dict[str, Any]] | None:
    """The state :func:`_save_state` wrote into ``model`` and ``optimizer`` (None: none yet).

    Raises:
        MemspaceError: a damaged file, or one of another configuration's model.
    """
    from safetensors.torch import load

    from ..train import restore_optimizer

    blob = run.read(name)
    if blob is None:
        return None
    try:
        tensors = load(blob)
        size = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + size])["__metadata__"]
        meta, optimizer_meta = json.loads(metadata["state"]), json.loads(metadata["optimizer"])
    except Exception as error:  # safetensors raises its own types; any failure is a damaged file
        raise MemspaceError(
            f"{run.root / name}: not a training state memspace wrote "
            f"({type(error).__name__}); rerun with --overwrite to start the study afresh"
        ) from None
    names = [k for k, _ in model.named_parameters()]
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    if any(
        f"{part}.{k}" not in tensors or tuple(tensors[f"{part}.{k}"].shape) != shapes[k]
        for k in names
        for part in ("model", "init", "previous")
    ):
        raise MemspaceError(
            f"{run.root / name}: its parameters are not this configuration's model; rerun with "
            "--overwrite to start the study afresh"
        )
    with torch.no_grad():
        for k, param in model.named_parameters():
            param.copy_(tensors[f"model.{k}"])
    restore_optimizer(optimizer, tensors, optimizer_meta)
    device = next(model.parameters()).device
    init = {k: tensors[f"init.{k}"].to(device) for k in names}
    previous = {k: tensors[f"previous.{k}"].to(device) for k in names}
    return init, previous, meta


def _cell_key(arm: str, seed: int, step: int) -> str:
    return f"{arm}/seed={seed}/step={step}"


def train_run(
    run,
    store,
    split: Any,
    config: dict[str, Any],
    arm: dict[str, Any],
    seed: int,
    *,
    status: Callable[[str], None] = lambda m: None,
) -> None:
    """Train (or resume) one run of the study and store a cell at each checkpoint (module doc).

    Between a stored cell and the saved state is the crash point ``grokking-cell`` (the tests
    kill the study there: the resumed run must not measure that checkpoint again).
    """
    from .._runs import crash_point
    from ..action import ActionTerm

    if _cell_key(arm["name"], seed, config["steps"]) in store:
        return  # complete: its last checkpoint is stored (its state file is no longer needed)
    device = torch.device(config.get("device", "cpu"))
    model = build_modular_model(config, seed).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config["lr"],
        weight_decay=arm["weight_decay"],
        betas=tuple(config["betas"]),
    )
    term = ActionTerm("predictive", model) if arm["lam"] > 0 else None
    name = _state_name(arm["name"], seed)
    loaded = _load_state(run, name, model, optimizer)
    if loaded is None:
        init = {k: v.detach().clone() for k, v in model.named_parameters()}
        previous = {k: v.clone() for k, v in init.items()}
        meta = {"step": 0, "arc_length": 0.0, "seconds": 0.0}
    else:
        init, previous, meta = loaded
    schedule = set(checkpoint_schedule(config["steps"], config["checkpoints"]))
    X, y = (t.to(device) for t in split.train)
    test = tuple(t.to(device) for t in split.test)
    arc_data = (X[: config["measure_points"]], y[: config["measure_points"]])
    step, arc, seconds = meta["step"], meta["arc_length"], meta["seconds"]
    started = time.perf_counter()
    in_transition = meta.get("in_transition", False)
    while True:
        probe = step % config["probe_every"] == 0
        if probe and step > 0:
            in_transition = 0.02 <= _accuracy_and_loss(model, test)[0] <= 0.98
        dense = in_transition and step % config["dense_every"] == 0
        measure = step in schedule or dense
        if (probe or measure) and step > 0:
            arc += _segment_length(model, arc_data, previous, seed)
            previous = {k: v.detach().clone() for k, v in model.named_parameters()}
        if measure:
            key = _cell_key(arm["name"], seed, step)
            if key not in store:
                status(f"{arm['name']}, seed {seed}: measures at step {step}")
                record = checkpoint_measures(model, split, init, config, seed)
                elapsed = seconds + time.perf_counter() - started
                store.add(
                    key,
                    {
                        "arm": arm["name"],
                        "seed": seed,
                        "step": step,
                        "weight_decay": arm["weight_decay"],
                        "lam": arm["lam"],
                        "arc_length": arc,
                        "seconds": elapsed,
                        **record,
                    },
                )
                crash_point("grokking-cell")
            state_meta = {
                "step": step,
                "arc_length": arc,
                "seconds": seconds + time.perf_counter() - started,
                "in_transition": in_transition,
            }
            _save_state(run, name, model, optimizer, init, previous, state_meta)
        if step >= config["steps"]:
            return
        _train_step(model, optimizer, term, arm["lam"], X, y)
        step += 1


def _train_step(model, optimizer, term, lam: float, X: Tensor, y: Tensor) -> None:
    if term is None:
        loss = nnf.cross_entropy(model(X), y)
    else:
        with term.capture() as record:
            logits = model(X)
        loss = nnf.cross_entropy(logits, y) + lam * term(record, logits)
    if not torch.isfinite(loss):
        raise MemspaceError(f"the training loss became {float(loss)}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# ------------------------------------------------------------------------------ the analysis


def run_events(cells: Sequence[dict[str, Any]], measure: str = "effective_dimension") -> dict:
    """The events of one run's checkpoints (sorted by step).

    ``memorised``: the first step with train accuracy ≥ 0.99; ``grokked``: the first with test
    accuracy ≥ 0.5 (None: never, censored at the last step); ``peak``: the step of the measure's
    largest train value over the whole run (where it starts to fall for good; a window ending at
    the transition would force every peak before it, and (g2) with it); ``initial`` /
    ``peak_value`` / ``final``: its values there; ``rise`` / ``fall``: log10(peak / initial) and
    log10(final / peak) (NaN unless both are positive).
    """
    cells = sorted(cells, key=lambda c: c["step"])
    steps = [c["step"] for c in cells]

    def first(condition) -> int | None:
        return next((c["step"] for c in cells if condition(c)), None)

    grokked = first(lambda c: c["test"]["accuracy"] >= 0.5)
    values = [c["train"][measure] for c in cells]
    top = int(np.argmax(values))
    return {
        "memorised": first(lambda c: c["train"]["accuracy"] >= 0.99),
        "grokked": grokked,
        "censored_at": None if grokked is not None else steps[-1],
        "peak": cells[top]["step"],
        "initial": cells[0]["train"][measure],
        "peak_value": values[top],
        "final": cells[-1]["train"][measure],
        "rise": _log10_ratio(values[top], cells[0]["train"][measure]),
        "fall": _log10_ratio(cells[-1]["train"][measure], values[top]),
        "final_test_accuracy": cells[-1]["test"]["accuracy"],
        "fourier_at_peak": cells[top]["fourier_concentration"],
        "fourier_final": cells[-1]["fourier_concentration"],
    }


def _runs(cells: Sequence[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for cell in cells:
        runs.setdefault((cell["arm"], cell["seed"]), []).append(cell)
    return {k: sorted(v, key=lambda c: c["step"]) for k, v in runs.items()}


def _log10_ratio(a: float, b: float) -> float:
    return math.log10(a / b) if a > 0 and b > 0 else float("nan")


def grokking_verdicts(
    cells: Sequence[dict[str, Any]], reference: str = "wd=1", no_decay: str = "wd=0"
) -> list[dict[str, Any]]:
    """The verdicts of (g1)–(g4) from the stored checkpoints (:data:`GROKKING_PREDICTIONS`).

    Arms missing from the cells leave their claims out. Effects use seed bootstrap intervals
    (:func:`memspace.evaluation.mean_ci`); with one seed there is no interval and every verdict
    is "not established".
    """
    runs = _runs(cells)
    seeds = sorted(s for a, s in runs if a == reference)
    verdicts: list[Verdict] = []
    if not seeds:
        return []
    for measure in COMPLEXITY_MEASURES:
        events = [run_events(runs[(reference, s)], measure) for s in seeds]
        rise, fall = [e["rise"] for e in events], [e["fall"] for e in events]
        verdicts.append(
            _named(decide_direction(GROKKING_PREDICTIONS["g1-rise"], mean_ci(rise)), measure)
        )
        verdicts.append(
            _named(
                decide_direction(GROKKING_PREDICTIONS["g1-fall"], mean_ci(fall), predicted="below"),
                measure,
            )
        )
        grokked = [e for e in events if e["grokked"] is not None]
        lead = [e["grokked"] - e["peak"] for e in grokked]
        verdict = decide_direction(GROKKING_PREDICTIONS["g2"], _mean(lead))
        if len(grokked) < len(events):
            verdict = _noted(
                verdict, f"{len(events) - len(grokked)} run(s) never grokked, left out"
            )
        verdicts.append(_named(verdict, measure))
    if all((no_decay, s) in runs for s in seeds):
        difference = paired_comparison(
            [run_events(runs[(no_decay, s)])["final_test_accuracy"] for s in seeds],
            [run_events(runs[(reference, s)])["final_test_accuracy"] for s in seeds],
        )
        verdicts.append(
            decide_direction(
                GROKKING_PREDICTIONS["g1-no-decay"],
                difference.difference,
                predicted="below",
                p=difference.wilcoxon_p,
            )
        )
    action_arm = next((a for a, _ in runs if a.startswith(reference + "+")), None)
    if action_arm is not None and all((action_arm, s) in runs for s in seeds):
        times, censored = [], 0
        for s in seeds:
            pair = []
            for arm in (action_arm, reference):
                e = run_events(runs[(arm, s)])
                censored += e["grokked"] is None
                pair.append(e["grokked"] if e["grokked"] is not None else e["censored_at"])
            times.append(_log10_ratio(pair[0], pair[1]))
        estimate = mean_ci(times)
        verdict = decide_direction(GROKKING_PREDICTIONS["g3"], estimate, predicted="above")
        if verdict.verdict == "contradicted":  # two-sided: an interval below 0 supports "faster"
            verdict = replace(verdict, verdict="supported")
        verdicts.append(
            _noted(
                verdict,
                ("faster" if estimate.value < 0 else "slower")
                + f" with {action_arm}; {censored} censored run(s)",
            )
        )
    events = [run_events(runs[(reference, s)]) for s in seeds]
    gain = [e["fourier_final"] - e["fourier_at_peak"] for e in events]
    verdicts.append(decide_direction(GROKKING_PREDICTIONS["g4"], mean_ci(gain)))
    return [v.as_dict() for v in verdicts]


def _mean(values: Sequence[float]) -> Estimate:
    """:func:`mean_ci`, or an estimate without a value when there is nothing to average."""
    if not values:
        return Estimate(math.nan, math.nan, math.nan, 0.95, 0, 0, "no run to average")
    return mean_ci(values)


def _named(verdict: Verdict, measure: str) -> Verdict:
    return replace(verdict, claim=f"{verdict.claim}: {measure.replace('_', ' ')}")


def _noted(verdict: Verdict, note: str) -> Verdict:
    return replace(verdict, note=f"{verdict.note}; {note}")


def summarise_grokking(cells: Sequence[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """The study's summary: per run its curves and events, the verdicts, the configuration."""
    runs = _runs(cells)
    curves = []
    for (arm, seed), run_cells in runs.items():
        curves.append(
            {
                "arm": arm,
                "seed": seed,
                "steps": [c["step"] for c in run_cells],
                "train_accuracy": [c["train"]["accuracy"] for c in run_cells],
                "test_accuracy": [c["test"]["accuracy"] for c in run_cells],
                **{
                    m: [c["train"][m] for c in run_cells]
                    for m in (
                        *COMPLEXITY_MEASURES,
                        "distance_from_init",
                        "action_ratio",
                        "noise_kl",
                    )
                },
                "arc_length": [c["arc_length"] for c in run_cells],
                "weight_norm": [c["weight_norm"] for c in run_cells],
                "fourier_concentration": [c["fourier_concentration"] for c in run_cells],
                "spectrum_first": run_cells[0]["fourier_spectrum"],
                "spectrum_last": run_cells[-1]["fourier_spectrum"],
                "events": {m: run_events(run_cells, m) for m in COMPLEXITY_MEASURES},
                "seconds": run_cells[-1]["seconds"],
            }
        )
    return {
        "config": dict(config),
        "runs": curves,
        "predictions": [dict(p.as_dict(), key=k) for k, p in GROKKING_PREDICTIONS.items()],
        "verdicts": grokking_verdicts(cells),
    }


# -------------------------------------------------------------------------------- the study


def grokking_study(
    run,
    config: dict[str, Any],
    *,
    split=None,
    status: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Run (or resume) the grokking study in the run folder ``run``; return its summary."""
    from ._cells import CellStore

    split = split if split is not None else prepare_grokking(config)
    store = CellStore(run)
    runs = [(arm, seed) for seed in config["seeds"] for arm in config["arms"]]  # paired sets first
    for done, (arm, seed) in enumerate(runs):
        progress(done, len(runs))
        status(f"{arm['name']}, seed {seed}: training {config['steps']} steps")
        train_run(run, store, split, config, arm, seed, status=status)
    progress(len(runs), len(runs))
    return summarise_grokking(store.values(), config)


def prepare_grokking(config: dict[str, Any]):
    """The study's pairs: :func:`~memspace.data.modular_arithmetic` (p, op, train fraction)."""
    from ..data import modular_arithmetic

    if config["data"] != "modular":
        raise MemspaceError(
            f"the grokking study runs on modular arithmetic (--data modular), not "
            f"{config['data']!r}"
        )
    return modular_arithmetic(
        config["p"], config["op"], train_fraction=config["train_fraction"], seed=0
    )


STUDY = Study(
    name="grokking",
    figure="grokking_curves",
    summary_keys=("config", "runs", "verdicts", "predictions"),
    title="Memorise, then compress: grokking",
    summary="modular addition through memorisation and grokking, with the Fisher measures at "
    "log-spaced checkpoints",
    configs=GROKKING_CONFIGS,
    prepare=prepare_grokking,
    run=grokking_study,
    demo_data=lambda data, shape: None,  # its own pairs
    data_help="modular (a + b mod p; p, the operation and the train fraction are the "
    "configuration's)",
)
