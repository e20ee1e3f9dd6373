"""Collectors: one pass over the data that hands each tapped layer's statistics to whoever asks.

The diagonal, K-FAC and EKFAC need, per batch and per output-Fisher column s_k, each tapped
layer's input a and output gradient g_k = ∂(s_kᵀ f)/∂(layer output), never a weight gradient.
A collector streams the data, plans and checks the taps (:class:`TapPlan`) and calls a
:class:`LayerStatistic` layer by layer; the memory mode is chosen once, as the collector's class:

- :class:`FastCollector` (``memory="fast"``): one forward with taps per batch, one backward per
  column to the layers' outputs.
- :class:`LowMemoryCollector` (``memory="low"``): per column a forward in which each tap adds a
  zero probe to its output, and one backward to the probes; a layer's statistic is taken in its
  backward hook and its input freed then, so the peak is about a gradient's.

Both plan the taps on the first batch and verify them (:meth:`Collector.verified_plan`) on its
first :data:`CHECK_SAMPLES` samples, in one small forward and backward of their own: the check is
about which code uses the weights, which a slice of the batch shows as well as all of it, so a
new operator costs little more than one whose plan is cached. Every parameter that no verified
tap covers is listed in the plan's ``fallback`` and gets the exact per-sample treatment of
:mod:`._jacobians` from the caller (never dropped).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.modules.module as module_globals
from torch import Tensor, nn

from .._backprop import grad_along
from .._errors import MemspaceError
from .._model_call import axes_from_shapes
from .._params import shared_parameters
from ._jacobians import PerSampleJacobians
from ._pass import DataPass
from ._rules import rule_for
from ._taps import (
    LayerTap,
    attention_taps,
    check_tap_layout,
    is_tappable,
    per_sample_weight_grads,
    recording,
    summed_weight_grads,
)

__all__ = [
    "CHECK_SAMPLES",
    "Collector",
    "FastCollector",
    "FisherParts",
    "FisherPlan",
    "LayerStatistic",
    "LowMemoryCollector",
    "TapPlan",
    "clear_plan_cache",
    "fisher_parts",
    "make_collector",
]


@dataclass
class TapPlan:
    """Which selected parameters take the layer-tap shortcut, found on the first batch.

    Attributes:
        taps: verified taps (sample axis per call known, parameters owned by the layer
            alone, every use of them inside the layer's calls).
        fallback: selected parameter names handled by exact per-sample Jacobians.
        reasons: for each layer with a parameter in ``fallback``, why: a tap refused by its check,
            or no rule for the layer's type (LayerNorm, embeddings, attention's packed
            in-projection, ...). Those layers have no Kronecker block in K-FAC and EKFAC.
        cached: whether the plan came from the cache of an earlier operator on the same model,
            parameters and input layout (:func:`clear_plan_cache`), not from a check of its own.
    """

    taps: list[LayerTap]
    fallback: list[str]
    reasons: dict[str, str]
    cached: bool = False

    def __repr__(self) -> str:
        return (
            f"TapPlan({len(self.taps)} tapped layers, {len(self.fallback)} parameters on the "
            "exact path"
            + (f", refused: {self.reasons}" if self.reasons else "")
            + (", from the cache" if self.cached else "")
            + ")"
        )


@dataclass(frozen=True)
class FisherPlan:
    """Which path each layer of a Fisher structure takes, and why (``FisherOperator.plan()``).

    Attributes:
        tapped: layer → the rule of its per-layer shortcut (``Linear``, ``Conv2d``, ``Conv1D``):
            the fast diagonal, and a Kronecker block in K-FAC and EKFAC.
        exact: layer → why its parameters take the exact per-sample path (no Kronecker block).
        jacobians: how that exact path computes per-sample Jacobians (vmap, or a per-sample loop
            and the error that sent it there); ``"not needed"`` when every layer is tapped.
        cached: whether the taps' plan came from an earlier operator's check.
    """

    tapped: dict[str, str]
    exact: dict[str, str]
    jacobians: str
    cached: bool = False

    def __str__(self) -> str:
        width = max((len(n) for n in [*self.tapped, *self.exact]), default=5)
        lines = [f"{name:<{width}}  fast ({rule} rule)" for name, rule in self.tapped.items()]
        lines += [f"{name:<{width}}  exact: {why}" for name, why in self.exact.items()]
        lines.append(f"per-sample Jacobians: {self.jacobians}")
        if self.cached:
            lines.append("(the taps' plan was checked by an earlier operator on this model)")
        return "\n".join(lines)


class LayerStatistic(Protocol):
    """What a collector feeds, layer by layer (:mod:`._statistics`)."""

    def column(self, tap: LayerTap, grads: list[Tensor], column: int) -> None:
        """One output-Fisher column's output gradients of ``tap``, one per call."""

    def flush(self, tap: LayerTap) -> None:
        """The layer's columns so far are all given; its inputs are still recorded."""


CHECK_SAMPLES = 16
"""How many samples of the first batch the taps' check runs on (all of them when fewer)."""

_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Verified plans per model, held weakly: ``{model: {fingerprint: (taps, fallback, reasons)}}``."""


def clear_plan_cache() -> None:
    """Forget every cached :class:`TapPlan`: the next operator on any model checks its taps anew."""
    _PLANS.clear()


def _fingerprint(data_pass: DataPass, x: Tensor, memory: str) -> tuple:
    """What a plan depends on, as a key.

    The model's modules (their types, forward functions, modes and hooks), every parameter
    (which tensor, its shape, dtype and device: re-tying or replacing one changes it), the
    selected names, one sample's input shape and dtype, the sample axis and the output selector.
    The weights' values are not part of it: the plan is about which code uses them. A hook
    added or removed (on a module, or global) changes the key: a forward hook that rescales a
    layer's output changes what its weight's gradient is.
    """
    call = data_pass.call
    modules = tuple(
        (name, type(m), type(m).forward, m.__dict__.get("forward"), m.training, _hooks(m))
        for name, m in data_pass.model.named_modules()
    )
    params = tuple(
        (name, id(p), tuple(p.shape), p.dtype, str(p.device))
        for name, p in data_pass.model.named_parameters(remove_duplicate=False)
    )
    sample = call.signature(x)
    output = call.output if isinstance(call.output, (int, str, type(None))) else id(call.output)
    return (
        memory,
        _hooks(module_globals),
        tuple(data_pass.space.names),
        params,
        modules,
        sample,
        call.sample_dim,
        call.positions,
        output,
    )


_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _hooks(owner: Any) -> tuple:
    """The handles of the forward and backward hooks ``owner`` holds, as torch numbered them.

    ``owner`` is a module, or torch's table of global module hooks. Handle numbers are never
    reused, so a hook removed and another added is a new key. torch has no public way to list
    hooks, so the tables are read by name (``_forward_hooks``, …; the globals
    ``_global_forward_hooks``, …).
    """
    tables = []
    for table in _HOOK_TABLES:
        hooks = getattr(owner, table, None)
        if hooks is None:
            hooks = getattr(owner, f"_global{table}", None)
        tables.append(tuple(hooks) if hooks is not None else ())
    return tuple(tables)


class Collector:
    """A pass over the data that plans the taps and feeds a :class:`LayerStatistic` (module doc)."""

    memory = "fast"

    def __init__(self, data_pass: DataPass):
        self.data_pass = data_pass
        self.plan: TapPlan | None = None

    def tap_plan(self) -> TapPlan:
        """The verified :class:`TapPlan` (taken on the first batch, then kept)."""
        if self.plan is None:
            x, y = next(iter(self.data_pass.data))
            self.plan = self.verified_plan(x, y)
        return self.plan

    def collect(self, statistic: LayerStatistic) -> Iterator[tuple[Any, Tensor, list[str], int]]:
        """Feed ``statistic`` every tapped layer's columns.

        Yield (inputs, factors [K, N, ...], fallback names, data points) after each batch, for the
        caller's exact per-sample part and its count.
        """
        raise NotImplementedError

    # ----------------------------------------------------------- planning
    def _candidates(self) -> list[LayerTap]:
        """A tap for every layer a rule covers with a selected parameter (not yet verified)."""
        dp = self.data_pass
        selected = set(dp.space.names)
        taps: list[LayerTap] = []
        attention_projections = set()
        for prefix, module in dp.model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                taps.extend(attention_taps(prefix, module, selected))
                attention_projections.add(id(module.out_proj))
        canonical = {id(p): n for n, p in dp.model.named_parameters()}  # a tied weight's one name
        for _, module in dp.model.named_modules():
            if id(module) in attention_projections or not is_tappable(module):
                continue
            weight, bias = (canonical.get(id(getattr(module, a, None))) for a in ("weight", "bias"))
            weight = weight if weight in selected else None
            bias = bias if getattr(module, "bias", None) is not None and bias in selected else None
            if weight or bias:
                taps.append(LayerTap(module, weight, bias))
        return taps

    def _tied_groups(self, candidates: list[LayerTap], shared: dict[str, list[str]]) -> None:
        """Mark the taps that share one weight, when every place it is registered is one of them.

        Their per-sample gradients are summed before they are squared (:attr:`LayerTap.group`),
        so a tied embedding and output layer both stay on the fast path; their weight has no
        Kronecker block. A weight also registered elsewhere stays refused.
        """
        for name, aliases in shared.items():
            users = [tap for tap in candidates if tap.weight_name == name]
            places = {f"{self.data_pass.module_name(t.module)}.weight" for t in users}
            if len(users) > 1 and places == {name, *aliases}:
                for tap in users:
                    tap.group, tap.group_size = name, len(users)

    def plan_taps(self, x: Tensor) -> tuple[list[LayerTap], dict[str, str]]:
        """Static checks and the sample-axis probe.

        The candidate taps, and why the others were refused.
        """
        dp = self.data_pass
        shared = shared_parameters(dp.model)
        leaves, others = dp.parameters()
        params = {**others, **{n: t.detach() for n, t in leaves.items()}}
        candidates = self._candidates()
        self._tied_groups(candidates, shared)
        axes = self._probe_axes(candidates, params, x)
        kept, reasons = [], {}
        for tap, tap_axes in zip(candidates, axes):
            names = [n for n in (tap.weight_name, tap.bias_name) if n and n != tap.group]
            owners = next((shared[n] for n in names if n in shared), None)
            why = (
                f"its parameter is shared with {', '.join(owners)}"
                if owners
                else check_tap_layout(tap.rule, tap_axes)
            )
            if why:
                reasons[dp.module_name(tap.module)] = why
                continue
            tap.sample_axes = [a for a, _ in tap_axes]
            kept.append(tap)
        return self._whole_groups(kept, reasons), reasons

    def _whole_groups(self, taps: list[LayerTap], reasons: dict[str, str]) -> list[LayerTap]:
        """The taps, less every member of a tied group some other member of which was refused."""
        count: dict[str, int] = {}
        for tap in taps:
            if tap.group is not None:
                count[tap.group] = count.get(tap.group, 0) + 1
        kept = []
        for tap in taps:
            if tap.group is not None and count[tap.group] < tap.group_size:
                reasons[self.data_pass.module_name(tap.module)] = (
                    f"its weight {tap.group} is tied to a use that takes the exact path"
                )
                continue
            kept.append(tap)
        return kept

    def _probe_axes(
        self, taps: list[LayerTap], params: dict[str, Tensor], x: Any
    ) -> list[list[tuple[int | None, int | None]] | None]:
        """Per tap and call, (input, output) sample axes by shape tracing.

        :func:`memspace._model_call.sample_axes_by_probe`'s probe through :func:`recording`, so that
        functional taps are traced like module taps: the model runs on 2 and on 3 copies of one
        sample, and the axis whose size goes from 2 to 3 is the sample axis.
        """
        dp = self.data_pass
        records = []
        for copies in (2, 3):
            seen: list[list[tuple[tuple, tuple]]] = [[] for _ in taps]
            index = {id(tap): i for i, tap in enumerate(taps)}

            def record(tap: LayerTap, inputs: Tensor, output: Tensor) -> None:
                shape = tuple(output.shape) if isinstance(output, Tensor) else ()
                seen[index[id(tap)]].append((tuple(inputs.shape), shape))

            with torch.no_grad(), recording(taps, params, copies, record):
                dp.forward(params, dp.call.repeat_first(x, copies), check=False)
            records.append(seen)
        return [axes_from_shapes(small, large) for small, large in zip(*records)]

    def taps_accounting_for(
        self,
        taps: list[LayerTap],
        leaves: dict[str, Tensor],
        direct: dict[str, Tensor | None],
        summed: dict[str, Tensor],
        reasons: dict[str, str],
    ) -> list[LayerTap]:
        """The taps whose batch-summed gradients are autograd's for every parameter they cover.

        ``summed`` holds the taps' view, ``direct`` autograd's; a tap that differs gets its reason
        in ``reasons``. Per parameter, they agree when

            ‖direct − summed‖ ≤ √ε · max(‖direct‖, ‖summed‖) + 64 ε · s_layer,

        with s_layer the largest of those norms over the layer's parameters. The second term is
        the round-off of the layer's own gradient: a parameter whose gradient is zero in exact
        arithmetic (a key projection's bias, by the softmax's shift invariance) gives two
        round-offs that agree with nothing else, and is not a use outside the layer's calls.
        """
        index: dict[str, tuple[int, float]] = {}  # name → (where its norms are, its dtype's ε)
        norms: list[Tensor] = []  # per parameter: ‖direct‖, ‖summed‖, ‖direct − summed‖
        overwritten: set[int] = set()
        for tap in taps:
            for name in (tap.weight_name, tap.bias_name):
                if not name or name in index:
                    continue
                ref = direct.get(name)
                mine = summed.get(name)
                ref = torch.zeros_like(leaves[name]) if ref is None else ref
                mine = torch.zeros_like(ref) if mine is None else mine.reshape(ref.shape)
                index[name] = (len(norms), torch.finfo(ref.dtype).eps)
                # autograd's gradient is ours to overwrite, so the difference needs no new tensor,
                # unless autograd handed one tensor to two parameters (``x + p1 + p2``)
                if ref.untyped_storage().data_ptr() in overwritten:
                    ref = ref.clone()
                overwritten.add(ref.untyped_storage().data_ptr())
                norms += [ref.norm(), mine.norm(), ref.sub_(mine).norm()]
        values = _as_floats(norms)
        triples = [[index[n] for n in (t.weight_name, t.bias_name) if n] for t in taps]
        kept = []
        for tap, entries in zip(taps, triples):
            layer_scale = max((max(values[i], values[i + 1]) for i, _ in entries), default=0.0)
            good = True
            for i, eps in entries:
                bound = eps**0.5 * max(values[i], values[i + 1]) + 64 * eps * layer_scale + 1e-30
                good &= values[i + 2] <= bound
            if good:
                kept.append(tap)
            else:
                reasons[self.data_pass.module_name(tap.module)] = (
                    "its parameters are used outside its own calls (a functional use such as "
                    "attention's, or a tied layer)"
                )
        return kept

    def make_plan(self, taps: list[LayerTap], reasons: dict[str, str], x: Tensor) -> TapPlan:
        """The plan of the verified ``taps``, remembered for later operators.

        Every selected parameter they do not cover is a fallback. The plan is cached for the
        same model and input layout (:func:`_fingerprint`).
        """
        covered = {n for tap in taps for n in (tap.weight_name, tap.bias_name) if n}
        fallback = [n for n in self.data_pass.space.names if n not in covered]
        reasons.update(_uncovered_reasons(self.data_pass.model, fallback, reasons))
        plan = TapPlan(taps, fallback, reasons)
        self._check_plans_agree(plan)
        names = {id(m): n for n, m in self.data_pass.model.named_modules()}
        specs = [
            (
                names[id(t.module)],
                t.weight_name,
                t.bias_name,
                list(t.sample_axes or []),
                t.functional,
                t.rows,
                t.packed,
                t.group,
                t.group_size,
            )
            for t in taps
        ]
        _PLANS.setdefault(self.data_pass.model, {})[
            _fingerprint(self.data_pass, x, self.memory)
        ] = (specs, list(plan.fallback), dict(reasons))
        return plan

    def verified_plan(self, x: Tensor, y: Tensor) -> TapPlan:
        """The plan of the first batch ``(x, y)``: from the cache, or planned and checked anew.

        The check runs on the batch's first :data:`CHECK_SAMPLES` samples. One seeded random
        combination r of their output-Fisher columns is back-propagated once, to the parameters
        (autograd, every use) and, through zero probes on the taps' outputs, to the layers,
        whose batch-summed weight gradients Σ_n g_n a_nᵀ a hook forms as they arrive
        (:meth:`taps_accounting_for` compares the two). A parameter also used outside its
        module's calls (attention's functional form, a tied layer) makes them differ.
        """
        cached = self.cached_plan(x)
        if cached is not None:
            return cached
        dp = self.data_pass
        taps, reasons = self.plan_taps(x)
        names = [n for tap in taps for n in (tap.weight_name, tap.bias_name) if n]
        if not names:
            return self.make_plan(taps, reasons, x)
        head = slice(0, min(dp.call.num_samples(x), CHECK_SAMPLES))
        leaves, others = dp.parameters()
        summed: dict[str, Tensor] = {}
        outputs, probes = self.probe_forward(
            dp.call.take(x, head),
            {**others, **leaves},
            taps,
            lambda tap, grads: _keep_sums(tap, grads, summed),
        )
        y_head = None if y is None else y[head]
        r = dp.random_column_mix(dp.factors(outputs.detach(), y_head, 0, dp.call.take(x, head)))
        grads = grad_along(outputs, [leaves[n] for n in names] + probes, r, allow_unused=True)
        direct = dict(zip(names, grads[: len(names)]))
        del outputs, probes, grads
        for tap in taps:
            tap.clear()
        kept = self.taps_accounting_for(taps, leaves, direct, summed, reasons)
        kept = self._rows_split_checked(kept, dp.call.take(x, head), r, reasons)
        return self.make_plan(self._whole_groups(kept, reasons), reasons, x)

    def _rows_split_checked(
        self, taps: list[LayerTap], x: Any, r: Tensor, reasons: dict[str, str]
    ) -> list[LayerTap]:
        """The taps, less rows taps whose split of the rows into samples is not the model's.

        A rows tap (:attr:`LayerTap.rows`) assumes its call's rows [T·N] are time-major. A batch
        sum cannot see which row belongs to which sample, so the first sample alone is
        back-propagated (the column mix ``r`` [N, ...] zeroed elsewhere): autograd's gradient is
        then that sample's, and the tap's own per-sample gradient of its sample 0 must equal it.
        """
        rows = [tap for tap in taps if tap.rows]
        if not rows:
            return taps
        dp = self.data_pass
        leaves, others = dp.parameters()
        first = torch.zeros_like(r)
        first[0] = r[0]
        mine: dict[str, Tensor] = {}

        def keep_first(tap: LayerTap, grads: list[Tensor]) -> None:
            weight, bias = per_sample_weight_grads(tap, grads)
            if tap.weight_name:
                mine[tap.weight_name] = tap.rule.weight_from_rows(weight[0], tap.weight.shape)
            if tap.bias_name:
                mine[tap.bias_name] = bias[0]

        outputs, probes = self.probe_forward(x, {**others, **leaves}, rows, keep_first)
        names = [n for tap in rows for n in (tap.weight_name, tap.bias_name) if n]
        grads = grad_along(outputs, [leaves[n] for n in names] + probes, first, allow_unused=True)
        direct = dict(zip(names, grads[: len(names)]))
        for tap in rows:
            tap.clear()
        split = self.taps_accounting_for(rows, leaves, direct, mine, {})
        for tap in rows:
            if tap not in split:
                reasons[dp.module_name(tap.module)] = (
                    "its rows [T·N, I] are not split into samples time-major, as torch's "
                    "attention does"
                )
        return [tap for tap in taps if not tap.rows or tap in split]

    def cached_plan(self, x: Tensor) -> TapPlan | None:
        """The plan an earlier operator verified for this model and input layout, or None."""
        entry = _PLANS.get(self.data_pass.model, {}).get(
            _fingerprint(self.data_pass, x, self.memory)
        )
        if entry is None:
            return None
        specs, fallback, reasons = entry
        modules = dict(self.data_pass.model.named_modules())
        taps = [
            LayerTap(
                modules[name],
                weight,
                bias,
                list(axes),
                functional=functional,
                rows=rows,
                packed=packed,
                group=group,
                group_size=group_size,
            )
            for name, weight, bias, axes, functional, rows, packed, group, group_size in specs
        ]
        plan = TapPlan(taps, list(fallback), dict(reasons), cached=True)
        self._check_plans_agree(plan)
        return plan

    def _check_plans_agree(self, plan: TapPlan) -> None:
        """With sharded data every rank must tap the same layers.

        Or the reductions would pair unlike sums.
        """
        dp = self.data_pass
        collective = dp.collective
        if not collective.active:
            return
        mine = torch.tensor(
            [float(dp.space.numel), float(len(plan.taps)), float(len(plan.fallback))],
            dtype=torch.float64,
        )
        total = dp.reduce(mine.clone())
        if not torch.equal(total, mine * collective.world):
            raise MemspaceError(
                f"rank {collective.rank}: the ranks disagree on the parameters or the layer taps "
                "(this rank: "
                f"{int(mine[0])} parameters, {int(mine[1])} taps, {len(plan.fallback)} on the "
                "exact path; "
                f"sums over ranks {total.tolist()}): give every rank the same model and params="
            )

    def probe_forward(
        self,
        x: Tensor,
        params: dict[str, Tensor],
        taps: list[LayerTap],
        complete: Callable[[LayerTap, list[Tensor]], None],
        keep_inputs: bool = False,
        hooks: list | None = None,
        on_input: Callable[[LayerTap, int], bool] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """A forward in which each tap keeps its layer's input and adds a zero probe to its output.

        Returns (outputs, probes). A backward to the probes (no parameter needs to require a
        gradient) calls ``complete(tap, output gradients per call)`` as soon as a layer's gradients
        have all arrived, then frees that layer's inputs (unless ``keep_inputs``: for several
        backward passes): activations go as the backward proceeds. ``hooks``, if given, receives
        the taps' probe hooks (their ``finish()`` completes a layer whose outputs did not all
        reach the loss). ``on_input(tap, call)``, if given, sees each call's input as it is
        recorded; when it returns True the input is dropped (a placeholder [N, 0] keeps the count).
        """
        probes: list[Tensor] = []
        probe_taps = {
            id(tap): _ProbeTap(tap, probes, complete, keep_inputs, on_input) for tap in taps
        }
        if hooks is not None:
            hooks.extend(probe_taps.values())
        for tap in taps:
            tap.clear()
        num = self.data_pass.call.num_samples(x)
        with recording(taps, params, num, lambda tap, a, out: probe_taps[id(tap)](a, out)):
            outputs = self.data_pass.forward(params, x)
        return outputs, probes


class FastCollector(Collector):
    """``memory="fast"``: one tapped forward per batch, one backward per output-Fisher column."""

    memory = "fast"

    def collect(self, statistic: LayerStatistic) -> Iterator[tuple[Any, Tensor, list[str], int]]:
        """One tapped forward per batch, then one backward per output-Fisher column.

        Each layer's output gradients are handed to ``statistic`` in a hook as they arrive and
        dropped, so the backward never holds every layer's at once (a gradient's worth of
        activations more, for a ResNet); the backward goes to zero probes on the layers' outputs, so
        no weight gradient is formed.

        Raises:
            MemspaceError: when a later batch runs a tapped layer differently from the
                first (another number of calls, or no sample axis of the batch's size).
        """
        dp = self.data_pass
        others = {n: p.detach() for n, p in dp.model.named_parameters()}
        for index, (x, y) in enumerate(dp.data):
            if self.plan is None:
                self.plan = self.verified_plan(x, y)
            taps = self.plan.taps
            column = [0]
            hooks: list[_ProbeTap] = []
            outputs, probes = self.probe_forward(
                x,
                others,
                taps,
                lambda tap, grads: statistic.column(tap, grads, column[0]),
                keep_inputs=True,
                hooks=hooks,
                on_input=getattr(statistic, "forward", None),
            )
            self._check_calls(taps, dp.call.num_samples(x), index)
            factors = dp.factors(outputs.detach(), y, index, x)
            units = dp.units(x, y, outputs)
            for k in range(factors.shape[0] if probes else 0):
                column[0] = k
                grad_along(
                    outputs,
                    probes,
                    factors[k],
                    retain_graph=k < factors.shape[0] - 1,
                    allow_unused=True,
                )
                for hook in hooks:
                    hook.finish()
            del outputs, probes
            for tap in taps:
                if tap.inputs:  # a layer that did not run has zero Fisher
                    statistic.flush(tap)
                tap.clear()
            yield x, factors, self.plan.fallback, units

    def _check_calls(self, taps: list[LayerTap], num: int, index: int) -> None:
        """Raise if a tapped layer ran unlike in the first batch (see :meth:`collect`)."""
        for tap in taps:
            expected = len(tap.sample_axes or [])
            if len(tap.inputs) != expected or any(a.shape[0] != num for a in tap.inputs):
                raise MemspaceError(
                    f"layer {self.data_pass.module_name(tap.module)} ran {len(tap.inputs)} "
                    f"time(s) in batch {index} with "
                    f"inputs {[tuple(a.shape) for a in tap.inputs]} (sample axis first), "
                    "unlike the first batch "
                    f"({expected} call(s)); its per-sample shortcut does not apply: pass "
                    "params= without it"
                )


class LowMemoryCollector(Collector):
    """``memory="low"``: K probe forwards per batch.

    Each with one backward (a gradient's memory).
    """

    memory = "low"

    def probe_columns(
        self,
        complete: Callable[[LayerTap, list[Tensor], int], None],
        on_input: Callable[[LayerTap, int], bool] | None = None,
        after_batch: Callable[[LayerTap], None] | None = None,
    ) -> Iterator[tuple[Any, Tensor, int]]:
        """Per batch and output-Fisher column s_k.

        A probe forward and one backward of s_kᵀf to the probes, with ``complete(tap, grads, k)``
        called layer by layer. Yields (inputs, factors [K, N, ...], data points) after each
        batch. K columns cost K forwards (the fast path: one forward, K backwards). ``on_input``
        sees the inputs of the batch's first forward (:meth:`probe_forward`); ``after_batch(tap)``
        runs for every tap at the end of each batch.
        """
        dp = self.data_pass
        plan = self.tap_plan()
        others = {n: p.detach() for n, p in dp.model.named_parameters()}
        for index, (x, y) in enumerate(dp.data):
            factors = None
            units = 0
            column = 0
            while factors is None or column < factors.shape[0]:
                outputs, probes = self.probe_forward(
                    x,
                    others,
                    plan.taps,
                    lambda tap, grads, k=column: complete(tap, grads, k),
                    on_input=on_input if column == 0 else None,
                )
                if factors is None:
                    factors = dp.factors(outputs.detach(), y, index, x)
                    units = dp.units(x, y, outputs)
                if probes:
                    grad_along(outputs, probes, factors[column], allow_unused=True)
                del outputs, probes
                column += 1
            for tap in plan.taps:
                if after_batch is not None:
                    after_batch(tap)
                tap.clear()
            yield x, factors, units

    def collect(self, statistic: LayerStatistic) -> Iterator[tuple[Any, Tensor, list[str], int]]:
        plan = self.tap_plan()

        def complete(tap: LayerTap, grads: list[Tensor], column: int) -> None:
            statistic.column(tap, grads, column)
            if tap.group is None:  # a tied group is flushed when the batch ends
                statistic.flush(tap)  # the inputs go when the hook returns

        on_input = getattr(statistic, "forward", None)
        for x, factors, units in self.probe_columns(complete, on_input, statistic.flush):
            yield x, factors, plan.fallback, units


def make_collector(memory: str, data_pass: DataPass) -> Collector:
    """The collector of a memory mode: ``"fast"`` or ``"low"``.

    Raises:
        MemspaceError: for another mode.
    """
    collectors = {"fast": FastCollector, "low": LowMemoryCollector}
    if memory not in collectors:
        raise MemspaceError(f"memory must be 'fast' or 'low', got {memory!r}")
    return collectors[memory](data_pass)


class FisherParts(NamedTuple):
    """What every Fisher structure holds.

    The data pass, its collector and its exact per-sample Jacobians.
    """

    data_pass: DataPass
    collector: Collector
    jacobians: PerSampleJacobians


def fisher_parts(
    model: nn.Module, data: Any, *, memory: str = "fast", **pass_options: Any
) -> FisherParts:
    """The parts of a Fisher structure on ``model`` and ``data`` (options: :class:`DataPass`'s)."""
    data_pass = DataPass(model, data, **pass_options)
    return FisherParts(data_pass, make_collector(memory, data_pass), PerSampleJacobians(data_pass))


class _ProbeTap:
    """Forward hook of :meth:`Collector.probe_forward` for one tap (see there)."""

    def __init__(
        self,
        tap: LayerTap,
        probes: list[Tensor],
        complete: Callable[[LayerTap, list[Tensor]], None],
        keep_inputs: bool = False,
        on_input: Callable[[LayerTap, int], bool] | None = None,
    ):
        self.tap, self.probes, self.complete = tap, probes, complete
        self.keep_inputs, self.on_input = keep_inputs, on_input
        self.grads: dict[int, Tensor] = {}
        self.outputs: list[tuple[torch.Size, torch.dtype, torch.device]] = []

    def __call__(self, inputs: Tensor, output: Tensor) -> Tensor:
        tap = self.tap
        call = len(tap.inputs)
        tap.inputs.append(inputs.detach().movedim(tap.axis(call), 0))
        if self.on_input is not None and self.on_input(tap, call):  # done with it: let it go
            tap.inputs[call] = tap.inputs[call].new_empty(tap.inputs[call].shape[0], 0)
        self.outputs.append((output.shape, output.dtype, output.device))
        probe = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
        self.probes.append(probe)
        result = output + probe
        result.register_hook(lambda grad, call=call: self._arrived(call, grad))
        return result

    def _arrived(self, call: int, grad: Tensor) -> None:
        self.grads[call] = grad
        if len(self.grads) == len(self.tap.inputs):
            self._complete()

    def _complete(self) -> None:
        grads = [self.grads[c] for c in range(len(self.tap.inputs))]
        self.grads.clear()
        self.complete(self.tap, grads)
        if not self.keep_inputs:
            self.tap.clear()  # the inputs go as soon as the layer is done

    def finish(self) -> None:
        """Complete a layer some of whose calls got no gradient in the last backward.

        (An output that does not reach the loss.) Zeros stand in for the missing gradients.
        """
        if self.grads:
            for call, (shape, dtype, device) in enumerate(self.outputs):
                if call not in self.grads:
                    self.grads[call] = torch.zeros(shape, dtype=dtype, device=device)
            self._complete()


def _uncovered_reasons(
    model: nn.Module, fallback: list[str], known: dict[str, str]
) -> dict[str, str]:
    """Why each module owning a ``fallback`` parameter has no tap, where ``known`` does not say.

    The owner is the module whose qualified name is the parameter's prefix (``<root>`` for a
    parameter of the model itself).
    """
    modules = dict(model.named_modules())
    reasons: dict[str, str] = {}
    for name in fallback:
        prefix, _, attr = name.rpartition(".")
        label = prefix or "<root>"
        if label in known or label in reasons:
            continue
        module = modules.get(prefix)
        rule = rule_for(module) if module is not None else None
        refusal = rule.refuses(module) if rule is not None else None
        if refusal:
            reasons[label] = f"{refusal}: its rule does not cover it (exact per-sample path)"
        elif rule is not None:
            reasons[label] = f"{attr!r} is not a weight or bias its rule covers (exact path)"
        else:
            kind = type(module).__name__ if module is not None else "a parameter"
            reasons[label] = f"no layer rule for {kind} (exact per-sample path, no Kronecker block)"
    return reasons


def _as_floats(scalars: list[Tensor]) -> list[float]:
    """0-d tensors as floats, in one transfer where they share a device and dtype."""
    if len({(t.device, t.dtype) for t in scalars}) == 1:
        return torch.stack(scalars).tolist()
    return [float(t) for t in scalars]


def _keep_sums(tap: LayerTap, grads: list[Tensor], summed: dict[str, Tensor]) -> None:
    """Store the tap's batch-summed weight and bias gradients in ``summed`` (the taps' check)."""
    weight, bias = summed_weight_grads(tap, grads)
    for name, value in (
        (tap.weight_name, tap.rule.weight_from_rows(weight, tap.weight.shape)),
        (tap.bias_name, bias),
    ):
        if name:  # a tied weight's taps add up
            summed[name] = value if name not in summed else summed[name] + value
