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

    def hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.inputs.append(args[0].detach())
        self.outputs.append(output)

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()

    def features(self, call: int) -> Tensor:
        """Layer inputs as [N, T, I] rows (T = positions or extra dims, 1 for MLPs)."""
        a = self.inputs[call]
        if isinstance(self.module, nn.Conv2d):
            return unfold_conv_input(self.module, a).transpose(1, 2)
        return a.reshape(a.shape[0], -1, a.shape[-1])

    def output_grads(self, grad: Tensor) -> Tensor:
        """Output gradients as [N, T, O] rows matching :meth:`features`."""
        if isinstance(self.module, nn.Conv2d):
            return grad.flatten(2).transpose(1, 2)
        return grad.reshape(grad.shape[0], -1, grad.shape[-1])


def per_sample_weight_grads(tap: LayerTap, grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample gradients of weight [N, O, I] and bias [N, O], summed over calls.

    Args:
        tap: the layer's tap after a forward.
        grads: gradients w.r.t. each recorded output, one per call.
    """
    weight = bias = None
    for call, grad in enumerate(grads):
        g = tap.output_grads(grad)
        a = tap.features(call)
        w = torch.einsum("nto,nti->noi", g, a)
        b = g.sum(dim=1)
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    return weight, bias
