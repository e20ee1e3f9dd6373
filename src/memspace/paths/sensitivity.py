"""Block sensitivity: how much deleting each block changes the prediction (docs/theory.md §3.2).

For blocks x_{l+1} = x_l + h·v_l(x_l) and J_{l+1} = ∂logits/∂x_{l+1}, the Jacobian *after*
the block:

    s_l² = E_x[(J_{l+1} h v_l)ᵀ Λ(p) (J_{l+1} h v_l)] / h²,

so that h²s_l²/2 is, to first order, E KL(p ‖ p without block l) (the output Fisher is the
Hessian of the KL). The measured deletion KL is reported beside it. Written with the
columns s_k of Λ (Λ = Σ_k s_k s_kᵀ): s_l² = E Σ_k ⟨g_{l+1,k}, v_l⟩², g = ∂(s_kᵀ f)/∂x_{l+1},
all blocks from one backward of the C − 1 columns.

This is a robustness diagnostic, not an action. The pulled-back metric J_{l+1}ᵀΛJ_{l+1}
has rank ≤ C−1 and changes with depth, so "h Σ s_l²" has no positive floor:
re-optimising the blocks with the end map held drives it down by orders of magnitude by
moving the stream in its null space (and, with J at the block's input, by letting the
block's own Jacobian cancel its displacement). memspace never straightens it and never
calls it a length or an action; the path's action is the predictive one
(:mod:`memspace.paths.predictive`).

Also here, from the same forward: the Euclidean speeds √E‖v_l‖² (the kinetic action
h Σ E‖v_l‖² of Finlay et al. 2020, coordinate-dependent), and tr G at every state,
G = E J_lᵀ Λ J_l (the sensitivity of the boundary maps at x_0 and x_L).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import MemspaceError
from .._model_call import ModelCall, OutputSelector, derivative_kernels, sample_axes_by_probe
from .._params import check_eval_mode
from .._stream import as_batch_stream
from ..distributed import Collective
from ..fisher.likelihood import FisherKind, Likelihood, output_sqrt_factors
from .adapter import ResidualPath

__all__ = ["BlockSensitivity", "block_sensitivity", "stream_sample_axis"]


@dataclass
class BlockSensitivity:
    """Per-block sensitivities and the measured effect of deleting each block.

    Attributes:
        sensitivity: s_l, [L].
        linearised_kl: h² s_l² / 2, the first-order deletion KL, [L].
        deletion_kl: E KL(p ‖ p with block l skipped), measured, [L].
        euclidean_speeds: √E‖v_l‖², [L].
        metric_trace: tr G at x_0 … x_L, [L+1].
        step: h; num_data: N.
    """

    sensitivity: np.ndarray
    linearised_kl: np.ndarray
    deletion_kl: np.ndarray
    euclidean_speeds: np.ndarray
    metric_trace: np.ndarray
    step: float
    num_data: int

    @property
    def kinetic_action(self) -> float:
        """H Σ_l E‖v_l‖² (Euclidean baseline, not invariant under reparametrising the stream)."""
        return float(self.step * (self.euclidean_speeds**2).sum())

    @property
    def boundary(self) -> dict[str, float]:
        """Tr G at the stem's output x_0 and at the read-out's input x_L."""
        return {
            "stem_output": float(self.metric_trace[0]),
            "head_input": float(self.metric_trace[-1]),
        }

    def __repr__(self) -> str:
        worst = int(np.argmax(self.deletion_kl)) if len(self.deletion_kl) else -1
        return (
            f"BlockSensitivity(L={len(self.sensitivity)}, max "
            f"s_l={float(np.max(self.sensitivity, initial=0)):.4g}, "
            f"largest deletion KL={float(np.max(self.deletion_kl, initial=0)):.4g} (block "
            f"{worst + 1}), "
            f"kinetic action={self.kinetic_action:.4g}, N={self.num_data})"
        )

    def _repr_html_(self) -> str:
        from ..report.notebook import key_value_table

        rows = [
            (f"block {l + 1}: s_l, deletion KL", f"{s:.4g}, {kl:.4g}", "s")
            for l, (s, kl) in enumerate(zip(self.sensitivity, self.deletion_kl))
        ]
        return key_value_table(
            "block sensitivity",
            [
                *rows,
                ("kinetic action", self.kinetic_action, ".4g"),
                ("points N", self.num_data, "d"),
            ],
        )

    def plot(self, ax: Any = None) -> Any:
        """The report's figure: s_l.

        The deletion KL (linearised and measured) and the Euclidean speeds.

        Args:
            ax: three matplotlib axes (default: a new figure).

        Returns:
            The matplotlib figure.
        """
        from types import SimpleNamespace

        from ..report import figures

        return figures.sensitivity(
            {"network": {"measures": SimpleNamespace(sensitivity=self.as_dict())}}, axes=ax
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "sensitivity": self.sensitivity.tolist(),
            "linearised_kl": self.linearised_kl.tolist(),
            "deletion_kl": self.deletion_kl.tolist(),
            "euclidean_speeds": self.euclidean_speeds.tolist(),
            "kinetic_action": self.kinetic_action,
            "metric_trace": self.metric_trace.tolist(),
            "boundary": self.boundary,
            "step": self.step,
            "num_data": self.num_data,
        }


def stream_sample_axis(model: nn.Module, path: ResidualPath, x: Tensor, call: ModelCall) -> int:
    """The axis of the residual stream that indexes data points, found by shape tracing.

    Raises:
        MemspaceError: naming the first block whose input has no such axis, or when
            blocks disagree.
    """
    with derivative_kernels(model):
        axes = sample_axes_by_probe(model, x, call, path.blocks)
    found = set()
    for name, entry in zip(path.block_names, axes):
        if not entry or entry[0][0] is None:
            raise MemspaceError(
                f"residual block {name}: no axis of its input indexes data points "
                "(per-sample quantities of the stream need one)"
            )
        found.add(entry[0][0])
    if len(found) != 1:
        raise MemspaceError(
            f"the residual blocks disagree on the stream's sample axis ({sorted(found)})"
        )
    return found.pop()


def _per_sample(t: Tensor, axis: int) -> Tensor:
    """[.., N at ``axis``, ..] → [N, rest]."""
    return t.movedim(axis, 0).flatten(1)


def _column_grads(logits: Tensor, states: list[Tensor], factors: Tensor) -> list[Tensor]:
    """∂(s_kᵀ f)/∂x_l for every column k and state l, each [K, *state]."""
    try:
        grads = torch.autograd.grad(
            logits, states, factors, is_grads_batched=True, allow_unused=True, retain_graph=True
        )
    except (
        RuntimeError,
        NotImplementedError,
    ):  # a layer without a batching rule: one column at a time
        columns = [
            torch.autograd.grad(logits, states, factors[k], allow_unused=True, retain_graph=True)
            for k in range(factors.shape[0])
        ]
        grads = [None if col[0] is None else torch.stack(col) for col in zip(*columns)]
    return [
        torch.zeros((factors.shape[0], *s.shape), dtype=s.dtype, device=s.device)
        if g is None
        else g
        for g, s in zip(grads, states)
    ]


def block_sensitivity(
    model: nn.Module,
    data: Any,
    *,
    block_names: Sequence[str] | None = None,
    likelihood: str = "classification",
    batch_size: int = 256,
    sample_dim: int = 0,
    output: OutputSelector = None,
    deletion: bool = True,
    distributed: bool = False,
) -> BlockSensitivity:
    """Block sensitivities with the true output Fisher, and the measured deletion KL (module doc).

    Args:
        model: a memspace residual model, or any model with ``block_names``.
        data: DataLoader, iterable of ``(x, y)`` or an ``(X, y)`` pair; streamed.
        likelihood: ``"classification"`` or ``"regression"`` (unit-variance Gaussian;
            the deletion "KL" is then ½ E‖Δf‖²).
        block_names: the residual blocks of a model that is not a memspace residual model.
        batch_size: rows per batch for an ``(X, y)`` pair.
        sample_dim: the axis of the inputs that indexes data points
            (see :class:`~memspace.FisherOperator`).
        output: how to find the outputs in what the model returns.
        deletion: also measure the deletion KL (L extra forwards per batch).
        distributed: each rank streams its shard; sums and counts are all-reduced
            (:mod:`memspace.distributed`).
    """
    collective = Collective(distributed, "block sensitivity")
    with collective.guard():
        return _block_sensitivity(
            model,
            data,
            block_names,
            likelihood,
            batch_size,
            sample_dim,
            output,
            deletion,
            collective,
        )


def _block_sensitivity(
    model,
    data,
    block_names,
    likelihood,
    batch_size,
    sample_dim,
    output,
    deletion,
    collective: Collective,
) -> BlockSensitivity:
    lik = Likelihood.parse(likelihood)
    check_eval_mode(model)
    path = ResidualPath(model, block_names)
    call = ModelCall(sample_dim, output)
    first = next(model.parameters())
    stream = as_batch_stream(
        data, device=first.device, dtype=first.dtype, batch_size=batch_size, sample_dim=sample_dim
    )
    depth, step = path.depth, float(path.step)
    sens = torch.zeros(depth, dtype=torch.float64)
    euclid = torch.zeros(depth, dtype=torch.float64)
    trace = torch.zeros(depth + 1, dtype=torch.float64)
    deleted = torch.zeros(depth, dtype=torch.float64)
    axis, count = None, 0
    for index, (x, y) in enumerate(stream):
        num = call.num_samples(x)
        if axis is None:
            axis = stream_sample_axis(model, path, x, call)
        with (
            torch.enable_grad(),
            derivative_kernels(model),
            path.capture(leaf_input=True) as record,
        ):
            logits = call.outputs(model(x), num, f"batch {index}")
        states = path.states(record)
        factors = output_sqrt_factors(logits.detach(), y, lik, FisherKind.TRUE)
        with derivative_kernels(model):
            grads = _column_grads(logits, states, factors)
        velocities = [(b - a).detach() / step for a, b in zip(states[:-1], states[1:])]
        for l, v in enumerate(velocities):
            g = grads[l + 1].movedim(axis + 1, 1).flatten(2)  # [K, N, rest]
            sens[l] += float(
                torch.einsum("knr,nr->kn", g.double(), _per_sample(v, axis).double()).pow(2).sum()
            )
            euclid[l] += float(_per_sample(v, axis).double().pow(2).sum())
        for l, g in enumerate(grads):
            trace[l] += float(g.double().pow(2).sum())
        if deletion:
            deleted += _deletion_kl(model, path, x, logits.detach(), lik, call, index)
        count += num
    reduced = collective.reduce(
        torch.cat([sens, euclid, trace, deleted, torch.tensor([float(count)], dtype=torch.float64)])
    )
    sens, euclid, trace, deleted = reduced[:-1].split([depth, depth, depth + 1, depth])
    count = int(reduced[-1])
    sensitivity = (sens / count).sqrt().numpy()
    return BlockSensitivity(
        sensitivity=sensitivity,
        linearised_kl=step**2 * sensitivity**2 / 2,
        deletion_kl=(deleted / count).numpy() if deletion else np.full(depth, np.nan),
        euclidean_speeds=(euclid / count).sqrt().numpy(),
        metric_trace=(trace / count).numpy(),
        step=step,
        num_data=count,
    )


def _deletion_kl(
    model,
    path: ResidualPath,
    x: Tensor,
    logits: Tensor,
    lik: Likelihood,
    call: ModelCall,
    index: int,
) -> Tensor:
    """Σ_n KL(p_n ‖ p_n with block l skipped) for every block, [L]."""
    out = torch.zeros(path.depth, dtype=torch.float64)
    logp = logits.log_softmax(1) if lik is Likelihood.CLASSIFICATION else None
    for l, block in enumerate(path.blocks):
        handle = block.register_forward_hook(lambda module, args, output: args[0])
        try:
            with torch.no_grad(), derivative_kernels(model):
                other = call.outputs(model(x), logits.shape[0], f"batch {index}")
        finally:
            handle.remove()
        if lik is Likelihood.CLASSIFICATION:
            logq = other.log_softmax(1)
            out[l] = float((logp.exp() * (logp - logq)).sum().double())
        else:
            out[l] = float(0.5 * (other - logits).double().pow(2).sum())
    return out
