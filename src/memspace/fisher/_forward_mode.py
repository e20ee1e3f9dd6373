"""Forward-mode AD rules: no wasted product on the first layer, constant padding rows.

PyTorch's forward-AD rules for ``addmm`` and ``convolution`` materialise a zero
tangent for an input that has none and multiply it through: for the first layer of a
network (its input is data) that is a whole extra layer-sized product, about 25 % of
an MLP's matvec. While :func:`first_layer_tangents` is active, a Linear or Conv2d
whose weight carries a tangent but whose input carries neither a tangent nor a
gradient runs through a custom ``autograd.Function`` whose JVP is just
``layer(x; W_t, b_t)``; every other call runs the stock module code.

Embedding padding rows: PyTorch's reverse mode treats the lookup of ``padding_idx`` as
a constant (its row gets no gradient from the lookup), while its forward mode moves the
looked-up row with the weight's tangent; F·v would then not be symmetric. Inside
:func:`forward_mode_rules` the lookup of a padding token carries no tangent either, so
both modes differentiate the same function. (A padding row that is also used elsewhere,
e.g. by a tied output layer, keeps that use in both modes.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn import functional as nnf

__all__ = ["first_layer_tangents", "forward_mode_rules"]


def _has_tangent(tensor: Tensor | None) -> bool:
    return tensor is not None and fwAD.unpack_dual(tensor).tangent is not None


def _is_constant_input(module: nn.Module, x: Tensor) -> bool:
    return _has_tangent(module.weight) and not _has_tangent(x) and not x.requires_grad


class _ConstantInputLinear(torch.autograd.Function):
    """y = x Wᵀ + b with x constant: JVP W_t x + b_t, VJP (gᵀx, Σg)."""

    @staticmethod
    def forward(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
        return nnf.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, bias, x = inputs
        ctx.x = x
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows = grad.reshape(-1, grad.shape[-1])
        grad_weight = (
            rows.T @ ctx.x.reshape(-1, ctx.x.shape[-1]) if ctx.needs_input_grad[0] else None
        )
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, weight_t: Tensor, bias_t: Tensor | None, _x_t: Tensor | None) -> Tensor:
        return nnf.linear(ctx.x, weight_t, bias_t)


class _ConstantInputConv2d(torch.autograd.Function):
    """Conv2d with a constant input: JVP conv(x; W_t, b_t), VJP by the native kernel."""

    @staticmethod
    def forward(weight, bias, x, stride, padding, dilation, groups):
        return nnf.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        weight, bias, x, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(weight)
        ctx.x = x
        ctx.conv = (stride, padding, dilation, groups)
        ctx.bias_shape = None if bias is None else list(bias.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        mask = [
            False,
            ctx.needs_input_grad[0],
            ctx.bias_shape is not None and ctx.needs_input_grad[1],
        ]
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            ctx.x,
            weight,
            ctx.bias_shape,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            mask,
        )
        return grad_weight, grad_bias, None, None, None, None, None

    @staticmethod
    def jvp(ctx, weight_t, bias_t, _x_t, *_):
        stride, padding, dilation, groups = ctx.conv
        return nnf.conv2d(ctx.x, weight_t, bias_t, stride, padding, dilation, groups)


def _linear_forward(self: nn.Linear, x: Tensor) -> Tensor:
    if _is_constant_input(self, x):
        return _ConstantInputLinear.apply(self.weight, self.bias, x)
    return nn.Linear.forward(self, x)


def _conv2d_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    if (
        self.padding_mode == "zeros"
        and not isinstance(self.padding, str)
        and _is_constant_input(self, x)
    ):
        return _ConstantInputConv2d.apply(
            self.weight, self.bias, x, self.stride, self.padding, self.dilation, self.groups
        )
    return nn.Conv2d.forward(self, x)


class _ConstantLookups(torch.autograd.Function):
    """Identity on embedding outputs whose JVP drops the tangent at padding tokens."""

    @staticmethod
    def forward(values: Tensor, keep: Tensor) -> Tensor:
        return values.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.keep = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None

    @staticmethod
    def jvp(ctx, values_t: Tensor, _keep_t) -> Tensor:
        return values_t * ctx.keep


def _embedding_forward(self: nn.Embedding, x: Tensor) -> Tensor:
    out = nn.Embedding.forward(self, x)
    if self.padding_idx is not None and _has_tangent(self.weight):
        keep = (x != self.padding_idx).unsqueeze(-1).to(out.dtype)
        out = _ConstantLookups.apply(out, keep)
    return out


_FAST_FORWARDS = {nn.Linear: _linear_forward, nn.Conv2d: _conv2d_forward}
_RULES = {**_FAST_FORWARDS, nn.Embedding: _embedding_forward}


@contextmanager
def first_layer_tangents(model: nn.Module) -> Iterator[None]:
    """Route constant-input Linear/Conv2d calls through the lean JVP (module doc).

    Only exact ``nn.Linear``/``nn.Conv2d`` instances without a forward of their own
    are touched, and every patch is removed on exit.
    """
    with _patched(model, _FAST_FORWARDS):
        yield


@contextmanager
def forward_mode_rules(model: nn.Module) -> Iterator[None]:
    """The lean first-layer JVP and constant padding lookups (module doc), removed on exit."""
    with _patched(model, _RULES):
        yield


@contextmanager
def _patched(model: nn.Module, rules: dict) -> Iterator[None]:
    patched = []
    for module in model.modules():
        fast = rules.get(type(module))
        if fast is not None and "forward" not in vars(module):
            module.forward = MethodType(fast, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
