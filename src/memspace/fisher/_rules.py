"""Per-layer rules of the layer taps, dispatched by module type (BackPACK's split of derivatives).

A rule says, for one type of layer whose weight acts linearly on (patches of) its input, how
its per-sample weight gradient is formed from what a tap records: the layer input a and the
gradient g of its output. In the column layout shared by every rule,

    features  a  → [N, I, T]   (T weight-sharing positions: 1 for an MLP, H_out·W_out for a conv)
    gradients g  → [N, O, T]
    per-sample weight gradient  Σ_t g_t a_tᵀ  [N, O, I],   bias gradient  Σ_t g_t  [N, O].

The diagonal, K-FAC and EKFAC are written once against this layout. A rule also says how its
weight is stored: [O, I] rows (Linear), [O, C, kh, kw] read as [O, C·kh·kw] (Conv2d), or [I, O]
(``transformers``' Conv1D, GPT-2's linear layer with a transposed weight), through
:meth:`LayerRule.weight_rows` and :meth:`LayerRule.weight_from_rows`. Adding a layer type is
adding one small rule to :data:`RULES` (or, for a class of an optional library that memspace does
not import, to :data:`RULES_BY_NAME`); a layer with no rule takes the exact per-sample path, and
the plan says so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

__all__ = [
    "Conv1DRule",
    "Conv2dRule",
    "EmbeddingRule",
    "LayerNormRule",
    "LayerRule",
    "LinearRule",
    "PackedInProjectionRule",
    "RULES",
    "RULES_BY_NAME",
    "rule_for",
]


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

    transposed = False
    """Whether the weight is stored [I, O] (its rows are the inputs): ``transformers``' Conv1D."""

    kronecker = True
    """Whether the layer's Fisher block is approximated as G ⊗ A (K-FAC); an elementwise layer's
    is not, and K-FAC keeps its exact diagonal, taken from the same tap."""

    def out_features(self, module: nn.Module) -> int:
        """O, the number of output features (rows of the weight matrix)."""
        return module.weight.shape[1 if self.transposed else 0]

    def weight_rows(self, weight: Tensor) -> Tensor:
        """A weight-shaped tensor as its matrix [O, I] (a view)."""
        return weight_rows(weight, self.transposed)

    def weight_from_rows(self, matrix: Tensor, shape: torch.Size) -> Tensor:
        """A matrix [O, I] in the weight's own layout ``shape``."""
        return weight_from_rows(matrix, shape, self.transposed)

    def square_sums(
        self, module: nn.Module, inputs: list[Tensor], grads: list[Tensor], axes: list[int]
    ) -> Tensor | None:
        """Σ_n (per-sample weight gradient)² [O, I] without forming them, or None.

        None: they are formed a chunk of samples at a time instead.
        """
        return None


def weight_rows(weight: Tensor, transposed: bool) -> Tensor:
    """``weight`` as [O, I]: its first axis against the rest, or its transpose (a view)."""
    return weight.T if transposed else weight.reshape(weight.shape[0], -1)


def weight_from_rows(matrix: Tensor, shape: torch.Size, transposed: bool) -> Tensor:
    """A matrix [O, I] in the layout ``shape`` of a weight (:func:`weight_rows` undone)."""
    return matrix.T.reshape(shape) if transposed else matrix.reshape(shape)


class LinearRule(LayerRule):
    """``nn.Linear`` on inputs [..., I]: every leading axis but the sample's is a position."""

    def features(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1]).transpose(1, 2)

    def output_grads(self, module: nn.Module, grad: Tensor, axis: int) -> Tensor:
        grad = grad.movedim(axis, 0)
        return grad.reshape(grad.shape[0], -1, grad.shape[-1]).transpose(1, 2)

    def rank_one(self, inputs: Tensor) -> bool:
        return inputs.dim() == 2


class Conv1DRule(LinearRule):
    """``transformers.pytorch_utils.Conv1D`` (GPT-2): a Linear whose weight is stored [I, O].

    y = x W + b on inputs [..., I] (``addmm`` on the flattened rows, reshaped back), so the
    per-sample gradient of W is Σ_t a_t g_tᵀ, the transpose of a Linear's; the columns are a
    Linear's and only the weight's layout differs (:attr:`LayerRule.transposed`).
    """

    transposed = True


class PackedInProjectionRule(LinearRule):
    """``nn.MultiheadAttention``'s packed in-projection: ``in_proj_weight`` [3E, E] as a Linear.

    Self-attention (query, key and value the same tensor) projects them in one
    ``F.linear(x, in_proj_weight, in_proj_bias)`` on [T, N, E]; the tap records that call
    (:attr:`memspace.fisher._taps.LayerTap.functional`), whose columns are a Linear's.
    """

    def out_features(self, module: nn.Module) -> int:
        return module.in_proj_weight.shape[0]


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


class LayerNormRule(LayerRule):
    """``nn.LayerNorm`` over its last axis with an affine map: y = x̂ ⊙ w + b.

    x̂ = (x − mean) / √(var + ε) is the normalised input. The per-sample gradients are elementwise,
    ∇w = Σ_t g_t ⊙ x̂_t and ∇b = Σ_t g_t, so the features are x̂ in a Linear's layout [N, D, T] and
    the weight reads as a column [D, 1] (O = D, I = 1) in every diagonal statistic. There is no
    Kronecker block (:attr:`LayerRule.kronecker` is False): K-FAC and EKFAC keep the exact diagonal
    from this tap instead of per-sample Jacobians.
    """

    kronecker = False

    def refuses(self, module: nn.Module) -> str | None:
        if not module.elementwise_affine:
            return "no affine parameters"
        if len(module.normalized_shape) != 1:
            return f"it normalises over {len(module.normalized_shape)} axes"
        return None

    def out_features(self, module: nn.Module) -> int:
        return module.normalized_shape[0]

    def features(self, module: nn.Module, inputs: Tensor) -> Tensor:
        normalised = nnf.layer_norm(inputs, module.normalized_shape, None, None, module.eps)
        return LINEAR.features(module, normalised)

    def output_grads(self, module: nn.Module, grad: Tensor, axis: int) -> Tensor:
        return LINEAR.output_grads(module, grad, axis)

    def per_sample_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        g = self.output_grads(module, grad, axis)
        return (g * self.features(module, inputs)).sum(2, keepdim=True)  # [N, D, 1]

    def summed_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        g = self.output_grads(module, grad, axis)
        return (g * self.features(module, inputs)).sum(dim=(0, 2)).unsqueeze(1)  # [D, 1]


class EmbeddingRule(LayerRule):
    """``nn.Embedding``: the lookup W[x] of token ids x, weight [V, d].

    The per-sample gradient is sparse, ∇W_n = Σ_t e_{x_nt} g_ntᵀ (rows of the tokens the sample
    holds; none for ``padding_idx``, which the lookup treats as a constant). Its squares are summed
    without forming it (:meth:`square_sums`): the gradients of each (sample, token) pair are added
    first, O(T·d) per sample whatever V. No Kronecker block: K-FAC keeps the exact diagonal.
    """

    kronecker = False

    def refuses(self, module: nn.Module) -> str | None:
        if module.max_norm is not None:
            return "max_norm renormalises its rows in the forward"
        if module.scale_grad_by_freq:
            return "scale_grad_by_freq scales its gradient by the batch's counts"
        return None

    def out_features(self, module: nn.Module) -> int:
        return module.num_embeddings

    def output_grads(self, module: nn.Module, grad: Tensor, axis: int) -> Tensor:
        return LINEAR.output_grads(module, grad, axis)

    def _pairs(
        self, module: nn.Module, inputs: list[Tensor], grads: list[Tensor], axes: list[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(sample index, token id, output gradient [pairs, d]) of every kept lookup."""
        samples, ids, rows = [], [], []
        for x, g, axis in zip(inputs, grads, axes):
            g = g.movedim(axis, 0)
            num = x.shape[0]
            x, g = x.reshape(num, -1), g.reshape(num, -1, g.shape[-1])
            keep = x != module.padding_idx if module.padding_idx is not None else x >= 0
            index = torch.arange(num, device=x.device)[:, None].expand_as(x)
            samples.append(index[keep])
            ids.append(x[keep])
            rows.append(g[keep])
        return torch.cat(samples), torch.cat(ids), torch.cat(rows)

    def square_sums(
        self, module: nn.Module, inputs: list[Tensor], grads: list[Tensor], axes: list[int]
    ) -> Tensor:
        samples, ids, rows = self._pairs(module, inputs, grads, axes)
        vocab = module.num_embeddings
        keys, where = torch.unique(samples * vocab + ids, return_inverse=True)
        per_pair = rows.new_zeros(len(keys), rows.shape[1]).index_add_(0, where, rows)
        return rows.new_zeros(vocab, rows.shape[1]).index_add_(0, keys % vocab, per_pair.square())

    def per_sample_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        samples, ids, rows = self._pairs(module, [inputs], [grad], [axis])
        vocab, num = module.num_embeddings, inputs.shape[0]
        flat = rows.new_zeros(num * vocab, rows.shape[1]).index_add_(0, samples * vocab + ids, rows)
        return flat.reshape(num, vocab, rows.shape[1])

    def summed_weight_grads(
        self, module: nn.Module, inputs: Tensor, grad: Tensor, axis: int
    ) -> Tensor:
        _, ids, rows = self._pairs(module, [inputs], [grad], [axis])
        return rows.new_zeros(module.num_embeddings, rows.shape[1]).index_add_(0, ids, rows)


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


LINEAR = LinearRule()

RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LINEAR,
    nn.Conv2d: Conv2dRule(),
    nn.LayerNorm: LayerNormRule(),
    nn.Embedding: EmbeddingRule(),
}
"""The layer types the taps cover, by exact type or base class."""

RULES_BY_NAME: dict[str, LayerRule] = {"transformers.pytorch_utils.Conv1D": Conv1DRule()}
"""Layer types of optional libraries, by qualified class name (memspace does not import them)."""


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for ``module``'s type, or None.

    The nearest base class in :data:`RULES` or, by qualified name, in :data:`RULES_BY_NAME`.
    """
    for cls in type(module).__mro__:
        if cls in RULES:
            return RULES[cls]
        rule = RULES_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if rule is not None:
            return rule
    return None
