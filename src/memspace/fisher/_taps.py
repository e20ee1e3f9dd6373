"""Per-layer taps: layer inputs and output gradients of Linear and Conv2d layers.

For a layer with weight W and per-sample output gradients g (one per back-propagated
column s_k of the output Fisher), the per-sample weight gradient is g aᵀ (Linear) or
Σ_p g_p ū_pᵀ over output positions p with unfolded input patches ū (Conv2d). These
give the Fisher diagonal Σ_n Σ_k (per-sample grad)² and the K-FAC factors, without
materialising per-sample gradients of the whole network.

Layers not handled here (LayerNorm, BatchNorm affine, embeddings, grouped
convolutions, ...) are handled by the callers' stated fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

__all__ = ["LayerTap", "is_tappable", "per_sample_weight_grads", "unfold_conv_input"]


def is_tappable(module: nn.Module) -> bool:
    """Linear, or Conv2d with one group, numeric padding and zero padding mode."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return (
            module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
    return False


def unfold_conv_input(module: nn.Conv2d, inputs: Tensor) -> Tensor:
    """Input patches of a Conv2d: [N, C_in, H, W] → [N, C_in·kh·kw, P]."""
    return nnf.unfold(
        inputs,
        kernel_size=module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )


@dataclass
class LayerTap:
    """Records, during one forward, a layer's inputs and the outputs to differentiate.

    Attributes:
        module: the tapped Linear or Conv2d.
        weight_name / bias_name: the parameters' full names (``None`` if not selected).
        inputs: detached layer inputs, one entry per call in the forward.
        outputs: layer outputs (in the graph), one entry per call.
    """

    module: nn.Module
    weight_name: str | None
    bias_name: str | None
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    _features: dict[int, Tensor] = field(default_factory=dict)

    def hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.inputs.append(args[0].detach())
        self.outputs.append(output)

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()
        self._features.clear()

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    def features(self, call: int) -> Tensor:
        """Layer inputs as columns [N, I, T] (T = positions or extra dims, 1 for MLPs).

        For a Conv2d these are the unfolded patches, computed once per batch and call.
        """
        if call not in self._features:
            a = self.inputs[call]
            if self.is_conv:
                self._features[call] = unfold_conv_input(self.module, a)
            else:
                self._features[call] = a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)
        return self._features[call]

    def output_grads(self, grad: Tensor) -> Tensor:
        """Output gradients as columns [N, O, T] matching :meth:`features`."""
        if self.is_conv:
            return grad.flatten(2)
        return grad.reshape(grad.shape[0], -1, grad.shape[-1]).transpose(1, 2)


def _per_sample_conv_weight_grads(module: nn.Conv2d, inputs: Tensor, grad: Tensor) -> Tensor:
    """Per-sample Conv2d weight gradients [N, O, C·kh·kw] without unfolding.

    The batch is folded into the channels and differentiated as one convolution with
    N groups (the kernel of a grouped convolution's weight gradient is per group).
    """
    num, out_ch = grad.shape[:2]
    weight = module.weight.detach()
    _, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad.reshape(1, num * out_ch, *grad.shape[2:]),
        inputs.reshape(1, num * inputs.shape[1], *inputs.shape[2:]),
        weight.repeat(num, 1, 1, 1),
        None, list(module.stride), list(module.padding), list(module.dilation),
        False, [0, 0], num, [False, True, False],
    )
    return grad_weight.reshape(num, out_ch, -1)


def per_sample_weight_grads(tap: LayerTap, grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample gradients of weight [N, O, I] and bias [N, O], summed over calls.

    Args:
        tap: the layer's tap after a forward.
        grads: gradients w.r.t. each recorded output, one per call.
    """
    weight = bias = None
    for call, grad in enumerate(grads):
        g = tap.output_grads(grad)
        if tap.is_conv:
            w = _per_sample_conv_weight_grads(tap.module, tap.inputs[call], grad)
        else:
            w = torch.bmm(g, tap.features(call).transpose(1, 2))
        b = g.sum(dim=2)
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    return weight, bias
