"""Least action (docs/theory.md §4): action regularisers and path straightening.

Regularisers, each differentiable and computed from the forward pass the training step
already runs (hooks on the residual blocks record x_0 … x_L):

- ``"predictive"``: A = mean_n L·Σ_l d(p_l, p_{l+1})², the action of the predictive path
  (:mod:`memspace.paths.predictive`): the read-out on every state, exact Fisher–Rao
  distances on the simplex. Costs L+1 read-out evaluations.
- ``"predictive-excess"``: A − d(p_0, p_L)² ≥ 0, the excess over the exact least action
  for the path's own end points (it leaves the end points free).
- ``"kinetic"``: A = h Σ_l E_x‖v_l‖² (Finlay et al. 2020).
- ``"jacobian"``: h Σ_l E_x‖∂v_l/∂x_l‖²_F by Hutchinson's estimator, one Gaussian
  probe per block: E_ε‖εᵀ ∂v_l/∂x_l‖² (one vector-Jacobian product per block, each
  through that block only).

The former "Fisher action" h Σ_l (J_l v_l)ᵀΛ(J_l v_l), with J_l at the block's input, is
gone: it has no positive floor, and training with it learns to cancel a block's own
Jacobian against its displacement in the C−1 directions Λ sees (Λ-weighted cosines of
−0.98 to −0.9998 were measured), so its value falls without the path getting simpler.
Its well-posed relative is the block sensitivity, a diagnostic
(:mod:`memspace.paths.sensitivity`).

:func:`straighten` asks how close the architecture can get to the exact least action
with the end map held.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import MemspaceError
from ._stream import as_batch_stream
from .paths.adapter import ResidualPath, StreamCapture, resolve_head
from .paths.predictive import check_anchor, predictive_action, predictive_path, readout_path

__all__ = [
    "ACTIONS",
    "ActionTerm",
    "StraightenResult",
    "jacobian_action",
    "jacobian_action_of",
    "kinetic_action",
    "straighten",
]

ACTIONS = ("predictive", "predictive-excess", "kinetic", "jacobian")


def kinetic_action(record: StreamCapture) -> Tensor:
    """H Σ_l mean_n ‖v_l‖² from a captured forward (differentiable)."""
    return record.step * sum(v.flatten(1).pow(2).sum(1).mean() for v in record.velocities())


def jacobian_action(record: StreamCapture, generator: torch.Generator | None = None) -> Tensor:
    """H Σ_l mean_n ‖εᵀ ∂v_l/∂x_l‖², ε ~ N(0, I): Hutchinson for E‖∂v_l/∂x_l‖²_F."""
    total = None
    for x, v in zip(record.inputs, record.velocities()):
        probe = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        (vjp,) = torch.autograd.grad((probe * v).sum(), x, create_graph=True)
        term = vjp.flatten(1).pow(2).sum(1).mean()
        total = term if total is None else total + term
    return record.step * total


def jacobian_action_of(
    record: StreamCapture, blocks: Sequence[nn.Module], probes: Sequence[Tensor]
) -> Tensor:
    """The Jacobian action with the given probes, by ``torch.func.vjp`` (usable inside ``vmap``).

    The same quantity as :func:`jacobian_action`, H Σ_l mean_n ‖ε_lᵀ ∂v_l/∂x_l‖², with
    v_l(x) = (block_l(x) − x)/h recomputed from the recorded input x_l (``autograd.grad``
    cannot run inside a ``torch.func`` transform); ``probes[l]`` has v_l's shape.
    """
    total = None
    for x, block, probe in zip(record.inputs, blocks, probes):
        _, pullback = torch.func.vjp(
            lambda state, block=block: (block(state) - state) / record.step, x
        )
        (vjp,) = pullback(probe)
        term = vjp.flatten(1).pow(2).sum(1).mean()
        total = term if total is None else total + term
    return record.step * total


@dataclass
class ActionTerm:
    """An action regulariser bound to a model's residual blocks.

    Example:
        >>> term = ActionTerm("predictive", model)
        >>> with term.capture() as record:
        ...     logits = model(x)
        >>> loss = cross_entropy(logits, y) + lam * term(record, logits)

    Args:
        name: one of :data:`ACTIONS`.
        model: the network.
        block_names: residual blocks of a model that is not a memspace residual model.
        head: its read-out (module, name or callable), for the predictive terms.
        likelihood: ``"classification"`` or ``"regression"`` (predictive terms).
        anchor: where the predictive terms' path starts: ``"prior"`` (v3, the default: the
            stem's step counts, so idle blocks are not free) or ``"stem"`` (v2)
            (docs/theory.md §3.1a; :func:`~memspace.paths.predictive_path`'s).
        prior: the prior of ``anchor="prior"``: ``"uniform"`` or a tensor [C] (resolve
            ``"labels"`` first with :func:`~memspace.paths.predictive.resolve_prior`).
    """

    name: str
    model: nn.Module
    block_names: Sequence[str] | None = None
    head: nn.Module | str | Callable[[Tensor], Tensor] | None = None
    likelihood: str = "classification"
    anchor: str = "prior"
    prior: Any = "uniform"
    path: ResidualPath = field(init=False)

    def __post_init__(self) -> None:
        if self.name not in ACTIONS:
            extra = (
                " (the former 'fisher' action had no positive floor; use 'predictive')"
                if self.name == "fisher"
                else ""
            )
            raise MemspaceError(
                f"unknown action {self.name!r}; use one of {', '.join(ACTIONS)}{extra}"
            )
        check_anchor(self.anchor)
        self.path = ResidualPath(self.model, self.block_names)
        self._head = (
            resolve_head(self.model, self.head) if self.name.startswith("predictive") else None
        )

    @contextmanager
    def capture(self, *, transformed: bool = False) -> Iterator[StreamCapture]:
        """Record the residual stream of the forward inside the block (checked on exit).

        ``transformed``: the forward runs inside ``torch.func.vmap`` (a population's step).
        """
        with self.path.capture(transformed=transformed) as record:
            yield record
        self.path.check_captured(record)

    def __call__(
        self,
        record: StreamCapture,
        logits: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        check_finite: bool = True,
    ) -> Tensor:
        """The action of the captured forward.

        ``logits`` are needed by the predictive actions only; ``generator`` draws the Jacobian
        action's probes. ``check_finite=False`` skips the read-outs' finiteness check (inside
        ``vmap``, where the caller checks the loss instead).
        """
        if self.name == "kinetic":
            return kinetic_action(record)
        if self.name == "jacobian":
            return jacobian_action(record, generator)
        outputs = readout_path(
            self.path.states(record), self._head, logits.shape[0], check_finite=check_finite
        )
        return predictive_action(
            outputs,
            likelihood=self.likelihood,
            excess=self.name == "predictive-excess",
            anchor=self.anchor,
            prior=self.prior,
        )


@dataclass
class StraightenResult:
    """Outcome of :func:`straighten`.

    Attributes:
        ratio_trained: A_trained / A_min, exact (A_min = E d(start, p_L)² of the trained net).
        ratio_straightened: A / A_min of the straightened network (its own end points),
            what this architecture reached with the end map held: ≥ 1.
        action_trained / least_action: the trained network's A and A_min.
        action_straightened / least_action_straightened: the same after straightening.
        kl: mean KL(p_trained ‖ p_straightened) on the data (≤ ``kl_tol``).
        model: the straightened network (a copy; the input model is untouched).
        history: (step, action, kl) at each evaluation.
        anchor: where the paths start (``"prior"`` or ``"stem"``; docs/theory.md §3.1a).
    """

    ratio_trained: float
    ratio_straightened: float
    action_trained: float
    least_action: float
    action_straightened: float
    least_action_straightened: float
    kl: float
    model: nn.Module
    history: list[tuple[int, float, float]]
    anchor: str = "prior"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the model)."""
        return {
            k: getattr(self, k)
            for k in (
                "ratio_trained",
                "ratio_straightened",
                "action_trained",
                "least_action",
                "action_straightened",
                "least_action_straightened",
                "kl",
            )
        }


def _mean_kl(model: nn.Module, stream, teacher: list[Tensor]) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for (x, _), logp in zip(stream, teacher):
            logq = model(x).log_softmax(1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += x.shape[0]
    return total / count


def straighten(
    model: nn.Module,
    data: Any,
    *,
    steps: int = 300,
    lr: float = 3e-3,
    penalty: float = 100.0,
    penalty_growth: float = 3.0,
    kl_tol: float = 1e-3,
    eval_every: int = 25,
    block_names: Sequence[str] | None = None,
    head: Any = None,
    batch_size: int = 512,
    anchor: str = "prior",
    prior: Any = "uniform",
) -> StraightenResult:
    """Re-optimise the residual blocks to least predictive action with the end map held.

    Stem and head are frozen, so p_0 is fixed; the blocks minimise A/A_trained + ``penalty``
    · E KL(p_trained ‖ p) (a penalty method for "the same output distribution on the
    data"; the penalty grows by ``penalty_growth`` at every evaluation that finds the
    iterate infeasible). An iterate is feasible when its mean KL ≤ ``kl_tol``; the
    feasible iterate of least exact A/A_min is returned, the trained network included (so
    ``ratio_straightened`` ≤ ``ratio_trained``).

    Because the least action is exact, ``ratio_trained`` needs no straightening at all;
    straightening answers a second question, how close this architecture gets to it
    (``ratio_straightened``). Under ``anchor="prior"`` the stem's step d(π, p_0) is held
    with the stem, so the blocks can even out only the L steps after it: a stem that does
    most of the work keeps the ratio well above 1.

    Args:
        model: a trained residual network (copied, not modified).
        data: the data on which the end map is matched and the action measured.
        steps: Adam steps on the blocks' parameters.
        lr: Adam's learning rate.
        penalty: the initial weight of the KL constraint (see above).
        penalty_growth: its factor at every infeasible evaluation.
        kl_tol: the largest mean KL of a feasible iterate.
        eval_every: steps between exact evaluations on all the data.
        block_names: the residual blocks of a model that is not a memspace residual model.
        head: its read-out.
        batch_size: rows per batch for an ``(X, y)`` pair.
        anchor: ``"prior"`` (v3, the default) or ``"stem"`` (v2), for the action minimised and
            measured (:func:`~memspace.paths.predictive_path`).
        prior: the prior of ``anchor="prior"`` (``"uniform"`` or a tensor [C]).
    """
    check_anchor(anchor)
    student = copy.deepcopy(model).eval()
    path = ResidualPath(student, block_names)
    block_params = {id(p) for block in path.blocks for p in block.parameters()}
    for p in student.parameters():
        p.requires_grad_(id(p) in block_params)
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise MemspaceError("the residual blocks have no parameters to re-optimise")
    first = next(student.parameters())
    stream = as_batch_stream(data, device=first.device, dtype=first.dtype, batch_size=batch_size)
    with torch.no_grad():
        teacher = [model(x).log_softmax(1) for x, _ in stream]
    term = ActionTerm("predictive", student, block_names, head=head, anchor=anchor, prior=prior)

    def exact(net: nn.Module) -> tuple[float, float]:
        result = predictive_path(
            net, stream, block_names=block_names, head=head, anchor=anchor, prior=prior
        )
        return result.action, result.least_action

    action0, least0 = exact(student)
    # The action term is A/A_trained: the penalty is scale-free
    scale = action0 if action0 > 0 else 1.0
    weight = penalty
    ratio = lambda a, b: a / b if b > 0 else float("inf")  # noqa: E731
    best = (action0, least0, 0.0, copy.deepcopy(student.state_dict()))
    history = [(0, action0, 0.0)]
    optimizer = torch.optim.Adam(trainable, lr=lr)

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
        loss = term(record, logits) / scale + weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            action, least = exact(student)
            kl_all = _mean_kl(student, stream, teacher)
            history.append((step, action, kl_all))
            # the best feasible iterate is the one nearest least action for its own end
            # points (its A_min moves a little with p_L, within the KL tolerance)
            if kl_all <= kl_tol and ratio(action, least) < ratio(best[0], best[1]):
                best = (action, least, kl_all, copy.deepcopy(student.state_dict()))
            elif kl_all > kl_tol:
                weight *= penalty_growth  # infeasible: tighten the penalty (continuation)
    student.load_state_dict(best[3])
    for p in student.parameters():
        p.requires_grad_(True)
    return StraightenResult(
        ratio_trained=ratio(action0, least0),
        ratio_straightened=ratio(best[0], best[1]),
        action_trained=action0,
        least_action=least0,
        action_straightened=best[0],
        least_action_straightened=best[1],
        kl=best[2],
        model=student,
        history=history,
        anchor=anchor,
    )
