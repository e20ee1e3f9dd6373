"""EKFAC: K-FAC with its eigenvalues corrected.

George, Laurent, Bouthillier, Ballas & Vincent 2018, "Fast approximate natural gradient descent
in a Kronecker-factored eigenbasis".

K-FAC approximates a layer's Fisher block by G ⊗ A, whose eigenbasis is Q = U_G ⊗ U_A (U_G, U_A
the eigenvectors of the two factors) and whose eigenvalues are the products s_G,i·s_A,j. EKFAC keeps
the basis and replaces the eigenvalues by the Fisher's own second moments in it,

    s_ij = 1/N Σ_n Σ_k ((U_Gᵀ ∇W̄_nk U_A)_ij)²,   ∇W̄_nk = Σ_t g_ntk ā_ntᵀ  [O, I(+1)],

the per-sample, per-output-Fisher-column gradient of the stacked weight and bias (the same
g and ā as K-FAC's, :mod:`memspace.fisher.kfac`). s is the diagonal of the exact block in the
basis Q, so among all matrices Q diag(s) Qᵀ it is the one closest to the block in Frobenius norm
(and never farther than K-FAC). Products, inverse products and the spectrum are exact in Q:

    F_EKFAC V̄ = U_G (s ∘ (U_Gᵀ V̄ U_A)) U_Aᵀ,   (F_EKFAC + δI)⁻¹ V̄ = U_G ((U_Gᵀ V̄ U_A) / (s + δ))
    U_Aᵀ.

For a layer with one weight-sharing position per sample (an MLP) the rotated gradient is rank
one, U_Gᵀg ⊗ U_Aᵀā, so s = (g̃²)ᵀ(ã²) is one product per batch and column; for convolutions the
rotated per-sample gradients [n, O, I] are formed a chunk of samples at a time. Parameters outside
verified taps keep their exact diagonal, as in K-FAC (and its inverse is elementwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import MemspaceError
from ._pass import Vector
from ._rules import weight_rows
from ._statistics import RotatedSquares
from .kfac import KFAC, BlockApproximation, KroneckerBlock

__all__ = ["EKFAC", "EigenBlock"]


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
    transposed: bool = False
    """The weight is stored [I, O] (``transformers``' Conv1D), as in :class:`KroneckerBlock`."""


def _basis(block: KroneckerBlock) -> tuple[Tensor, Tensor]:
    return torch.linalg.eigh(block.grad_factor)[1], torch.linalg.eigh(
        block.selected_input_factor()
    )[1]


class EKFAC(BlockApproximation):
    """EKFAC approximation of a Fisher operator (module doc; same kinds, likelihoods, memory modes).

    Build with ``EKFAC(model, data, **operator_kwargs)``, ``EKFAC.from_operator(F)`` or
    ``EKFAC.from_kfac(kfac)``: K-FAC's factors give the basis (one pass), a second pass of the
    same cost and the same collector (so ``memory="low"`` holds for both) corrects the eigenvalues.
    With ``distributed=True`` both passes reduce across ranks.

    Operations: :meth:`mv` / ``@``, :meth:`inverse_mv` (natural-gradient steps), :meth:`diag`,
    :meth:`trace`, :meth:`eigenvalues`, :meth:`logdet`, :meth:`effective_dimension`, :meth:`dense`.
    """

    def __init__(self, model: nn.Module, data: Any, **operator_kwargs: Any):
        self._build(KFAC(model, data, **operator_kwargs))

    @classmethod
    def from_operator(cls, operator: Any) -> EKFAC:
        """EKFAC of an existing :class:`~memspace.fisher.FisherOperator` (its K-FAC first)."""
        return cls.from_kfac(KFAC.from_operator(operator))

    @classmethod
    def from_kfac(cls, kfac: KFAC) -> EKFAC:
        """EKFAC in the eigenbasis of ``kfac``'s factors (one more pass over the data)."""
        obj = cls.__new__(cls)
        obj._build(kfac)
        return obj

    def _build(self, kfac: KFAC) -> None:
        self.parts = parts = kfac.parts
        dp = parts.data_pass
        self.fallback_diag = dict(kfac.fallback_diag)
        self.blocks: list[EigenBlock] = []
        modules = dict(dp.model.named_modules())
        by_module: dict[int, EigenBlock] = {}
        for block in kfac.blocks:
            u_g, u_a = _basis(block)
            eigen = EigenBlock(
                block.module_name,
                block.weight_name,
                block.bias_name,
                u_g,
                u_a,
                torch.zeros(u_g.shape[0], u_a.shape[0], dtype=u_g.dtype, device=u_g.device),
                block.transposed,
            )
            self.blocks.append(eigen)
            by_module[id(modules[block.module_name])] = eigen
        with dp.guard():
            count = 0
            for _, _, _, units in parts.collector.collect(RotatedSquares(by_module)):
                count += units
            num = dp.count(count)
            for block in self.blocks:
                block.eigenvalues = dp.reduce(block.eigenvalues) / num

    # ----------------------------------------------------------- products
    def _apply(self, v: Vector, scale: Callable[[Tensor], Tensor]) -> Vector:
        """U_G (scale(s) ∘ (U_Gᵀ V̄ U_A)) U_Aᵀ per block, ``scale(d) ∘ v`` on the fallback."""
        parts = self.parts.data_pass.to_device(v, "v")
        out: dict[str, Tensor] = {}
        for block in self.blocks:
            columns = []
            if block.weight_name is not None:
                columns.append(weight_rows(parts[block.weight_name], block.transposed))
            if block.bias_name is not None:
                columns.append(parts[block.bias_name][:, None])
            stacked = torch.cat(columns, 1)  # V̄ [O, I']
            rotated = block.grad_basis.T @ stacked @ block.input_basis
            self._scatter(
                block,
                block.grad_basis @ (scale(block.eigenvalues) * rotated) @ block.input_basis.T,
                out,
            )
        for name, d in self.fallback_diag.items():
            out[name] = (scale(d) * parts[name].reshape(-1)).view_as(parts[name])
        if isinstance(v, Mapping):
            return out
        return self.space.to_vector(out).to(v.device)

    def mv(self, v: Vector) -> Vector:
        """F_EKFAC v, same layout as ``v``."""
        return self._apply(v, lambda s: s)

    def inverse_mv(self, v: Vector, damping: float) -> Vector:
        """(F_EKFAC + δI)⁻¹ v, exact in the eigenbasis.

        The natural-gradient direction for ``v`` a gradient.

        Raises:
            MemspaceError: for δ ≤ 0 (the approximation is singular wherever s = 0).
        """
        if not damping > 0:
            raise MemspaceError(f"damping must be positive, got {damping}")
        return self._apply(v, lambda s: 1.0 / (s + damping))

    def diag(self) -> Tensor:
        """The diagonal (U_G ∘ U_G) s (U_A ∘ U_A)ᵀ per block, the fallback diagonal elsewhere.

        [P].
        """
        out: dict[str, Tensor] = {}
        for block in self.blocks:
            self._scatter(
                block,
                block.grad_basis.square() @ block.eigenvalues @ block.input_basis.square().T,
                out,
            )
        return self._flat_with_fallback(out)

    def eigenvalues(self) -> Tensor:
        """Every eigenvalue of the approximation, descending, [P]."""
        values = [b.eigenvalues.reshape(-1) for b in self.blocks] + [
            d.reshape(-1) for d in self.fallback_diag.values()
        ]
        return torch.sort(torch.cat(values), descending=True).values

    def trace(self) -> Tensor:
        """Σ s + Σ fallback diagonal: the exact trace of the tapped blocks (orthogonal basis)."""
        return self.eigenvalues().sum()
