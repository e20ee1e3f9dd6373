"""Per-layer statistics a collector feeds (:class:`._collect.LayerStatistic`), one per structure.

With a layer's features a [N, I, T] and one column's output gradients g [N, O, T]
(:mod:`._rules`), summed over batches and output-Fisher columns k:

- :class:`DiagonalSquares`: Σ_n Σ_k (Σ_t g_ntk a_ntᵀ)², the diagonal of F on the layer's weight
  (for a rank-one layer (g_k ⊗ a)² = g_k² ⊗ a², so Σ_k g_k² is summed first and multiplied once);
- :class:`KroneckerSums`: K-FAC's Σ_n Σ_t ā ā ᵀ / T (once per batch) and Σ_n Σ_t Σ_k g gᵀ;
- :class:`RotatedSquares`: EKFAC's Σ_n Σ_k ((U_Gᵀ ∇W̄_nk U_A)_ij)² in a fixed eigenbasis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._taps import LayerTap, per_sample_square_sums

__all__ = ["ByRule", "DiagonalSquares", "KroneckerSums", "RotatedSquares", "gram"]

_CHUNK_ELEMENTS = 1 << 24
"""Rotated per-sample gradients are formed this many entries at a time."""
_MOMENT_CHUNK_ELEMENTS = 1 << 21
"""Unfolded patches are formed this many entries at a time (8 MiB in float32, and as much again
for their rows): at ResNet-18's last stage one batch is 38 MB, and the peak of its K-FAC falls
inside an unfold (a chunk of 1 << 22 entries left it 15 MiB above curvlinops')."""


class DiagonalSquares:
    """Σ_n Σ_k (per-sample gradient)² of every tapped layer.

    Added into ``total`` (views by name).
    """

    def __init__(self, total: Mapping[str, Tensor]):
        self.total = total
        self._pending: dict[int, Tensor] = {}
        self._tied: dict[tuple[str, int], list[tuple[LayerTap, list[Tensor], list[Tensor]]]] = {}

    def column(self, tap: LayerTap, grads: list[Tensor], column: int) -> None:
        if tap.group is not None:  # a tied weight: wait for every tap that uses it
            members = self._tied.setdefault((tap.group, column), [])
            members.append((tap, list(tap.inputs), grads))
            if len(members) == tap.group_size:
                self._tied_squares(self._tied.pop((tap.group, column)))
            return
        if tap.rank_one:
            key, g = id(tap), grads[0]
            if key in self._pending:  # Σ_k g_k², in place in the sum the first column made
                self._pending[key].addcmul_(g, g)
            else:
                self._pending[key] = g.square()
            return
        weight_sq, bias_sq = per_sample_square_sums(tap, grads)
        if tap.weight_name:
            tap.rule.weight_rows(self.total[tap.weight_name]).add_(weight_sq)
        if tap.bias_name:
            self.total[tap.bias_name] += bias_sq

    def flush(self, tap: LayerTap) -> None:
        if tap.group is not None:  # a tied tap whose partners' outputs never reached the loss
            for key in [key for key in self._tied if key[0] == tap.group]:
                self._tied_squares(self._tied.pop(key))
            return
        squares = self._pending.pop(id(tap), None)
        if squares is None:
            return
        if tap.weight_name:
            tap.rule.weight_rows(self.total[tap.weight_name]).addmm_(
                squares.T, tap.inputs[0].square()
            )
        if tap.bias_name:
            self.total[tap.bias_name] += squares.sum(0)

    def _tied_squares(
        self,
        members: list[tuple[LayerTap, list[Tensor], list[Tensor]]],
        max_elements: int = _CHUNK_ELEMENTS,
    ) -> None:
        """Σ_n (Σ_taps ∇W_n)² of a tied weight, formed a chunk of samples at a time.

        Each tap's per-sample gradients [n, O, I] are put in the weight's own layout and added
        over its calls and over the taps before squaring; a tap's own bias is squared alone.
        """
        name = members[0][0].weight_name
        target = self.total[name]
        num = members[0][1][0].shape[0]
        chunk = max(1, max_elements // max(1, target.numel()))
        for start in range(0, num, chunk):
            size = min(chunk, num - start)
            summed = None
            for tap, inputs, grads in members:
                for call, grad in enumerate(grads):
                    axis = tap.axis(call)
                    part = tap.rule.per_sample_weight_grads(
                        tap.module,
                        inputs[call].narrow(0, start, size),
                        grad.narrow(axis, start, size),
                        axis,
                    )
                    part = (part.transpose(1, 2) if tap.rule.transposed else part).reshape(
                        size, *target.shape
                    )
                    summed = part if summed is None else summed + part
            target += summed.square_().sum(0)  # a sum of fresh products: ours to square
        for tap, _, grads in members:
            if tap.bias_name:
                bias = sum(tap.output_grads(g, c).sum(2) for c, g in enumerate(grads))
                self.total[tap.bias_name] += bias.square_().sum(0)


class KroneckerSums:
    """K-FAC's sums per layer (keyed by module): ``inputs`` Σ ā āᵀ/T and ``grads`` Σ g gᵀ.

    The input factor is taken in the forward, call by call (:meth:`forward`), so a layer's input
    is dropped as soon as it is seen and never held through the backward; the gradient factor is
    taken as each layer's output gradients arrive.
    """

    def __init__(self) -> None:
        self.inputs: dict[int, Tensor] = {}
        self.grads: dict[int, Tensor] = {}
        self._pending: dict[int, tuple[Tensor, int]] = {}

    def forward(self, tap: LayerTap, call: int) -> bool:
        """One call's input moments, added to the batch's; True: its input may go."""
        key = id(tap.module)
        moments, positions = call_input_moments(tap, call)
        tap.drop_features()  # unfolded patches, the largest temporaries: one layer's at a time
        if key in self._pending:
            total, count = self._pending[key]
            moments, positions = total.add_(moments), count + positions
        self._pending[key] = (moments, positions)
        return True

    def column(self, tap: LayerTap, grads: list[Tensor], column: int) -> None:
        key = id(tap.module)
        for call, g in enumerate(grads):
            _add(self.grads, key, output_grad_covariance(tap, g, call))

    def flush(self, tap: LayerTap) -> None:
        pending = self._pending.pop(id(tap.module), None)
        if pending is not None:  # Σ ā āᵀ over the batch's calls, divided by their positions
            _add(self.inputs, id(tap.module), pending[0].div_(pending[1]))


class ByRule:
    """Feed each tap to ``kronecker``, or to ``elementwise`` for a layer without a Kronecker block.

    K-FAC's factors and the exact diagonal of the layers without a block (layer norms, embeddings,
    tied weights), in one pass.
    """

    def __init__(self, kronecker: Any, elementwise: Any):
        self.kronecker, self.elementwise = kronecker, elementwise

    def _for(self, tap: LayerTap) -> Any:
        return self.kronecker if tap.rule.kronecker and tap.group is None else self.elementwise

    def forward(self, tap: LayerTap, call: int) -> bool:
        statistic = self._for(tap)
        return bool(statistic.forward(tap, call)) if hasattr(statistic, "forward") else False

    def column(self, tap: LayerTap, grads: list[Tensor], column: int) -> None:
        self._for(tap).column(tap, grads, column)

    def flush(self, tap: LayerTap) -> None:
        self._for(tap).flush(tap)


class RotatedSquares:
    """EKFAC's second moments in each layer's eigenbasis.

    Added into ``blocks[module].eigenvalues``.
    """

    def __init__(self, blocks: Mapping[int, Any]):
        self.blocks = blocks

    def column(self, tap: LayerTap, grads: list[Tensor], column: int) -> None:
        block = self.blocks.get(id(tap.module))
        if block is not None:
            block.eigenvalues += rotated_squares(tap, grads, block)

    def flush(self, tap: LayerTap) -> None:
        pass


def call_input_moments(
    tap: LayerTap, call: int, max_elements: int = _MOMENT_CHUNK_ELEMENTS
) -> tuple[Tensor, int]:
    """(Σ_n Σ_t ā ā ᵀ over one call of a tapped layer [I(+1), I(+1)], its positions T).

    K-FAC's input factor is their sum over calls divided by the calls' positions. Features are
    formed a chunk of samples at a time (at most ``max_elements`` entries) and their products
    added into one factor-sized sum in place: ResNet-18's first stage alone would unfold to
    128 × 576 × 1024 entries per layer, and its last stage's factor is 4608² entries.
    """
    a = tap.inputs[call]
    per_sample = tap.features_of(a[:1], call).numel()
    chunk = max(1, max_elements // max(1, per_sample))
    parts = (
        iter([tap.features(call)])
        if chunk >= len(a)
        else (tap.features_of(a[start : start + chunk], call) for start in range(0, len(a), chunk))
    )
    total, width, positions = None, 0, 0
    for cols in parts:  # [n, I, T], one chunk alive at a time
        if total is None:
            width, positions = cols.shape[1], cols.shape[2]
            size = width + (tap.bias_name is not None)
            total = cols.new_zeros(size, size)
        add_upper_gram_(total[:width, :width], _positions_as_rows(cols))
        if tap.bias_name is not None:
            total[:width, width] += cols.sum(dim=(0, 2))
            total[width, width] += cols.shape[0] * cols.shape[2]
    symmetrise_(total[:width, :width])
    if tap.bias_name is not None:
        total[width, :width] = total[:width, width]
    return total, positions


def output_grad_covariance(tap: LayerTap, grad: Tensor, call: int) -> Tensor:
    """Σ_n Σ_t g gᵀ of one call's output gradients, [O, O]."""
    return gram(_positions_as_rows(tap.output_grads(grad, call)))


def gram(rows: Tensor) -> Tensor:
    """rowsᵀ rows [F, F] of rows [M, F], computing only the blocks on and above the diagonal.

    torch has no symmetric rank-k product (BLAS syrk); with the columns cut into k blocks
    (:func:`_block_edges`) the k(k+1)/2 upper blocks are multiplied (:func:`add_upper_gram_`)
    and the lower ones mirrored (:func:`symmetrise_`): 10 of 16 block products for k = 4,
    25–40 % of a K-FAC input factor's time on ResNet-18's convolutions. The result is exactly
    symmetric.
    """
    out = rows.new_zeros(rows.shape[1], rows.shape[1])
    return symmetrise_(add_upper_gram_(out, rows))


def _block_edges(width: int, min_block: int = 128, max_blocks: int = 4) -> list[int]:
    """Column edges of k ≤ ``max_blocks`` blocks, each at least ``min_block`` wide (or one)."""
    blocks = max(1, min(max_blocks, width // min_block))
    return [round(width * i / blocks) for i in range(blocks + 1)]


def add_upper_gram_(out: Tensor, rows: Tensor) -> Tensor:
    """``out`` += rowsᵀ rows on the blocks on and above the diagonal, in place; returns ``out``.

    ``out`` [F, F] may be a view (a factor with a bias row); the blocks below the diagonal are
    left as they are until :func:`symmetrise_`, so chunks of rows add up without a second
    factor-sized tensor.
    """
    edges = _block_edges(rows.shape[1])
    for i in range(len(edges) - 1):
        rows_i = slice(edges[i], edges[i + 1])
        for j in range(i, len(edges) - 1):
            cols_j = slice(edges[j], edges[j + 1])
            out[rows_i, cols_j].addmm_(rows[:, rows_i].T, rows[:, cols_j])
    return out


def symmetrise_(out: Tensor) -> Tensor:
    """Complete an upper-block sum of :func:`add_upper_gram_` in place: exactly symmetric.

    The blocks below the diagonal become the transposes of those above; a diagonal block is
    averaged with its transpose (a general product's round-off is not symmetric).
    """
    edges = _block_edges(out.shape[0])
    for i in range(len(edges) - 1):
        rows_i = slice(edges[i], edges[i + 1])
        diagonal = out[rows_i, rows_i]
        diagonal.copy_((diagonal + diagonal.T) / 2)
        for j in range(i + 1, len(edges) - 1):
            cols_j = slice(edges[j], edges[j + 1])
            out[cols_j, rows_i] = out[rows_i, cols_j].T
    return out


def rotated_squares(tap: LayerTap, grads: list[Tensor], block: Any) -> Tensor:
    """Σ_n ((U_Gᵀ ∇W̄_n U_A)_ij)² for one output-Fisher column, [O, I'].

    ``block`` holds ``grad_basis`` U_G [O, O], ``input_basis`` U_A [I', I'] and which of weight and
    bias are selected. Rank one per sample (one call, one position): (g̃²)ᵀ(ã²); otherwise the
    rotated per-sample gradients are formed a chunk of samples at a time.
    """
    u_g, u_a = block.grad_basis, block.input_basis
    with_weight, with_bias = block.weight_name is not None, block.bias_name is not None
    rotated_g, rotated_a = [], []
    for call, grad in enumerate(grads):
        g = tap.output_grads(grad, call)  # [N, O, T]
        # [N, I, T]
        a = tap.features(call) if with_weight else g.new_empty(g.shape[0], 0, g.shape[2])
        if with_bias:
            a = torch.cat([a, a.new_ones(a.shape[0], 1, a.shape[2])], 1)
        rotated_g.append(torch.einsum("oq,not->nqt", u_g, g))
        rotated_a.append(torch.einsum("ij,nit->njt", u_a, a))
    if len(grads) == 1 and rotated_g[0].shape[2] == 1:  # rank one per sample
        return rotated_g[0][:, :, 0].square().T @ rotated_a[0][:, :, 0].square()
    g_all, a_all = torch.cat(rotated_g, 2), torch.cat(rotated_a, 2)  # calls add like positions
    num, out, inp = g_all.shape[0], g_all.shape[1], a_all.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, out * inp))
    total = g_all.new_zeros(out, inp)
    for start in range(0, num, chunk):
        total += (
            torch.bmm(g_all[start : start + chunk], a_all[start : start + chunk].transpose(1, 2))
            .square_()
            .sum(0)
        )
    return total


def _add(sums: dict, key: Any, value: Tensor) -> None:
    """sums[key] += value in place, starting from value (a fresh tensor the sums then own)."""
    if key in sums:
        sums[key].add_(value)
    else:
        sums[key] = value


def _positions_as_rows(cols: Tensor) -> Tensor:
    """[N, F, T] columns as [N·T, F] rows, so that Σ_n Σ_t c cᵀ is one matrix product.

    (A batched product would first form N matrices [F, F]: for ResNet-18's last convolutions,
    128 × 4608² entries, 11 GB.)
    """
    return cols[:, :, 0] if cols.shape[2] == 1 else cols.transpose(1, 2).reshape(-1, cols.shape[1])
