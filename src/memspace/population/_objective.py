"""What a member minimises on one batch, written to run inside ``vmap``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._errors import MemspaceError
from ..action import ActionTerm, jacobian_action_of

Objective = Callable[..., tuple[Tensor, ...]]
"""``objective(model, term, batch, lam, probes) → (total, data loss, action, ...)`` of one member.

Further 0-dim outputs after the first three (a VAE's reconstruction and KL) are returned by
:meth:`~memspace.population.PopulationTrainer.step` beside them.

Runs inside ``vmap``: ``batch`` is the member's tuple of batch tensors, ``term`` its
:class:`~memspace.action.ActionTerm` (or None), whose capture must be entered with
``transformed=True``; no data-dependent Python control flow.
"""


def _logits(outputs) -> Tensor:
    if not isinstance(outputs, Tensor):
        raise MemspaceError(
            f"the model returns {type(outputs).__name__}, not logits [N, C]: a population's "
            "classification objective needs a model whose output is the logits (wrap it, or "
            "pass an objective that selects them)"
        )
    return outputs


def classification(model, term, batch, lam, probes):
    """``fit``'s objective: mean cross-entropy of ``model(x)`` against ``y``, plus λ·action."""
    x, y = batch
    if term is None:
        logits = _logits(model(x))
        loss = nn.functional.cross_entropy(logits, y)
        return loss, loss, loss.new_zeros(())
    with term.capture(transformed=True) as record:
        logits = _logits(model(x))
    loss = nn.functional.cross_entropy(logits, y)
    if term.name == "jacobian":
        penalty = jacobian_action_of(record, term.path.blocks, probes)
    else:
        penalty = term(record, logits, check_finite=False)
    return loss + lam * penalty, loss, penalty


class PenalisedLoss(nn.Module):
    """The template network, its action term and objective, to run inside ``functional_call``."""

    def __init__(self, model: nn.Module, term: ActionTerm | None, objective: Objective):
        super().__init__()
        self.model = model
        self.term = term
        self.objective = objective

    def forward(self, batch, lam, probes):
        """(total, data loss, action) of one member on one batch."""
        return self.objective(self.model, self.term, tuple(batch), lam, probes)


def classification_with_actions(model, terms, batch, weights, probes):
    """:func:`classification` for members with different action terms, in one call.

    Every term in ``terms`` is computed from one captured forward; ``weights`` [2, A] holds
    the member's λ for its own term (0 for the others) and a one-hot of its term. The total
    ``loss + Σ_a w_a·A_a`` and its gradient equal ``loss + λ·A_own`` and its gradient exactly:
    the other terms enter multiplied by 0, and adding an exact zero changes no rounding.
    """
    x, y = batch
    with terms[0].capture(transformed=True) as record:
        logits = _logits(model(x))
    loss = nn.functional.cross_entropy(logits, y)
    total, own = loss, loss.new_zeros(())
    for j, term in enumerate(terms):
        if term.name == "jacobian":
            value = jacobian_action_of(record, term.path.blocks, probes)
        else:
            value = term(record, logits, check_finite=False)
        total = total + weights[0, j] * value
        own = own + weights[1, j] * value
    return total, loss, own
