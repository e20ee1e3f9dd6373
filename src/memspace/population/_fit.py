"""``fit``'s schedule for every member of a population: :func:`train_population`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from .._errors import MemspaceError
from .._options import check_number
from .._runs import RunFolder
from .._stream import check_finite
from ..paths.predictive import resolve_prior
from ..train import (
    MAX_BATCH_SIZE,
    FitResult,
    checkpoints,
    cpu_state,
    epoch_generator,
    epoch_metrics,
    fit_config,
    resume_checkpoint,
    save_checkpoint,
    write_metrics,
)
from ._members import Member, member_data
from ._optimizer import StackedOptimizer
from ._stack import Population
from .trainer import PopulationTrainer

__all__ = ["PopulationResult", "train_population"]


@dataclass
class PopulationResult:
    """What :func:`train_population` returns.

    Attributes:
        population: the trained population (every member at its stopping point).
        histories: per member, the metrics of every epoch (``fit``'s rows; the last row of a
            stopped member says why in ``"stopped"``).
        stopped: per member, why it stopped (``"epochs"``, ``"target_acc"``,
            ``"target_ce"``, ``"max_steps"`` or ``"diverged: ..."``).
        diverged: the indices of the members whose loss became NaN or ±Inf.
        folders: per member, its run folder (with ``checkpoint_dir``).
        resumed_from: per member, the epoch it resumed from (0 for a fresh start).
    """

    population: Population
    histories: list[list[dict[str, Any]]]
    stopped: list[str]
    diverged: list[int] = field(default_factory=list)
    folders: list[Path | None] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)

    def member(self, k: int) -> FitResult:
        """Member k as :func:`memspace.train.fit` returns a network: model (eval) and history."""
        model = self.population.member(k).eval()
        folder = self.folders[k] if self.folders else None
        return FitResult(
            model,
            list(self.histories[k]),
            checkpoints(folder) if folder is not None else [],
            self.resumed_from[k] if self.resumed_from else 0,
        )


@dataclass
class _MemberRun:
    """The training state of one member: its data, position, running sums and history."""

    index: int
    spec: Member
    data: tuple[Tensor, Tensor]
    shared: bool
    epoch: int = 0
    step: int = 0
    order: Tensor | None = None
    probes: torch.Generator | None = None
    running: float = 0.0
    action_sum: float = 0.0
    seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    run: RunFolder | None = None
    resumed_from: int = 0
    batch_size: int = 64
    batch_rows: Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Mini-batches per epoch, as ``fit`` cuts them (the last one may be smaller)."""
        return math.ceil(len(self.data[0]) / self.batch_size)

    def next_batch(self) -> Tensor:
        """The row indices of the member's next batch (a new epoch's order when one begins)."""
        if self.order is None:
            n = len(self.data[0])
            self.order = torch.randperm(n, generator=epoch_generator(self.spec.seed, self.epoch, 0))
            self.probes = epoch_generator(self.spec.seed, self.epoch, 1)
            self.running, self.action_sum, self.seen = 0.0, 0.0, 0
        position = self.step % self.steps_per_epoch
        return self.order[position * self.batch_size : (position + 1) * self.batch_size]


@dataclass(frozen=True)
class _Schedule:
    """The options of :func:`train_population` that every member shares."""

    optimizer: str
    batch_size: int
    val_data: tuple[Tensor, Tensor] | None
    probe_size: int
    block_names: Sequence[str] | None
    head: Any
    run_config: dict[str, Any] | None
    prior: Any = "uniform"
    prior_used: Any = "uniform"

    def member_config(self, spec: Member) -> dict[str, Any]:
        """The configuration ``fit`` would record for this member (its run folder's)."""
        return fit_config(
            spec.action,
            spec.lam,
            self.optimizer,
            spec.lr,
            spec.weight_decay,
            self.batch_size,
            spec.seed,
            spec.epochs,
            {**spec.extras(), **(self.run_config or {})},
            anchor=spec.anchor,
            prior=self.prior,
        )


def train_population(
    population: Population | Sequence[nn.Module],
    train_data: tuple[Tensor, Tensor] | Sequence[tuple[Tensor, Tensor]],
    members: Sequence[Member],
    *,
    optimizer: str = "adam",
    batch_size: int = 64,
    val_data: tuple[Tensor, Tensor] | None = None,
    num_classes: int | None = None,
    checkpoint_dir: str | Path | None = None,
    block_names: Sequence[str] | None = None,
    head: Any = None,
    probe_size: int = 256,
    progress: bool = True,
    overwrite: bool = False,
    member_names: Sequence[str] | None = None,
    run_config: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    prior: Any = "uniform",
) -> PopulationResult:
    """Train every member as :func:`memspace.train.fit` trains one network, all at once.

    Args:
        population: a :class:`Population`, or the members' networks (one architecture).
        train_data: ``(X, y)`` shared by every member (each member's subset and label
            noise drawn from it by :func:`member_data`), or one ``(X, y)`` per member.
        members: one :class:`Member` per network.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9), as ``fit``'s.
        batch_size: rows per mini-batch, common to all members.
        val_data: optional shared ``(X, y)`` for validation loss/accuracy each epoch.
        num_classes: the classes label noise draws from (default: the largest label + 1).
        checkpoint_dir: the population's run folder (module doc); a run there with the
            same members resumes, one with other options is refused.
        block_names: the residual blocks of a model that is not a memspace residual model.
        head: its read-out.
        probe_size: training points on which each member's predictive path is measured.
        progress: show a progress bar (rich).
        overwrite: remove what memspace wrote in ``checkpoint_dir`` and start afresh.
        member_names: the members' folder names in ``checkpoint_dir`` (default
            ``member-000``, ``member-001``, ...): unique plain names.
        run_config: further options recorded with the run (and with every member).
        log: where notes go (a skipped damaged checkpoint, a diverged member).
        prior: the prior of the members whose anchor is ``"prior"`` (``Member.anchor``):
            ``"uniform"``, ``"labels"`` (each member's training labels' marginal, as ``fit``
            takes it; refused when members' marginals differ) or a tensor [C].

    Returns:
        :class:`PopulationResult`; a member whose loss becomes NaN or ±Inf is stopped at that
        step (its weights those before it, its reason ``"diverged: ..."``) while the others go
        on.

    Raises:
        MemspaceError: members of different architectures, an option out of range, empty or
            non-finite data, or a run folder started with other options.
    """
    if not isinstance(population, Population):
        population = Population(population, block_names=block_names, head=head)
    elif block_names is not None or head is not None:
        population.set_path(block_names, head)
    trainer = PopulationTrainer(population, members, optimizer)
    check_number("batch_size", batch_size, 1, MAX_BATCH_SIZE, integer=True)
    log = log or (lambda message: warnings.warn(message, stacklevel=3))
    runs = _member_runs(population, train_data, trainer.members, num_classes, batch_size)
    if val_data is not None:
        check_finite(val_data[0], "validation inputs")
    prior_used = _common_prior(prior, runs)
    population.set_prior(prior_used)
    schedule = _Schedule(
        optimizer,
        batch_size,
        val_data,
        probe_size,
        block_names,
        head,
        run_config,
        prior,
        prior_used,
    )
    root = None
    if checkpoint_dir is not None:
        names = _folder_names(member_names, population.size)
        root = _open_folders(checkpoint_dir, trainer, runs, schedule, overwrite, log, names)
    try:
        _train(trainer, runs, schedule, progress, log)
    finally:
        for member in runs:
            if member.run is not None:
                member.run.close()
        if root is not None:
            root.close()
    population.template.eval()
    return PopulationResult(
        population,
        [m.history for m in runs],
        [m.stopped or "epochs" for m in runs],
        [m.index for m in runs if (m.stopped or "").startswith("diverged")],
        [m.run.root if m.run is not None else None for m in runs],
        [m.resumed_from for m in runs],
    )


def _member_runs(population, train_data, specs, num_classes, batch_size) -> list[_MemberRun]:
    per_member = isinstance(train_data, Sequence) and not (
        len(train_data) == 2 and isinstance(train_data[0], Tensor)
    )
    if per_member and len(train_data) != population.size:
        raise MemspaceError(
            f"{len(train_data)} training sets for a population of {population.size} members"
        )
    if not per_member:
        X, y = train_data
        if len(X) == 0:
            raise MemspaceError("the training data is empty")
        check_finite(X, "training inputs")
        classes = num_classes or int(y.max()) + 1
    runs = []
    for k, spec in enumerate(specs):
        if per_member:
            data = train_data[k]
            if len(data[0]) == 0:
                raise MemspaceError(f"member {k}: the training data is empty")
            check_finite(data[0], f"member {k}'s training inputs")
            data = member_data(data, spec, num_classes or int(data[1].max()) + 1)
            shared = False
        else:
            data = member_data((X, y), spec, classes)
            shared = spec.train_size is None and spec.label_noise == 0
        runs.append(_MemberRun(k, spec, data, shared, batch_size=batch_size))
    return runs


def _common_prior(prior: Any, runs: Sequence[_MemberRun]) -> Any:
    """``prior`` resolved as ``fit`` resolves it; ``"labels"`` must give every member the same."""
    if not (isinstance(prior, str) and prior == "labels"):
        return resolve_prior(prior, None, "classification")
    priors = [resolve_prior(prior, run.data[1], "classification") for run in runs]
    if any(p.shape != priors[0].shape or not torch.equal(p, priors[0]) for p in priors):
        raise MemspaceError(
            "prior='labels': the members' training labels have different marginals (subsets "
            "or label noise); give the prior as a tensor [C]"
        )
    return priors[0]


def _folder_names(names: Sequence[str] | None, size: int) -> list[str]:
    if names is None:
        return [f"member-{k:03d}" for k in range(size)]
    names = list(names)
    if len(names) != size or len(set(names)) != size:
        raise MemspaceError(f"member_names must be {size} different names, got {names!r}")
    odd = [n for n in names if not isinstance(n, str) or not n or "/" in n or n in (".", "..")]
    if odd:
        raise MemspaceError(f"member folder name {odd[0]!r} is not a plain name")
    return names


def _open_folders(
    directory, trainer, runs, schedule: _Schedule, overwrite, log, names
) -> RunFolder:
    """The population's folder and one ``fit`` run folder per member (each resumed if it can)."""
    specs = [m.spec for m in runs]
    config = {
        "members": [{k: v for k, v in asdict(s).items() if k != "epochs"} for s in specs],
        "epochs": [s.epochs for s in specs],
        "optimizer": schedule.optimizer,
        "batch_size": schedule.batch_size,
        "architecture": str(trainer.population.template),
        **(schedule.run_config or {}),
    }
    root = RunFolder.open(
        directory, kind="population", config=config, overwrite=overwrite, ignore=("epochs",)
    )
    try:
        for member, name in zip(runs, names):
            root.path(name)
            member.run = RunFolder.open(
                root.root / name,
                kind="train",
                ignore=("epochs",),
                config=schedule.member_config(member.spec),
            )
            _resume_member(trainer.population, member, trainer.optimizer, log)
    except BaseException:
        for member in runs:
            if member.run is not None:
                member.run.close()
        root.close()
        raise
    return root


def _resume_member(population, member: _MemberRun, stacked: StackedOptimizer, log) -> None:
    run = member.run
    model = population.member(member.index)
    optimizer = stacked.optimizer_for(member.index, model)
    resumed = resume_checkpoint(run.root, model, optimizer, log) if run.resumed else None
    if resumed is None:
        if checkpoints(run.root):
            log(f"no checkpoint in {run.root} is readable; training member {member.index} again")
        run.write("init.safetensors", save_bytes(cpu_state(model)))
        return
    epoch, history = resumed
    population.load_state(member.index, model.state_dict())
    stacked.load_from(member.index, model, optimizer)
    member.epoch, member.history, member.resumed_from = epoch, history, epoch
    # a run resumes at an epoch's end (a member stopped inside one is finished)
    member.step = stacked.steps[member.index] = epoch * member.steps_per_epoch
    write_metrics(run, history)
    last = history[-1] if history else {}
    if "stopped" in last:
        member.stopped = last["stopped"]
    elif epoch >= member.spec.epochs:
        member.stopped = "epochs"


def _train(trainer: PopulationTrainer, runs, schedule: _Schedule, progress, log) -> None:
    bar = _Progress(progress, runs)
    try:
        while True:
            active = [m for m in runs if m.stopped is None]
            if not active:
                break
            _one_step(trainer, active, log)
            finished = [m for m in active if m.stopped is None and _epoch_ends(m)]
            diverged = [m for m in active if (m.stopped or "").startswith("diverged")]
            for member in diverged:
                bar.advance(member, stopped=True)
            if finished:
                _end_epochs(trainer, finished, schedule)
                for member in finished:
                    bar.advance(member, stopped=member.stopped is not None)
    finally:
        bar.close()


def _epoch_ends(member: _MemberRun) -> bool:
    budget = member.spec.max_steps
    return member.step % member.steps_per_epoch == 0 or (
        budget is not None and member.step >= budget
    )


def _one_step(trainer: PopulationTrainer, active: list[_MemberRun], log) -> None:
    """One optimiser step of every active member on its next batch (``fit``'s order)."""
    batches = {}
    for member in active:
        member.batch_rows = member.next_batch()
        X, y = member.data
        batches[member.index] = ((X[member.batch_rows], y[member.batch_rows]), member.probes)
    losses = trainer.step(batches)
    for member in active:
        total, loss, penalty = losses[member.index]
        if not math.isfinite(total):
            where = f"at epoch {member.epoch + 1}, step {member.step % member.steps_per_epoch + 1}"
            member.stopped = f"diverged: the loss became {total} {where}"
            log(
                f"member {member.index}: the loss became {total} {where}; it is stopped, "
                "the others go on"
            )
            continue
        n = len(member.batch_rows)
        member.running += loss * n
        member.action_sum += penalty * n
        member.seen += n
        member.step += 1


def _end_epochs(trainer: PopulationTrainer, finished, schedule: _Schedule) -> None:
    """Each finished epoch's metrics (``fit``'s row), stopping rule and checkpoint.

    Members training on the shared data are evaluated at once (one batched forward per
    chunk); the predictive path is measured per member.
    """
    population, val_data, probe_size = trainer.population, schedule.val_data, schedule.probe_size
    together = [m for m in finished if m.shared]
    evaluated: dict[int, dict[str, tuple[float, float]]] = {m.index: {} for m in finished}
    if together:
        rows = [m.index for m in together]
        for key, data in (("train", together[0].data), ("val", val_data)):
            if data is not None:
                for k, value in zip(rows, population.evaluate(data, rows)):
                    evaluated[k][key] = value
    for member in finished:
        member.epoch += 1
        model = population.scratch(member.index).eval()
        X, y = member.data
        row = epoch_metrics(
            model,
            member.epoch,
            member.running / member.seen,
            member.action_sum / member.seen,
            member.data,
            val_data,
            (X[:probe_size], y[:probe_size]),
            schedule.block_names,
            schedule.head,
            evaluated[member.index],
            anchor=member.spec.anchor,
            prior=schedule.prior_used,
        )
        member.order = None
        reason = _stop_reason(member, row)
        if reason is not None:
            member.stopped = reason
        if reason not in (None, "epochs"):  # an early stop is recorded; the last epoch is not
            row["stopped"] = reason
            row["steps"] = member.step
        member.history.append(row)
        if member.run is not None:
            save_checkpoint(
                member.run,
                model,
                trainer.optimizer.optimizer_for(member.index, model),
                member.epoch,
                schedule.member_config(member.spec),
                member.history,
            )


def _stop_reason(member: _MemberRun, row: dict[str, Any]) -> str | None:
    spec = member.spec
    if spec.target_acc is not None and row["train_acc"] >= spec.target_acc:
        return "target_acc"
    if spec.target_ce is not None and row["train_loss"] <= spec.target_ce:
        return "target_ce"
    if spec.max_steps is not None and member.step >= spec.max_steps:
        return "max_steps"
    if member.epoch >= spec.epochs:
        return "epochs"
    return None


class _Progress:
    """A rich progress bar over the members' epochs (or nothing)."""

    def __init__(self, enabled: bool, runs: list[_MemberRun]):
        self._bar = None
        total = sum(m.spec.epochs for m in runs)
        done = sum(m.spec.epochs if m.stopped else m.epoch for m in runs)
        if enabled and total > done:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"[bold]training {len(runs)} members"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} epochs"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("population", total=total, completed=done)

    def advance(self, member: _MemberRun, stopped: bool) -> None:
        """One epoch of ``member`` done (and, when it stopped early, the epochs it skips)."""
        if self._bar is not None:
            skipped = max(member.spec.epochs - member.epoch, 0) if stopped else 0
            self._bar.update(self._task, advance=(0 if member.seen == 0 else 1) + skipped)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
