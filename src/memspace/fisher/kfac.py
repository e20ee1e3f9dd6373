"""K-FAC: a Kronecker-factored block-diagonal Fisher.

Martens & Grosse 2015; Grosse & Martens 2016 for convolutions.

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

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import MemspaceError, MemspaceWarning
from ._collect import FisherParts, TapPlan, fisher_parts
from ._pass import Vector
from ._rules import weight_from_rows, weight_rows
from ._statistics import ByRule, DiagonalSquares, KroneckerSums

__all__ = ["BlockApproximation", "KFAC", "KroneckerBlock"]


@dataclass
class KroneckerBlock:
    """One layer's factors. ``input_factor`` A [I(+1), I(+1)], ``grad_factor`` G [O, O]."""

    module_name: str
    weight_name: str | None
    bias_name: str | None
    input_factor: Tensor
    grad_factor: Tensor
    transposed: bool = False
    """The weight is stored [I, O] (``transformers``' Conv1D); the factors are those of [O, I]."""

    def eigenvalues(self) -> Tensor:
        """All eigenvalues of G ⊗ A restricted to the selected parameters, [O·(I+1)]."""
        a = self.selected_input_factor()
        return torch.outer(
            torch.linalg.eigvalsh(self.grad_factor), torch.linalg.eigvalsh(a)
        ).flatten()

    def selected_input_factor(self) -> Tensor:
        """A, or its 1×1 bias corner when only the bias is selected.

        The bias row/column of ones is present exactly when the bias is selected.
        """
        return self.input_factor[-1:, -1:] if self.weight_name is None else self.input_factor


class BlockApproximation:
    """What K-FAC and EKFAC share.

    A block per tapped layer over the stacked [W, b] of shape [O, I'], the exact diagonal elsewhere,
    and every eigenvalue known (subclasses give ``blocks``, :meth:`mv` and :meth:`eigenvalues`).

    Attributes:
        parts: the data pass, collector and per-sample Jacobians it was built from
            (:func:`memspace.fisher._collect.fisher_parts`); ``data_pass.space`` is its parameter
            space.
        fallback_diag: the exact Fisher diagonal [p] of each parameter no block covers.
    """

    parts: FisherParts
    fallback_diag: dict[str, Tensor]

    @property
    def space(self) -> Any:
        """The parameter space θ (names, shapes, layout)."""
        return self.parts.data_pass.space

    @property
    def shape(self) -> tuple[int, int]:
        """(P, P), P the number of selected parameters."""
        return (self.space.numel, self.space.numel)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the factors (the selected parameters')."""
        return self.parts.data_pass.dtype

    @property
    def device(self) -> torch.device:
        """The device of the factors (the selected parameters')."""
        return self.parts.data_pass.device

    @property
    def num_data(self) -> int:
        """N, the number of data points the factors were averaged over."""
        return self.parts.data_pass.num_data

    def __matmul__(self, v: Vector) -> Vector:
        return self.mv(v)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.blocks)} blocks, {len(self.fallback_diag)} "
            "parameters on the "
            f"exact diagonal, P={self.space.numel})"
        )

    def _scatter(self, block: Any, matrix: Tensor, out: dict[str, Tensor]) -> None:
        """Split a block's [O, I'] matrix into its weight and bias entries of ``out``."""
        if block.weight_name is not None:
            shape = self.space.shapes[self.space.names.index(block.weight_name)]
            out[block.weight_name] = weight_from_rows(
                matrix[:, : matrix.shape[1] - (1 if block.bias_name else 0)],
                shape,
                block.transposed,
            )
        if block.bias_name is not None:
            out[block.bias_name] = matrix[:, -1]

    def _flat_with_fallback(self, out: dict[str, Tensor]) -> Tensor:
        """The flat [P] vector of the blocks' entries in ``out`` and the fallback diagonal."""
        for name, d in self.fallback_diag.items():
            out[name] = d.view(self.space.shapes[self.space.names.index(name)])
        return self.space.to_vector(out)

    def logdet(self, damping: float) -> Tensor:
        """Log det(F_approx + δI) = Σ log(λ_i + δ), exact from the eigenvalues."""
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
        eye = torch.eye(dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.mv(eye[:, j]) for j in range(dim)], dim=1)


class KFAC(BlockApproximation):
    """K-FAC approximation of a Fisher operator (same kinds, likelihoods and memory modes).

    Build it with ``KFAC(model, data, **operator_kwargs)`` (the options of
    :class:`~memspace.fisher.FisherOperator`) or ``F.kfac()``. The factors are computed once, in
    one streaming pass of the operator's collector: with ``memory="fast"`` a forward with layer taps
    and one backward per output-Fisher column, requesting no weight gradients; with ``memory="low"``
    one probe forward and backward per column, each layer's factors taken as its gradients arrive.

    Operations: :meth:`mv` / ``@``, :meth:`diag`, :meth:`trace`, :meth:`eigenvalues`,
    :meth:`logdet`, :meth:`effective_dimension`, :meth:`dense`.
    """

    def __init__(self, model: nn.Module, data: Any, **operator_kwargs: Any):
        # A dense matrix of K-FAC is built from its products
        operator_kwargs.pop("max_dense_bytes", None)
        self._build(fisher_parts(model, data, **operator_kwargs))

    @classmethod
    def from_operator(cls, operator: Any) -> KFAC:
        """K-FAC of an existing :class:`~memspace.fisher.FisherOperator`.

        It shares the operator's model, data, kind, seed, memory mode and plan of the taps.
        """
        obj = cls.__new__(cls)
        obj._build(FisherParts(operator.data_pass, operator.collector, operator.jacobians))
        return obj

    # ------------------------------------------------------------------ build
    def _build(self, parts: FisherParts) -> None:
        self.parts = parts
        with parts.data_pass.guard():
            self._accumulate(parts)

    def _accumulate(self, parts: FisherParts) -> None:
        dp = parts.data_pass
        plan = parts.collector.tap_plan()
        space = dp.space
        elementwise = {  # tapped layers without a Kronecker block: their exact diagonal
            name: torch.zeros(
                space.shapes[space.names.index(name)], dtype=dp.dtype, device=dp.device
            )
            for tap in plan.taps
            if not tap.rule.kronecker or tap.group is not None
            for name in (tap.weight_name, tap.bias_name)
            if name
        }
        sums = KroneckerSums()
        statistic = ByRule(sums, DiagonalSquares(elementwise))
        fallback: dict[str, Tensor] = {}
        count = 0
        for x, factors, names, units in parts.collector.collect(statistic):
            for name, sq in parts.jacobians.diag_sums(names, x, factors).items():
                fallback[name] = sq if name not in fallback else fallback[name] + sq
            count += units
        num = dp.count(count)
        self.blocks: list[KroneckerBlock] = []
        self.fallback_diag: dict[str, Tensor] = {}
        prefix_of = {id(m): n for n, m in dp.model.named_modules()}
        for tap in plan.taps:
            if not tap.rule.kronecker or tap.group is not None:
                continue
            key = id(tap.module)
            if key not in sums.inputs:  # never ran: a zero block, kept as a zero diagonal
                for name in (tap.weight_name, tap.bias_name):
                    if name:
                        self.fallback_diag[name] = torch.zeros(
                            self.space.sizes[self.space.names.index(name)],
                            dtype=dp.dtype,
                            device=dp.device,
                        )
                continue
            out_features = tap.rule.out_features(tap.module)
            g = sums.grads.get(
                key, torch.zeros(out_features, out_features, dtype=dp.dtype, device=dp.device)
            )
            self.blocks.append(
                KroneckerBlock(
                    module_name=prefix_of[id(tap.module)],
                    weight_name=tap.weight_name,
                    bias_name=tap.bias_name,
                    input_factor=dp.reduce(sums.inputs[key]) / num,
                    grad_factor=dp.reduce(g) / num,
                    transposed=tap.rule.transposed,
                )
            )
        for name, value in {**fallback, **elementwise}.items():
            self.fallback_diag[name] = dp.reduce(value.reshape(-1).to(dp.dtype)) / num
        _warn_unblocked(type(self).__name__, plan)

    # ----------------------------------------------------------- products
    def mv(self, v: Vector) -> Vector:
        """(⊕_l G_l ⊗ A_l ⊕ diag fallback) v, same layout as ``v``.

        Per block G V̄ A with V̄ = [V_w, v_b], computed as G (V_w A_{w,:} + v_b A_{b,:})
        so that V̄ is never assembled.
        """
        parts = self.parts.data_pass.to_device(v, "v")
        flat = torch.empty(self.space.numel, dtype=self.dtype, device=self.device)
        out = self.space.to_dict(flat)  # views into ``flat``: results are written in place
        for block in self.blocks:
            a, g = block.input_factor, block.grad_factor
            if block.weight_name is None:
                torch.mul(g @ parts[block.bias_name], a[-1, -1], out=out[block.bias_name])
                continue
            rows = weight_rows(parts[block.weight_name], block.transposed)  # V_w [O, I]
            target = weight_rows(out[block.weight_name], block.transposed)
            if block.bias_name is None:
                _matmul_into(g, rows @ a, target)
                continue
            right = (rows @ a[:-1]).addr_(parts[block.bias_name], a[-1])  # V̄ A, [O, I+1]
            _matmul_into(g, right[:, :-1], target)
            torch.mv(g, right[:, -1], out=out[block.bias_name])
        for name, d in self.fallback_diag.items():
            torch.mul(d, parts[name].reshape(-1), out=out[name].view(-1))
        if isinstance(v, Mapping):
            return out
        return flat.to(v.device)

    def diag(self) -> Tensor:
        """The diagonal: G's ⊗ A's diagonals per block, the fallback one elsewhere; flat [P]."""
        out: dict[str, Tensor] = {}
        for block in self.blocks:
            a = block.selected_input_factor()
            self._scatter(block, torch.outer(block.grad_factor.diagonal(), a.diagonal()), out)
        return self._flat_with_fallback(out)

    def trace(self) -> Tensor:
        """Σ_l tr(G_l) tr(A_l) + Σ fallback diagonal."""
        total = sum(
            (b.grad_factor.trace() * b.selected_input_factor().trace() for b in self.blocks),
            start=torch.zeros((), dtype=self.dtype, device=self.device),
        )
        for d in self.fallback_diag.values():
            total = total + d.sum()
        return total

    def eigenvalues(self) -> Tensor:
        """Every eigenvalue of the approximation, descending.

        [P] (exact for K-FAC: eig(G ⊗ A) = eig(G) ⊗ eig(A)).
        """
        values = [b.eigenvalues() for b in self.blocks] + [
            d.reshape(-1) for d in self.fallback_diag.values()
        ]
        return torch.sort(torch.cat(values), descending=True).values


def _warn_unblocked(structure: str, plan: TapPlan) -> None:
    """Say which layers have no Kronecker block (their exact Fisher diagonal stands in).

    Layers on the exact per-sample path (with why) and elementwise taps (layer norms).
    """
    elementwise = [tap for tap in plan.taps if not tap.rule.kronecker or tap.group is not None]
    if not plan.fallback and not elementwise:
        return
    layers = [f"{layer}: {why}" for layer, why in plan.reasons.items()]
    layers += [
        f"{type(tap.module).__name__} {tap.weight_name or tap.bias_name}: "
        + ("tied, " if tap.group is not None else "elementwise, ")
        + "its diagonal from its tap"
        for tap in elementwise
    ]
    count = len(plan.fallback) + len(
        {n for t in elementwise for n in (t.weight_name, t.bias_name) if n}
    )
    warnings.warn(
        f"{structure}: {count} parameter tensor(s) have no Kronecker block and take their exact "
        f"Fisher diagonal instead ({'; '.join(layers)})",
        MemspaceWarning,
        stacklevel=5,
    )


def _matmul_into(left: Tensor, right: Tensor, target: Tensor) -> None:
    """Write left @ right into ``target`` in place (it may be a transposed view)."""
    if target.is_contiguous():
        torch.matmul(left, right, out=target)
    else:
        target.copy_(left @ right)
