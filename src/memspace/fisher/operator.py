"""The Fisher information operator: exact, streaming, matrix-free (docs/theory.md §1).

F = (1/N) Σ_n J_nᵀ Λ̂_n J_n, with J_n = ∂f(x_n)/∂θ [D, P] and Λ̂_n the output Fisher
of the chosen kind (see :mod:`memspace.fisher.likelihood`). Nothing of size P×P or
N×P is ever built unless :meth:`FisherOperator.dense` is asked for.

Costs per batch, in multiples of one forward+backward (a "gradient"):

- ``F @ v``: one forward carrying a tangent (forward-mode AD) and one backward,
  ≈ 1.7 gradients; ``quad`` skips the backward.
- ``diag``: one forward and one backward per column of Λ̂ (C for the true Fisher,
  M for Monte-Carlo, 1 empirical) *without weight gradients*, then one squared
  product per layer: Σ_k (g_k ⊗ a)² = (Σ_k g_k²) ⊗ a² for a Linear layer.

Every accumulation is a plain sum over batches with a sample count, divided at the
end; with ``distributed=True`` sums and counts are all-reduced over the default
``torch.distributed`` process group first (:mod:`memspace.distributed`: status-checked, so a
rank that fails stops every rank with its message instead of leaving them waiting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from .._errors import ArgumentTypeError, MemspaceError
from ..distributed import Collective, guarded
from .._model_call import ModelCall, OutputSelector, derivative_kernels, sample_axes_by_probe
from .._stream import BatchStream, as_batch_stream
from ._forward_mode import forward_mode_rules
from .._params import ParameterSpace, check_eval_mode, shared_parameters
from ._taps import LayerTap, check_tap_layout, is_tappable, per_sample_square_sums, summed_weight_grads
from .likelihood import (
    FisherKind,
    Likelihood,
    apply_output_fisher,
    check_outputs,
    output_sqrt_factors,
)
from .spectral import (
    SpectralDensity,
    hutchpp,
    stochastic_lanczos_quadrature,
    top_eigenpairs,
)

__all__ = ["FisherOperator", "TapPlan", "TappedBatch"]

Vector = Tensor | Mapping[str, Tensor]


@dataclass
class TapPlan:
    """Which selected parameters take the layer-tap shortcut, found on the first batch.

    Attributes:
        taps: verified taps (sample axis per call known, parameters owned by the layer
            alone, every use of them inside the layer's calls).
        fallback: selected parameter names handled by exact per-sample Jacobians.
        reasons: for each tappable layer whose parameters fell back, why.
    """

    taps: list[LayerTap]
    fallback: list[str]
    reasons: dict[str, str]


@dataclass
class TappedBatch:
    """One batch after a forward with layer taps, ready for per-column backward passes.

    Attributes:
        outputs: model outputs [N, D] (in the graph).
        factors: output-Fisher columns [K, N, D] (Λ̂ = Σ_k s_k s_kᵀ).
        taps: Linear/Conv2d layers whose parameters are selected.
        fallback: selected parameter names not covered by a tap.
        inputs: the batch inputs (for the fallback's per-sample Jacobians).
    """

    outputs: Tensor
    factors: Tensor
    taps: list[LayerTap]
    fallback: list[str]
    inputs: Tensor

    def column_grads(self) -> Iterator[list[list[Tensor | None]]]:
        """For each column s_k, the gradients of s_kᵀf w.r.t. each tap's outputs.

        Only gradients with respect to layer outputs are requested, so autograd skips
        every weight-gradient product.
        """
        flat = [out for tap in self.taps for out in tap.outputs]
        num = self.factors.shape[0]
        for k in range(num):
            if not flat:
                yield []
                continue
            grads = torch.autograd.grad(
                self.outputs, flat, self.factors[k], retain_graph=k < num - 1,
                allow_unused=True,
            )
            it = iter(grads)
            yield [[next(it) for _ in tap.outputs] for tap in self.taps]


class FisherOperator:
    """Fisher information of a model on a data source, as a matrix-free operator.

    Args:
        model: an ``nn.Module`` mapping a batch x to outputs [N, D]; in eval mode if it
            has BatchNorm or dropout. Its device and dtype are used for everything.
        data: a DataLoader (``shuffle=False``), a re-iterable of ``(x, y)`` batches, or
            a pair of tensors ``(X, y)``. Streamed: memory is bounded by one batch.
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
    ):
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.kind = FisherKind.parse(kind)
        self.likelihood = Likelihood.parse(likelihood)
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise MemspaceError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        check_eval_mode(model)
        self.model = model
        self.call = ModelCall(sample_dim, output)
        self.space = ParameterSpace(model, params)
        first = next(iter(self.space.tensors().values()))
        self.device, self.dtype = first.device, first.dtype
        self.data: BatchStream = as_batch_stream(
            data, device=self.device, dtype=self.dtype, batch_size=batch_size, sample_dim=sample_dim
        )
        if memory not in ("fast", "low"):
            raise MemspaceError(f"memory must be 'fast' or 'low', got {memory!r}")
        self.memory = memory
        self.mc_samples = mc_samples
        self.seed = seed
        self.max_dense_bytes = max_dense_bytes
        self.distributed = distributed
        self._collective = Collective(distributed, "the Fisher operator")
        self._num_data: int | None = None
        self._tap_plan: TapPlan | None = None
        self._vmap_failure: str | None = None

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int]:
        """(P, P), P the number of selected parameters."""
        return (self.space.numel, self.space.numel)

    @property
    def num_data(self) -> int:
        """N, the number of data points (one pass over the data on first use)."""
        if self._num_data is None:
            with self._collective.guard():
                count = sum(self.call.num_samples(x) for x, _ in self.data)
                self._num_data = int(self._reduce(torch.tensor(float(count), dtype=torch.float64)).item())
        return self._num_data

    def _reduce(self, tensor: Tensor) -> Tensor:
        """Sum over the ranks when distributed (status-checked, :mod:`memspace.distributed`)."""
        return self._collective.reduce(tensor)

    def _finish(self, total: Tensor, count: int, scale: float | None = None) -> Tensor:
        """Divide a reduced sum by the reduced sample count; remember N.

        With ``scale`` (1/N already folded in during the pass) only N is recorded.
        """
        if scale is not None:
            self._num_data = count
            return total
        total = self._reduce(total)
        count_t = self._reduce(torch.tensor(float(count), dtype=torch.float64))
        self._num_data = int(count_t.item())
        if self._num_data == 0:
            raise MemspaceError("no data points: every batch was empty")
        return total.div_(count_t.item())

    def _parameters(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(selected leaves requiring grad, every other parameter detached)."""
        selected = set(self.space.names)
        leaves, others = {}, {}
        for name, p in self.model.named_parameters():
            if name in selected:
                leaves[name] = p.detach().requires_grad_(True)
            else:
                others[name] = p.detach()
        return leaves, others

    def _call(self, params: Mapping[str, Tensor], x: Tensor, *, check: bool = True) -> Tensor:
        """Outputs [N, D] of the model at ``params`` (selected by ``output``, shape checked)."""
        with derivative_kernels(self.model):
            raw = functional_call(self.model, dict(params), (x,))
        if not check:
            return raw
        return self.call.outputs(raw, self.call.num_samples(x))

    def _generator(self, index: int) -> torch.Generator | None:
        if self.kind is not FisherKind.MC:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + index)
        return gen

    def _factors(self, outputs: Tensor, y: Tensor, index: int) -> Tensor:
        check_outputs(outputs, y, self.likelihood, f"batch {index}")
        return output_sqrt_factors(
            outputs, y, self.likelihood, self.kind, mc_samples=self.mc_samples,
            generator=self._generator(index),
        )

    def _apply_output_fisher(self, outputs: Tensor, y: Tensor, index: int, u: Tensor) -> Tensor:
        """Λ̂ u per sample, [N, D]."""
        check_outputs(outputs, y, self.likelihood, f"batch {index}")
        if self.kind is FisherKind.TRUE:
            return apply_output_fisher(outputs.detach(), u, self.likelihood)
        s = self._factors(outputs, y, index)
        return torch.einsum("knd,kn->nd", s, torch.einsum("knd,nd->kn", s, u))

    def _to_device(self, v: Vector, what: str) -> dict[str, Tensor]:
        parts = self.space.to_dict(v, what)
        return {n: t.to(self.device, self.dtype) for n, t in parts.items()}

    # ----------------------------------------------------------- products
    def _dual_forward(self, x: Tensor, tangent: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict]:
        """One forward carrying a tangent: (f(x), J v, leaves) with f in the graph."""
        leaves, others = self._parameters()
        with fwAD.dual_level(), forward_mode_rules(self.model):
            duals = {n: fwAD.make_dual(leaves[n], tangent[n]) for n in leaves}
            out = self._call({**others, **duals}, x)
            primal, jvp = fwAD.unpack_dual(out)
        if jvp is None:
            jvp = torch.zeros_like(primal)
        return primal, jvp, leaves

    @guarded
    def mv(self, v: Vector) -> Vector:
        """F v, same layout as ``v`` (flat [P] vector or dict of parameter tensors).

        Per batch: u = J v by forward-mode AD, then Jᵀ (Λ̂ u) by one backward. When N
        is known up front (an ``(X, y)`` pair), 1/N is folded into Λ̂ u so that the
        result needs no extra pass over P entries.
        """
        tangent = self._to_device(v, "v")
        scale = self._known_scale()
        flat = torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)
        views = self.space.to_dict(flat)
        count = 0
        for index, (x, y) in enumerate(self.data):
            if self.memory == "low":
                # Two passes: J v without a graph (inference memory), then a plain forward+backward.
                primal, jvp = self._graph_free_jvp(x, tangent)
                leaves, others = self._parameters()
                weighted = self._apply_output_fisher(primal, y, index, jvp)
                del jvp
                primal = self._call({**others, **leaves}, x)
            else:
                primal, jvp, leaves = self._dual_forward(x, tangent)
                weighted = self._apply_output_fisher(primal, y, index, jvp)
            if scale is not None:
                weighted = weighted * scale
            # Gradients accumulate in place into views of one flat buffer: no copies.
            for name, leaf in leaves.items():
                leaf.grad = views[name]
            torch.autograd.backward(primal, weighted, inputs=list(leaves.values()))
            count += self.call.num_samples(x)
        flat = self._finish(flat, count, scale)
        if isinstance(v, Mapping):
            return self.space.to_dict(flat)
        return flat.to(v.device)

    def _known_scale(self) -> float | None:
        """1/N when N is known before the pass and no reduction across processes follows."""
        if self.data.size is None or self.distributed:
            return None
        return 1.0 / self.data.size

    def __matmul__(self, v: Vector) -> Vector:
        return self.mv(v)

    def _graph_free_jvp(self, x: Tensor, tangent: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(f(x), J v) by forward-mode AD without an autograd graph (inference memory)."""
        leaves, others = self._parameters()
        with torch.no_grad(), fwAD.dual_level(), forward_mode_rules(self.model):
            duals = {n: fwAD.make_dual(leaves[n].detach(), tangent[n]) for n in leaves}
            out = self._call({**others, **duals}, x)
            primal, jvp = fwAD.unpack_dual(out)
        return primal, torch.zeros_like(primal) if jvp is None else jvp

    @guarded
    def quad(self, v: Vector) -> Tensor:
        """vᵀ F v = E_x[(J v)ᵀ Λ̂ (J v)], by forward-mode AD only (no backward)."""
        tangent = self._to_device(v, "v")
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        count = 0
        for index, (x, y) in enumerate(self.data):
            primal, jvp = self._graph_free_jvp(x, tangent)
            with torch.no_grad():
                total += (jvp * self._apply_output_fisher(primal, y, index, jvp)).sum()
            count += self.call.num_samples(x)
        return self._finish(total, count)

    # ----------------------------------------------------------- layer taps
    def _module_name(self, module: nn.Module) -> str:
        return next((n or "<root>" for n, m in self.model.named_modules() if m is module), "<unknown>")

    def _tap_candidates(self) -> list[LayerTap]:
        """A tap for every Linear/Conv2d with a selected parameter (not yet verified)."""
        selected = set(self.space.names)
        taps: list[LayerTap] = []
        for prefix, module in self.model.named_modules():
            if not is_tappable(module):
                continue
            names = {attr: f"{prefix}.{attr}" if prefix else attr for attr in ("weight", "bias")}
            weight = names["weight"] if names["weight"] in selected else None
            bias = names["bias"] if module.bias is not None and names["bias"] in selected else None
            if weight or bias:
                taps.append(LayerTap(module, weight, bias))
        return taps

    def _plan_taps(self, x: Tensor) -> tuple[list[LayerTap], dict[str, str]]:
        """Static checks and the sample-axis probe (see :class:`TapPlan`)."""
        shared = shared_parameters(self.model)
        leaves, others = self._parameters()
        params = {**others, **{n: t.detach() for n, t in leaves.items()}}
        candidates = self._tap_candidates()
        axes = sample_axes_by_probe(lambda xx: self._call(params, xx, check=False), x, self.call,
                                    [tap.module for tap in candidates])
        kept, reasons = [], {}
        for tap, tap_axes in zip(candidates, axes):
            names = [n for n in (tap.weight_name, tap.bias_name) if n]
            owners = next((shared[n] for n in names if n in shared), None)
            why = (f"its parameter is shared with {', '.join(owners)}" if owners
                   else check_tap_layout(tap.module, tap_axes))
            if why:
                reasons[self._module_name(tap.module)] = why
                continue
            tap.sample_axes = [a for a, _ in tap_axes]
            kept.append(tap)
        return kept, reasons

    def _verify_taps(self, taps: list[LayerTap], leaves: dict[str, Tensor], outputs: Tensor,
                     factors: Tensor, reasons: dict[str, str]) -> list[LayerTap]:
        """Keep the taps whose calls account for the whole gradient of their parameters.

        One random combination r of the output-Fisher columns is back-propagated twice:
        to the parameters (autograd, every use) and to the taps' outputs (the shortcut's
        view, Σ_n per-sample gradients). A parameter also used outside its module's calls
        (attention's functional form, a tied layer) makes the two differ.
        """
        r = self._random_column_mix(factors)
        names = [n for tap in taps for n in (tap.weight_name, tap.bias_name) if n]
        if not names:
            return taps
        direct = torch.autograd.grad(outputs, [leaves[n] for n in names], r, retain_graph=True, allow_unused=True)
        direct = dict(zip(names, direct))
        flat = [out for tap in taps for out in tap.outputs]
        via = iter(torch.autograd.grad(outputs, flat, r, retain_graph=True, allow_unused=True) if flat else [])
        summed: dict[str, Tensor] = {}
        for tap in taps:
            grads = [next(via) for _ in tap.outputs]
            grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, tap.outputs)]
            if grads:
                _keep_sums(tap, grads, summed)
        return self._taps_accounting_for(taps, leaves, direct, summed, reasons)

    def _random_column_mix(self, factors: Tensor) -> Tensor:
        """One seeded random combination r [N, D] of the output-Fisher columns [K, N, D]."""
        gen = torch.Generator(device=factors.device).manual_seed(self.seed + 7919)
        coeffs = torch.randn(factors.shape[0], generator=gen, dtype=factors.dtype, device=factors.device)
        return torch.einsum("k,knd->nd", coeffs, factors)

    def _taps_accounting_for(self, taps: list[LayerTap], leaves: Mapping[str, Tensor],
                             direct: Mapping[str, Tensor | None], summed: Mapping[str, Tensor],
                             reasons: dict[str, str]) -> list[LayerTap]:
        """The taps whose batch-summed gradients (``summed``) equal autograd's (``direct``) for every
        parameter they cover; the others get their reason in ``reasons``."""
        kept = []
        for tap in taps:
            good = True
            for name in (tap.weight_name, tap.bias_name):
                if not name:
                    continue
                ref = direct.get(name)
                ref = torch.zeros_like(leaves[name]) if ref is None else ref
                mine = summed[name].reshape(ref.shape) if name in summed else torch.zeros_like(ref)
                scale = max(float(ref.norm()), float(mine.norm()))
                good &= float((ref - mine).norm()) <= torch.finfo(ref.dtype).eps ** 0.5 * scale + 1e-30
            if good:
                kept.append(tap)
            else:
                reasons[self._module_name(tap.module)] = ("its parameters are used outside its own calls "
                                                      "(a functional use such as attention's, or a tied layer)")
        return kept

    def _make_plan(self, taps: list[LayerTap], reasons: dict[str, str]) -> TapPlan:
        """The plan of the verified ``taps``: every selected parameter they do not cover is a fallback."""
        covered = {n for tap in taps for n in (tap.weight_name, tap.bias_name) if n}
        plan = TapPlan(taps, [n for n in self.space.names if n not in covered], reasons)
        self._check_plans_agree(plan)
        return plan

    def tap_plan(self) -> TapPlan:
        """The verified :class:`TapPlan` (computed on the first batch, then kept)."""
        if self._tap_plan is None and self.memory == "low":
            self._tap_plan = self._low_memory_plan()
        if self._tap_plan is None:
            for _ in self.tapped_batches():
                break
        return self._tap_plan

    def _check_plans_agree(self, plan: TapPlan) -> None:
        """With sharded data every rank must tap the same layers, or the reductions would pair unlike sums."""
        if not self._collective.active:
            return
        mine = torch.tensor([float(self.space.numel), float(len(plan.taps)), float(len(plan.fallback))],
                            dtype=torch.float64)
        total = self._reduce(mine.clone())
        if not torch.equal(total, mine * self._collective.world):
            raise MemspaceError(
                f"rank {self._collective.rank}: the ranks disagree on the parameters or the layer taps (this rank: "
                f"{int(mine[0])} parameters, {int(mine[1])} taps, {len(plan.fallback)} on the exact path; "
                f"sums over ranks {total.tolist()}): give every rank the same model and params=")

    def _low_memory_plan(self) -> TapPlan:
        """:meth:`_verify_taps` at a gradient's memory: one backward of rᵀf reaches the parameters
        (autograd, every use) and, through zero probes, each tap's output, whose batch-summed
        weight gradient a hook forms and compares as it arrives (no graph kept, no per-sample
        gradients)."""
        x, y = next(iter(self.data))
        taps, reasons = self._plan_taps(x)
        leaves, others = self._parameters()
        summed: dict[str, Tensor] = {}
        outputs, probes = self._probe_forward(x, {**others, **leaves}, taps,
                                              lambda tap, grads: _keep_sums(tap, grads, summed))
        r = self._random_column_mix(self._factors(outputs.detach(), y, 0))
        names = [n for tap in taps for n in (tap.weight_name, tap.bias_name) if n]
        direct = dict(zip(names, torch.autograd.grad(outputs, [leaves[n] for n in names] + probes, r,
                                                     allow_unused=True)[: len(names)])) if names else {}
        del outputs
        for tap in taps:
            tap.clear()
        return self._make_plan(self._taps_accounting_for(taps, leaves, direct, summed, reasons), reasons)

    def tapped_batches(self) -> Iterator[TappedBatch]:
        """Stream batches through a forward that taps every verified Linear/Conv2d.

        Used by :meth:`diag` and by :class:`~memspace.fisher.kfac.KFAC`. On the first
        batch of the first pass the taps are planned and verified (:class:`TapPlan`).

        Raises:
            MemspaceError: when a later batch runs a tapped layer differently from the
                first (another number of calls, or no sample axis of the batch's size).
        """
        leaves, others = self._parameters()
        plan = self._tap_plan
        for index, (x, y) in enumerate(self.data):
            if plan is None:
                taps, reasons = self._plan_taps(x)
            else:
                taps = plan.taps
            for tap in taps:
                tap.clear()
            handles = [tap.module.register_forward_hook(tap.hook) for tap in taps]
            try:
                outputs = self._call({**others, **leaves}, x)
            finally:
                for handle in handles:
                    handle.remove()
            factors = self._factors(outputs, y, index)
            if plan is None:
                taps = self._verify_taps(taps, leaves, outputs, factors, reasons)
                plan = self._tap_plan = self._make_plan(taps, reasons)
            num = self.call.num_samples(x)
            for tap in taps:
                expected = len(tap.sample_axes or [])
                if len(tap.inputs) != expected or any(a.shape[0] != num for a in tap.inputs):
                    raise MemspaceError(
                        f"layer {self._module_name(tap.module)} ran {len(tap.inputs)} time(s) in batch {index} with inputs "
                        f"{[tuple(a.shape) for a in tap.inputs]} (sample axis first), unlike the first batch "
                        f"({expected} call(s)); its per-sample shortcut does not apply: pass params= without it"
                    )
            yield TappedBatch(outputs, factors, taps, plan.fallback, x)

    def per_sample_jacobians(self, names: Sequence[str], x: Tensor) -> dict[str, Tensor]:
        """J_n for the named parameters: dict of [N, D, p] (used for fallback blocks).

        ``torch.func.vmap`` over the sample axis; where a layer has no batching rule
        (recurrent layers) a loop over samples with one backward per output entry,
        remembered for the rest of the operator's life.
        """
        leaves, others = self._parameters()
        fixed = {**others, **{n: t.detach() for n, t in leaves.items() if n not in names}}
        wanted = {n: leaves[n].detach() for n in names}
        dim = self.call.sample_dim
        if self._vmap_failure is None:
            def single(params: dict[str, Tensor], xn: Tensor) -> Tensor:
                return self._call({**fixed, **params}, xn.unsqueeze(dim)).squeeze(0)

            try:
                jac = vmap(jacrev(single), in_dims=(None, dim))(wanted, x)
                return {n: jac[n].flatten(2) for n in names}
            except (RuntimeError, NotImplementedError) as error:
                self._vmap_failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return self._looped_jacobians(fixed, wanted, x)

    def _looped_jacobians(self, fixed: dict[str, Tensor], wanted: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
        """J_n sample by sample: one forward per sample, one backward per output entry."""
        names = list(wanted)
        rows: dict[str, list[Tensor]] = {n: [] for n in names}
        for n in range(self.call.num_samples(x)):
            params = {k: t.detach().requires_grad_(True) for k, t in wanted.items()}
            out = self._call({**fixed, **params}, self.call.take(x, slice(n, n + 1)))[0]
            per_entry: dict[str, list[Tensor]] = {k: [] for k in names}
            for d in range(out.shape[0]):
                grads = torch.autograd.grad(out[d], [params[k] for k in names], retain_graph=d < out.shape[0] - 1,
                                            allow_unused=True)
                for k, g in zip(names, grads):
                    per_entry[k].append((torch.zeros_like(params[k]) if g is None else g).reshape(-1))
            for k in names:
                rows[k].append(torch.stack(per_entry[k]))
        return {k: torch.stack(rows[k]) for k in names}

    def _sample_chunks(self, x: Tensor, dim_out: int, names: Sequence[str]) -> Iterator[tuple[slice, Tensor]]:
        """Slices of a batch small enough that their Jacobians [n, D, p] stay near 256 MiB."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        width = sum(self.space.sizes[self.space.names.index(n)] for n in names)
        rows = max(1, int(256 * 1024**2 // max(1, dim_out * width * itemsize)))
        num = self.call.num_samples(x)
        for start in range(0, num, rows):
            chunk = slice(start, min(num, start + rows))
            yield chunk, self.call.take(x, chunk)

    def fallback_diag_sums(self, names: Sequence[str], x: Tensor, factors: Tensor) -> dict[str, Tensor]:
        """Σ_n Σ_k (s_kᵀ J_n)² for the named parameters (those no tap covers) on a batch x, each [p].

        Exact per-sample Jacobians by ``torch.func`` (or the per-sample loop): the stated
        fallback of :meth:`diag` and of K-FAC for layers other than verified taps.
        ``factors``: the batch's output-Fisher columns [K, N, D].
        """
        if not names:
            return {}
        sums: dict[str, Tensor] = {}
        for chunk, xs in self._sample_chunks(x, factors.shape[2], names):
            jac = self.per_sample_jacobians(names, xs)
            for name in names:
                sq = torch.einsum("knd,ndp->knp", factors[:, chunk], jac[name]).pow(2).sum(dim=(0, 1))
                sums[name] = sq if name not in sums else sums[name] + sq
        return sums

    # ----------------------------------------------------------- diagonal
    @guarded
    def diag(self) -> Vector:
        """diag(F) as a flat vector [P].

        Linear/Conv2d parameters whose taps pass their checks (:class:`TapPlan`):
        squared per-sample gradients from layer taps (see module doc). Every other
        parameter (norm layers, embeddings, attention projections, recurrent layers, tied
        weights): exact per-sample Jacobians — slower, never dropped.
        """
        flat = torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)
        total = self.space.to_dict(flat)
        count = 0
        if self.memory == "low":
            return self._finish(flat, self._low_memory_diag(total))
        for batch in self.tapped_batches():
            _accumulate_diag(batch, total)
            for name, squares in self.fallback_diag_sums(batch.fallback, batch.inputs, batch.factors).items():
                total[name] += squares.view_as(total[name])
            count += self.call.num_samples(batch.inputs)
        return self._finish(flat, count)

    def _probe_forward(self, x: Tensor, params: Mapping[str, Tensor], taps: list[LayerTap],
                       complete: Callable[[LayerTap, list[Tensor]], None]) -> tuple[Tensor, list[Tensor]]:
        """A forward in which each tap keeps its layer's input and adds a zero probe to its output.

        Returns (outputs, probes). A backward to the probes (no parameter needs to require a
        gradient) calls ``complete(tap, output gradients per call)`` as soon as a layer's gradients
        have all arrived, then frees that layer's inputs: activations go as the backward proceeds.
        """
        probes: list[Tensor] = []
        handles = [tap.module.register_forward_hook(_ProbeTap(tap, probes, complete)) for tap in taps]
        try:
            for tap in taps:
                tap.clear()
            outputs = self._call(params, x)
        finally:
            for handle in handles:
                handle.remove()
        return outputs, probes

    def probe_columns(self, complete: Callable[[LayerTap, list[Tensor], int], None]) -> Iterator[tuple[Tensor, Tensor]]:
        """The low-memory pass over the data (``memory="low"``): per batch and output-Fisher column
        s_k, a probe forward (:meth:`_probe_forward`) and one backward of s_kᵀf to the probes,
        with ``complete(tap, grads, k)`` called layer by layer. Yields (inputs, factors [K, N, D])
        after each batch. K columns cost K forwards (the fast path: one forward, K backwards).
        """
        plan = self.tap_plan()
        others = {n: p.detach() for n, p in self.model.named_parameters()}
        for index, (x, y) in enumerate(self.data):
            factors = None
            column = 0
            while factors is None or column < factors.shape[0]:
                outputs, probes = self._probe_forward(
                    x, others, plan.taps, lambda tap, grads, k=column: complete(tap, grads, k))
                if factors is None:
                    factors = self._factors(outputs.detach(), y, index)
                if probes:
                    torch.autograd.grad(outputs, probes, factors[column], allow_unused=True)
                del outputs, probes
                column += 1
            for tap in plan.taps:
                tap.clear()
            yield x, factors

    def _low_memory_diag(self, total: dict[str, Tensor]) -> int:
        """:meth:`diag` at about a gradient's peak memory (:meth:`probe_columns`); returns the sample count."""
        plan = self.tap_plan()
        count = 0
        for x, factors in self.probe_columns(lambda tap, grads, column: _add_squares(tap, grads, total)):
            for name, squares in self.fallback_diag_sums(plan.fallback, x, factors).items():
                total[name] += squares.view_as(total[name])
            count += self.call.num_samples(x)
        return count

    # ----------------------------------------------------------- dense
    @guarded
    def dense(self) -> Tensor:
        """F as a dense [P, P] matrix from per-sample Jacobians (small models only).

        Raises:
            MemspaceError: if P² entries exceed ``max_dense_bytes``, naming the size.
        """
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
        for index, (x, y) in enumerate(self.data):
            with torch.no_grad():
                outputs = self._call(dict(self.model.named_parameters()), x)
            factors = self._factors(outputs, y, index)
            for chunk, xs in self._sample_chunks(x, outputs.shape[1], self.space.names):
                jac = self.per_sample_jacobians(self.space.names, xs)
                flat = torch.cat([jac[n] for n in self.space.names], dim=2)  # [n, D, P]
                proj = torch.einsum("knd,ndp->knp", factors[:, chunk], flat).flatten(0, 1)
                total += proj.T @ proj
            count += self.call.num_samples(x)
        return self._finish(total, count)

    # ----------------------------------------------------------- spectral
    def _numpy_matvec(self) -> Callable[[np.ndarray], np.ndarray]:
        def matvec(v: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.ascontiguousarray(v).ravel(), dtype=self.dtype, device=self.device)
            return self.mv(t).detach().cpu().double().numpy()

        return matvec

    def trace(self, method: str = "exact", num_matvecs: int = 30, seed: int | None = None) -> Tensor:
        """tr F: ``"exact"`` (sum of :meth:`diag`) or ``"hutchpp"`` (Meyer et al. 2021).

        Hutch++ uses ``num_matvecs`` products and is unbiased; exact costs one diagonal.
        """
        if method == "exact":
            return self.diag().sum()
        if method == "hutchpp":
            value = hutchpp(self._numpy_matvec(), self.space.numel, num_matvecs, self.seed if seed is None else seed)
            return torch.tensor(value, dtype=torch.float64)
        raise MemspaceError(f"unknown trace method {method!r}; use 'exact' or 'hutchpp'")

    def eigh(self, k: int = 1, tol: float = 0.0) -> tuple[Tensor, Tensor]:
        """Top-k eigenpairs by Lanczos (ARPACK ``eigsh`` on a ``LinearOperator``).

        Returns:
            ``(eigenvalues [k] descending, eigenvectors [P, k])`` in float64.
        """
        dim = self.space.numel
        if k >= dim:
            values, vectors = torch.linalg.eigh(self.dense().double())
            order = torch.argsort(values, descending=True)[:k]
            return values[order], vectors[:, order]
        values, vectors = top_eigenpairs(self._numpy_matvec(), dim, k, tol=tol, seed=self.seed)
        return torch.from_numpy(values.copy()), torch.from_numpy(vectors.copy())

    def spectral_density(self, num_probes: int = 8, steps: int = 40, seed: int | None = None) -> SpectralDensity:
        """Stochastic Lanczos quadrature of the spectrum (Ubaru, Chen & Saad 2017).

        Costs ``num_probes × steps`` products; see :class:`SpectralDensity`.
        """
        return stochastic_lanczos_quadrature(
            self._numpy_matvec(), self.space.numel, num_probes, steps,
            self.seed if seed is None else seed,
        )

    def _spectral_sum(self, fn: Callable[[np.ndarray], np.ndarray], method: str, **slq: Any) -> Tensor:
        if method == "auto":
            method = "dense" if self.space.numel <= 3000 else "slq"
        if method == "dense":
            values = torch.linalg.eigvalsh(self.dense().double()).clamp_min(0).cpu().numpy()
            return torch.tensor(float(fn(values).sum()), dtype=torch.float64)
        if method == "slq":
            return torch.tensor(self.spectral_density(**slq).spectral_sum(fn), dtype=torch.float64)
        raise MemspaceError(f"unknown method {method!r}; use 'auto', 'dense' or 'slq'")

    def logdet(self, damping: float, method: str = "auto", **slq: Any) -> Tensor:
        """log det(F + δI) = Σ_i log(λ_i + δ).

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

    def kfac(self) -> Any:
        """The K-FAC approximation of this operator (:class:`~memspace.fisher.kfac.KFAC`)."""
        from .kfac import KFAC

        return KFAC.from_operator(self)

    def ekfac(self) -> Any:
        """The eigenvalue-corrected K-FAC of this operator (:class:`~memspace.fisher.ekfac.EKFAC`)."""
        from .ekfac import EKFAC

        return EKFAC.from_operator(self)


def _format_bytes(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _accumulate_diag(batch: TappedBatch, total: dict[str, Tensor]) -> None:
    """Add Σ_n Σ_k (per-sample gradient)² of every tapped layer to ``total``."""
    fast = [len(tap.inputs) == 1 and not tap.is_conv and tap.inputs[0].dim() == 2 for tap in batch.taps]
    squares: list[Tensor | None] = [None] * len(batch.taps)
    for grads in batch.column_grads():
        for i, (tap, tap_grads) in enumerate(zip(batch.taps, grads)):
            if not tap.inputs:  # the layer did not run: its Fisher is zero
                continue
            if any(g is None for g in tap_grads):
                tap_grads = [torch.zeros_like(o) if g is None else g for g, o in zip(tap_grads, tap.outputs)]
            if fast[i]:
                g2 = tap_grads[0] ** 2
                squares[i] = g2 if squares[i] is None else squares[i] + g2
                continue
            _add_squares(tap, tap_grads, total)
    for i, tap in enumerate(batch.taps):
        if fast[i] and squares[i] is not None:
            if tap.weight_name:
                total[tap.weight_name].addmm_(squares[i].T, tap.inputs[0].square())
            if tap.bias_name:
                total[tap.bias_name] += squares[i].sum(0)


class _ProbeTap:
    """Forward hook of :meth:`FisherOperator._probe_forward` for one tap (see there)."""

    def __init__(self, tap: LayerTap, probes: list[Tensor], complete: Callable[[LayerTap, list[Tensor]], None]):
        self.tap, self.probes, self.complete = tap, probes, complete
        self.grads: dict[int, Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        tap = self.tap
        call = len(tap.inputs)
        tap.inputs.append(args[0].detach().movedim(tap.axis(call), 0))
        probe = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
        self.probes.append(probe)
        result = output + probe
        result.register_hook(lambda grad, call=call: self._arrived(call, grad))
        return result

    def _arrived(self, call: int, grad: Tensor) -> None:
        self.grads[call] = grad
        if len(self.grads) < len(self.tap.inputs):
            return
        grads = [self.grads[c] for c in range(len(self.tap.inputs))]
        self.grads.clear()
        self.complete(self.tap, grads)
        self.tap.clear()  # the inputs go as soon as the layer is done


def _add_squares(tap: LayerTap, grads: list[Tensor], total: dict[str, Tensor]) -> None:
    """Add one column's Σ_n (per-sample gradient)² of one tapped layer to ``total``."""
    if len(grads) == 1 and not tap.is_conv and tap.inputs[0].dim() == 2:
        g2 = grads[0].square()
        if tap.weight_name:
            total[tap.weight_name].addmm_(g2.T, tap.inputs[0].square())
        if tap.bias_name:
            total[tap.bias_name] += g2.sum(0)
        return
    weight_sq, bias_sq = per_sample_square_sums(tap, grads)
    if tap.weight_name:
        total[tap.weight_name] += weight_sq.view_as(total[tap.weight_name])
    if tap.bias_name:
        total[tap.bias_name] += bias_sq


def _keep_sums(tap: LayerTap, grads: list[Tensor], summed: dict[str, Tensor]) -> None:
    """Store the tap's batch-summed weight and bias gradients in ``summed`` (the taps' check)."""
    weight, bias = summed_weight_grads(tap, grads)
    for name, value in ((tap.weight_name, weight), (tap.bias_name, bias)):
        if name:
            summed[name] = value
