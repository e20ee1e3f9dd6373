"""Per-layer taps: layer inputs and output gradients of the layers :mod:`._rules` covers.

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

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from torch import Tensor, nn
from torch.nn import functional as nnf

from ._rules import LayerRule, PackedInProjectionRule, rule_for

PACKED_IN_PROJECTION = PackedInProjectionRule()

__all__ = [
    "LayerTap",
    "Recorder",
    "attention_taps",
    "check_tap_layout",
    "is_tappable",
    "per_sample_square_sums",
    "per_sample_weight_grads",
    "recording",
    "summed_weight_grads",
]


def is_tappable(module: nn.Module) -> bool:
    """Whether a rule of :mod:`._rules` covers ``module`` (Linear; Conv2d with zero padding)."""
    rule = rule_for(module)
    return rule is not None and rule.refuses(module) is None


def check_tap_layout(
    rule: LayerRule, axes: list[tuple[int | None, int | None]] | None
) -> str | None:
    """Why a tap cannot be used for a layer with these probed sample axes, or None.

    Args:
        rule: the layer's rule.
        axes: per call, the (input, output) sample axes from
            :func:`memspace._model_call.sample_axes_by_probe` (None: calls vary with N).
    """
    if axes is None:
        return "its number of calls depends on the batch"
    for call, (in_axis, out_axis) in enumerate(axes):
        if in_axis is None or out_axis is None:
            return (
                f"its input in call {call} has no axis that indexes data points "
                "(rows of several samples?)"
            )
        if in_axis != out_axis:
            return f"call {call} moves the sample axis from {in_axis} to {out_axis}"
        why = rule.check_axes(call, in_axis)
        if why:
            return why
    return None


@dataclass
class LayerTap:
    """Records, during one forward, a layer's inputs and the outputs to differentiate.

    Attributes:
        module: the tapped layer (one :mod:`._rules` covers).
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
    functional: str | None = None
    """For a layer its model does not call as a module (attention's projections): the full name of
    the weight whose ``F.linear`` calls are recorded (:func:`recording`); None for a module tap."""
    rows: bool = False
    """The recorded calls act on rows [T·N, I], time-major (torch's attention out-projection);
    they are recorded as [T, N, I]."""
    group: str | None = None
    """The name of a weight this layer shares with other taps (a tied embedding and output
    layer), whose per-sample gradients add up before they are squared; None when untied."""
    group_size: int = 1
    """How many taps share the weight of :attr:`group`."""
    packed: bool = False
    """The tap is ``nn.MultiheadAttention``'s packed in-projection (``PackedInProjectionRule``),
    and ``module`` is the attention module."""

    @property
    def rule(self) -> LayerRule:
        """The layer's rule (:func:`._rules.rule_for`, or the packed in-projection's)."""
        return PACKED_IN_PROJECTION if self.packed else rule_for(self.module)

    @property
    def weight(self) -> Tensor:
        """The layer's weight parameter (its shape is the weight's layout)."""
        return self.module.in_proj_weight if self.packed else self.module.weight

    def record(self, inputs: Tensor, output: Tensor) -> None:
        """Record one call's input (sample axis moved first, detached) and its output."""
        call = len(self.inputs)
        self.inputs.append(inputs.detach().movedim(self.axis(call), 0))
        self.outputs.append(output)

    def axis(self, call: int) -> int:
        """The sample axis of call ``call`` (0 while unknown)."""
        if self.sample_axes is None or call >= len(self.sample_axes):
            return 0
        return self.sample_axes[call]

    def clear(self) -> None:
        """Forget what the last forward recorded."""
        self.inputs.clear()
        self.outputs.clear()
        self._features.clear()

    def features_of(self, inputs: Tensor, call: int) -> Tensor:
        """:meth:`features` of some of the call's samples (``inputs``: sample axis first).

        Not cached.
        """
        return self.rule.features(self.module, inputs)

    def drop_features(self) -> None:
        """Forget the cached :meth:`features` (they are recomputed if asked for again)."""
        self._features.clear()

    @property
    def rank_one(self) -> bool:
        """One call whose per-sample gradient is g aᵀ.

        Squares factor as g² ⊗ a² (the fast diagonal).
        """
        return len(self.inputs) == 1 and self.rule.rank_one(self.inputs[0])

    def features(self, call: int) -> Tensor:
        """Layer inputs as columns [N, I, T] (T = positions or extra dims, 1 for MLPs).

        Computed once per batch and call (for a Conv2d: the unfolded patches).
        """
        if call not in self._features:
            self._features[call] = self.rule.features(self.module, self.inputs[call])
        return self._features[call]

    def output_grads(self, grad: Tensor, call: int = 0) -> Tensor:
        """Output gradients as columns [N, O, T] matching :meth:`features`."""
        return self.rule.output_grads(self.module, grad, self.axis(call))


Recorder = Callable[[LayerTap, Tensor, Tensor], "Tensor | None"]
"""What a forward does at each call of a tapped layer: ``record(tap, input, output)``, returning a
replacement of the output (a probe added to it) or None."""


def attention_taps(
    prefix: str, attention: nn.MultiheadAttention, selected: set[str]
) -> list[LayerTap]:
    """Taps on an ``nn.MultiheadAttention``'s projections, which its forward calls functionally.

    The packed in-projection (``in_proj_weight``, when query, key and value share one embedding
    size) and the out-projection, whose ``F.linear`` runs on rows [T·N, E] in time-major order
    (``torch.nn.functional.multi_head_attention_forward`` views them as [T, N, E] right after).
    Each is kept only if its checks pass, like every tap: a cross-attention's in-projection, split
    into three calls on slices of the weight, records no call and fails the gradient check.
    """
    name = f"{prefix}." if prefix else ""
    projections = [(attention.out_proj, "out_proj.weight", "out_proj.bias", {"rows": True})]
    if attention._qkv_same_embed_dim and attention.in_proj_weight is not None:
        projections.insert(0, (attention, "in_proj_weight", "in_proj_bias", {"packed": True}))
    taps = []
    for module, weight, bias, layout in projections:
        weight, bias = name + weight, name + bias
        has_bias = dict(attention.named_parameters()).get(bias[len(name) :]) is not None
        tap = LayerTap(
            module,
            weight if weight in selected else None,
            bias if has_bias and bias in selected else None,
            functional=weight,
            **layout,
        )
        if tap.weight_name or tap.bias_name:
            taps.append(tap)
    return taps


@contextmanager
def recording(
    taps: list[LayerTap], params: Mapping[str, Tensor], num: int, record: Recorder
) -> Iterator[None]:
    """Call ``record`` at every call of each tap during the forwards inside the block.

    A module tap by a forward hook; a functional tap (:attr:`LayerTap.functional`) by wrapping
    ``torch.nn.functional.linear`` and recognising its weight, the very tensor ``params`` holds
    under that name (``functional_call`` hands the model those tensors). A rows tap's call on
    [T·N, I] is recorded as [T, N, I] with ``num`` = N samples, and its output goes on from that
    view, so gradients with respect to the recorded output reach it.
    """
    handles = [
        tap.module.register_forward_hook(
            lambda module, args, output, tap=tap: record(tap, args[0], output)
        )
        for tap in taps
        if tap.functional is None
    ]
    by_weight = {id(params[tap.functional]): tap for tap in taps if tap.functional is not None}
    original = nnf.linear

    def linear(inputs: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        output = original(inputs, weight, bias)
        tap = by_weight.get(id(weight))
        if tap is None:
            return output
        if tap.rows and inputs.dim() == 2 and inputs.shape[0] % num == 0:
            flat = output.shape
            inputs = inputs.view(-1, num, inputs.shape[-1])
            output = output.view(-1, num, output.shape[-1])
            replaced = record(tap, inputs, output)
            return (output if replaced is None else replaced).reshape(flat)
        replaced = record(tap, inputs, output)
        return output if replaced is None else replaced

    if by_weight:
        nnf.linear = linear
    try:
        yield
    finally:
        nnf.linear = original
        for handle in handles:
            handle.remove()


def per_sample_weight_grads(tap: LayerTap, grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample gradients of weight [N, O, I] and bias [N, O], summed over calls.

    Args:
        tap: the layer's tap after a forward.
        grads: gradients w.r.t. each recorded output, one per call.
    """
    weight = bias = None
    rule = tap.rule
    for call, grad in enumerate(grads):
        w = rule.per_sample_weight_grads(tap.module, tap.inputs[call], grad, tap.axis(call))
        b = tap.output_grads(grad, call).sum(dim=2)
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    return weight, bias


def per_sample_square_sums(
    tap: LayerTap, grads: list[Tensor], max_elements: int = 1 << 24
) -> tuple[Tensor, Tensor]:
    """Σ_n of squared per-sample weight [O, I] and bias [O] gradients, summed over calls first.

    The per-sample gradients [n, O, I] are formed for a chunk of samples at a time, at most
    ``max_elements`` entries (64 MiB in float32), so a wide layer never holds a batch of them
    (ResNet-18's last convolution: 128 × 512 × 4608 entries, 1.2 GB, at once otherwise).
    """
    custom = tap.rule.square_sums(
        tap.module, tap.inputs, grads, [tap.axis(c) for c in range(len(grads))]
    )
    if custom is not None:  # a rule that sums the squares without forming them (embeddings)
        return custom, None
    num = tap.inputs[0].shape[0]
    per_sample = tap.weight.numel()
    chunk = max(1, max_elements // max(1, per_sample))
    if chunk >= num:
        weight, bias = per_sample_weight_grads(tap, grads)
        return weight.square_().sum(0), bias.square_().sum(0)  # fresh tensors: in place
    weight_sq = bias_sq = None
    for start in range(0, num, chunk):
        size = min(chunk, num - start)
        part = replace(
            tap, inputs=[a.narrow(0, start, size) for a in tap.inputs], outputs=[], _features={}
        )
        part_grads = [g.narrow(tap.axis(call), start, size) for call, g in enumerate(grads)]
        weight, bias = per_sample_weight_grads(part, part_grads)
        w2, b2 = weight.square_().sum(0), bias.square_().sum(0)
        weight_sq = w2 if weight_sq is None else weight_sq + w2
        bias_sq = b2 if bias_sq is None else bias_sq + b2
    return weight_sq, bias_sq


def summed_weight_grads(tap: LayerTap, grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Σ_n of the per-sample weight [O, I] and bias [O] gradients, summed over calls.

    Without forming per-sample gradients (what :func:`per_sample_weight_grads` gives, summed over
    n).
    """
    weight = bias = None
    rule = tap.rule
    for call, grad in enumerate(grads):
        w = rule.summed_weight_grads(tap.module, tap.inputs[call], grad, tap.axis(call))
        b = tap.output_grads(grad, call).sum(dim=(0, 2))
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    return weight, bias
