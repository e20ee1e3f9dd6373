"""K-FAC: a Kronecker-factored block-diagonal Fisher (Martens & Grosse 2015;
Grosse & Martens 2016 for convolutions).

For a Linear or Conv2d layer with weight and bias stacked as W̄ = [W, b] of shape
[O, I+1] (a Conv2d weight [O, C, kh, kw] reads as [O, C·kh·kw]), the Fisher block is
approximated as

    F_W̄ ≈ G ⊗ A,   A = 1/(N·T) Σ_n Σ_t ā_nt ā_ntᵀ,   G = 1/N Σ_n Σ_t Σ_k g_ntk g_ntkᵀ,

with ā = [a, 1] the layer input (unfolded patches for Conv2d), T the number of
weight-sharing positions (1 for an MLP, H_out·W_out for a convolution: the "expand"
variant), and g_ntk the output gradient of the k-th output-Fisher column
(:mod:`memspace.fisher.likelihood`). In the row-major flat layout of W̄,
(G ⊗ A) vec(V) = vec(G V A).

Fallback: parameters of any other layer get their exact Fisher *diagonal* block
(stated, never dropped), computed by per-sample Jacobians.
"""

from __future__ import annotations

from .._errors import MemspaceError
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._taps import LayerTap
from .operator import FisherOperator, Vector

__all__ = ["BlockApproximation", "KFAC", "KroneckerBlock"]


@dataclass
class KroneckerBlock:
    """One layer's factors. ``input_factor`` A [I(+1), I(+1)], ``grad_factor`` G [O, O]."""

    module_name: str
    weight_name: str | None
    bias_name: str | None
    input_factor: Tensor
    grad_factor: Tensor

    def eigenvalues(self) -> Tensor:
        """All eigenvalues of G ⊗ A restricted to the selected parameters, [O·(I+1)]."""
        a = self._selected_input_factor()
        return torch.outer(torch.linalg.eigvalsh(self.grad_factor), torch.linalg.eigvalsh(a)).flatten()

    def _selected_input_factor(self) -> Tensor:
        """A, or its 1×1 bias corner when only the bias is selected.

        The bias row/column of ones is present exactly when the bias is selected.
        """
        return self.input_factor[-1:, -1:] if self.weight_name is None else self.input_factor


def _input_covariance(tap: LayerTap, max_elements: int = 1 << 24) -> Tensor:
    """Σ_n Σ_t ā ā ᵀ / T over the calls of one tapped layer, [I(+1), I(+1)].

    A convolution's patches are unfolded a chunk of samples at a time (at most ``max_elements``
    entries): ResNet-18's first stage alone would unfold to 128 × 576 × 1024 entries per layer.
    """
    total, positions = None, 0
    for call in range(len(tap.inputs)):
        if tap.is_conv:
            a = tap.inputs[call]
            per_sample = tap.features_of(a[:1], call).numel()
            chunk = max(1, max_elements // max(1, per_sample))
            parts = [tap.features_of(a[start : start + chunk], call) for start in range(0, len(a), chunk)]
        else:
            parts = [tap.features(call)]
        for cols in parts:  # [n, I, T]
            rows = _positions_as_rows(cols)
            cov = rows.T @ rows
            if tap.bias_name is not None:
                sums = cols.sum(dim=(0, 2))
                count = torch.full((1, 1), float(cols.shape[0] * cols.shape[2]), dtype=cols.dtype, device=cols.device)
                cov = torch.cat([torch.cat([cov, sums[:, None]], 1), torch.cat([sums[None, :], count], 1)], 0)
            total = cov if total is None else total + cov
        positions += parts[0].shape[2]
    return total / positions


def _output_grad_covariance(tap: LayerTap, grad: Tensor, call: int) -> Tensor:
    """Σ_n Σ_t g gᵀ of one call's output gradients, [O, O]."""
    rows = _positions_as_rows(tap.output_grads(grad, call))
    return rows.T @ rows


def _add(sums: dict, key: Any, value: Tensor) -> None:
    """sums[key] += value, starting from value."""
    sums[key] = value if key not in sums else sums[key] + value


def _positions_as_rows(cols: Tensor) -> Tensor:
    """[N, F, T] columns as [N·T, F] rows, so that Σ_n Σ_t c cᵀ is one matrix product.

    (A batched product would first form N matrices [F, F]: for ResNet-18's last convolutions,
    128 × 4608² entries, 11 GB.)
    """
    return cols[:, :, 0] if cols.shape[2] == 1 else cols.transpose(1, 2).reshape(-1, cols.shape[1])


class BlockApproximation:
    """What K-FAC and EKFAC share: a block per tapped layer over the stacked [W, b] of shape
    [O, I'], the exact diagonal elsewhere, and every eigenvalue known (subclasses give
    ``space``, ``operator``, :meth:`mv` and :meth:`eigenvalues`)."""

    space: Any
    operator: FisherOperator
    fallback_diag: dict[str, Tensor]

    def __matmul__(self, v: Vector) -> Vector:
        return self.mv(v)

    def _scatter(self, block: Any, matrix: Tensor, out: dict[str, Tensor]) -> None:
        """Split a block's [O, I'] matrix into its weight and bias entries of ``out``."""
        if block.weight_name is not None:
            shape = self.space.shapes[self.space.names.index(block.weight_name)]
            out[block.weight_name] = matrix[:, : matrix.shape[1] - (1 if block.bias_name else 0)].reshape(shape)
        if block.bias_name is not None:
            out[block.bias_name] = matrix[:, -1]

    def _flat_with_fallback(self, out: dict[str, Tensor]) -> Tensor:
        """The flat [P] vector of the blocks' entries in ``out`` and the fallback diagonal."""
        for name, d in self.fallback_diag.items():
            out[name] = d.view(self.space.shapes[self.space.names.index(name)])
        return self.space.to_vector(out)

    def logdet(self, damping: float) -> Tensor:
        """log det(F_approx + δI) = Σ log(λ_i + δ), exact from the eigenvalues."""
        if damping <= 0:
            raise MemspaceError(f"damping must be positive for a finite log-det, got {damping}")
        return torch.log(self.eigenvalues().clamp_min(0) + damping).sum()

    def effective_dimension(self, z: float) -> Tensor:
        """d_eff(z) = Σ λ_i / (λ_i + z) of the approximation."""
        lam = self.eigenvalues().clamp_min(0)
        return (lam / (lam + z)).sum()

    def dense(self) -> Tensor:
        """The approximation as a dense [P, P] matrix (small models, tests)."""
        dim = self.space.numel
        eye = torch.eye(dim, dtype=self.operator.dtype, device=self.operator.device)
        return torch.stack([self.mv(eye[:, j]) for j in range(dim)], dim=1)


class KFAC(BlockApproximation):
    """K-FAC approximation of a :class:`FisherOperator` (same kinds and likelihoods).

    Build it with ``KFAC(model, data, **operator_kwargs)`` or ``F.kfac()``. The factors
    are computed once, in one streaming pass: a forward with layer taps and one
    backward per output-Fisher column, requesting no weight gradients.

    Operations: :meth:`mv` / ``@``, :meth:`diag`, :meth:`trace`, :meth:`eigenvalues`,
    :meth:`logdet`, :meth:`effective_dimension`, :meth:`dense`.
    """

    def __init__(self, model: nn.Module, data: Any, **operator_kwargs: Any):
        self._build(FisherOperator(model, data, **operator_kwargs))

    @classmethod
    def from_operator(cls, operator: FisherOperator) -> KFAC:
        """K-FAC of an existing operator (shares its model, data, kind and seed)."""
        obj = cls.__new__(cls)
        obj._build(operator)
        return obj

    # ------------------------------------------------------------------ build
    def _build(self, operator: FisherOperator) -> None:
        with operator._collective.guard():
            self._accumulate(operator)

    def _accumulate(self, operator: FisherOperator) -> None:
        self.operator = operator
        self.space = operator.space
        self.blocks: list[KroneckerBlock] = []
        self.fallback_diag: dict[str, Tensor] = {}
        dtype, device = operator.dtype, operator.device
        inputs: dict[int, Tensor] = {}
        grads: dict[int, Tensor] = {}
        fallback: dict[str, Tensor] = {}
        one_pass = self._probe_pass if operator.memory == "low" else self._tapped_pass
        taps, count = one_pass(operator, inputs, grads, fallback)
        num = operator._reduce(torch.tensor(float(count), dtype=torch.float64)).item()
        operator._num_data = int(num)
        prefix_of = {id(m): n for n, m in operator.model.named_modules()}
        for i, tap in enumerate(taps):
            if i not in inputs:  # never ran: a zero block, kept as a zero diagonal
                for name in (tap.weight_name, tap.bias_name):
                    if name:
                        self.fallback_diag[name] = torch.zeros(
                            self.space.sizes[self.space.names.index(name)], dtype=dtype, device=device)
                continue
            out_features = tap.module.weight.shape[0]
            g = grads.get(i, torch.zeros(out_features, out_features, dtype=dtype, device=device))
            block = KroneckerBlock(
                module_name=prefix_of[id(tap.module)],
                weight_name=tap.weight_name,
                bias_name=tap.bias_name,
                input_factor=operator._reduce(inputs[i]) / num,
                grad_factor=operator._reduce(g) / num,
            )
            self.blocks.append(block)
        for name, value in fallback.items():
            self.fallback_diag[name] = operator._reduce(value) / num
        self._eig_cache: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    @staticmethod
    def _tapped_pass(operator: FisherOperator, inputs: dict[int, Tensor], grads: dict[int, Tensor],
                     fallback: dict[str, Tensor]) -> tuple[list[LayerTap], int]:
        """Sums of A, G (per tap index) and the fallback diagonal over the data, the fast way: one
        tapped forward per batch, one backward per output-Fisher column. Returns (taps, N)."""
        taps: list[LayerTap] = []
        count = 0
        for batch in operator.tapped_batches():
            taps = batch.taps
            for i, tap in enumerate(batch.taps):
                if not tap.inputs:  # the layer did not run in this batch
                    continue
                _add(inputs, i, _input_covariance(tap))
                tap.drop_features()  # unfolded patches are the largest temporaries: one layer's at a time
            for column in batch.column_grads():
                for i, (tap, tap_grads) in enumerate(zip(batch.taps, column)):
                    for call, g in enumerate(tap_grads):
                        if g is not None:
                            _add(grads, i, _output_grad_covariance(tap, g, call))
            for name, sq in operator.fallback_diag_sums(batch.fallback, batch.inputs, batch.factors).items():
                _add(fallback, name, sq)
            count += operator.call.num_samples(batch.inputs)
        return taps, count

    @staticmethod
    def _probe_pass(operator: FisherOperator, inputs: dict[int, Tensor], grads: dict[int, Tensor],
                    fallback: dict[str, Tensor]) -> tuple[list[LayerTap], int]:
        """:meth:`_tapped_pass` at about a gradient's memory (``memory="low"``): each layer's A and G
        are taken in a backward hook as its output gradients arrive, and its input is freed then
        (:meth:`FisherOperator.probe_columns`)."""
        plan = operator.tap_plan()
        index = {id(tap): i for i, tap in enumerate(plan.taps)}

        def complete(tap: LayerTap, tap_grads: list[Tensor], column: int) -> None:
            i = index[id(tap)]
            if column == 0:
                _add(inputs, i, _input_covariance(tap))
                tap.drop_features()
            for call, g in enumerate(tap_grads):
                _add(grads, i, _output_grad_covariance(tap, g, call))

        count = 0
        for x, factors in operator.probe_columns(complete):
            for name, sq in operator.fallback_diag_sums(plan.fallback, x, factors).items():
                _add(fallback, name, sq)
            count += operator.call.num_samples(x)
        return plan.taps, count

    # ----------------------------------------------------------- products
    def mv(self, v: Vector) -> Vector:
        """(⊕_l G_l ⊗ A_l ⊕ diag fallback) v, same layout as ``v``.

        Per block G V̄ A with V̄ = [V_w, v_b], computed as G (V_w A_{w,:} + v_b A_{b,:})
        so that V̄ is never assembled.
        """
        op = self.operator
        parts = op._to_device(v, "v")
        flat = torch.empty(self.space.numel, dtype=op.dtype, device=op.device)
        out = self.space.to_dict(flat)  # views into ``flat``: results are written in place
        for block in self.blocks:
            a, g = block.input_factor, block.grad_factor
            if block.weight_name is None:
                torch.mul(g @ parts[block.bias_name], a[-1, -1], out=out[block.bias_name])
                continue
            weight = parts[block.weight_name]
            rows = weight.reshape(weight.shape[0], -1)
            target = out[block.weight_name].view(weight.shape[0], -1)
            if block.bias_name is None:
                torch.matmul(g, rows @ a, out=target)
                continue
            right = (rows @ a[:-1]).addr_(parts[block.bias_name], a[-1])  # V̄ A, [O, I+1]
            torch.matmul(g, right[:, :-1], out=target)
            torch.mv(g, right[:, -1], out=out[block.bias_name])
        for name, d in self.fallback_diag.items():
            torch.mul(d, parts[name].reshape(-1), out=out[name].view(-1))
        if isinstance(v, Mapping):
            return out
        return flat.to(v.device)

    def diag(self) -> Tensor:
        """diag(G) ⊗ diag(A) per block, the fallback diagonal elsewhere; flat [P]."""
        out: dict[str, Tensor] = {}
        for block in self.blocks:
            a = block._selected_input_factor()
            self._scatter(block, torch.outer(block.grad_factor.diagonal(), a.diagonal()), out)
        return self._flat_with_fallback(out)

    def trace(self) -> Tensor:
        """Σ_l tr(G_l) tr(A_l) + Σ fallback diagonal."""
        total = sum(
            (b.grad_factor.trace() * b._selected_input_factor().trace() for b in self.blocks),
            start=torch.zeros((), dtype=self.operator.dtype, device=self.operator.device),
        )
        for d in self.fallback_diag.values():
            total = total + d.sum()
        return total

    def eigenvalues(self) -> Tensor:
        """Every eigenvalue of the approximation, descending, [P] (exact for K-FAC:
        eig(G ⊗ A) = eig(G) ⊗ eig(A))."""
        values = [b.eigenvalues() for b in self.blocks] + [d.reshape(-1) for d in self.fallback_diag.values()]
        return torch.sort(torch.cat(values), descending=True).values
