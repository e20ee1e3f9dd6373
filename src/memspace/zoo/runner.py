"""Train, measure and evaluate a zoo: joblib (loky) by default, a Dask cluster when given.

:func:`run_zoo` trains every model of the grid that the database does not hold yet, in
parallel through joblib — the loky process pool by default, or ``joblib``'s Dask backend
on a ``distributed`` cluster when a scheduler address is given (the same code path) —
and commits each model with its measures as it arrives (:class:`~memspace.zoo.store.ZooStore`).
Each model: a residual MLP trained with Adam on ``train_size`` training points with
``label_noise`` of their labels replaced (seeded), minimising cross-entropy + λ·A (the
predictive action), until the training cross-entropy reaches ``stop.target_ce``, the
training accuracy ``stop.target_acc`` (on the labels it was given, noisy ones included) or
``stop.max_epochs``; initial and final weights saved as safetensors.

Measures: memspace's (Fisher–Rao norm, tr F, effective dimension, the predictive action,
its least action and their ratio, the largest block sensitivity, kinetic action, Fisher
distance from initialisation, Fisher arc length of training over the epochs) and the
literature's (:func:`memspace.zoo.measures.generalization_measures`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import MemspaceError
from .._runs import crash_point
from .grid import expand, load_grid
from .store import ZooStore

__all__ = [
    "DB",
    "SIZE_ADJUSTMENTS",
    "adjusted_measures",
    "die_with_parent",
    "evaluate_zoo",
    "leaderboard_points",
    "measure_zoo",
    "psi_without",
    "remeasure",
    "run_zoo",
    "train_and_measure",
    "train_group_and_measure",
    "zoo_grid",
]

DB = "zoo.sqlite"
SCHEDULER_TIMEOUT_S = 20.0
"""How long a Dask scheduler has to accept the connection *and* answer the handshake."""
SHARPNESS_SEARCH = dict(iterations=10, restarts=3, eval_batches=5, ascent_steps=10)
EXPECTED_MEASURES = (
    "fisher_rao_norm",
    "fisher_trace",
    "effective_dimension",
    "predictive_action",
    "action_ratio",
    "action_ratio_stem",
    "PACBAYES_MAG_FLATNESS",
    "SHARPNESS_MAG_FLATNESS",
    "PATH_NORM",
)
DIAGNOSTICS = {
    "margin_signed",
    "pacbayes_sigma",
    "pacbayes_deviation",
    "pacbayes_mag_sigma",
    "pacbayes_mag_deviation",
    "sharpness_alpha",
    "sharpness_deviation",
    "sharpness_mag_alpha",
    "sharpness_mag_deviation",
}


@functools.lru_cache(maxsize=2)
def _flat_split(data: str):
    """The zoo's data set, loaded once per process (a group's members share it, read-only)."""
    from ..data import load_dataset

    split = load_dataset(data, seed=0)
    if len(split.input_shape) > 1:  # images: the zoo's residual MLPs read them flattened
        split = dataclasses.replace(
            split,
            train=(split.train[0].flatten(1), split.train[1]),
            test=(split.test[0].flatten(1), split.test[1]),
        )
    return split


def _data(data: str, hparams: dict[str, Any], seed: int):
    import torch

    from ..data import DATASETS

    # a named set is loaded once per process; a user's .npz is read afresh (it may change)
    split = _flat_split(data) if data in DATASETS else _flat_split.__wrapped__(data)
    X, y = split.train
    n = hparams["train_size"] or len(X)
    if n > len(X):
        raise MemspaceError(f"train_size {n} exceeds the {len(X)} training points of {data}")
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(X), generator=generator)[:n]
    X, y = X[pick], y[pick].clone()
    noisy = torch.rand(n, generator=generator) < hparams["label_noise"]
    y[noisy] = torch.randint(split.num_classes, (int(noisy.sum()),), generator=generator)
    return split, (X, y)


def die_with_parent(parent: int | None) -> None:
    """In a pool worker started by process ``parent``: exit as soon as that process is gone.

    A loky worker whose parent is killed (``kill -9``, an OOM kill) would otherwise live on
    as an orphan, training models nobody will store. A daemon thread polls the parent
    PID twice a second and ends this process when it changes. Nothing happens in the
    parent itself (a one-worker pool runs there) or on a remote Dask worker (whose parent
    is not ``parent``).
    """
    import threading

    if parent is None or os.getpid() == parent or os.getppid() != parent:
        return
    if die_with_parent.__dict__.get("watching") == parent:
        return
    die_with_parent.watching = parent

    def watch() -> None:
        import time as clock

        while os.getppid() == parent:
            clock.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="memspace-parent-watch", daemon=True).start()


def train_and_measure(
    model: dict[str, Any],
    data: str,
    stop: dict[str, Any],
    weights_dir: str,
    measures: bool = True,
    parent: int | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train one model of the zoo, save its weights, measure it (a group of one)."""
    return train_group_and_measure([model], data, stop, weights_dir, measures, parent)[0]


@dataclass
class _ZooMember:
    """One model of a group: its data, its epoch's batches and the states of its training."""

    spec: dict[str, Any]
    split: Any
    data: tuple[Any, Any]
    generator: Any
    initial: dict[str, Any]
    states: list[dict[str, Any]]
    batches: list[Any] = field(default_factory=list)
    position: int = 0
    epochs: int = 0
    train_ce: float = math.inf
    seconds: float = 0.0


def train_group_and_measure(
    models: list[dict[str, Any]],
    data: str,
    stop: dict[str, Any],
    weights_dir: str,
    measures: bool = True,
    parent: int | None = None,
) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """Train models of one architecture together, save their weights, measure each (a worker task).

    The models form one :class:`~memspace.population.Population`; each is trained exactly as
    it would be alone (Adam with its learning rate and weight decay, its data, its order and
    probes from a generator seeded with seed + 1, epochs until its training cross-entropy
    reaches ``stop.target_ce``, its training accuracy ``stop.target_acc``, or ``stop.max_epochs``),
    then measured on its own. A model is *converged* when it met a target (not the cap).

    ``parent``: the PID of the process that runs the pool, which this worker dies with
    (:func:`die_with_parent`).

    Raises:
        MemspaceError: models of different architectures, or a model whose loss diverges
            (naming it; the zoo refuses it as a single model's training did).
    """
    import torch

    die_with_parent(parent)
    from ..paths import ResidualMLP
    from ..population import Member, Population, PopulationTrainer
    from ..train import evaluate, snapshot

    torch.set_num_threads(1)  # identical numbers on any pool or cluster
    crash_point("zoo-train-start")
    started = time.time()
    group, nets = [], []
    for model in models:
        hp, seed = model["hparams"], model["seed"]
        split, (X, y) = _data(data, hp, seed)
        torch.manual_seed(seed)
        net = ResidualMLP(X.shape[1], hp["width"], hp["depth"], split.num_classes)
        initial = snapshot(net)
        group.append(
            _ZooMember(
                model, split, (X, y), torch.Generator().manual_seed(seed + 1), initial, [initial]
            )
        )
        nets.append(net)
    population = Population(nets)
    trainer = PopulationTrainer(
        population,
        [
            Member(
                seed=m.spec["seed"],
                action="predictive" if m.spec["hparams"]["lam"] > 0 else None,
                lam=m.spec["hparams"]["lam"] if m.spec["hparams"]["lam"] > 0 else 0.0,
                lr=m.spec["hparams"]["lr"],
                weight_decay=m.spec["hparams"]["weight_decay"],
            )
            for m in group
        ],
    )
    target = _Target(stop.get("target_ce"), stop.get("target_acc"))
    active = [k for k in range(len(group)) if stop["max_epochs"] > 0]
    while active:
        batches = {}
        for k in active:
            member = group[k]
            if member.position == len(member.batches):
                order = torch.randperm(len(member.data[0]), generator=member.generator)
                member.batches = list(order.split(member.spec["hparams"]["batch_size"]))
                member.position = 0
            idx = member.batches[member.position]
            member.position += 1
            X, y = member.data
            batches[k] = ((X[idx], y[idx]), member.generator)
        losses = trainer.step(batches)
        still = []
        for k in active:
            member = group[k]
            if not math.isfinite(losses[k][0]):
                raise MemspaceError(
                    f"the loss became {losses[k][0]} training zoo model {member.spec['id']} at "
                    f"epoch {member.epochs + 1}; lower the learning rate or λ"
                )
            if member.position == len(member.batches):
                member.epochs += 1
                member.train_ce, train_acc = evaluate(population.scratch(k).eval(), member.data)
                member.states.append(population.state(k))
                if member.epochs >= stop["max_epochs"] or target.met(member.train_ce, train_acc):
                    member.seconds = (time.time() - started) / len(group)
                    continue
            still.append(k)
        active = still
    return [
        _finish(member, population.member(k), weights_dir, measures, target)
        for k, member in enumerate(group)
    ]


@dataclass(frozen=True)
class _Target:
    """A zoo's stopping targets: train CE at most ``ce`` or train accuracy at least ``acc``.

    With neither given, no model converges (each trains to the epoch cap), as a CE target
    of 0 would rule.
    """

    ce: float | None
    acc: float | None

    def met(self, train_ce: float, train_acc: float) -> bool:
        return (self.ce is not None and train_ce <= self.ce) or (
            self.acc is not None and train_acc >= self.acc
        )


def _finish(member: _ZooMember, net, weights_dir: str, measures: bool, target: _Target):
    """Save a trained zoo model's weights and measure it: its row and its measures."""
    from safetensors.torch import save

    from .._runs import write_atomic
    from ..paths import ResidualMLP
    from ..train import evaluate

    started = time.time()
    model, split, (X, y) = member.spec, member.split, member.data
    hp, seed = model["hparams"], model["seed"]

    def factory():
        return ResidualMLP(X.shape[1], hp["width"], hp["depth"], split.num_classes)

    net.eval()
    train_ce, train_acc = evaluate(net, (X, y))
    _, test_acc = evaluate(net, split.test)
    folder = Path(weights_dir)
    init_file, final_file = (
        folder / f"{model['id']}-init.safetensors",
        folder / f"{model['id']}-final.safetensors",
    )
    write_atomic(init_file, save(member.initial))
    write_atomic(final_file, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    row = {
        "id": model["id"],
        "hparams": hp,
        "seed": seed,
        "train_acc": train_acc,
        "test_acc": test_acc,
        "train_ce": train_ce,
        "gap": train_acc - test_acc,
        "epochs": member.epochs,
        "converged": target.met(train_ce, train_acc),
        "seconds": member.seconds,
        "init_file": init_file.name,
        "final_file": final_file.name,
    }
    values = _measure(net, member.initial, (X, y), seed, factory, member.states) if measures else {}
    row["seconds"] = member.seconds + time.time() - started
    return row, values


def remeasure(
    model: dict[str, Any], data: str, weights_dir: str, parent: int | None = None
) -> tuple[str, dict[str, float]]:
    """Every measure of a stored model from its saved weights (runs in a worker process).

    The Fisher arc length of training needs the per-epoch states, which only training sees: it
    is not recomputed here. ``parent`` as in :func:`train_and_measure`.
    """
    import torch

    die_with_parent(parent)

    from ..checkpoint import load_state
    from ..paths import ResidualMLP

    torch.set_num_threads(1)
    hp, seed = model["hparams"], model["seed"]
    split, (X, y) = _data(data, hp, seed)

    def factory():
        return ResidualMLP(X.shape[1], hp["width"], hp["depth"], split.num_classes)

    files = [Path(weights_dir) / model[key] for key in ("final_file", "init_file")]
    for file in files:
        if file.is_symlink():
            raise MemspaceError(
                f"refusing to read {file}: it is a symbolic link (a zoo's weights are plain files)"
            )
    net = factory()
    net.load_state_dict(load_state(files[0]))
    net.eval()
    initial = load_state(files[1])
    return model["id"], _measure(net, initial, (X, y), seed, factory, states=None)


def measure_zoo(
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    connect_timeout: float = SCHEDULER_TIMEOUT_S,
    status: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Add the measures a stored model lacks (all of them with ``force``).

    On loky or Dask as :func:`run_zoo`.
    """
    import joblib

    from .._runs import RunFolder

    path = Path(out) / DB
    if not path.is_file():
        raise MemspaceError(f"{path} not found: run `memspace zoo run` first")
    grid = zoo_grid(out)
    started = time.time()
    # The cluster answers before the folder is touched
    stack, parallel = _parallel(workers, scheduler, connect_timeout)
    with stack, RunFolder.attach(out) as run:
        store = ZooStore(path)
        try:
            expected = set(EXPECTED_MEASURES)
            todo = [
                m for m in store.models() if force or not expected <= store.measure_names(m["id"])
            ]
            status(f"{len(todo)} models to measure")
            for done, (model_id, values) in enumerate(
                parallel(
                    joblib.delayed(remeasure)(
                        m, grid["data"], str(run.root / "weights"), parent=os.getpid()
                    )
                    for m in todo
                )
            ):
                store.add_measures(model_id, values)
                progress(done + 1, len(todo))
        finally:
            store.close()
    return {"measured": len(todo), "seconds": time.time() - started}


def zoo_grid(out: str | Path) -> dict[str, Any]:
    """The checked grid a zoo folder was run with (from its manifest, checked as a grid file is).

    Raises:
        MemspaceError: when ``out`` is not a zoo folder or its stored grid is not a valid grid.
    """
    from .._runs import read_manifest

    manifest = read_manifest(out) if Path(out).is_dir() else None
    if manifest is None or manifest["kind"] != "zoo":
        raise MemspaceError(
            f"{out} is not a memspace zoo folder (no zoo manifest): run `memspace zoo run` first"
        )
    return load_grid(manifest.get("config", {}))


def _measure(net, initial, data, seed, factory, states=None) -> dict[str, float]:
    from ..complexity import fisher_distance, fisher_rao_norm, trajectory_length
    from ..fisher import FisherOperator
    from ..paths import block_sensitivity, predictive_path
    from ..studies.measure import effective_dimension
    from .measures import generalization_measures

    X, y = data
    probe = (X[:512], y[:512])
    out: dict[str, float] = {}
    out["fisher_rao_norm"] = fisher_rao_norm(net, probe)
    F = FisherOperator(net, probe, seed=seed)
    out["fisher_trace"] = float(F.trace())
    out["effective_dimension"] = effective_dimension(F)[0]
    path = predictive_path(net, probe)  # v3: from the class prior
    out.update(
        predictive_action=path.action, least_action=path.least_action, action_ratio=path.ratio
    )
    out["action_ratio_stem"] = predictive_path(net, probe, anchor="stem").ratio  # v2, beside it
    sens = block_sensitivity(net, probe, deletion=False)
    out["block_sensitivity_max"] = float(np.max(sens.sensitivity))
    out["kinetic_action"] = sens.kinetic_action
    out["fisher_distance_from_init"] = fisher_distance(net, initial, probe)
    if states is not None:
        out["fisher_arc_length"] = trajectory_length(states, factory, probe).length
    literature = generalization_measures(net, initial, data, seed=seed, sharpness=SHARPNESS_SEARCH)
    out.update({k: float(v) for k, v in literature.items() if not isinstance(v, bool)})
    return out


def _connect(scheduler: str, timeout_s: float):
    """A ``distributed.Client`` on ``scheduler``, bounded end to end (connect and handshake).

    ``Client(timeout=...)`` bounds only the TCP connection: a server that accepts and then
    says nothing would hang forever. The client is made in a helper thread that is given
    ``timeout_s`` in all; past that the address is refused by name.

    Raises:
        MemspaceError: an empty or malformed address, no dask, or no answer in time.
    """
    import threading

    if not scheduler.strip():
        raise MemspaceError(
            "--scheduler is empty: give a Dask scheduler address such as tcp://127.0.0.1:8786, "
            "or leave the option out for the local pool"
        )
    try:
        from distributed import Client
    except ImportError:
        raise MemspaceError(
            "--scheduler needs dask and distributed (pip install dask distributed)"
        ) from None
    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            outcome["client"] = Client(scheduler, timeout=f"{timeout_s}s")
        except BaseException as error:  # reported below, in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=connect, name="memspace-dask-connect", daemon=True)
    thread.start()
    thread.join(timeout_s + 5.0)
    if thread.is_alive():
        raise MemspaceError(
            f"the Dask scheduler at {scheduler} accepted no complete handshake within "
            f"{timeout_s + 5.0:.0f} s; is it a Dask scheduler?"
        )
    if "error" in outcome:
        error = outcome["error"]
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MemspaceError(
            f"cannot reach the Dask scheduler at {scheduler}: {type(error).__name__}"
            f"{f': {text}' if text else ''}"
        ) from None
    return outcome["client"]


def _parallel(workers: int, scheduler: str | None, timeout_s: float = SCHEDULER_TIMEOUT_S):
    """A joblib Parallel on loky, or on the Dask cluster at ``scheduler`` (same code path).

    The cluster is connected here, before any folder is made, so a wrong address leaves
    nothing behind.
    """
    import contextlib

    import joblib

    stack = contextlib.ExitStack()
    if scheduler is not None:
        client = stack.enter_context(_connect(scheduler, timeout_s))
        stack.enter_context(joblib.parallel_config(backend="dask"))
        n_jobs = sum(client.nthreads().values()) or 1
    else:
        n_jobs = workers
    parallel = joblib.Parallel(
        n_jobs=n_jobs,
        return_as="generator_unordered",
        batch_size=1,
        backend=None if scheduler is not None else "loky",
    )
    return stack, parallel


def run_zoo(
    grid: Any,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    connect_timeout: float = SCHEDULER_TIMEOUT_S,
    status: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Train and measure every model of ``grid`` not yet in ``out/zoo.sqlite`` (module doc).

    ``connect_timeout``: seconds the Dask scheduler has for the connection and handshake
    (:func:`_connect`); a silent one is refused before any folder is made.

    Returns ``{"models": count, "trained": newly trained, "seconds": ...}``.
    """
    import joblib

    from .._runs import RunFolder, crash_point

    grid = load_grid(grid)
    models = expand(grid)
    started = time.time()
    # The cluster answers before any folder is made
    stack, parallel = _parallel(workers, scheduler, connect_timeout)
    with stack, RunFolder.open(out, kind="zoo", config=grid, overwrite=overwrite) as run:
        weights = run.path("weights")
        weights.mkdir(exist_ok=True)
        store = ZooStore(run.path(DB))
        try:
            done = store.model_ids()
            pending = [m for m in models if m["id"] not in done]
            status(
                f"{len(models)} models in the grid, {len(done)} already in {run.root / DB}, "
                f"{len(pending)} to train"
            )
            for m in pending:
                run.path(f"weights/{m['id']}-init.safetensors")
                run.path(f"weights/{m['id']}-final.safetensors")
            count = len(done)
            progress(count, len(models))
            groups = architecture_groups(pending, workers)
            for results in parallel(
                joblib.delayed(train_group_and_measure)(
                    group, grid["data"], grid["stop"], str(weights), parent=os.getpid()
                )
                for group in groups
            ):
                for row, values in results:
                    store.add(row, values)
                    count += 1
                    progress(count, len(models))
                    status(
                        f"model {row['id']}: train acc {row['train_acc']:.3f}, test acc "
                        f"{row['test_acc']:.3f}, "
                        f"{row['epochs']} epochs"
                    )
                    crash_point("zoo-model-stored")
        finally:
            store.close()
    return {"models": len(models), "trained": len(pending), "seconds": time.time() - started}


GROUP_SIZE = 16
"""The most models trained together as one population in one worker task."""


def architecture_groups(models: list[dict[str, Any]], workers: int) -> list[list[dict[str, Any]]]:
    """The models cut into populations, one architecture (width, depth) each.

    At most :data:`GROUP_SIZE` models per group, and at least as many groups as ``workers``
    where there are enough models (so that the pool stays busy).
    """
    by_architecture: dict[tuple, list[dict[str, Any]]] = {}
    for m in models:
        key = (m["hparams"]["width"], m["hparams"]["depth"])
        by_architecture.setdefault(key, []).append(m)
    share = max(1, math.ceil(len(models) / max(workers, 1)))
    size = max(1, min(GROUP_SIZE, share))
    return [
        members[start : start + size]
        for members in by_architecture.values()
        for start in range(0, len(members), size)
    ]


def evaluate_zoo(
    out: str | Path,
    *,
    n_test: int | None = None,
    min_ess: float = 12.0,
    converged_only: bool = True,
    size_adjustment: str = "all",
) -> dict[str, Any]:
    """The leaderboard: every measure × every statistic of :mod:`memspace.zoo.ranking` over the zoo.

    Models that did not meet the stopping rule are left out (as Fantastic does) unless
    ``converged_only=False``. ``size_adjustment`` says which measures are adjusted for the
    training-set size m (:func:`~memspace.zoo.measures.size_adjusted`): ``"all"`` (the default)
    every measure alike; ``"none"`` no measure; ``"reference"`` the literature's only, as stored
    and as the reference code ranks them. Only ``"all"`` and ``"none"`` compare the two
    families fairly on a zoo that varies m. Each entry has Ψ over every varied hyperparameter and
    ``psi_without_train_size``, Ψ over the others. The σ searches' and the margin's
    diagnostics are stored but not ranked. ``n_test`` (default: the test-set size) sets the
    Hoeffding weights of the robust sign error. PGDL's CMI uses the faithful scorer when the grid is
    complete with one model per configuration, the count-weighted version otherwise.
    """
    from ..data import load_dataset
    from .ranking import granulated_kendall, kendall_tau, pgdl_cmi, robust_sign_error

    path = Path(out) / DB
    if not path.is_file():
        raise MemspaceError(f"{path} not found: run `memspace zoo run` first")
    store = ZooStore(path)
    try:
        rows, measures = store.models(), store.measures()
    finally:
        store.close()
    if size_adjustment not in SIZE_ADJUSTMENTS:
        raise MemspaceError(
            f"size_adjustment {size_adjustment!r}: choose one of {', '.join(SIZE_ADJUSTMENTS)}"
        )
    kept = [r for r in rows if r["converged"] or not converged_only]
    if len(kept) < 3:
        raise MemspaceError(
            f"only {len(kept)} of {len(rows)} models met the stopping rule: too few to rank"
        )
    import json

    grid = zoo_grid(out)
    varied = [
        name for name in grid["grid"] if len({json.dumps(r["hparams"][name]) for r in kept}) > 1
    ]
    hparams = {name: [r["hparams"][name] for r in kept] for name in varied}
    gap = [r["gap"] for r in kept]
    seeds = [r["seed"] for r in kept]
    split = load_dataset(grid["data"], seed=0)
    if n_test is None:
        n_test = len(split.test[0])
    measures = {
        r["id"]: adjusted_measures(
            measures.get(r["id"], {}),
            r["hparams"]["train_size"] or len(split.train[0]),
            size_adjustment,
        )
        for r in kept
    }
    names = sorted({name for r in kept for name in measures.get(r["id"], {})} - DIAGNOSTICS)
    board = []
    for name in names:
        values = [measures.get(r["id"], {}).get(name, math.nan) for r in kept]
        ok = [i for i, v in enumerate(values) if math.isfinite(v)]
        if len(ok) < 3:
            continue
        mu, g = [values[i] for i in ok], [gap[i] for i in ok]
        hp = {k: [v[i] for i in ok] for k, v in hparams.items()}
        entry = {"measure": name, "models": len(ok), "tau": kendall_tau(mu, g)}
        if hp:
            entry["psi"], entry["psi_by_hparam"], _ = granulated_kendall(mu, g, hp)
            entry["psi_without_train_size"] = psi_without(entry["psi_by_hparam"], "train_size")
        if len(hp) >= 2:
            try:
                entry["cmi"], _ = pgdl_cmi(mu, g, hp, faithful=True)
                entry["cmi_mode"] = "faithful"
            except MemspaceError:
                entry["cmi"], _ = pgdl_cmi(mu, g, hp, faithful=False)
                entry["cmi_mode"] = "count-weighted"
        if hp:
            robust = robust_sign_error(
                mu, g, hp, seeds=[seeds[i] for i in ok], n_test=n_test, min_ess=min_ess
            )
            entry["sign_error"] = robust.summary
            entry["environments"] = len(robust.environments)
        board.append(entry)
    board.sort(
        key=lambda e: -abs(e.get("psi", e["tau"])) if not math.isnan(e.get("psi", e["tau"])) else 0
    )
    return {
        "models": len(rows),
        "kept": len(kept),
        "size_adjustment": size_adjustment,
        "varied": varied,
        "n_test": n_test,
        "min_ess": min_ess,
        "leaderboard": board,
    }


SIZE_ADJUSTMENTS = ("reference", "all", "none")
"""Which measures :func:`evaluate_zoo` adjusts for the training-set size (its doc)."""


def adjusted_measures(values: dict[str, float], m: int, size_adjustment: str) -> dict[str, float]:
    """One model's stored measures under a size adjustment of :data:`SIZE_ADJUSTMENTS`.

    Stored values follow the reference: the literature's measures adjusted for m, memspace's
    raw. ``"all"`` adjusts memspace's too, ``"none"`` undoes the literature's.
    """
    from .measures import is_literature_measure, size_adjusted, size_unadjusted

    out = {}
    for name, value in values.items():
        if name in DIAGNOSTICS or not math.isfinite(value) or size_adjustment == "reference":
            out[name] = value
        elif is_literature_measure(name):
            out[name] = value if size_adjustment == "all" else size_unadjusted(name, value, m)
        else:
            out[name] = size_adjusted(name, value, m) if size_adjustment == "all" else value
    return out


def psi_without(psi_by_hparam: dict[str, float], name: str) -> float:
    """Ψ recomputed without hyperparameter ``name``: the mean of the other finite ψ_i."""
    rest = [v for k, v in psi_by_hparam.items() if k != name and not math.isnan(v)]
    return float(np.mean(rest)) if rest else math.nan


def leaderboard_points(
    out: str | Path, evaluation: dict[str, Any], count: int = 6
) -> dict[str, tuple[list, list]]:
    """``{measure: (values, gaps)}`` over the converged models.

    For the top ``count`` of the leaderboard, each value under the evaluation's size adjustment.
    """
    store = ZooStore(Path(out) / DB)
    try:
        rows, measures = [r for r in store.models() if r["converged"]], store.measures()
    finally:
        store.close()
    adjustment = evaluation.get("size_adjustment", "reference")
    if adjustment != "reference":
        from ..data import load_dataset

        full = len(load_dataset(zoo_grid(out)["data"], seed=0).train[0])
        measures = {
            r["id"]: adjusted_measures(
                measures.get(r["id"], {}), r["hparams"]["train_size"] or full, adjustment
            )
            for r in rows
        }
    return {
        e["measure"]: (
            [measures.get(r["id"], {}).get(e["measure"], math.nan) for r in rows],
            [r["gap"] for r in rows],
        )
        for e in evaluation["leaderboard"][:count]
    }
