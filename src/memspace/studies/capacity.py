"""Capacity ↔ complexity: how much a network stores, and what storing it costs (docs/theory.md §5).

**Memorisation.** N training inputs with labels drawn uniformly over C classes (seeded),
or their real labels; a network is trained on them until it fits all N (100 % train
accuracy) or a step budget runs out (:func:`memorise`). Each *action budget* is a weight
λ of the predictive action in the loss (λ = 0 included). N*(λ) is the largest N fitted
under λ. Random labels store N·log₂C bits; the cost per bit is the slope of the
predictive action of the fitted networks against the bits (least squares, with its
standard error).

**The closed-form anchor.** For N points in general position in d dimensions and random
±1 labels, a homogeneous linear classifier separates them with probability
P(N, d) = 2^{1−N} Σ_{k<d} binom(N−1, k) (Cover 1965, the function-counting theorem),
which is ½ at N = 2d. :func:`cover_anchor` runs the same memorisation on a linear model
over Gaussian points and recovers N* ≈ 2d; an exact linear-programming separability test
is reported beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.stats import linregress
from torch import Tensor, nn

from .._errors import MemspaceError
from ..action import ActionTerm
from ..complexity import fisher_distance, fisher_rao_norm, trajectory_length
from ..fisher import FisherOperator
from ..paths import block_sensitivity, predictive_path
from ..train import evaluate, optimizer_step, penalised_loss, snapshot
from .base import Study
from .measure import effective_dimension

__all__ = [
    "Memorisation",
    "capacity_threshold",
    "cell_data",
    "cost_per_bit",
    "cover_anchor",
    "cover_probability",
    "linearly_separable",
    "measure_cell",
    "memorise",
    "memorise_population",
    "random_labels",
]


def cover_probability(n: int, d: int) -> float:
    """P(N points in general position in R^d with random ±1 labels are homogeneously separable).

    Cover's function-counting theorem: C(N, d) = 2 Σ_{k=0}^{d−1} binom(N−1, k) of the 2^N
    labellings are separable, so P = 2^{1−N} Σ_{k<d} binom(N−1, k); P = 1 for N ≤ d, ½ at N = 2d.
    """
    if n <= d:
        return 1.0
    return math.fsum(math.comb(n - 1, k) for k in range(d)) / 2 ** (n - 1)


def linearly_separable(X: np.ndarray, signs: np.ndarray) -> bool:
    """Whether some w has sign(w·x_i) = s_i for all i (homogeneous), by a linear program.

    Feasibility of s_i w·x_i ≥ 1 (any strict separator can be scaled to margin 1).
    """
    A = -(signs[:, None] * X)
    result = linprog(
        np.zeros(X.shape[1]),
        A_ub=A,
        b_ub=-np.ones(len(X)),
        bounds=[(None, None)] * X.shape[1],
        method="highs",
    )
    return result.status == 0


def random_labels(n: int, classes: int, seed: int) -> Tensor:
    """N labels uniform over 0..classes−1 from a generator seeded with ``seed`` [n] int64."""
    return torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))


@dataclass
class Memorisation:
    """What :func:`memorise` returns.

    Attributes:
        fitted: all N training points classified correctly.
        steps: optimiser steps taken; train_acc: the final training accuracy.
        snapshots: parameter states at steps 0, 1, 2, 4, 8, … and the last (for the
            Fisher arc length of training).
        seconds: wall time (in a population, its share: the population's time over K).
        diverged: why the member stopped when its loss became NaN or ±Inf (a population's
            member; :func:`memorise` raises instead).
    """

    fitted: bool
    steps: int
    train_acc: float
    snapshots: list[dict[str, Tensor]] = field(repr=False)
    seconds: float
    diverged: str | None = None


def memorise(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    action: str | None = None,
    lam: float = 0.0,
    max_steps: int = 2000,
    lr: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
    check_every: int = 10,
) -> Memorisation:
    """Train until every (x, y) is fitted or ``max_steps`` steps, minimising CE + λ·A.

    Adam; mini-batches of ``batch_size`` in seeded random order (full batch when N ≤
    batch_size); the training accuracy is checked every ``check_every`` steps.
    """
    if max_steps < 1 or batch_size < 1:
        raise MemspaceError("max_steps and batch_size must be ≥ 1")
    started = time.time()
    term = ActionTerm(action, model) if action else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    snapshots = [snapshot(model)]
    n, step, order, cursor = len(X), 0, torch.arange(len(X)), len(X)
    fitted = False
    model.train()
    while step < max_steps:
        if cursor >= n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        total, _, _ = penalised_loss(
            lambda: model(X[idx]),
            lambda logits: nn.functional.cross_entropy(logits, y[idx]),
            term,
            lam,
            generator,
        )
        optimizer_step(optimizer, total, f"at step {step + 1}")
        step += 1
        if step & (step - 1) == 0:  # a power of two
            snapshots.append(snapshot(model))
        if step % check_every == 0 or step == max_steps:
            fitted = evaluate(model, (X, y))[1] == 1.0  # evaluate restores training mode
            if fitted:
                break
    model.eval()
    if step & (step - 1) != 0:
        snapshots.append(snapshot(model))
    return Memorisation(fitted, step, evaluate(model, (X, y))[1], snapshots, time.time() - started)


@dataclass
class _Memoriser:
    """One member of :func:`memorise_population`: its data, order, position and snapshots."""

    index: int
    X: Tensor
    y: Tensor
    generator: torch.Generator
    order: Tensor
    cursor: int
    snapshots: list[dict[str, Tensor]]
    step: int = 0
    fitted: bool = False
    diverged: str | None = None
    seconds: float = 0.0


def memorise_population(
    models: Sequence[nn.Module],
    data: Sequence[tuple[Tensor, Tensor]],
    *,
    actions: Sequence[str | None],
    lams: Sequence[float],
    seeds: Sequence[int],
    max_steps: int = 2000,
    lr: float = 1e-2,
    batch_size: int = 256,
    check_every: int = 10,
) -> list[Memorisation]:
    """:func:`memorise` for K networks of one architecture at once (:mod:`memspace.population`).

    Member k is trained exactly as ``memorise(models[k], *data[k], action=actions[k],
    lam=lams[k], seed=seeds[k], ...)`` alone (its own generator for order and probes, its own
    data, its own stop when it fits every point); a member whose loss diverges is stopped
    (``diverged``) while the others go on. Afterwards each model holds its trained weights
    (in eval mode), as after :func:`memorise`.
    """
    from ..population import Member, Population, PopulationTrainer

    if max_steps < 1 or batch_size < 1:
        raise MemspaceError("max_steps and batch_size must be ≥ 1")
    if not len(models) == len(data) == len(actions) == len(lams) == len(seeds):
        raise MemspaceError("memorise_population needs one data set, action, λ and seed per model")
    started = time.time()
    population = Population(models)
    members = [
        Member(seed=seed, action=action, lam=lam if action else 0.0, lr=lr)
        for seed, action, lam in zip(seeds, actions, lams)
    ]
    trainer = PopulationTrainer(population, members)
    runs = [
        _Memoriser(
            k,
            X,
            y,
            torch.Generator().manual_seed(seed),
            torch.arange(len(X)),
            len(X),
            [population.state(k)],
        )
        for k, ((X, y), seed) in enumerate(zip(data, seeds))
    ]
    active = list(runs)
    while active:
        batches = {}
        for run in active:
            n = len(run.X)
            if run.cursor >= n:
                run.order, run.cursor = torch.randperm(n, generator=run.generator), 0
            idx = run.order[run.cursor : run.cursor + batch_size]
            run.cursor += batch_size
            batches[run.index] = ((run.X[idx], run.y[idx]), run.generator)
        losses = trainer.step(batches)
        still = []
        for run in active:
            total = losses[run.index][0]
            if not math.isfinite(total):
                run.diverged = f"the loss became {total} at step {run.step + 1}"
            else:
                run.step += 1
                if run.step & (run.step - 1) == 0:  # a power of two
                    run.snapshots.append(population.state(run.index))
                if run.step % check_every == 0 or run.step == max_steps:
                    model = population.scratch(run.index)
                    run.fitted = evaluate(model, (run.X, run.y))[1] == 1.0
                if not run.fitted and run.step < max_steps:
                    still.append(run)
                    continue
            run.seconds = (time.time() - started) / len(runs)
        active = still
    results = []
    for run in runs:
        if run.step & (run.step - 1) != 0:
            run.snapshots.append(population.state(run.index))
        accuracy = evaluate(population.scratch(run.index), (run.X, run.y))[1]
        results.append(
            Memorisation(run.fitted, run.step, accuracy, run.snapshots, run.seconds, run.diverged)
        )
    for k, model in enumerate(models):
        model.load_state_dict(population.state(k))
        model.eval()
    return results


def cell_data(
    train: tuple[Tensor, Tensor], classes: int, kind: str, n: int, seed: int
) -> tuple[Tensor, Tensor]:
    """One capacity cell's N points (a seeded subset) with random (seeded) or real labels."""
    X_all, y_all = train
    pick = torch.randperm(len(X_all), generator=torch.Generator().manual_seed(seed))[:n]
    y = random_labels(n, classes, seed * 7919 + n) if kind == "random" else y_all[pick]
    return X_all[pick], y


def capacity_threshold(
    sizes: Sequence[int], fitted_fraction: Sequence[float]
) -> dict[str, float | None]:
    """N* two ways: the largest N with fitted fraction ≥ ½, and where the fraction crosses ½.

    The crossing is linear interpolation between the last grid point at or above ½ and
    the next one below it (None when the fraction never falls below ½ on the grid).
    """
    sizes, frac = np.asarray(sizes, dtype=float), np.asarray(fitted_fraction, dtype=float)
    order = np.argsort(sizes)
    sizes, frac = sizes[order], frac[order]
    above = np.nonzero(frac >= 0.5)[0]
    largest = float(sizes[above[-1]]) if len(above) else None
    crossing = None
    for i in range(len(sizes) - 1):
        if frac[i] >= 0.5 > frac[i + 1]:
            crossing = float(
                sizes[i] + (frac[i] - 0.5) / (frac[i] - frac[i + 1]) * (sizes[i + 1] - sizes[i])
            )
    return {"largest_fitted": largest, "crossing": crossing}


def cover_anchor(
    d: int = 5,
    sizes: Sequence[int] | None = None,
    trials: int = 24,
    *,
    seed: int = 0,
    max_steps: int = 1000,
    lr: float = 0.5,
) -> dict[str, Any]:
    """The capacity study on a linear model, against Cover's P(N, d) (module doc).

    Returns per N: the fraction fitted by :func:`memorise` (a bias-free ``nn.Linear(d, 2)``
    on N standard Gaussian points with random labels), the exact LP-separable fraction,
    Cover's P(N, d), and N* from :func:`capacity_threshold` for both, with 2d beside them.
    """
    sizes = list(sizes or range(2, 4 * d + 1, 2))
    rng = np.random.default_rng(seed)
    fitted, separable = [], []
    for n in sizes:
        data, models = [], []
        for trial in range(trials):
            X = rng.standard_normal((n, d))
            labels = rng.integers(0, 2, n)
            torch.manual_seed(seed * 100_003 + n * 1009 + trial)
            models.append(nn.Linear(d, 2, bias=False).double())
            data.append((X, labels))
        # the trials of one N train as one population, each exactly as memorise alone
        results = memorise_population(
            models,
            [(torch.from_numpy(X), torch.from_numpy(labels)) for X, labels in data],
            actions=[None] * trials,
            lams=[0.0] * trials,
            seeds=list(range(trials)),
            max_steps=max_steps,
            lr=lr,
            batch_size=n,
            check_every=5,
        )
        fitted.append(sum(result.fitted for result in results) / trials)
        separable.append(
            sum(linearly_separable(X, 2.0 * labels - 1.0) for X, labels in data) / trials
        )
    closed = [cover_probability(n, d) for n in sizes]
    return {
        "d": d,
        "sizes": sizes,
        "trials": trials,
        "fitted_fraction": fitted,
        "separable_fraction": separable,
        "cover_probability": closed,
        "n_star_fitted": capacity_threshold(sizes, fitted),
        "n_star_separable": capacity_threshold(sizes, separable),
        "n_star_cover": capacity_threshold(sizes, closed),
        "two_d": 2 * d,
    }


def measure_cell(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    memorisation: Memorisation,
    model_factory: Callable[[], nn.Module],
    *,
    seed: int = 0,
    max_points: int = 512,
) -> dict[str, Any]:
    """The measures of one memorising network on its training points (module doc).

    Every measure is a mean over data points; above ``max_points`` memorised points it is
    taken on the first ``max_points`` of them (already a random subset), an unbiased estimate.
    """
    data = (X[:max_points], y[:max_points])
    out: dict[str, Any] = {
        "fitted": memorisation.fitted,
        "steps": memorisation.steps,
        "train_acc": memorisation.train_acc,
        "train_seconds": memorisation.seconds,
    }
    path = predictive_path(model, data)  # v3: from the class prior
    out.update(
        path_anchor=path.anchor,
        predictive_action=path.action,
        least_action=path.least_action,
        action_ratio=path.ratio,
        predictive_length=path.length,
        action_ratio_stem=predictive_path(model, data, anchor="stem").ratio,
    )
    out["kinetic_action"] = block_sensitivity(model, data, deletion=False).kinetic_action
    out["fisher_rao_norm"] = fisher_rao_norm(model, data)
    F = FisherOperator(model, data, seed=seed)
    out["fisher_trace"] = float(F.trace())
    out["effective_dimension"] = effective_dimension(F)[0]
    out["fisher_distance_from_init"] = fisher_distance(model, memorisation.snapshots[0], data)
    out["arc_length"] = trajectory_length(memorisation.snapshots, model_factory, data).length
    return out


def cost_per_bit(bits: Sequence[float], action: Sequence[float]) -> dict[str, float]:
    """Least-squares slope of action against bits stored, with its standard error and R²."""
    if len(bits) < 3 or len(set(bits)) < 2:
        return {
            "slope": math.nan,
            "stderr": math.nan,
            "intercept": math.nan,
            "r2": math.nan,
            "points": len(bits),
        }
    fit = linregress(np.asarray(bits, dtype=float), np.asarray(action, dtype=float))
    return {
        "slope": float(fit.slope),
        "stderr": float(fit.stderr),
        "intercept": float(fit.intercept),
        "r2": float(fit.rvalue**2),
        "points": len(bits),
    }


# ---------------------------------------------------------------------------------------------- the
# study
CAPACITY_CONFIGS = {
    "quick": dict(
        data="digits",
        sizes=[50, 100, 200],
        lambdas=[0.0, 1.0],
        kinds=["random", "real"],
        seeds=[0],
        width=16,
        depth=4,
        max_steps=400,
        lr=1e-2,
        batch_size=256,
        anchor=dict(d=4, sizes=[4, 6, 8, 10, 12], trials=12),
    ),
    "full": dict(
        data="digits",
        sizes=[50, 100, 200, 400, 800],
        lambdas=[0.0, 1.0],
        kinds=["random", "real"],
        seeds=[0, 1, 2],
        width=32,
        depth=8,
        max_steps=3000,
        lr=3e-3,
        batch_size=256,
        anchor=dict(d=10, sizes=list(range(12, 33, 2)), trials=40),
    ),
}


POPULATION_SIZE = 16
"""Cells trained together as one population (a kill loses at most one population's training)."""


def _cell_key(kind: str, n: int, lam: float, seed: int) -> str:
    return f"{kind}/N={n}/lam={lam:g}/seed={seed}"


def capacity_study(
    run,
    config: dict[str, Any],
    *,
    split=None,
    status: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Run (or resume) the capacity study in the run folder ``run`` and return its summary.

    Every cell (label kind, N, λ, seed) is stored as soon as it is measured (``cells.jsonl``);
    a rerun skips the stored ones. Summary: N*(λ) for random and real labels, the cost per
    bit of random labels per λ, and the Cover anchor.
    """
    from ..data import load_dataset
    from ..paths import ResidualMLP
    from ._cells import CellStore

    split = split or load_dataset(config["data"], seed=0)
    if len(split.input_shape) != 1:
        raise MemspaceError(
            f"the capacity study trains residual MLPs on vectors; {config['data']} has samples of "
            f"shape {split.input_shape}"
        )
    X_all, y_all = split.train
    classes = split.num_classes
    too_big = [n for n in config["sizes"] if n > len(X_all)]
    if too_big:
        raise MemspaceError(
            f"N = {too_big[0]} exceeds the {len(X_all)} training points of {config['data']}"
        )
    store = CellStore(run)
    cells = [
        (kind, n, float(lam), seed)
        for kind in config["kinds"]
        for n in config["sizes"]
        for lam in config["lambdas"]
        for seed in config["seeds"]
    ]
    total = len(cells) + 1
    pending = [cell for cell in cells if _cell_key(*cell) not in store]
    progress(total - 1 - len(pending), total)
    factory = lambda: ResidualMLP(X_all.shape[1], config["width"], config["depth"], classes)  # noqa: E731
    for start in range(0, len(pending), POPULATION_SIZE):
        chunk = pending[start : start + POPULATION_SIZE]
        status(
            f"capacity cells {start + 1}–{start + len(chunk)} of {len(pending)}, trained together"
        )
        data, models = [], []
        for kind, n, lam, seed in chunk:
            data.append(cell_data(split.train, classes, kind, n, seed))
            torch.manual_seed(seed)
            models.append(factory())
        results = memorise_population(
            models,
            data,
            actions=["predictive" if lam > 0 else None for _, _, lam, _ in chunk],
            lams=[lam for _, _, lam, _ in chunk],
            seeds=[seed for *_, seed in chunk],
            max_steps=config["max_steps"],
            lr=config["lr"],
            batch_size=config["batch_size"],
        )
        for (kind, n, lam, seed), model, (X, y), result in zip(chunk, models, data, results):
            if result.diverged:
                raise MemspaceError(
                    f"capacity cell {_cell_key(kind, n, lam, seed)}: {result.diverged}; lower "
                    "the learning rate or λ"
                )
            record = measure_cell(model, X, y, result, factory, seed=seed)
            store.add(
                _cell_key(kind, n, lam, seed),
                {
                    "kind": kind,
                    "n": n,
                    "lam": lam,
                    "seed": seed,
                    "bits": n * math.log2(classes),
                    **record,
                },
            )
        progress(total - 1 - len(pending) + start + len(chunk), total)
    if "anchor" not in store:
        status("Cover anchor (linear model)")
        store.add("anchor", {"anchor": cover_anchor(**config["anchor"])})
    progress(total, total)
    return summarise_capacity(
        [c for c in store.values() if c["key"] != "anchor"], store["anchor"]["anchor"], config
    )


def summarise_capacity(
    cells: list[dict[str, Any]], anchor: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    """N*(λ) per label kind, cost per bit per λ, mean measures per (kind, N, λ), and the anchor."""
    n_star, per_bit, table = {}, {}, []
    for kind in config["kinds"]:
        for lam in config["lambdas"]:
            rows = [c for c in cells if c["kind"] == kind and c["lam"] == float(lam)]
            sizes = sorted({c["n"] for c in rows})
            fractions = [np.mean([c["fitted"] for c in rows if c["n"] == n]) for n in sizes]
            fitted_sizes = [n for n, f in zip(sizes, fractions) if f >= 0.5]
            n_star[f"{kind}/{lam:g}"] = max(fitted_sizes) if fitted_sizes else 0
            fitted = [c for c in rows if c["fitted"]]
            per_bit[f"{kind}/{lam:g}"] = cost_per_bit(
                [c["bits"] for c in fitted], [c["predictive_action"] for c in fitted]
            )
            for n, fraction in zip(sizes, fractions):
                same = [c for c in rows if c["n"] == n]
                means = {
                    key: float(np.mean([c[key] for c in same]))
                    for key in (
                        "steps",
                        "predictive_action",
                        "least_action",
                        "action_ratio",
                        "kinetic_action",
                        "fisher_rao_norm",
                        "fisher_trace",
                        "effective_dimension",
                        "fisher_distance_from_init",
                        "arc_length",
                    )
                }
                table.append(
                    {
                        "kind": kind,
                        "lam": float(lam),
                        "n": n,
                        "bits": same[0]["bits"],
                        "fitted_fraction": float(fraction),
                        **means,
                    }
                )
    return {
        "n_star": n_star,
        "cost_per_bit": per_bit,
        "table": table,
        "anchor": anchor,
        "config": config,
    }


def prepare_capacity(config: dict[str, Any]):
    """The capacity study's data, checked: real vectors, with at least the largest N of the grid."""
    from ..data import load_dataset

    split = load_dataset(config["data"], seed=0, limit=config.get("limit"))
    if len(split.input_shape) != 1 or not split.train[0].is_floating_point():
        raise MemspaceError(
            f"the capacity study trains residual MLPs on real vectors; {config['data']} has "
            f"samples of shape {split.input_shape}"
        )
    too_big = [n for n in config["sizes"] if n > len(split.train[0])]
    if too_big:
        raise MemspaceError(
            f"capacity grid: N = {too_big[0]} exceeds the {len(split.train[0])} training points "
            f"of {config['data']}"
        )
    return split


# It needs vectors
STUDY = Study(
    name="capacity",
    figure="capacity",
    summary_keys=("n_star", "cost_per_bit", "anchor", "table"),
    title="Capacity ↔ complexity",
    summary="memorisation under an action budget, with the Cover anchor",
    configs=CAPACITY_CONFIGS,
    prepare=prepare_capacity,
    run=capacity_study,
    demo_data=lambda data, shape: data if len(shape) == 1 else "digits",
)
