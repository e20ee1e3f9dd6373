"""``fit``'s optimiser applied to the stacked rows of a population."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from .._errors import MemspaceError
from ..train import make_optimizer
from ._members import Member
from ._stack import Population

OPTIMIZERS = ("adam", "sgd")


class StackedOptimizer:
    """``fit``'s optimiser on the stacked rows: per member a learning rate, decay and step count.

    The members that take a step together and share (lr, weight decay, step count) are
    updated by one call of ``torch.optim.adam.adam`` (or ``sgd``) on their rows, in its
    single-tensor form — the arithmetic of ``torch.optim.Adam`` on one network on the CPU.
    """

    def __init__(self, population: Population, name: str, members: Sequence[Member]):
        if name not in OPTIMIZERS:
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
