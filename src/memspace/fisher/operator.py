"""The Fisher information operator: exact, streaming, matrix-free (docs/theory.md §1).

F = (1/N) Σ_n J_nᵀ Λ̂_n J_n, with J_n = ∂f(x_n)/∂θ [D, P] and Λ̂_n the output Fisher
of the chosen kind (see :mod:`memspace.fisher.likelihood`). Nothing of size P×P or
N×P is ever built unless :meth:`FisherOperator.dense` is asked for.

Costs per batch, in multiples of one forward+backward (a "gradient"):

- ``F @ v``: one forward carrying a tangent (forward-mode AD) and one backward,
  ≈ 1.7 gradients; ``quad`` skips the backward.
- ``diag``: one forward and one backward per column of Λ̂ (C for the true Fisher,
  M for Monte-Carlo, 1 empirical) *without weight gradients*, then one squared
  product per layer: Σ_k (g_k ⊗ a)² = (Σ_k g_k²) ⊗ a² for a Linear layer. Layers without
  a tap add K vector-Jacobian products per sample (K the number of columns).
- Sequence outputs [N, T, V] (``positions="all"``): ``F @ v`` and ``quad`` cost the same
  (Λ applied per position, nothing beyond the logits' size); the true Fisher's columns for
  ``diag``, K-FAC, EKFAC and ``dense`` are T·(V − 1) per batch while that is ≤ ``exact_columns``
  (T·V for a regressor), and
  M sampled per-sequence columns beyond (``mc_samples``; unbiased, said by a warning).

Every accumulation is a plain sum over batches with a sample count, divided at the
end; with ``distributed=True`` sums and counts are all-reduced over the default
``torch.distributed`` process group first (:mod:`memspace.distributed`: status-checked, so a
rank that fails stops every rank with its message instead of leaving them waiting).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from .._backprop import backward_along
from .._errors import MemspaceError
from .._model_call import Inputs, OutputSelector
from ..distributed import guarded
from . import spectral
from ._collect import FisherPlan, TapPlan, fisher_parts
from ._forward_mode import forward_mode_rules
from ._pass import Vector
from ._statistics import DiagonalSquares
from .ekfac import EKFAC
from .kfac import KFAC
from .likelihood import FisherKind, Likelihood
from .spectral import SpectralDensity

__all__ = ["FisherOperator", "FisherPlan", "TapPlan", "Vector"]


class FisherOperator:
    """Fisher information of a model on a data source, as a matrix-free operator.

    Args:
        model: an ``nn.Module`` mapping a batch x to outputs [N, D]; in eval mode if it
            has BatchNorm or dropout. Its device and dtype are used for everything.
        data: a DataLoader (``shuffle=False``), a re-iterable of ``(x, y)`` batches or of
            mappings (a collator's dicts: every key but ``labels`` goes to the model as a
            keyword, ``labels`` are the targets), a pair of tensors ``(X, y)``, or a mapping of
            tensors (a tokenizer's ``BatchEncoding``), cut into batches. x may be a tensor, a
            tuple (positional inputs) or a mapping (keyword inputs). Labels are optional for
            ``kind="true"`` and ``"mc"``. Streamed: memory is bounded by one batch.
        kind: ``"true"`` (exact E over the model's labels), ``"mc"`` (``mc_samples``
            sampled labels per input, fixed by ``seed`` and the batch index) or
            ``"empirical"`` (data labels).
        likelihood: ``"classification"`` (softmax/cross-entropy) or ``"regression"``
            (Gaussian with unit variance).
        mc_samples: labels sampled per input for ``kind="mc"``.
        seed: seed of the Monte-Carlo labels and of random probes.
        params: restrict F to these parameter names or modules (default: all that
            require grad).
        batch_size: rows per batch when ``data`` is an ``(X, y)`` pair.
        max_dense_bytes: :meth:`dense` refuses matrices larger than this.
        distributed: all-reduce sums over ``torch.distributed`` (see module doc).
        sample_dim: the axis of the inputs that indexes data points (1 for a
            sequence-first model taking [T, N, ...]); ``(X, y)`` pairs are cut along it.
        output: how to find the outputs [N, D] in what the model returns: an index
            (tuple), a key or attribute name (dict, ``ModelOutput``), or a callable.
        memory: ``"fast"`` (default) or ``"low"``: :meth:`mv` and :meth:`diag` at about a
            gradient's peak memory, for large models (see :meth:`mv` and :meth:`diag`).
        positions: for sequence outputs [N, T, V] (language models, token classifiers):
            ``"all"`` makes every position a data point, F = (1/#positions) Σ_{n,t}
            J_ntᵀ Λ(p_nt) J_nt, keeping the positions where the inputs' ``attention_mask`` is 1
            and the labels (aligned with the logits; −100 ignored) are not −100; ``"last"``
            takes each sequence's last attended position; a callable ``inputs → mask [N, T]``
            is ``"all"`` with only the positions it keeps as well (a loss mask, the answer of a
            prompt). None: outputs are [N, D].
        exact_columns: with ``positions="all"`` and the true Fisher, the diagonal, K-FAC,
            EKFAC and :meth:`dense` back-propagate one column per (class, position), T·V per
            batch, while T·V is at most this; beyond, ``mc_samples`` labels sampled per
            position instead (unbiased, said by a warning). F @ v and quad are exact at any
            vocabulary: Λ u = p ⊙ u − p (pᵀu) per position, nothing of size T·V formed beyond
            the logits.

    Every pass runs the model with kernels that have all derivative rules (math
    attention, no fused MHA fast path, no oneDNN RNN kernels), restored afterwards.
    The diagonal's layer taps check their assumptions first (:class:`TapPlan`).

    Example:
        >>> F = FisherOperator(model, (X, y))
        >>> Fv = F @ v; d = F.diag(); top = F.eigh(5)
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        kind: str | FisherKind = "true",
        likelihood: str | Likelihood = "classification",
        mc_samples: int = 1,
        seed: int = 0,
        params: Sequence[str | nn.Module] | None = None,
        batch_size: int = 256,
        max_dense_bytes: int = 2 * 1024**3,
        distributed: bool = False,
        sample_dim: int = 0,
        output: OutputSelector = None,
        memory: str = "fast",
        positions: str | Callable[[Inputs], Tensor] | None = None,
        exact_columns: int = 1024,
    ):
        self.data_pass, self.collector, self.jacobians = fisher_parts(
            model,
            data,
            memory=memory,
            kind=kind,
            likelihood=likelihood,
            mc_samples=mc_samples,
            seed=seed,
            params=params,
            batch_size=batch_size,
            distributed=distributed,
            sample_dim=sample_dim,
            output=output,
            positions=positions,
            exact_columns=exact_columns,
        )
        self.max_dense_bytes = max_dense_bytes

    # ------------------------------------------------------------------ basics
    model = property(lambda self: self.data_pass.model, doc="The measured model.")
    space = property(
        lambda self: self.data_pass.space, doc="The parameter space θ (names, shapes, layout)."
    )
    call = property(
        lambda self: self.data_pass.call, doc="How a batch reaches the model (sample axis, output)."
    )
    data = property(lambda self: self.data_pass.data, doc="The stream of batches.")
    kind = property(
        lambda self: self.data_pass.kind, doc="The Fisher's kind (true, mc, empirical)."
    )
    likelihood = property(lambda self: self.data_pass.likelihood, doc="The output likelihood.")
    mc_samples = property(
        lambda self: self.data_pass.mc_samples, doc="Labels sampled per input (kind mc)."
    )
    seed = property(
        lambda self: self.data_pass.seed, doc="Seed of Monte-Carlo labels and random probes."
    )
    distributed = property(
        lambda self: self.data_pass.distributed, doc="Whether sums are all-reduced."
    )
    device = property(
        lambda self: self.data_pass.device, doc="The device of the selected parameters."
    )
    dtype = property(lambda self: self.data_pass.dtype, doc="The dtype of the selected parameters.")
    memory = property(
        lambda self: self.collector.memory, doc="The memory mode, ``fast`` or ``low``."
    )

    @property
    def shape(self) -> tuple[int, int]:
        """(P, P), P the number of selected parameters."""
        return (self.space.numel, self.space.numel)

    @property
    def num_data(self) -> int:
        """N, the number of data points (one pass over the data on first use)."""
        return self.data_pass.total_count()

    @property
    def jacobian_fallback(self) -> str | None:
        """Why per-sample Jacobians run sample by sample (``vmap`` failed on this model).

        Or None.
        """
        return self.jacobians.vmap_failure

    def guard(self):
        """The distributed guard of every pass (:meth:`memspace.distributed.Collective.guard`)."""
        return self.data_pass.guard()

    def tap_plan(self) -> TapPlan:
        """The verified :class:`TapPlan`.

        Which layers take the fast per-layer path, and why the others do not (computed on the first
        batch, then kept).
        """
        return self.collector.tap_plan()

    def plan(self) -> FisherPlan:
        """Which layers take the per-layer shortcut, which the exact path and why.

        Also how per-sample Jacobians are computed there (``vmap`` or a loop, and the error that
        sent the model to the loop): planned and checked on the first batch (the Jacobian path on
        its first sample) if no pass has yet.
        """
        taps = self.tap_plan()
        names = {id(m): n or "<root>" for n, m in self.model.named_modules()}
        tapped = {names[id(t.module)]: _rule_name(t) for t in taps.taps}
        jacobians = "not needed"
        if taps.fallback:
            x, _ = next(iter(self.data))
            jacobians = self.jacobians.path(taps.fallback, x)
        return FisherPlan(tapped, dict(taps.reasons), jacobians, taps.cached)

    def __repr__(self) -> str:
        return (
            f"FisherOperator(P={self.space.numel}, kind={self.kind.value}, "
            f"likelihood={self.likelihood.value}, "
            f"memory={self.memory!r}, model={type(self.model).__name__})"
        )

    # ----------------------------------------------------------- products
    def _dual_forward(
        self, x: Tensor, tangent: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict]:
        """One forward carrying a tangent: (f(x), J v, leaves) with f in the graph."""
        leaves, others = self.data_pass.parameters()
        with fwAD.dual_level(), forward_mode_rules(self.model):
            duals = {n: fwAD.make_dual(leaves[n], tangent[n]) for n in leaves}
            out = self.data_pass.forward({**others, **duals}, x)
            primal, jvp = fwAD.unpack_dual(out)
        if jvp is None:
            jvp = torch.zeros_like(primal)
        return primal, jvp, leaves

    def _graph_free_jvp(self, x: Tensor, tangent: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(f(x), J v) by forward-mode AD without an autograd graph (inference memory)."""
        leaves, others = self.data_pass.parameters()
        with torch.no_grad(), fwAD.dual_level(), forward_mode_rules(self.model):
            duals = {n: fwAD.make_dual(leaves[n].detach(), tangent[n]) for n in leaves}
            out = self.data_pass.forward({**others, **duals}, x)
            primal, jvp = fwAD.unpack_dual(out)
        return primal, torch.zeros_like(primal) if jvp is None else jvp

    @guarded
    def mv(self, v: Vector) -> Vector:
        """F v, same layout as ``v`` (flat [P] vector or dict of parameter tensors).

        Per batch: u = J v by forward-mode AD, then Jᵀ (Λ̂ u) by one backward. When N
        is known up front (an ``(X, y)`` pair), 1/N is folded into Λ̂ u so that the
        result needs no extra pass over P entries. With ``memory="low"``, J v is taken
        without a graph first, then a plain forward and backward: about a gradient's peak.
        """
        dp = self.data_pass
        tangent = dp.to_device(v, "v")
        scale = dp.known_scale()
        flat = dp.zeros()
        views = self.space.to_dict(flat)
        count = 0
        for index, (x, y) in enumerate(dp.data):
            if self.memory == "low":
                primal, jvp = self._graph_free_jvp(x, tangent)
                leaves, others = dp.parameters()
                weighted = dp.apply_output_fisher(primal, y, index, jvp, x)
                del jvp
                primal = dp.forward({**others, **leaves}, x)
            else:
                primal, jvp, leaves = self._dual_forward(x, tangent)
                weighted = dp.apply_output_fisher(primal, y, index, jvp, x)
            if scale is not None:
                weighted = weighted * scale
            # Gradients accumulate in place into views of one flat buffer: no copies.
            for name, leaf in leaves.items():
                leaf.grad = views[name]
            backward_along(primal, weighted, list(leaves.values()))
            count += dp.units(x, y, primal)
        flat = dp.finish(flat, count, scale)
        if isinstance(v, Mapping):
            return self.space.to_dict(flat)
        return flat.to(v.device)

    def __matmul__(self, v: Vector) -> Vector:
        return self.mv(v)

    @guarded
    def quad(self, v: Vector) -> Tensor:
        """vᵀ F v = E_x[(J v)ᵀ Λ̂ (J v)], by forward-mode AD only (no backward)."""
        dp = self.data_pass
        tangent = dp.to_device(v, "v")
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        count = 0
        for index, (x, y) in enumerate(dp.data):
            primal, jvp = self._graph_free_jvp(x, tangent)
            with torch.no_grad():
                total += dp.output_fisher_quad(primal, y, index, jvp, x)
            count += dp.units(x, y, primal)
        return dp.finish(total, count)

    # ----------------------------------------------------------- diagonal
    @guarded
    def diag(self) -> Vector:
        """The diagonal of F as a flat vector [P].

        Parameters of layers whose taps pass their checks (:class:`TapPlan`): squared per-sample
        gradients from layer taps (see module doc). Every other parameter (norm layers, embeddings,
        attention projections, recurrent layers, tied weights): exact per-sample Jacobians —
        slower, never dropped.
        """
        flat = self.data_pass.zeros()
        total = self.space.to_dict(flat)
        count = 0
        for x, factors, fallback, units in self.collector.collect(DiagonalSquares(total)):
            for name, squares in self.jacobians.diag_sums(fallback, x, factors).items():
                total[name] += squares.view_as(total[name])
            count += units
        return self.data_pass.finish(flat, count)

    # ----------------------------------------------------------- dense
    @guarded
    def dense(self) -> Tensor:
        """F as a dense [P, P] matrix from per-sample Jacobians (small models only).

        Raises:
            MemspaceError: if P² entries exceed ``max_dense_bytes``, naming the size.
        """
        dp = self.data_pass
        dim = self.space.numel
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        need = dim * dim * itemsize
        if need > self.max_dense_bytes:
            raise MemspaceError(
                f"the dense Fisher would be {dim}×{dim} = {_format_bytes(need)}, over "
                f"the limit of {_format_bytes(self.max_dense_bytes)} (max_dense_bytes); "
                "use matrix-free products, diag(), eigh() or KFAC instead"
            )
        total = torch.zeros(dim, dim, dtype=self.dtype, device=self.device)
        count = 0
        for index, (x, y) in enumerate(dp.data):
            with torch.no_grad():
                outputs = dp.forward(dict(self.model.named_parameters()), x)
            total += self.jacobians.gram_sum(x, dp.factors(outputs, y, index, x))
            count += dp.units(x, y, outputs)
        return dp.finish(total, count)

    # ----------------------------------------------------------- spectral
    def trace(
        self, method: str = "exact", num_matvecs: int = 30, seed: int | None = None
    ) -> Tensor:
        """Tr F: ``"exact"`` (sum of :meth:`diag`) or ``"hutchpp"`` (Meyer et al. 2021).

        Hutch++ uses ``num_matvecs`` products and is unbiased; exact costs one diagonal.
        """
        if method == "exact":
            return self.diag().sum()
        if method == "hutchpp":
            return spectral.trace(self, num_matvecs, self.seed if seed is None else seed)
        raise MemspaceError(f"unknown trace method {method!r}; use 'exact' or 'hutchpp'")

    def eigh(self, k: int = 1, tol: float = 0.0) -> tuple[Tensor, Tensor]:
        """Top-k eigenpairs by Lanczos (ARPACK ``eigsh`` on a ``LinearOperator``).

        Returns:
            ``(eigenvalues [k] descending, eigenvectors [P, k])`` in float64.
        """
        if k >= self.space.numel:
            values, vectors = torch.linalg.eigh(self.dense().double())
            order = torch.argsort(values, descending=True)[:k]
            return values[order], vectors[:, order]
        return spectral.eigh(self, k, tol=tol, seed=self.seed)

    def spectral_density(
        self, num_probes: int = 8, steps: int = 40, seed: int | None = None
    ) -> SpectralDensity:
        """Stochastic Lanczos quadrature of the spectrum (Ubaru, Chen & Saad 2017).

        Costs ``num_probes × steps`` products; see :class:`SpectralDensity`.
        """
        return spectral.spectral_density(
            self, num_probes, steps, self.seed if seed is None else seed
        )

    def _spectral_sum(
        self, fn: Callable[[np.ndarray], np.ndarray], method: str, **slq: Any
    ) -> Tensor:
        if method == "auto":
            method = "dense" if self.space.numel <= 3000 else "slq"
        if method == "dense":
            values = torch.linalg.eigvalsh(self.dense().double()).clamp_min(0).cpu().numpy()
            return torch.tensor(float(fn(values).sum()), dtype=torch.float64)
        if method == "slq":
            return torch.tensor(self.spectral_density(**slq).spectral_sum(fn), dtype=torch.float64)
        raise MemspaceError(f"unknown method {method!r}; use 'auto', 'dense' or 'slq'")

    def logdet(self, damping: float, method: str = "auto", **slq: Any) -> Tensor:
        """Log det(F + δI) = Σ_i log(λ_i + δ).

        ``method="dense"`` is exact (eigenvalues of :meth:`dense`), ``"slq"`` is the
        stochastic Lanczos quadrature estimate; ``"auto"`` is dense for P ≤ 3000.
        """
        if damping <= 0:
            raise MemspaceError(f"damping must be positive for a finite log-det, got {damping}")
        return self._spectral_sum(lambda lam: np.log(lam + damping), method, **slq)

    def effective_dimension(self, z: float, method: str = "auto", **slq: Any) -> Tensor:
        """d_eff(z) = Σ_i λ_i / (λ_i + z) (Maddox et al. 2020; docs/theory.md §1)."""
        if z <= 0:
            raise MemspaceError(f"z must be positive, got {z}")
        return self._spectral_sum(lambda lam: lam / (lam + z), method, **slq)

    def kfac(self) -> KFAC:
        """The K-FAC approximation of this operator (:class:`~memspace.fisher.kfac.KFAC`)."""
        return KFAC.from_operator(self)

    def ekfac(self) -> EKFAC:
        """The eigenvalue-corrected K-FAC of this operator (:class:`~memspace.fisher.EKFAC`)."""
        return EKFAC.from_operator(self)


def _format_bytes(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _rule_name(tap: Any) -> str:
    """The name of the rule that taps a layer (``Linear``, ``Conv1D``, ``PackedInProjection``)."""
    return type(tap.rule).__name__.removesuffix("Rule")
