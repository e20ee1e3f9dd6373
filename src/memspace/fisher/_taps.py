"""Per-layer taps: layer inputs and output gradients of Linear and Conv2d layers.

For a layer with weight W and per-sample output gradients g (one per back-propagated
column s_k of the output Fisher), the per-sample weight gradient is g aᵀ (Linear) or
Σ_p g_p ū_pᵀ over output positions p with unfolded input patches ū (Conv2d). These
give the Fisher diagonal Σ_n Σ_k (per-sample grad)² and the K-FAC factors, without
materialising per-sample gradients of the whole network.

Layers not handled here (LayerNorm, BatchNorm affine, embeddings, grouped
convolutions, ...) are handled by the callers' stated fallback.

A tap is a shortcut with assumptions, and each is checked before it is used
(:func:`check_tap_layout`, and the operator's gradient check): every call of the layer
has an input and an output with a sample axis found by shape tracing (for a Linear any
axis but the features, for a Conv2d axis 0 of a 4-D input); its parameters belong to
this module alone; and every use of them in the forward goes through the module's calls.
A layer that fails a check is handled by the exact per-sample fallback, with the reason
recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

__all__ = ["LayerTap", "check_tap_layout", "is_tappable", "per_sample_weight_grads", "unfold_conv_input"]


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


def check_tap_layout(module: nn.Module, axes: list[tuple[int | None, int | None]] | None,
                     shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] | None = None) -> str | None:
    """Why a tap cannot be used for ``module`` with these probed sample axes, or None.

    Args:
        axes: per call, the (input, output) sample axes from
            :func:`memspace._model_call.sample_axes_by_probe` (None: calls vary with N).
    """
    if axes is None:
        return "its number of calls depends on the batch"
    for call, (in_axis, out_axis) in enumerate(axes):
        if in_axis is None or out_axis is None:
            return f"its input in call {call} has no axis that indexes data points (rows of several samples?)"
        if in_axis != out_axis:
            return f"call {call} moves the sample axis from {in_axis} to {out_axis}"
        if isinstance(module, nn.Conv2d) and in_axis != 0:
            return f"call {call} has the sample on axis {in_axis}, not 0"
    return None


@dataclass
class LayerTap:
    """Records, during one forward, a layer's inputs and the outputs to differentiate.

    Attributes:
        module: the tapped Linear or Conv2d.
        weight_name / bias_name: the parameters' full names (``None`` if not selected).
        sample_axes: per call, the axis of the layer's input and output that indexes
            data points (moved to the front when recorded); None while unknown (axis 0).
        inputs: detached layer inputs, sample axis first, one entry per call.
        outputs: layer outputs (in the graph, as the layer returned them), one per call.
    """

    module: nn.Module
    weight_name: str | None
    bias_name: str | None
    sample_axes: list[int] | None = None
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    _features: dict[int, Tensor] = field(default_factory=dict)

    def axis(self, call: int) -> int:
        if self.sample_axes is None or call >= len(self.sample_axes):
            return 0
        return self.sample_axes[call]

    def hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        call = len(self.inputs)
        self.inputs.append(args[0].detach().movedim(self.axis(call), 0))
        self.outputs.append(output)

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()
        self._features.clear()

    def features_of(self, inputs: Tensor, call: int) -> Tensor:
        """:meth:`features` of some of the call's samples (``inputs``: sample axis first), not cached."""
        if self.is_conv:
            return unfold_conv_input(self.module, inputs)
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1]).transpose(1, 2)

    def drop_features(self) -> None:
        """Forget the cached :meth:`features` (they are recomputed if asked for again)."""
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

    def output_grads(self, grad: Tensor, call: int = 0) -> Tensor:
        """Output gradients as columns [N, O, T] matching :meth:`features`."""
        if self.is_conv:
            return grad.flatten(2)
        grad = grad.movedim(self.axis(call), 0)
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
        g = tap.output_grads(grad, call)
        if tap.is_conv:
            w = _per_sample_conv_weight_grads(tap.module, tap.inputs[call], grad)
        else:
            w = torch.bmm(g, tap.features(call).transpose(1, 2))
        b = g.sum(dim=2)
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    return weight, bias


def per_sample_square_sums(tap: LayerTap, grads: list[Tensor], max_elements: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """Σ_n of squared per-sample weight [O, I] and bias [O] gradients, summed over calls first.

    The per-sample gradients [n, O, I] are formed for a chunk of samples at a time, at most
    ``max_elements`` entries (64 MiB in float32), so a wide layer never holds a batch of them
    (ResNet-18's last convolution: 128 × 512 × 4608 entries, 1.2 GB, at once otherwise).
    """
    num = tap.inputs[0].shape[0]
    per_sample = tap.module.weight.numel()
    chunk = max(1, max_elements // max(1, per_sample))
    if chunk >= num:
        weight, bias = per_sample_weight_grads(tap, grads)
        return (weight**2).sum(0), (bias**2).sum(0)
    weight_sq = bias_sq = None
    for start in range(0, num, chunk):
        size = min(chunk, num - start)
        part = LayerTap(tap.module, tap.weight_name, tap.bias_name, tap.sample_axes,
                        [a.narrow(0, start, size) for a in tap.inputs])
        part_grads = [g.narrow(tap.axis(call), start, size) for call, g in enumerate(grads)]
        weight, bias = per_sample_weight_grads(part, part_grads)
        w2, b2 = (weight**2).sum(0), (bias**2).sum(0)
        weight_sq = w2 if weight_sq is None else weight_sq + w2
        bias_sq = b2 if bias_sq is None else bias_sq + b2
    return weight_sq, bias_sq


def summed_weight_grads(tap: LayerTap, grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Σ_n of the per-sample weight [O, I] and bias [O] gradients, summed over calls, without
    forming per-sample gradients (what :func:`per_sample_weight_grads` gives, summed over n).
    """
    weight = bias = None
    for call, grad in enumerate(grads):
        g = tap.output_grads(grad, call)  # [N, O, T]
        if tap.is_conv:
            module = tap.module
            _, w, _ = torch.ops.aten.convolution_backward(
                grad, tap.inputs[call], module.weight.detach(), None, list(module.stride), list(module.padding),
                list(module.dilation), False, [0, 0], module.groups, [False, True, False])
            w = w.reshape(w.shape[0], -1)
        else:
            w = torch.einsum("not,nit->oi", g, tap.features(call))
        b = g.sum(dim=(0, 2))
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    return weight, bias
