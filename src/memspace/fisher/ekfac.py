"""EKFAC: K-FAC with its eigenvalues corrected (George, Laurent, Bouthillier, Ballas & Vincent 2018,
"Fast approximate natural gradient descent in a Kronecker-factored eigenbasis").

K-FAC approximates a layer's Fisher block by G ⊗ A, whose eigenbasis is Q = U_G ⊗ U_A (U_G, U_A
the eigenvectors of the two factors) and whose eigenvalues are the products s_G,i·s_A,j. EKFAC keeps
the basis and replaces the eigenvalues by the Fisher's own second moments in it,

    s_ij = 1/N Σ_n Σ_k ((U_Gᵀ ∇W̄_nk U_A)_ij)²,   ∇W̄_nk = Σ_t g_ntk ā_ntᵀ  [O, I(+1)],

the per-sample, per-output-Fisher-column gradient of the stacked weight and bias (the same
g and ā as K-FAC's, :mod:`memspace.fisher.kfac`). s is the diagonal of the exact block in the
basis Q, so among all matrices Q diag(s) Qᵀ it is the one closest to the block in Frobenius norm
(and never farther than K-FAC). Products, inverse products and the spectrum are exact in Q:

    F_EKFAC V̄ = U_G (s ∘ (U_Gᵀ V̄ U_A)) U_Aᵀ,   (F_EKFAC + δI)⁻¹ V̄ = U_G ((U_Gᵀ V̄ U_A) / (s + δ)) U_Aᵀ.

For a layer with one weight-sharing position per sample (an MLP) the rotated gradient is rank
one, U_Gᵀg ⊗ U_Aᵀā, so s = (g̃²)ᵀ(ã²) is one product per batch and column; for convolutions the
rotated per-sample gradients [n, O, I] are formed a chunk of samples at a time. Parameters outside
verified taps keep their exact diagonal, as in K-FAC (and its inverse is elementwise).
"""

from __future__ import annotations

from .._errors import MemspaceError
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._taps import LayerTap
from .kfac import KFAC, BlockApproximation, KroneckerBlock
from .operator import FisherOperator, Vector

__all__ = ["EKFAC", "EigenBlock"]

_CHUNK_ELEMENTS = 1 << 24  # rotated per-sample gradients formed at most this many entries at a time


@dataclass
class EigenBlock:
    """One layer in its Kronecker-factored eigenbasis: U_G [O, O], U_A [I', I'], s [O, I'].

    I' is I+1 with the bias, I without it, 1 when only the bias is selected.
    """

    module_name: str
    weight_name: str | None
    bias_name: str | None
    grad_basis: Tensor
    input_basis: Tensor
    eigenvalues: Tensor


def _basis(block: KroneckerBlock) -> tuple[Tensor, Tensor]:
    return torch.linalg.eigh(block.grad_factor)[1], torch.linalg.eigh(block._selected_input_factor())[1]


def _rotated_squares(tap: LayerTap, grads: list[Tensor], block: EigenBlock) -> Tensor:
    """Σ_n ((U_Gᵀ ∇W̄_n U_A)_ij)² for one output-Fisher column, [O, I']."""
    u_g, u_a = block.grad_basis, block.input_basis
    with_weight, with_bias = block.weight_name is not None, block.bias_name is not None
    rotated_g, rotated_a = [], []
    for call, grad in enumerate(grads):
        g = tap.output_grads(grad, call)  # [N, O, T]
        a = tap.features(call) if with_weight else g.new_empty(g.shape[0], 0, g.shape[2])  # [N, I, T]
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
        total += torch.bmm(g_all[start : start + chunk], a_all[start : start + chunk].transpose(1, 2)).square().sum(0)
    return total


class EKFAC(BlockApproximation):
    """EKFAC approximation of a :class:`FisherOperator` (module doc; same kinds and likelihoods).

    Build with ``EKFAC(model, data, **operator_kwargs)``, ``EKFAC.from_operator(F)`` or
    ``EKFAC.from_kfac(kfac)``: K-FAC's factors give the basis (one pass), a second pass of the
    same cost corrects the eigenvalues. With ``distributed=True`` both passes reduce across ranks.

    Operations: :meth:`mv` / ``@``, :meth:`inverse_mv` (natural-gradient steps), :meth:`diag`,
    :meth:`trace`, :meth:`eigenvalues`, :meth:`logdet`, :meth:`effective_dimension`, :meth:`dense`.
    """

    def __init__(self, model: nn.Module, data: Any, **operator_kwargs: Any):
        self._build(KFAC(model, data, **operator_kwargs))

    @classmethod
    def from_operator(cls, operator: FisherOperator) -> EKFAC:
        return cls.from_kfac(KFAC.from_operator(operator))

    @classmethod
    def from_kfac(cls, kfac: KFAC) -> EKFAC:
        obj = cls.__new__(cls)
        obj._build(kfac)
        return obj

    def _build(self, kfac: KFAC) -> None:
        operator = self.operator = kfac.operator
        self.space = kfac.space
        self.fallback_diag = dict(kfac.fallback_diag)
        self.blocks: list[EigenBlock] = []
        by_module: dict[str, EigenBlock] = {}
        for block in kfac.blocks:
            u_g, u_a = _basis(block)
            eigen = EigenBlock(block.module_name, block.weight_name, block.bias_name, u_g, u_a,
                               torch.zeros(u_g.shape[0], u_a.shape[0], dtype=u_g.dtype, device=u_g.device))
            self.blocks.append(eigen)
            by_module[block.module_name] = eigen
        names = {id(m): n for n, m in operator.model.named_modules()}
        with operator._collective.guard():
            count = 0
            for batch in operator.tapped_batches():
                for column in batch.column_grads():
                    for tap, tap_grads in zip(batch.taps, column):
                        block = by_module.get(names[id(tap.module)])
                        if block is None or not tap.inputs:
                            continue
                        tap_grads = [torch.zeros_like(o) if g is None else g for g, o in zip(tap_grads, tap.outputs)]
                        block.eigenvalues += _rotated_squares(tap, tap_grads, block)
                count += operator.call.num_samples(batch.inputs)
            num = operator._reduce(torch.tensor(float(count), dtype=torch.float64)).item()
            for block in self.blocks:
                block.eigenvalues = operator._reduce(block.eigenvalues) / num

    # ----------------------------------------------------------- products
    def _apply(self, v: Vector, scale) -> Vector:
        """U_G (scale(s) ∘ (U_Gᵀ V̄ U_A)) U_Aᵀ per block, ``scale(d) ∘ v`` on the fallback."""
        op = self.operator
        parts = op._to_device(v, "v")
        out: dict[str, Tensor] = {}
        for block in self.blocks:
            columns = []
            if block.weight_name is not None:
                weight = parts[block.weight_name]
                columns.append(weight.reshape(weight.shape[0], -1))
            if block.bias_name is not None:
                columns.append(parts[block.bias_name][:, None])
            stacked = torch.cat(columns, 1)  # V̄ [O, I']
            rotated = block.grad_basis.T @ stacked @ block.input_basis
            self._scatter(block, block.grad_basis @ (scale(block.eigenvalues) * rotated) @ block.input_basis.T, out)
        for name, d in self.fallback_diag.items():
            out[name] = (scale(d) * parts[name].reshape(-1)).view_as(parts[name])
        if isinstance(v, Mapping):
            return out
        return self.space.to_vector(out).to(v.device)

    def mv(self, v: Vector) -> Vector:
        """F_EKFAC v, same layout as ``v``."""
        return self._apply(v, lambda s: s)

    def inverse_mv(self, v: Vector, damping: float) -> Vector:
        """(F_EKFAC + δI)⁻¹ v, exact in the eigenbasis: the natural-gradient direction for ``v`` a gradient.

        Raises:
            MemspaceError: for δ ≤ 0 (the approximation is singular wherever s = 0).
        """
        if not damping > 0:
            raise MemspaceError(f"damping must be positive, got {damping}")
        return self._apply(v, lambda s: 1.0 / (s + damping))

    def diag(self) -> Tensor:
        """diag(F_EKFAC) = (U_G ∘ U_G) s (U_A ∘ U_A)ᵀ per block, the fallback diagonal elsewhere; [P]."""
        out: dict[str, Tensor] = {}
        for block in self.blocks:
            self._scatter(block, block.grad_basis.square() @ block.eigenvalues @ block.input_basis.square().T, out)
        return self._flat_with_fallback(out)

    def eigenvalues(self) -> Tensor:
        """Every eigenvalue of the approximation, descending, [P]."""
        values = [b.eigenvalues.reshape(-1) for b in self.blocks] + [d.reshape(-1) for d in self.fallback_diag.values()]
        return torch.sort(torch.cat(values), descending=True).values

    def trace(self) -> Tensor:
        """Σ s + Σ fallback diagonal (equal to the exact trace of the tapped blocks: the basis is orthogonal)."""
        return self.eigenvalues().sum()
