"""One optimiser step for any members of a population, each on its own batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..action import ACTIONS
from ._members import Member, check_members
from ._objective import Objective, classification, classification_with_actions
from ._optimizer import StackedOptimizer
from ._stack import Population

__all__ = ["PopulationTrainer"]


class PopulationTrainer:
    """One optimiser step for any members of a population, each on its own batch.

    The engine under :func:`train_population`, for trainers with their own schedule (the
    capacity study's memorisation, the zoo): the caller chooses each member's batch and
    probe generator, :meth:`step` does the rest — the members are grouped by batch shape
    (and by action for a custom objective), each group's penalised losses are one ``vmap``
    call (members with different action terms compute every term of the group, each
    weighing its own: :func:`~memspace.population.classification_with_actions`), one
    backward serves all, and the optimiser updates the members whose loss is finite.

    Args:
        population: the networks.
        members: one :class:`Member` per network (action, λ, learning rate, weight decay).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9), as ``fit``'s.
    """

    def __init__(
        self,
        population: Population,
        members: Sequence[Member],
        optimizer: str = "adam",
        objective: Objective | None = None,
    ):
        self.population = population
        self.members = check_members(members, population.size)
        self.optimizer = StackedOptimizer(population, optimizer, self.members)
        self.objective = objective or classification

    @property
    def steps(self) -> list[int]:
        """Per member, the optimiser steps taken."""
        return list(self.optimizer.steps)

    def step(
        self, batches: dict[int, tuple[tuple[Tensor, ...], torch.Generator | None]]
    ) -> dict[int, tuple[float, float, float]]:
        """One step of each member in ``batches``: ``k → (batch tensors, probe generator)``.

        For classification a member's batch is ``(x [B, ...], y [B])``; the generator draws the
        Jacobian action's probes (None otherwise).

        Returns:
            ``k → (total, data loss, action, ...)`` of the batch before the step (and what else
            the objective returns); a member whose total is NaN or ±Inf is not updated (its
            caller decides what to do with it).
        """
        self.population.template.train()  # training mode (evaluations may have left it in eval)
        merge = self.objective is classification
        groups: dict[tuple, list[int]] = {}
        for k, (inputs, _) in batches.items():
            shapes = tuple(tuple(t.shape) for t in inputs)
            key = shapes if merge else (self.members[k].term, shapes)
            groups.setdefault(key, []).append(k)
        pop, results, totals, stepped = self.population, {}, [], []
        for rows in groups.values():
            width = len(batches[rows[0]][0])
            inputs = [torch.stack([batches[k][0][j] for k in rows]) for j in range(width)]
            first = inputs[0]
            actions = [self.members[k].term for k in rows]
            named = tuple(sorted({a for a in actions if a is not None}, key=_term_order))
            objective = self.objective
            if len(set(actions)) == 1:  # one action for the group: the plain objective
                action = actions[0]
                lam = torch.tensor(
                    [self.members[k].lam for k in rows], dtype=pop.flat.dtype, device=first.device
                )
            else:  # several: one call computes every term, each member weighs its own
                action, objective = named, classification_with_actions
                lam = torch.zeros(len(rows), 2, len(named), dtype=pop.flat.dtype)
                for i, k in enumerate(rows):
                    if actions[i] is not None:
                        lam[i, 0, named.index(actions[i])] = self.members[k].lam
                        lam[i, 1, named.index(actions[i])] = 1.0
                lam = lam.to(first.device)
            probes = None
            jacobian = [a is not None and a[0] == "jacobian" for a in actions]
            if any(jacobian):
                probes = _draw_probes(
                    pop, [batches[k][1] if j else None for k, j in zip(rows, jacobian)], first
                )
            outputs = pop.penalised_losses(rows, inputs, action, lam, probes, objective)
            total = outputs[0]
            values = torch.stack([t.detach() for t in outputs]).tolist()
            keep = [i for i, value in enumerate(values[0]) if math.isfinite(value)]
            for i, k in enumerate(rows):
                results[k] = tuple(column[i] for column in values)
            stepped += [rows[i] for i in keep]
            if keep:
                picked = total if len(keep) == len(rows) else total[torch.as_tensor(keep)]
                totals.append(picked.sum())
        if totals:
            pop.backward(torch.stack(totals).sum())
            self.optimizer.step(sorted(stepped))
        return results


def _term_order(term: tuple[str, str | None]) -> tuple[int, str]:
    """Terms in :data:`~memspace.action.ACTIONS` order, then by anchor."""
    return ACTIONS.index(term[0]), term[1] or ""


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
            if generator is not None
            else torch.zeros((xb.shape[1], *shape), dtype=xb.dtype)  # a member without the term
            for generator in generators
        ]
        per_block.append(torch.stack(draws).to(xb.device))
    return per_block
