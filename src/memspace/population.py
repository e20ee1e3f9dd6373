"""Train a population: K networks of one architecture in one vectorised pass (docs/population.md).

On a small machine the networks the studies train are dominated by per-operation overhead,
not arithmetic. A :class:`Population` holds K networks that share an architecture as
stacked parameters, ``[K, ...]`` per tensor (``torch.func.stack_module_state``), and runs
their forward, action regulariser and backward as one ``vmap(functional_call)``: K small
matrix products become one batched product. The optimiser is the same one :func:`fit` uses,
``torch.optim.adam.adam`` (or ``sgd``) in its single-tensor form, applied to the stacked
rows of the members that share a learning rate, a weight decay and a step count: its
arithmetic is element-wise, so a member's update is bit for bit the one ``torch.optim.Adam``
makes on that member alone.

:func:`train_population` trains each member exactly as :func:`memspace.train.fit` would train
it alone — the same data order and regulariser probes (generators seeded from the member's
seed and epoch), the same loss, optimiser, metrics and checkpoints — with per-member
hyperparameters (:class:`Member`: seed, action and λ, learning rate, weight decay, epochs, a
target accuracy or cross-entropy, a step budget, label noise, a training subset) and its own
stopping rule while the others go on. Member k equals ``fit`` run alone with its
hyperparameters up to the round-off of batched against unbatched matrix products (tested to
1e-10 in float64 after hundreds of steps).

With ``checkpoint_dir`` the run folder holds one sub-folder per member, ``member-XXX/``, each
a complete ``fit`` run folder (``init.safetensors``, ``epoch-XXXX.safetensors``,
``metrics.jsonl``): ``memspace measure``, ``memspace report`` and ``fit`` itself read a member
like any network. A killed population restarted with the same arguments resumes every member
from its newest readable checkpoint.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from ._errors import MemspaceError
from ._options import MAX_SEED, check_number
from ._runs import RunFolder
from ._stream import check_finite
from .action import ActionTerm, jacobian_action_of
from .paths.adapter import ResidualPath
from .train import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    FitResult,
    checkpoints,
    cpu_state,
    epoch_generator,
    epoch_metrics,
    fit_config,
    make_optimizer,
    resume_checkpoint,
    save_checkpoint,
    write_metrics,
)

__all__ = [
    "Member",
    "Population",
    "PopulationResult",
    "PopulationTrainer",
    "member_data",
    "train_population",
]

_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class Member:
    """One member's hyperparameters and stopping rule.

    Attributes:
        seed: the seed of the member's data order and regulariser probes (as ``fit``'s), of
            its label noise and subset, and of its initial weights when the population is
            built by :meth:`Population.from_seeds`.
        action: ``None`` or one of :data:`memspace.action.ACTIONS`.
        lam: λ, the weight of the action term.
        lr: the learning rate.
        weight_decay: the optimiser's weight decay (coupled, as in ``torch.optim.Adam``).
        epochs: the most epochs it trains.
        target_acc: stop after the first epoch whose training accuracy is at least this.
        target_ce: stop after the first epoch whose training cross-entropy is at most this.
        max_steps: stop after this many optimiser steps (inside an epoch, if need be).
        label_noise: the fraction of training labels redrawn uniformly (see :func:`member_data`).
        train_size: train on this many points drawn by the seed (see :func:`member_data`).
    """

    seed: int = 0
    action: str | None = None
    lam: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 20
    target_acc: float | None = None
    target_ce: float | None = None
    max_steps: int | None = None
    label_noise: float = 0.0
    train_size: int | None = None

    def check(self, index: int) -> None:
        """Refuse an option out of range, naming the member."""
        where = f"member {index}: "
        try:
            check_number("seed", self.seed, 0, MAX_SEED, integer=True)
            check_number("epochs", self.epochs, 1, MAX_EPOCHS, integer=True)
            check_number("lr", self.lr, 0, strict_low=True)
            check_number("weight_decay", self.weight_decay, 0)
            check_number("lam", self.lam, 0)
            check_number("label_noise", self.label_noise, 0, 1)
            if self.max_steps is not None:
                check_number("max_steps", self.max_steps, 1, integer=True)
            if self.train_size is not None:
                check_number("train_size", self.train_size, 1, integer=True)
            if self.target_acc is not None:
                check_number("target_acc", self.target_acc, 0, 1)
            if self.target_ce is not None:
                check_number("target_ce", self.target_ce, 0)
        except MemspaceError as error:
            raise MemspaceError(where + str(error)) from None
        if self.action is None and self.lam != 0:
            raise MemspaceError(f"{where}lam = {self.lam} is given without an action")

    def extras(self) -> dict[str, Any]:
        """The options beyond ``fit``'s, recorded in the member's run folder."""
        keys = ("target_acc", "target_ce", "max_steps", "label_noise", "train_size")
        return {key: getattr(self, key) for key in keys}


def member_data(
    data: tuple[Tensor, Tensor], member: Member, num_classes: int
) -> tuple[Tensor, Tensor]:
    """The training data of one member: a seeded subset, a seeded fraction of labels redrawn.

    With neither ``train_size`` nor ``label_noise`` it is ``data`` itself, in its order. Else a
    generator seeded with ``member.seed`` draws a permutation (its first ``train_size`` rows
    are kept, all rows when None), then for each kept row a uniform number: rows below
    ``label_noise`` get a label drawn uniformly from the ``num_classes`` classes (possibly
    their own) — the zoo's rule.
    """
    X, y = data
    if member.train_size is None and member.label_noise == 0:
        return X, y
    n = member.train_size or len(X)
    if n > len(X):
        raise MemspaceError(f"train_size {n} exceeds the {len(X)} training points")
    generator = torch.Generator().manual_seed(member.seed)
    pick = torch.randperm(len(X), generator=generator)[:n]
    X, y = X[pick], y[pick].clone()
    noisy = torch.rand(n, generator=generator) < member.label_noise
    y[noisy] = torch.randint(num_classes, (int(noisy.sum()),), generator=generator)
    return X, y


def _architecture(model: nn.Module) -> tuple:
    """What must agree between members: module types, tensor names, shapes, dtypes, devices."""
    modules = tuple(
        (name, type(m).__qualname__, m.extra_repr()) for name, m in model.named_modules()
    )
    tensors = tuple(
        (name, tuple(t.shape), t.dtype, t.device.type)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    )
    steps = tuple(
        (name, getattr(m, "step")) for name, m in model.named_modules() if hasattr(m, "step")
    )
    return modules, tensors, steps


def _difference(a: nn.Module, b: nn.Module) -> str:
    (ma, ta, sa), (mb, tb, sb) = _architecture(a), _architecture(b)
    for left, right, what in ((ma, mb, "module"), (ta, tb, "tensor"), (sa, sb, "step")):
        for x, y in zip(left, right):
            if x != y:
                return f"{what} {x[0] or '(root)'}: {x[1:]} against {y[1:]}"
        if len(left) != len(right):
            longer = left if len(left) > len(right) else right
            return f"{what} {longer[min(len(left), len(right))][0]} is in one only"
    return "unknown"


class Population:
    """K networks of one architecture as stacked parameters.

    Args:
        models: the members' networks (their current weights become the members'); they
            must agree in every module, tensor name, shape, dtype and device.
        block_names: the residual blocks of a model that is not a memspace residual model
            (for the action terms).
        head: its read-out (for the predictive actions).

    Attributes:
        size: K.
        params: name → ``[K, ...]`` stacked parameters (leaves that require grad).
        buffers: name → ``[K, ...]`` stacked buffers.

    Raises:
        MemspaceError: no models, or members of different architectures (naming the first
            difference: group the members by architecture, one population per group).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        block_names: Sequence[str] | None = None,
        head: Any = None,
    ):
        models = list(models)
        if not models:
            raise MemspaceError("a population needs at least one model")
        reference = _architecture(models[0])
        for k, model in enumerate(models[1:], start=1):
            if _architecture(model) != reference:
                raise MemspaceError(
                    f"member {k} has another architecture than member 0 "
                    f"({_difference(models[0], model)}): a population holds one architecture; "
                    "group the members by architecture and train one population per group"
                )
        self.template = copy.deepcopy(models[0])
        params, buffers = stack_module_state(models)
        trained = [n for n, q in models[0].named_parameters() if q.requires_grad]
        first = params[trained[0]] if trained else None
        if first is None:
            raise MemspaceError("the models have no parameter that requires grad: nothing to train")
        odd = [
            n for n in trained if (params[n].dtype, params[n].device) != (first.dtype, first.device)
        ]
        if odd:
            raise MemspaceError(
                f"parameter {odd[0]} is {params[odd[0]].dtype} on {params[odd[0]].device}, "
                f"{trained[0]} {first.dtype} on {first.device}: a population stores all its "
                "trained parameters in one dtype on one device"
            )
        # One [K, P] tensor for every trained parameter: each parameter is a leaf view of it,
        # its gradient a view of one [K, P] gradient, so the optimiser runs on one tensor.
        sizes = [params[n][0].numel() for n in trained]
        self.flat = torch.cat([params[n].detach().reshape(len(models), -1) for n in trained], 1)
        self.flat_grad = torch.zeros_like(self.flat)
        self.slices: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.params: dict[str, Tensor] = {}
        offset = 0
        for name, size in zip(trained, sizes):
            shape = tuple(params[name].shape[1:])
            self.slices[name] = (offset, offset + size, shape)
            self.params[name] = self._view(self.flat, name).requires_grad_(True)
            offset += size
        self.frozen = {n: q.detach().clone() for n, q in params.items() if n not in self.slices}
        self.buffers = {name: b.detach().clone() for name, b in buffers.items()}
        self.block_names = block_names
        self.head = head
        self._loss_modules: dict[str | None, _PenalisedLoss] = {}
        self._state_shapes: list[tuple[int, ...]] | None = None
        self._scratch: nn.Module | None = None
        self._reach_checked = False

    def _view(self, flat: Tensor, name: str) -> Tensor:
        start, stop, shape = self.slices[name]
        return flat[:, start:stop].view(flat.shape[0], *shape)

    def row_view(self, flat: Tensor, k: int, name: str) -> Tensor:
        """Parameter ``name`` of member k inside a [K, P] tensor laid out like :attr:`flat`."""
        start, stop, shape = self.slices[name]
        return flat[k, start:stop].view(shape)

    def zero_grad(self) -> None:
        """Zero the stacked gradient, into which the next backward accumulates."""
        self.flat_grad.zero_()
        for name, p in self.params.items():
            p.grad = self._view(self.flat_grad, name)

    def backward(self, total: Tensor) -> None:
        """Backward of the members' summed loss into :attr:`flat_grad`.

        Raises:
            MemspaceError: (first call) a trained parameter the loss does not reach: ``fit``'s
                optimiser would skip it, a population's would decay it.
        """
        if not self._reach_checked:
            unused = _unreached(total, self.params)
            if unused:
                raise MemspaceError(
                    f"parameter {unused[0]} takes no part in the loss: freeze it "
                    "(requires_grad_(False)) or remove it before training a population"
                )
            self._reach_checked = True
        self.zero_grad()
        with warnings.catch_warnings():
            # The gradient views share the parameters' strides; autograd only notes that
            # they are not dense.
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            total.backward()

    @classmethod
    def from_seeds(
        cls, factory: Callable[[], nn.Module], seeds: Sequence[int], **kwargs: Any
    ) -> Population:
        """Members built by ``factory()`` after ``torch.manual_seed(seed)``, one per seed."""
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(factory())
        return cls(models, **kwargs)

    @property
    def size(self) -> int:
        """K, the number of members."""
        return self.flat.shape[0]

    def state(self, k: int) -> dict[str, Tensor]:
        """Member k's state dict (parameters and buffers), detached copies."""
        self._check_index(k)
        state = {name: p[k].detach().clone() for name, p in self.params.items()}
        state.update({name: q[k].clone() for name, q in self.frozen.items()})
        state.update({name: b[k].clone() for name, b in self.buffers.items()})
        ordered = self.template.state_dict()
        return {name: state[name] for name in ordered}

    def load_state(self, k: int, state: dict[str, Tensor]) -> None:
        """Overwrite member k's parameters and buffers with ``state``."""
        self._check_index(k)
        with torch.no_grad():
            for name in self.params:
                self.row_view(self.flat, k, name).copy_(state[name])
            for name, q in self.frozen.items():
                q[k].copy_(state[name])
            for name, b in self.buffers.items():
                b[k].copy_(state[name])

    def member(self, k: int) -> nn.Module:
        """Member k as an ordinary network (a copy: training it leaves the population alone)."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.state(k))
        return model

    def scratch(self, k: int) -> nn.Module:
        """Member k's weights in one network kept for the purpose (valid until the next call).

        Cheaper than :meth:`member` (no copy of the module): for reading a member, as the
        epoch metrics and checkpoints do.
        """
        if self._scratch is None:
            self._scratch = copy.deepcopy(self.template)
        self._scratch.load_state_dict(self.state(k))
        return self._scratch

    def _check_index(self, k: int) -> None:
        if not 0 <= k < self.size:
            raise MemspaceError(f"no member {k} in a population of {self.size}")

    def _rows(self, members: Sequence[int] | None) -> tuple[dict, dict]:
        params = {**self.params, **self.frozen}
        if members is None or list(members) == list(range(self.size)):
            return params, self.buffers
        index = torch.as_tensor(list(members), device=self.flat.device)
        return (
            {name: p.index_select(0, index) for name, p in params.items()},
            {name: b.index_select(0, index) for name, b in self.buffers.items()},
        )

    def logits(self, x: Tensor, members: Sequence[int] | None = None) -> Tensor:
        """The members' outputs on one shared batch ``x`` [B, ...]: [K', B, C].

        Args:
            x: one batch for all members.
            members: which members (default all, K' = K).
        """
        params, buffers = self._rows(members)

        def call(p, b):
            return functional_call(self.template, (p, b), (x,))

        return vmap(call)(params, buffers)

    def evaluate(
        self,
        data: tuple[Tensor, Tensor],
        members: Sequence[int] | None = None,
        batch_size: int = 1024,
    ) -> list[tuple[float, float]]:
        """(mean cross-entropy, accuracy) of each member on the shared ``(X, y)``, batched.

        The same chunks and reductions as :func:`memspace.train.evaluate`, in eval mode.
        """
        X, y = data
        count = self.size if members is None else len(members)
        loss, correct = [0.0] * count, [0] * count
        was_training = self.template.training
        self.template.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(X), batch_size):
                    xb, yb = X[start : start + batch_size], y[start : start + batch_size]
                    logits = self.logits(xb, members)
                    target = yb.expand(count, -1)
                    ce = nn.functional.cross_entropy(
                        logits.transpose(1, 2), target, reduction="none"
                    ).sum(1)
                    hits = (logits.argmax(2) == target).sum(1)
                    for i, (value, hit) in enumerate(zip(ce.tolist(), hits.tolist())):
                        loss[i] += value
                        correct[i] += hit
        finally:
            self.template.train(was_training)
        return [(total / len(X), hit / len(X)) for total, hit in zip(loss, correct)]

    def penalised_losses(
        self,
        members: Sequence[int],
        x: Tensor,
        y: Tensor,
        action: str | None,
        lam: Tensor,
        probes: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(total, cross-entropy, action)`` per member, [K'] each, in the autograd graph.

        The loss of :func:`memspace.train.penalised_loss` for every member at once: mean
        cross-entropy of member i on its batch ``x[i], y[i]`` plus ``lam[i]`` times its action.

        Args:
            members: which members (K' of them), in the order of the batches.
            x: [K', B, ...] one batch per member.
            y: [K', B] their labels.
            action: the members' common action (None for plain cross-entropy).
            lam: [K'] their λ.
            probes: for the Jacobian action, one [K', B, ...] tensor per residual block (each
                member's Gaussian probes, drawn as ``fit`` draws them).
        """
        params, buffers = self._rows(members)
        module = self._loss_module(action)
        named = {f"model.{k}": v for k, v in params.items()}
        named_buffers = {f"model.{k}": v for k, v in buffers.items()}
        probe_dims = None if probes is None else [0] * len(probes)

        def call(p, b, xb, yb, lb, pb):
            return functional_call(module, (p, b), (xb, yb, lb, pb))

        return vmap(call, in_dims=(0, 0, 0, 0, 0, probe_dims))(
            named, named_buffers, x, y, lam, None if probes is None else list(probes)
        )

    def set_path(self, block_names: Sequence[str] | None, head: Any) -> None:
        """The residual blocks and read-out the action terms use (of a non-memspace model)."""
        self.block_names, self.head = block_names, head
        self._loss_modules.clear()
        self._state_shapes = None

    def state_shapes(self, x: Tensor) -> list[tuple[int, ...]]:
        """The shape of one sample's residual state after each block (from one sample ``x``)."""
        if self._state_shapes is None:
            path = ResidualPath(self.template, self.block_names)
            with torch.no_grad(), path.capture() as record:
                self.template(x)
            self._state_shapes = [tuple(out.shape[1:]) for out in record.outputs]
        return self._state_shapes

    def _loss_module(self, action: str | None) -> _PenalisedLoss:
        if action not in self._loss_modules:
            term = (
                ActionTerm(action, self.template, self.block_names, head=self.head)
                if action
                else None
            )
            self._loss_modules[action] = _PenalisedLoss(self.template, term)
        return self._loss_modules[action]


def _unreached(total: Tensor, params: dict[str, Tensor]) -> list[str]:
    """The names of ``params`` that no path of ``total``'s autograd graph reaches."""
    seen, stack, reached = set(), [total.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            reached.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return [name for name, p in params.items() if id(p) not in reached]


class _PenalisedLoss(nn.Module):
    """The template network and its action term, so that both run inside ``functional_call``."""

    def __init__(self, model: nn.Module, term: ActionTerm | None):
        super().__init__()
        self.model = model
        self.term = term

    def forward(self, x, y, lam, probes):
        """(total, cross-entropy, action) of one member on one batch."""
        if self.term is None:
            logits = self.model(x)
            loss = nn.functional.cross_entropy(logits, y)
            return loss, loss, loss.new_zeros(())
        with self.term.capture(transformed=True) as record:
            logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if self.term.name == "jacobian":
            penalty = jacobian_action_of(record, self.term.path.blocks, probes)
        else:
            penalty = self.term(record, logits, check_finite=False)
        return loss + lam * penalty, loss, penalty


class _StackedOptimizer:
    """``fit``'s optimiser on the stacked rows: per member a learning rate, decay and step count.

    The members that take a step together and share (lr, weight decay, step count) are
    updated by one call of ``torch.optim.adam.adam`` (or ``sgd``) on their rows, in its
    single-tensor form — the arithmetic of ``torch.optim.Adam`` on one network on the CPU.
    """

    def __init__(self, population: Population, name: str, members: Sequence[Member]):
        if name not in _OPTIMIZERS:
            raise MemspaceError(f"unknown optimizer {name!r} for a population; use 'adam' or 'sgd'")
        self.population, self.name, self.members = population, name, list(members)
        self.steps = [0] * population.size
        self.first = torch.zeros_like(population.flat)  # Adam's exp_avg, SGD's momentum
        self.second = torch.zeros_like(population.flat) if name == "adam" else None

    def step(self, members: Sequence[int]) -> None:
        """One update of ``members`` from the stacked gradient."""
        groups: dict[tuple, list[int]] = {}
        for k in members:
            spec = self.members[k]
            groups.setdefault((spec.lr, spec.weight_decay, self.steps[k]), []).append(k)
        with torch.no_grad():
            for (lr, decay, count), rows in groups.items():
                self._update(rows, lr, decay, count)
                for k in rows:
                    self.steps[k] += 1

    def _update(self, rows: list[int], lr: float, decay: float, count: int) -> None:
        pop = self.population
        everyone = rows == list(range(pop.size))
        index = None if everyone else torch.as_tensor(rows, device=pop.flat.device)

        def take(tensor: Tensor) -> Tensor:
            return tensor if index is None else tensor.index_select(0, index)

        param, grad, first = take(pop.flat), take(pop.flat_grad), take(self.first)
        if self.name == "adam":
            second = take(self.second)
            adam(
                [param],
                [grad],
                [first],
                [second],
                [],
                [torch.tensor(float(count))],
                foreach=False,
                amsgrad=False,
                beta1=0.9,
                beta2=0.999,
                lr=lr,
                weight_decay=decay,
                eps=1e-8,
                maximize=False,
            )
        else:
            buffers = [first if count > 0 else None]
            sgd(
                [param],
                [grad],
                buffers,
                foreach=False,
                weight_decay=decay,
                momentum=0.9,
                lr=lr,
                dampening=0.0,
                nesterov=False,
                maximize=False,
            )
            first = buffers[0]
        if index is not None:
            pop.flat.index_copy_(0, index, param)
            self.first.index_copy_(0, index, first)
            if self.name == "adam":
                self.second.index_copy_(0, index, second)
        elif self.name == "sgd" and first is not self.first:
            self.first.copy_(first)

    def optimizer_for(self, k: int, model: nn.Module) -> torch.optim.Optimizer:
        """Member k's state as the ``torch.optim`` optimizer ``fit`` would hold for ``model``."""
        spec, pop = self.members[k], self.population
        optimizer = make_optimizer(self.name, model.parameters(), spec.lr, spec.weight_decay)
        state = optimizer.state_dict()
        if self.steps[k] > 0:
            entries = {}
            for pid, (name, _) in enumerate(model.named_parameters()):
                if name not in pop.slices:
                    continue
                if self.name == "adam":
                    entries[pid] = {
                        "step": torch.tensor(float(self.steps[k])),
                        "exp_avg": pop.row_view(self.first, k, name).clone(),
                        "exp_avg_sq": pop.row_view(self.second, k, name).clone(),
                    }
                else:
                    entries[pid] = {"momentum_buffer": pop.row_view(self.first, k, name).clone()}
            state["state"] = entries
        optimizer.load_state_dict(state)
        return optimizer

    def load_from(self, k: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Member k's optimiser state from a ``torch.optim`` optimizer over ``model``."""
        state = optimizer.state_dict()["state"]
        pop, steps = self.population, set()
        with torch.no_grad():
            for pid, (name, _) in enumerate(model.named_parameters()):
                entry = state.get(pid)
                if entry is None or name not in pop.slices:
                    continue
                if self.name == "adam":
                    pop.row_view(self.first, k, name).copy_(entry["exp_avg"])
                    pop.row_view(self.second, k, name).copy_(entry["exp_avg_sq"])
                    steps.add(int(float(entry["step"])))
                else:
                    pop.row_view(self.first, k, name).copy_(entry["momentum_buffer"])
        self.steps[k] = max(steps) if steps else 0


class PopulationTrainer:
    """One optimiser step for any members of a population, each on its own batch.

    The engine under :func:`train_population`, for trainers with their own schedule (the
    capacity study's memorisation, the zoo): the caller chooses each member's batch and
    probe generator, :meth:`step` does the rest — the members are grouped by action and batch
    size, each group's penalised losses are one ``vmap`` call, one backward serves all, and
    the optimiser updates the members whose loss is finite.

    Args:
        population: the networks.
        members: one :class:`Member` per network (action, λ, learning rate, weight decay).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9), as ``fit``'s.
    """

    def __init__(self, population: Population, members: Sequence[Member], optimizer: str = "adam"):
        self.population = population
        self.members = _check_members(members, population.size)
        self.optimizer = _StackedOptimizer(population, optimizer, self.members)

    @property
    def steps(self) -> list[int]:
        """Per member, the optimiser steps taken."""
        return list(self.optimizer.steps)

    def step(
        self, batches: dict[int, tuple[Tensor, Tensor, torch.Generator | None]]
    ) -> dict[int, tuple[float, float, float]]:
        """One step of each member in ``batches`` (``k → (x [B, ...], y [B], probe generator)``).

        Returns:
            ``k → (total, cross-entropy, action)`` of the batch before the step; a member whose
            total is NaN or ±Inf is not updated (its caller decides what to do with it).
        """
        groups: dict[tuple, list[int]] = {}
        for k, (x, _, _) in batches.items():
            groups.setdefault((self.members[k].action, tuple(x.shape)), []).append(k)
        pop, results, totals, stepped = self.population, {}, [], []
        for (action, _), rows in groups.items():
            xb = torch.stack([batches[k][0] for k in rows])
            yb = torch.stack([batches[k][1] for k in rows])
            lam = torch.tensor(
                [self.members[k].lam for k in rows], dtype=xb.dtype, device=xb.device
            )
            probes = None
            if action == "jacobian":
                probes = _draw_probes(pop, [batches[k][2] for k in rows], xb)
            total, loss, penalty = pop.penalised_losses(rows, xb, yb, action, lam, probes)
            values = torch.stack([total.detach(), loss.detach(), penalty.detach()]).tolist()
            keep = [i for i, value in enumerate(values[0]) if math.isfinite(value)]
            for i, k in enumerate(rows):
                results[k] = (values[0][i], values[1][i], values[2][i])
            stepped += [rows[i] for i in keep]
            if keep:
                picked = total if len(keep) == len(rows) else total[torch.as_tensor(keep)]
                totals.append(picked.sum())
        if totals:
            pop.backward(torch.stack(totals).sum())
            self.optimizer.step(sorted(stepped))
        return results


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


def _check_members(members: Sequence[Member], size: int) -> list[Member]:
    members = list(members)
    if len(members) != size:
        raise MemspaceError(f"{len(members)} member specifications for a population of {size}")
    for k, spec in enumerate(members):
        if not isinstance(spec, Member):
            raise MemspaceError(f"member {k}: expected a Member, got {type(spec).__name__}")
        spec.check(k)
    return members


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
    run_config: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
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
        run_config: further options recorded with the run (and with every member).
        log: where notes go (a skipped damaged checkpoint, a diverged member).

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
    specs = _check_members(members, population.size)
    check_number("batch_size", batch_size, 1, MAX_BATCH_SIZE, integer=True)
    log = log or (lambda message: warnings.warn(message, stacklevel=3))
    runs = _member_runs(population, train_data, specs, num_classes, batch_size)
    if val_data is not None:
        check_finite(val_data[0], "validation inputs")
    trainer = PopulationTrainer(population, specs, optimizer)
    stacked = trainer.optimizer
    root = None
    if checkpoint_dir is not None:
        root = _open_folders(
            checkpoint_dir,
            population,
            runs,
            stacked,
            optimizer,
            batch_size,
            overwrite,
            run_config,
            log,
        )
    try:
        _train(
            trainer,
            runs,
            stacked,
            val_data,
            probe_size,
            block_names,
            head,
            progress,
            optimizer,
            batch_size,
            run_config,
            log,
        )
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


def _member_config(spec: Member, optimizer: str, batch_size: int, run_config) -> dict[str, Any]:
    return fit_config(
        spec.action,
        spec.lam,
        optimizer,
        spec.lr,
        spec.weight_decay,
        batch_size,
        spec.seed,
        spec.epochs,
        {**spec.extras(), **(run_config or {})},
    )


def _open_folders(
    directory, population, runs, stacked, optimizer, batch_size, overwrite, run_config, log
) -> RunFolder:
    """The population's folder and one ``fit`` run folder per member (each resumed if it can)."""
    specs = [m.spec for m in runs]
    config = {
        "members": [{k: v for k, v in asdict(s).items() if k != "epochs"} for s in specs],
        "epochs": [s.epochs for s in specs],
        "optimizer": optimizer,
        "batch_size": batch_size,
        "architecture": str(population.template),
        **(run_config or {}),
    }
    root = RunFolder.open(
        directory, kind="population", config=config, overwrite=overwrite, ignore=("epochs",)
    )
    try:
        for member in runs:
            name = f"member-{member.index:03d}"
            root.path(name)
            member.run = RunFolder.open(
                root.root / name,
                kind="train",
                ignore=("epochs",),
                config=_member_config(member.spec, optimizer, batch_size, run_config),
            )
            _resume_member(population, member, stacked, log)
    except BaseException:
        for member in runs:
            if member.run is not None:
                member.run.close()
        root.close()
        raise
    return root


def _resume_member(population, member: _MemberRun, stacked: _StackedOptimizer, log) -> None:
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


def _draw_probes(
    population: Population, generators: list[torch.Generator | None], xb: Tensor
) -> list[Tensor]:
    """Each member's Gaussian probes for the Jacobian action, drawn as ``fit`` draws them.

    ``fit`` draws, at every step, one ``randn`` per block in block order from the epoch's
    probe generator; each member's generator does the same here. Returns one [K', B, ...]
    tensor per block.
    """
    per_block = []
    for shape in population.state_shapes(xb[0, :1]):
        draws = [
            torch.randn((xb.shape[1], *shape), generator=generator, dtype=xb.dtype)
            for generator in generators
        ]
        per_block.append(torch.stack(draws).to(xb.device))
    return per_block


def _train(
    trainer,
    runs,
    stacked,
    val_data,
    probe_size,
    block_names,
    head,
    progress,
    optimizer,
    batch_size,
    run_config,
    log,
) -> None:
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
                _end_epochs(
                    trainer.population,
                    finished,
                    stacked,
                    val_data,
                    probe_size,
                    block_names,
                    head,
                    optimizer,
                    batch_size,
                    run_config,
                )
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
        batches[member.index] = (X[member.batch_rows], y[member.batch_rows], member.probes)
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


def _end_epochs(
    population,
    finished,
    stacked,
    val_data,
    probe_size,
    block_names,
    head,
    optimizer,
    batch_size,
    run_config,
) -> None:
    """Each finished epoch's metrics (``fit``'s row), stopping rule and checkpoint.

    Members training on the shared data are evaluated at once (one batched forward per
    chunk); the predictive path is measured per member.
    """
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
            block_names,
            head,
            evaluated[member.index],
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
                stacked.optimizer_for(member.index, model),
                member.epoch,
                _member_config(member.spec, optimizer, batch_size, run_config),
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
