"""See any residual network as a path: hooks on its residual blocks (docs/theory.md §3).

A *residual block* is a module mapping the residual stream x_l to x_{l+1}
(skip connection included); its velocity is v_l = (x_{l+1} − x_l)/h. Everything else
(stem, down-sampling, read-out) is a boundary map. Give the blocks' module names for
your own model, or use a :class:`~memspace.paths.models.ResidualPathModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._errors import MemspaceError
from .models import ResidualPathModel

__all__ = ["ResidualPath", "StreamCapture", "resolve_head"]


def resolve_head(
    model: nn.Module, head: nn.Module | str | Callable[[Tensor], Tensor] | None
) -> Callable[[Tensor], Tensor]:
    """The read-out that maps a state of the residual stream to logits.

    ``None`` takes a memspace residual model's ``head``; a string names a sub-module.

    Raises:
        MemspaceError: for a model without a read-out or an unknown name.
    """
    if head is None:
        if isinstance(model, ResidualPathModel):
            return model.head
        raise MemspaceError(
            f"{type(model).__name__} has no read-out memspace knows: pass head=, the module "
            "(or its name) that maps a state of the residual stream to logits"
        )
    if isinstance(head, str):
        modules = dict(model.named_modules())
        if head not in modules:
            raise MemspaceError(f"no module named {head!r} in {type(model).__name__} (head=)")
        return modules[head]
    if not callable(head):
        raise MemspaceError(
            f"head must be a module, a module name or a callable, got {type(head).__name__}"
        )
    return head


@dataclass
class StreamCapture:
    """Block inputs x_l and outputs x_{l+1} recorded during one forward, each [N, ...]."""

    inputs: list[Tensor | None]
    outputs: list[Tensor | None]
    step: float

    def velocities(self) -> list[Tensor]:
        """v_l = (x_{l+1} − x_l)/h per block (in the graph)."""
        return [(out - inp) / self.step for inp, out in zip(self.inputs, self.outputs)]


@dataclass
class ResidualPath:
    """The residual blocks of a model, in order, and the step size h.

    Args:
        model: the network.
        block_names: module names of the residual blocks (``None`` for a
            :class:`ResidualPathModel`, whose ``blocks`` are used).
        step: h (default 1/L).
    """

    model: nn.Module
    block_names: Sequence[str] | None = None
    step: float | None = None
    blocks: list[nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        if self.block_names is None:
            if not isinstance(self.model, ResidualPathModel):
                raise MemspaceError(
                    f"{type(self.model).__name__} is not a memspace residual model: pass "
                    "block_names, the module names of its residual blocks (x_l ↦ x_{l+1})"
                )
            self.block_names = [f"blocks.{i}" for i in range(len(self.model.blocks))]
        modules = dict(self.model.named_modules())
        missing = [n for n in self.block_names if n not in modules]
        if missing:
            raise MemspaceError(f"no module named {missing[0]!r} in {type(self.model).__name__}")
        if not self.block_names:
            raise MemspaceError("a path needs at least one residual block")
        self.blocks = [modules[n] for n in self.block_names]
        if self.step is None:
            self.step = 1.0 / len(self.blocks)

    @property
    def depth(self) -> int:
        """L, the number of residual blocks."""
        return len(self.blocks)

    @contextmanager
    def capture(
        self, *, leaf_input: bool = False, transformed: bool = False
    ) -> Iterator[StreamCapture]:
        """Record every block's input and output during the forwards inside the context.

        Args:
            leaf_input: make the first block's input a fresh leaf requiring grad, so
                gradients with respect to the stream never enter the stem. (A first
                input that does not require grad is always made such a leaf.)
            transformed: the forward runs inside a ``torch.func`` transform (``vmap``, as
                :mod:`memspace.population` does): the stream is recorded as it is, never made
                a leaf (gradients reach it through the transform).

        Raises:
            ValueError: (after the forward) if a block ran more than once or never.
        """
        record = StreamCapture([None] * self.depth, [None] * self.depth, float(self.step))
        calls = [0] * self.depth
        handles = []
        for i, block in enumerate(self.blocks):

            def pre_hook(module, args, i=i):
                # A first input that does not require grad (frozen stem) becomes a leaf
                # that does, so gradients with respect to the stream exist; this changes
                # no parameter gradient.
                needs_leaf = leaf_input or (torch.is_grad_enabled() and not args[0].requires_grad)
                if i == 0 and needs_leaf and not transformed:
                    return (args[0].detach().requires_grad_(True), *args[1:])
                return None

            def hook(module, args, output, i=i):
                calls[i] += 1
                record.inputs[i] = args[0]
                record.outputs[i] = output

            handles.append(block.register_forward_pre_hook(pre_hook))
            handles.append(block.register_forward_hook(hook))
        try:
            yield record
        finally:
            for handle in handles:
                handle.remove()
        wrong = [(self.block_names[i], c) for i, c in enumerate(calls) if c > 1]
        if wrong:
            raise MemspaceError(
                f"residual block {wrong[0][0]} ran {wrong[0][1]} times in one forward; "
                "a block of a path must run exactly once"
            )

    def states(self, record: StreamCapture) -> list[Tensor]:
        """x_0 … x_L from a captured forward, after :meth:`check_captured`.

        Raises:
            MemspaceError: if the stream is changed between two blocks (the output of
                block l is not what block l+1 receives).
        """
        self.check_captured(record)
        for l in range(self.depth - 1):
            out, nxt = record.outputs[l], record.inputs[l + 1]
            if out is not nxt and (
                out.shape != nxt.shape or not torch.equal(out.detach(), nxt.detach())
            ):
                raise MemspaceError(
                    f"between blocks {self.block_names[l]} and {self.block_names[l + 1]} the "
                    "stream is changed "
                    "by something that is not a block: list every residual block, in order, in "
                    "block_names"
                )
        return [record.inputs[0], *record.outputs]

    def check_captured(self, record: StreamCapture) -> None:
        """Raise if some block did not run, or changed the stream's shape."""
        for name, inp, out in zip(self.block_names, record.inputs, record.outputs):
            if inp is None:
                raise MemspaceError(f"residual block {name} did not run in the forward pass")
            if not isinstance(out, Tensor) or inp.shape != out.shape:
                raise MemspaceError(
                    f"module {name} maps {tuple(inp.shape)} to "
                    f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}: a "
                    "residual "
                    "block must keep the stream's shape (down-sampling is a boundary map)"
                )
