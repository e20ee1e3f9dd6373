"""A member's hyperparameters and stopping rule, and its own training data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._errors import MemspaceError
from .._options import MAX_SEED, check_number
from ..action import ACTIONS
from ..paths.predictive import check_anchor
from ..train import MAX_EPOCHS


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
        anchor: where a predictive action's path starts, ``"prior"`` (v3, the default) or
            ``"stem"`` (v2), as ``fit``'s; also the anchor of the member's path metrics.
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
    anchor: str = "prior"

    @property
    def term(self) -> tuple[str, str | None] | None:
        """The member's action term as ``(action, anchor)`` (None without an action).

        Only the predictive terms depend on the anchor; the kinetic and Jacobian actions
        carry None there, so members that differ only in an anchor those ignore share a term.
        """
        if self.action is None:
            return None
        return (self.action, self.anchor if self.action.startswith("predictive") else None)

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
            check_anchor(self.anchor)
            if self.action is not None and self.action not in ACTIONS:
                raise MemspaceError(
                    f"unknown action {self.action!r}; use one of {', '.join(ACTIONS)}"
                )
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


def check_members(members: Sequence[Member], size: int) -> list[Member]:
    members = list(members)
    if len(members) != size:
        raise MemspaceError(f"{len(members)} member specifications for a population of {size}")
    for k, spec in enumerate(members):
        if not isinstance(spec, Member):
            raise MemspaceError(f"member {k}: expected a Member, got {type(spec).__name__}")
        spec.check(k)
    return members
