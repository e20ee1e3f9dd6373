"""Least action (THEORY.md §4): action regularisers and path straightening.

Regularisers, each differentiable and computed from the forward pass the training
step already runs (hooks on the residual blocks record x_l and x_{l+1}):

- ``"fisher"``: A_F = h Σ_l E_x[(J_l v_l)ᵀ Λ̂ (J_l v_l)], with Λ̂ from ``mc_samples``
  sampled labels (default) or exact. The output-Fisher columns are held fixed within
  a step (detached); Jacobians and velocities are differentiated (double backward).
- ``"kinetic"``: A = h Σ_l E_x‖v_l‖² (Finlay et al. 2020).
- ``"jacobian"``: h Σ_l E_x‖∂v_l/∂x_l‖²_F by Hutchinson's estimator, one Gaussian
  probe per block: E_ε‖εᵀ ∂v_l/∂x_l‖² (one vector-Jacobian product per block, each
  through that block only).

:func:`straighten` asks whether a trained network is near least action for its end map.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .fisher._data import as_batch_stream
from .fisher.likelihood import FisherKind, Likelihood, output_sqrt_factors
from .paths.adapter import ResidualPath, StreamCapture
from .paths.profile import path_profile

__all__ = ["ACTIONS", "ActionTerm", "StraightenResult", "fisher_action", "jacobian_action",
           "kinetic_action", "straighten"]

ACTIONS = ("fisher", "kinetic", "jacobian")


def kinetic_action(record: StreamCapture) -> Tensor:
    """h Σ_l mean_n ‖v_l‖² from a captured forward (differentiable)."""
    return record.step * sum(v.flatten(1).pow(2).sum(1).mean() for v in record.velocities())


def fisher_action(record: StreamCapture, logits: Tensor, targets: Tensor | None = None, *,
                  kind: str = "mc", mc_samples: int = 1, likelihood: str = "classification",
                  generator: torch.Generator | None = None) -> Tensor:
    """h Σ_l mean_n Σ_k ⟨g_lk, v_l⟩², g_lk = ∂(s_kᵀ f)/∂x_l (differentiable).

    Args:
        record: the captured forward that produced ``logits``.
        logits: model outputs [N, D].
        targets: data labels (needed for ``kind="empirical"`` only).
        kind: ``"mc"`` (default), ``"true"`` or ``"empirical"``.
        mc_samples, likelihood, generator: Monte-Carlo labels and their source.
    """
    factors = output_sqrt_factors(logits.detach(), targets, Likelihood.parse(likelihood),
                                  FisherKind.parse(kind), mc_samples=mc_samples, generator=generator)
    velocities = record.velocities()
    inputs = list(record.inputs)
    if not all(x.requires_grad for x in inputs):
        raise ValueError("the residual stream does not require grad (frozen stem?): the Fisher "
                         "action needs gradients with respect to every block input")
    total = logits.new_zeros(())
    for k in range(factors.shape[0]):
        grads = torch.autograd.grad(logits, inputs, factors[k], create_graph=True, retain_graph=True)
        total = total + sum((g * v).flatten(1).sum(1).pow(2).mean() for g, v in zip(grads, velocities))
    return record.step * total


def jacobian_action(record: StreamCapture, generator: torch.Generator | None = None) -> Tensor:
    """h Σ_l mean_n ‖εᵀ ∂v_l/∂x_l‖², ε ~ N(0, I): Hutchinson for E‖∂v_l/∂x_l‖²_F."""
    total = None
    for x, v in zip(record.inputs, record.velocities()):
        probe = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        (vjp,) = torch.autograd.grad((probe * v).sum(), x, create_graph=True)
        term = vjp.flatten(1).pow(2).sum(1).mean()
        total = term if total is None else total + term
    return record.step * total


@dataclass
class ActionTerm:
    """An action regulariser bound to a model's residual blocks.

    Example:
        >>> term = ActionTerm("kinetic", model)
        >>> with term.capture() as record:
        ...     logits = model(x)
        >>> loss = cross_entropy(logits, y) + lam * term(record, logits, y)

    Args:
        name: ``"fisher"``, ``"kinetic"`` or ``"jacobian"``.
        model: the network.
        block_names, step: see :class:`~memspace.paths.ResidualPath`.
        kind, mc_samples: the Fisher action's output Fisher (see :func:`fisher_action`).
    """

    name: str
    model: nn.Module
    block_names: Sequence[str] | None = None
    step: float | None = None
    kind: str = "mc"
    mc_samples: int = 1
    likelihood: str = "classification"
    path: ResidualPath = field(init=False)

    def __post_init__(self) -> None:
        if self.name not in ACTIONS:
            raise ValueError(f"unknown action {self.name!r}; use one of {', '.join(ACTIONS)}")
        self.path = ResidualPath(self.model, self.block_names, self.step)

    @contextmanager
    def capture(self) -> Iterator[StreamCapture]:
        with self.path.capture() as record:
            yield record
        self.path.check_captured(record)

    def __call__(self, record: StreamCapture, logits: Tensor, targets: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        if self.name == "kinetic":
            return kinetic_action(record)
        if self.name == "jacobian":
            return jacobian_action(record, generator)
        return fisher_action(record, logits, targets, kind=self.kind, mc_samples=self.mc_samples,
                             likelihood=self.likelihood, generator=generator)


@dataclass
class StraightenResult:
    """Outcome of :func:`straighten`.

    Attributes:
        ratio: A_trained / A_min ≥ 1 (A_min is the least action among feasible iterates,
            the trained network included, so the ratio is ≥ 1 by construction).
        action_trained / action_min: the exact action before and after.
        gap_trained / gap_min: constant-speed gaps A − C².
        kl: mean KL(p_trained ‖ p_straightened) of the returned model on the data.
        model: the straightened network (a copy; the input model is untouched).
        history: (step, action, kl) at each evaluation.
    """

    ratio: float
    action_trained: float
    action_min: float
    gap_trained: float
    gap_min: float
    kl: float
    model: nn.Module
    history: list[tuple[int, float, float]]


def _mean_kl(model: nn.Module, stream, teacher: list[Tensor]) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for (x, _), logp in zip(stream, teacher):
            logq = model(x).log_softmax(1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += x.shape[0]
    return total / count


def straighten(model: nn.Module, data: Any, *, metric: str = "fisher", steps: int = 300, lr: float = 3e-3,
               penalty: float = 100.0, penalty_growth: float = 3.0, kl_tol: float = 1e-3, mc_samples: int = 4,
               eval_every: int = 25,
               block_names: Sequence[str] | None = None, seed: int = 0, batch_size: int = 512) -> StraightenResult:
    """Re-optimise the residual blocks to least action with the end map held fixed.

    Stem and head are frozen; the blocks minimise A/A_trained + ``penalty`` · E KL(p_trained ‖ p)
    (a penalty method for the constraint "same output distribution on the data"; the
    action is normalised by its trained value so that one penalty suits every scale,
    and the penalty grows by ``penalty_growth`` at every evaluation that finds the
    iterate infeasible, which pulls the optimiser back to the constraint).
    An iterate is feasible when its mean KL ≤ ``kl_tol``; the feasible iterate of least
    exact action is returned, starting with the trained network itself. A_min is thus an
    upper bound on the true least action, and the ratio a lower bound on how far the
    trained network is from it.

    Args:
        model: a trained residual network (copied, not modified).
        data: the data on which the end map is matched and the action measured.
        metric: ``"fisher"`` (Monte-Carlo Fisher action, ``mc_samples`` labels, during
            optimisation; exact action for evaluation) or ``"euclidean"`` (kinetic).
        steps, lr: Adam steps and learning rate on the blocks' parameters.
        penalty: initial weight of the KL term; ``penalty_growth`` its factor when infeasible.
        kl_tol: feasibility tolerance on the mean KL (nats).
        eval_every: steps between exact evaluations.
        block_names: residual blocks of a model that is not a memspace residual model.
        seed: seed of the Monte-Carlo labels.
        batch_size: rows per batch for an ``(X, y)`` pair.
    """
    student = copy.deepcopy(model).eval()
    path = ResidualPath(student, block_names)
    block_params = {id(p) for block in path.blocks for p in block.parameters()}
    for p in student.parameters():
        p.requires_grad_(id(p) in block_params)
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the residual blocks have no parameters to re-optimise")
    first = next(student.parameters())
    stream = as_batch_stream(data, device=first.device, dtype=first.dtype, batch_size=batch_size)
    with torch.no_grad():
        teacher = [model(x).log_softmax(1) for x, _ in stream]
    term = ActionTerm("fisher" if metric == "fisher" else "kinetic", student, block_names,
                      kind="mc", mc_samples=mc_samples)

    def exact_action(net: nn.Module) -> tuple[float, float]:
        prof = path_profile(net, stream, metric=metric, block_names=block_names)
        return prof.action, prof.gap

    action0, gap0 = exact_action(student)
    scale = action0 if action0 > 0 else 1.0  # the action term is A/A_trained: the penalty is scale-free
    weight = penalty
    best = (action0, gap0, 0.0, copy.deepcopy(student.state_dict()))
    history = [(0, action0, 0.0)]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    generator = torch.Generator(device=first.device).manual_seed(seed)
    def cycle():  # batches in order, round and round, one pass at a time
        while True:
            yield from enumerate(stream)

    batches = cycle()
    for step in range(1, steps + 1):
        index, (x, _) = next(batches)
        with term.capture() as record:
            logits = student(x)
        logq = logits.log_softmax(1)
        logp = teacher[index]
        kl = (logp.exp() * (logp - logq)).sum(1).mean()
        loss = term(record, logits, generator=generator) / scale + weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            action, gap = exact_action(student)
            kl_all = _mean_kl(student, stream, teacher)
            history.append((step, action, kl_all))
            if kl_all <= kl_tol and action < best[0]:
                best = (action, gap, kl_all, copy.deepcopy(student.state_dict()))
            elif kl_all > kl_tol:
                weight *= penalty_growth  # infeasible: tighten the penalty (continuation)
    student.load_state_dict(best[3])
    for p in student.parameters():
        p.requires_grad_(True)
    return StraightenResult(
        ratio=action0 / best[0] if best[0] > 0 else 1.0,
        action_trained=action0, action_min=best[0], gap_trained=gap0, gap_min=best[1],
        kl=best[2], model=student, history=history,
    )
