"""Least-action training with checkpoints that resume exactly (docs/theory.md §4).

:func:`fit` minimises  mean cross-entropy + λ · action  over mini-batches, where the
action is one of :data:`memspace.action.ACTIONS` (or none). After every epoch it
measures loss and accuracy (train and validation) and the predictive path on a fixed
probe subset of the training data. With a ``checkpoint_dir`` it is a run folder
(:class:`memspace._runs.RunFolder`: locked, with a manifest and the run's configuration)
holding

- ``init.safetensors``: the initial weights;
- ``epoch-XXXX.safetensors``: model and optimizer tensors, with the epoch, the
  optimizer's non-tensor state, the configuration and the metrics of every epoch so far
  in the file's metadata — one atomic step, so a checkpoint and its metrics never part;
- ``metrics.jsonl``: one JSON line per epoch, a view rewritten atomically from the
  newest checkpoint's history.

A killed run restarted with the same arguments loads the newest readable checkpoint
(a damaged one is skipped, with a note) and goes on; because every source of randomness
is a generator seeded from (seed, epoch), the resumed run equals an uninterrupted one
(on CPU). Restarting with other options is refused, naming them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from ._errors import MemspaceError
from ._options import check_number
from ._runs import RunFolder, crash_point, read_regular
from ._stream import check_finite
from .action import ActionTerm
from .paths.predictive import check_anchor, predictive_path, resolve_prior

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "FitResult",
    "checkpoints",
    "evaluate",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "optimizer_step",
    "penalised_loss",
    "snapshot",
    "epoch_generator",
    "epoch_metrics",
    "fit_config",
    "resume_checkpoint",
    "save_checkpoint",
]

MAX_EPOCHS = 100_000


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model and the per-epoch metrics."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    resumed_from: int = 0


def evaluate(
    model: nn.Module, data: tuple[Tensor, Tensor], batch_size: int = 1024
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a classifier on ``(X, y)``."""
    X, y = data
    loss, correct = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            logits = model(X[start : start + batch_size])
            target = y[start : start + batch_size]
            loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    model.train(was_training)
    return loss / len(X), correct / len(X)


def make_optimizer(name, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``"adam"``, ``"sgd"`` (momentum 0.9) or a factory ``params → Optimizer``, as :func:`fit`."""
    if callable(name):
        return name(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise MemspaceError(f"unknown optimizer {name!r}; use 'adam' or 'sgd'")


def optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON metadata."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    """Load the optimizer state a checkpoint stores (its tensors and JSON metadata)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoints(directory: str | Path) -> list[Path]:
    """The ``epoch-XXXX.safetensors`` files of ``directory``, oldest first."""
    found = []
    for path in Path(directory).glob("epoch-*.safetensors"):
        number = path.name[len("epoch-") : -len(".safetensors")]
        if number.isdigit():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in ``directory``, or None."""
    files = checkpoints(directory)
    return files[-1] if files else None


class _DamagedCheckpoint(MemspaceError):
    """A checkpoint file that cannot be read (truncated, corrupt, wrong format)."""


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    raw = read_regular(path, "checkpoint")  # a link or a FIFO is refused, never skipped as damaged
    try:
        tensors = load_bytes(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
        meta = {k: json.loads(v) for k, v in meta.items()}
    except Exception as error:
        raise _DamagedCheckpoint(
            f"cannot read checkpoint {path}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'unreadable'}"
        ) from None
    return tensors, meta


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load a :func:`fit` checkpoint's weights into ``model``; return its metadata.

    Raises:
        MemspaceError: for a corrupt file or one that does not match the architecture.
    """
    path = Path(path)
    tensors, meta = _read_checkpoint(path)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or wrong:
        detail = (
            f"missing {missing[0]!r}"
            if missing
            else (
                f"{wrong[0]!r} has shape {tuple(weights[wrong[0]].shape)}, model expects "
                f"{tuple(expected[wrong[0]].shape)}"
            )
        )
        raise MemspaceError(f"checkpoint {path} does not match the architecture: {detail}")
    model.load_state_dict(weights)
    return {"tensors": tensors, **meta}


def resume_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    log: Callable[[str], None],
) -> tuple[int, list[dict[str, Any]]] | None:
    """Load the newest readable checkpoint of a run folder into ``model`` and ``optimizer``.

    Returns:
        ``(epoch, history)`` of that checkpoint, or None when there is none readable.
    """
    meta = _resume(directory, model, log)
    if meta is None:
        return None
    restore_optimizer(optimizer, meta["tensors"], meta["optimizer"])
    epoch = int(meta["epoch"])
    return epoch, _history_from(meta, directory, epoch)


def _resume(directory: Path, model: nn.Module, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Load the newest readable checkpoint of ``directory`` (saying which were skipped)."""
    for path in reversed(checkpoints(directory)):
        try:
            meta = load_checkpoint(path, model)
        except _DamagedCheckpoint as error:
            log(f"{error}; skipping it and resuming from the checkpoint before")
            continue
        meta["path"] = path
        return meta
    return None


def _history_from(meta: dict[str, Any], directory: Path, epoch: int) -> list[dict[str, Any]]:
    """The metrics of epochs 1..epoch: from the checkpoint, or an older run's metrics.jsonl."""
    if "history" in meta:
        rows = meta["history"]
    else:  # checkpoints written before the history moved into them
        rows = []
        file = directory / "metrics.jsonl"
        stored = (
            read_regular(file, "the metrics log").decode("utf-8", errors="replace")
            if file.exists()
            else ""
        )
        for line in stored.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    by_epoch = {int(row["epoch"]): row for row in rows if isinstance(row, dict) and "epoch" in row}
    return [by_epoch[e] for e in sorted(by_epoch) if e <= epoch]


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A copy of ``model``'s state (parameters and buffers), detached, on their devices."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def penalised_loss(
    forward: Callable[[], Tensor],
    data_loss: Callable[[Tensor], Tensor],
    term: ActionTerm | None,
    lam: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The loss of one step of least-action training: data loss + λ · action (docs/theory.md §4).

    Args:
        forward: runs the model on the batch and returns its outputs (logits, say).
        data_loss: the data term of those outputs (cross-entropy, a VAE's ELBO, ...).
        term: the action term (its capture records the residual stream of ``forward``), or None.
        lam: λ.
        generator: the action's random probes (the Jacobian action's).

    Returns:
        ``(total, data loss, action)``; the action is 0 without a term.
    """
    if term is None:
        outputs = forward()
        loss = data_loss(outputs)
        return loss, loss, loss.new_zeros(())
    with term.capture() as record:
        outputs = forward()
    loss = data_loss(outputs)
    penalty = term(record, outputs, generator=generator)
    return loss + lam * penalty, loss, penalty


def optimizer_step(optimizer: torch.optim.Optimizer, total: Tensor, where: str) -> None:
    """One optimiser step on ``total``, refused when it is not finite.

    Raises:
        MemspaceError: the loss is NaN or ±Inf (``where`` says at which step), before any update.
    """
    if not torch.isfinite(total):
        raise MemspaceError(f"the loss became {float(total)} {where}; lower the learning rate or λ")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    """The generator of one epoch of :func:`fit`: salt 0 orders the data, salt 1 draws probes."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)


def fit(
    model: nn.Module,
    train_data: tuple[Tensor, Tensor],
    *,
    action: str | None = None,
    lam: float = 0.0,
    epochs: int = 20,
    optimizer: str | Callable[[Any], torch.optim.Optimizer] = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    val_data: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    block_names: Sequence[str] | None = None,
    head: Any = None,
    probe_size: int = 256,
    progress: bool = True,
    overwrite: bool = False,
    run_config: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    anchor: str = "prior",
    prior: str | Tensor = "uniform",
) -> FitResult:
    """Train a residual classifier with an optional least-action term.

    Args:
        model: a :class:`~memspace.paths.ResidualPathModel`, or any model with
            ``block_names`` (needed when ``action`` is set and for the path metrics).
        train_data: ``(X, y)`` tensors; shuffled each epoch by a generator seeded from
            (seed, epoch).
        action: ``None`` or one of :data:`memspace.action.ACTIONS` (``"predictive"``,
            ``"predictive-excess"``, ``"kinetic"``, ``"jacobian"``).
        lam: λ, the weight of the action term.
        epochs: total epochs (a resumed run continues up to this number).
        optimizer: ``"adam"``, ``"sgd"`` (momentum 0.9), or a factory ``params → Optimizer``
            (then ``lr`` and ``weight_decay`` are the factory's business).
        lr: the learning rate.
        weight_decay: the optimizer's (L2 for SGD, coupled for Adam).
        batch_size: rows per mini-batch.
        val_data: optional ``(X, y)`` for validation loss/accuracy each epoch.
        seed: seed of shuffling and of the regularisers' random probes/labels.
        checkpoint_dir: the run folder for checkpoints and metrics (module doc); a run
            there with the same configuration resumes from its newest readable
            checkpoint, one with other options is refused.
        block_names: the residual blocks of a model that is not a memspace residual model.
        head: its read-out.
        probe_size: training points on which the predictive path is measured each epoch.
        progress: show a progress bar (rich).
        overwrite: remove what memspace wrote in ``checkpoint_dir`` and start afresh.
        run_config: further options recorded with the run and checked on resume (the
            command line stores the data set and the architecture here).
        log: where notes go (a skipped damaged checkpoint); default ``warnings.warn``.
        anchor: where the predictive path starts, for the predictive action terms and the
            path metrics of each epoch: ``"prior"`` (v3, the default) or ``"stem"`` (v2)
            (docs/theory.md §3.1a).
        prior: the prior of ``anchor="prior"``: ``"uniform"``, ``"labels"`` (the training
            labels' marginal) or a tensor [C].

    Returns:
        :class:`FitResult` with the model (in eval mode) and the metrics per epoch.
    """
    X, y = train_data
    if len(X) == 0:
        raise MemspaceError("the training data is empty")
    check_finite(X, "training inputs")
    if val_data is not None:
        check_finite(val_data[0], "validation inputs")
    _check_options(action, lam, epochs, lr, batch_size)
    check_anchor(anchor)
    log = log or (lambda message: warnings.warn(message, stacklevel=3))
    prior_used = resolve_prior(prior, y, "classification")
    path_options = dict(block_names=block_names, head=head, anchor=anchor, prior=prior_used)
    term = ActionTerm(action, model, **path_options) if action else None
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    result = FitResult(model)
    start_epoch = 0
    config = fit_config(
        action,
        lam,
        optimizer,
        lr,
        weight_decay,
        batch_size,
        seed,
        epochs,
        run_config,
        anchor=anchor,
        prior=prior,
    )
    run = None
    if checkpoint_dir is not None:
        run = RunFolder.open(
            checkpoint_dir, kind="train", config=config, overwrite=overwrite, ignore=("epochs",)
        )
    try:
        if run is not None:
            resumed = resume_checkpoint(run.root, model, opt, log) if run.resumed else None
            if resumed is None and checkpoints(run.root):
                log(
                    f"no checkpoint in {run.root} is readable; training again from the initial "
                    "weights"
                )
            if resumed is not None:
                start_epoch, result.history = resumed
                result.resumed_from = start_epoch
                write_metrics(run, result.history)
            else:
                run.write("init.safetensors", save_bytes(cpu_state(model)))
        _train(
            model,
            opt,
            term,
            lam,
            train_data,
            val_data,
            seed,
            batch_size,
            start_epoch,
            epochs,
            probe_size,
            path_options,
            progress,
            run,
            config,
            result,
        )
    finally:
        if run is not None:
            run.close()
    model.eval()
    return result


MAX_BATCH_SIZE = 1_000_000


def fit_config(
    action,
    lam,
    optimizer,
    lr,
    weight_decay,
    batch_size,
    seed,
    epochs,
    run_config=None,
    *,
    anchor: str = "prior",
    prior: Any = "uniform",
) -> dict[str, Any]:
    """The configuration :func:`fit` records in its run folder (and checks on resume).

    The anchor and prior are part of it: a run folder trained under v2's stem anchor (or
    before the anchor was recorded) is not resumed under v3's prior anchor.
    """
    return {
        "anchor": anchor,
        "prior": prior if isinstance(prior, str) else [float(p) for p in torch.as_tensor(prior)],
        "action": action,
        "lam": lam,
        "optimizer": optimizer if isinstance(optimizer, str) else "custom",
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "seed": seed,
        "epochs": epochs,
        **(run_config or {}),
    }


def _check_options(action, lam, epochs, lr, batch_size) -> None:
    """The training options, checked once, here (the command line passes them on unchecked)."""
    check_number("epochs", epochs, 1, MAX_EPOCHS, integer=True)
    check_number("batch_size", batch_size, 1, MAX_BATCH_SIZE, integer=True)
    check_number("lr", lr, 0, strict_low=True)
    if action is not None:
        check_number("lam", lam, 0)


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s state as contiguous CPU copies (what a checkpoint stores)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _train(
    model,
    opt,
    term,
    lam,
    train_data,
    val_data,
    seed,
    batch_size,
    start_epoch,
    epochs,
    probe_size,
    path_options,
    progress,
    run,
    config,
    result,
) -> None:
    X, y = train_data
    probe = (X[:probe_size], y[:probe_size])
    steps_per_epoch = math.ceil(len(X) / batch_size)
    bar = _progress(progress, epochs, start_epoch)
    try:
        for epoch in range(start_epoch, epochs):
            model.train()
            order = torch.randperm(len(X), generator=epoch_generator(seed, epoch, 0))
            probes = epoch_generator(seed, epoch, 1)
            running, seen, action_sum = 0.0, 0, 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb, yb = X[idx], y[idx]
                total, loss, penalty = penalised_loss(
                    lambda: model(xb),
                    lambda logits: nn.functional.cross_entropy(logits, yb),
                    term,
                    lam,
                    probes,
                )
                optimizer_step(opt, total, f"at epoch {epoch + 1}, step {step + 1}")
                running += float(loss.detach()) * len(idx)
                action_sum += float(penalty.detach()) * len(idx)
                seen += len(idx)
            model.eval()
            record_epoch = epoch_metrics(
                model,
                epoch + 1,
                running / seen,
                action_sum / seen,
                train_data,
                val_data,
                probe,
                **path_options,
            )
            result.history.append(record_epoch)
            if run is not None:
                result.checkpoints.append(
                    save_checkpoint(run, model, opt, epoch + 1, config, result.history)
                )
            bar.advance(record_epoch)
    finally:
        bar.close()


def epoch_metrics(
    model,
    epoch,
    batch_loss,
    batch_action,
    train_data,
    val_data,
    probe,
    block_names,
    head,
    evaluated: dict[str, tuple[float, float]] | None = None,
    anchor: str = "prior",
    prior: Any = "uniform",
) -> dict:
    """One row of :func:`fit`'s history: losses, accuracies and the predictive path on ``probe``.

    ``evaluated``: ``{"train": (loss, acc), "val": ...}`` already computed (a population
    evaluates its members at once); what is missing is evaluated here.
    """
    evaluated = evaluated or {}
    train_loss, train_acc = evaluated.get("train") or evaluate(model, train_data)
    metrics = {
        "epoch": epoch,
        "batch_loss": batch_loss,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "regulariser": batch_action,
    }
    if val_data is not None:
        metrics["val_loss"], metrics["val_acc"] = evaluated.get("val") or evaluate(model, val_data)
    try:
        path = predictive_path(
            model, probe, block_names=block_names, head=head, anchor=anchor, prior=prior
        )
        metrics.update(
            path_anchor=anchor,
            predictive_action=path.action,
            least_action=path.least_action,
            action_ratio=path.ratio,
            predictive_length=path.length,
        )
    except (
        MemspaceError
    ):  # not a path (no residual blocks or read-out given): skip the path metrics
        pass
    return metrics


def save_checkpoint(
    run: RunFolder,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    epoch: int,
    config: dict,
    history: list[dict[str, Any]],
) -> Path:
    """One atomic checkpoint holding the weights, the optimizer and the metrics so far.

    Then ``metrics.jsonl`` is rewritten from ``history``; returns the checkpoint's path.
    """
    tensors = {f"model.{k}": v for k, v in cpu_state(model).items()}
    opt_tensors, opt_meta = optimizer_tensors(opt)
    tensors.update(opt_tensors)
    metadata = {
        "epoch": json.dumps(epoch),
        "optimizer": json.dumps(opt_meta),
        "config": json.dumps(config),
        "history": json.dumps(history),
    }
    path = run.write(f"epoch-{epoch:04d}.safetensors", save_bytes(tensors, metadata=metadata))
    crash_point("between-checkpoint-and-metrics")
    write_metrics(run, history)
    return path


def write_metrics(run: RunFolder, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one JSON line per epoch, rewritten atomically from ``history``."""
    run.write("metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


class _progress:
    """A rich progress bar over epochs (or nothing)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self._bar = None
        if enabled and total > done:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("fit", total=total, completed=done, info="")

    def advance(self, metrics: dict) -> None:
        if self._bar is not None:
            info = f"loss {metrics['train_loss']:.3f} acc {metrics['train_acc']:.3f}"
            self._bar.update(self._task, advance=1, info=info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
