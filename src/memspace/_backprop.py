"""Back-propagating a chosen output cotangent: vector-Jacobian products sᵀ J.

``torch.autograd.grad(outputs, inputs, s)`` checks the shape of a tensor ``s`` through
``torch.fx.experimental.symbolic_shapes``, whose first import (it loads sympy) costs about 0.3 s
and 30 MB of resident memory in a process that never compiles anything: a user's first Fisher
diagonal paid both. Here the cotangent enters as the backward of a scalar root instead,
⟨s, outputs⟩ with ∂/∂outputs = s, and the root is differentiated with torch's unit seed. The
cotangent is handed on as it is (no product s · 1 is formed: for a language model's logits that
would be a positions × vocabulary tensor), which is why the root is made and differentiated in
one call and never handed out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["backward_along", "grad_along"]


class _Root(torch.autograd.Function):
    """A scalar whose backward hands ``outputs`` the cotangent ``seed`` [outputs' shape]."""

    @staticmethod
    def forward(ctx, outputs: Tensor, seed: Tensor) -> Tensor:  # noqa: D102
        ctx.seed = seed
        return outputs.new_zeros(())

    @staticmethod
    def backward(ctx, unit: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        # ``unit`` is torch's seed 1 of the root: this node is only ever differentiated where it is
        # made (grad_along, backward_along), so s · 1 = s needs no product
        return ctx.seed, None


def _root(outputs: Tensor, seed: Tensor) -> Tensor:
    if seed.shape != outputs.shape:
        raise ValueError(
            f"a cotangent of shape {tuple(seed.shape)} for outputs of shape {tuple(outputs.shape)}"
        )
    return _Root.apply(outputs, seed.detach().to(outputs.dtype))  # the seed: not differentiated


def grad_along(
    outputs: Tensor,
    inputs: Sequence[Tensor],
    seed: Tensor,
    *,
    retain_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """sᵀ ∂outputs/∂input for each input: ``torch.autograd.grad(outputs, inputs, seed)``.

    Args:
        outputs: a tensor in the graph.
        inputs: tensors to differentiate with respect to.
        seed: the cotangent s, of the outputs' shape.
        retain_graph: keep the graph for another backward (as torch's).
        allow_unused: None for an input the outputs do not depend on (as torch's).
    """
    return torch.autograd.grad(
        _root(outputs, seed), list(inputs), retain_graph=retain_graph, allow_unused=allow_unused
    )


def backward_along(outputs: Tensor, seed: Tensor, inputs: Sequence[Tensor]) -> None:
    """sᵀ ∂outputs/∂input added into each input's ``.grad``: ``torch.autograd.backward``'s."""
    torch.autograd.backward(_root(outputs, seed), inputs=list(inputs))
