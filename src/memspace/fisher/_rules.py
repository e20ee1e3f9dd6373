"""Per-layer rules of the layer taps, dispatched by module type (BackPACK's split of derivatives).

A rule says, for one type of layer whose weight acts linearly on (patches of) its input, how
its per-sample weight gradient is formed from what a tap records: the layer input a and the
gradient g of its output. In the column layout shared by every rule,

    features  a  → [N, I, T]   (T weight-sharing positions: 1 for an MLP, H_out·W_out for a conv)
    gradients g  → [N, O, T]
    per-sample weight gradient  Σ_t g_t a_tᵀ  [N, O, I],   bias gradient  Σ_t g_t  [N, O].

The diagonal, K-FAC and EKFAC are written once against this layout. Adding a layer type is
adding one small rule to :data:`RULES`; a layer with no rule takes the exact per-sample path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

__all__ = ["Conv2dRule", "LayerRule", "LinearRule", "RULES", "rule_for"]


class LayerRule:
    """The operations a tap needs for one layer type (see the module doc for the layout)."""

    def refuses(self, module: nn.Module) -> str | None:
        """Why this rule cannot tap ``module`` (a configuration it does not cover), or None."""
        return None

    def check_axes(self, call: int, axis: int) -> str | None:
        """Why the probed sample ``axis`` of call ``call`` cannot be tapped, or None."""
        return None

    def features(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """Layer inputs (sample axis first) as columns [N, I, T]."""
        raise NotImplementedError

    def output_grads(self, module: nn.Module, grad: Tensor, axis: int) -> Tensor:
        """Output gradients (sample axis ``axis``) as columns [N, O, T], like :meth:`features`."""
        raise NotImplementedError

    def per_sample_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        """Per-sample weight gradients [N, O, I] of one call."""
        g = self.output_grads(module, grad, axis)
        return torch.bmm(g, self.features(module, inputs).transpose(1, 2))

    def summed_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        """Σ_n of the per-sample weight gradients [O, I] of one call, without forming them."""
        g = self.output_grads(module, grad, axis)
        return torch.einsum("not,nit->oi", g, self.features(module, inputs))

    def rank_one(self, inputs: Tensor) -> bool:
        """Whether the per-sample gradient of a call with these inputs is g aᵀ (one position)."""
        return False


class LinearRule(LayerRule):
    """``nn.Linear`` on inputs [..., I]: every leading axis but the sample's is a position."""

    def features(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1]).transpose(1, 2)

    def output_grads(self, module: nn.Module, grad: Tensor, axis: int) -> Tensor:
        grad = grad.movedim(axis, 0)
        return grad.reshape(grad.shape[0], -1, grad.shape[-1]).transpose(1, 2)

    def rank_one(self, inputs: Tensor) -> bool:
        return inputs.dim() == 2


class Conv2dRule(LayerRule):
    """``nn.Conv2d`` with one group and numeric zero padding: features are unfolded patches."""

    def refuses(self, module: nn.Module) -> str | None:
        if module.groups != 1:
            return f"a grouped convolution ({module.groups} groups)"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return f"padding {module.padding!r} in mode {module.padding_mode!r}"
        return None

    def check_axes(self, call: int, axis: int) -> str | None:
        return None if axis == 0 else f"call {call} has the sample on axis {axis}, not 0"

    def features(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return nnf.unfold(
            inputs,
            kernel_size=module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,
            stride=module.stride,
        )

    def output_grads(self, module: nn.Module, grad: Tensor, axis: int) -> Tensor:
        return grad.flatten(2)

    def per_sample_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        """Without unfolding: the batch folded into the channels.

        Differentiated as one convolution with N groups (a grouped convolution's weight gradient is
        per group).
        """
        num, out_ch = grad.shape[:2]
        grad_weight = _conv_weight_grad(
            module,
            grad.reshape(1, num * out_ch, *grad.shape[2:]),
            inputs.reshape(1, num * inputs.shape[1], *inputs.shape[2:]),
            module.weight.detach().repeat(num, 1, 1, 1),
            groups=num,
        )
        return grad_weight.reshape(num, out_ch, -1)

    def summed_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        """One ``convolution_backward``: the weight gradient autograd would form."""
        weight = _conv_weight_grad(module, grad, inputs, module.weight.detach(), module.groups)
        return weight.reshape(weight.shape[0], -1)


def _conv_weight_grad(
    module: nn.Module, grad: Tensor, inputs: Tensor, weight: Tensor, groups: int
) -> Tensor:
    """The weight gradient of ``module``'s convolution of ``inputs`` by ``weight`` for ``grad``."""
    _, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad,
        inputs,
        weight,
        None,
        list(module.stride),
        list(module.padding),
        list(module.dilation),
        False,
        [0, 0],
        groups,
        [False, True, False],
    )
    return grad_weight


RULES: dict[type[nn.Module], LayerRule] = {nn.Linear: LinearRule(), nn.Conv2d: Conv2dRule()}
"""The layer types the taps cover, by exact type or base class."""


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for ``module``'s type (the nearest base class in :data:`RULES`), or None."""
    for cls in type(module).__mro__:
        if cls in RULES:
            return RULES[cls]
    return None
