"""The path profile: Fisher speeds, action and length over depth (THEORY.md §3).

For blocks x_{l+1} = x_l + h v_l(x_l):

- Fisher speed s_l² = E_x[(J_l v_l)ᵀ Λ(p) (J_l v_l)], J_l = ∂logits/∂x_l: the output
  Fisher pulled back to the residual stream. Written with the columns s_k of Λ̂
  (Λ̂ = Σ_k s_k s_kᵀ): s_l² = E_x Σ_k ⟨g_lk, v_l⟩², g_lk = ∂(s_kᵀ f)/∂x_l.
- All blocks at once: back-propagating the columns s_k (C exact, M Monte-Carlo) gives
  g_lk at every block — K columns batched into one vmapped backward through the blocks
  and head, without weight gradients. Flat in L relative to a gradient; no per-block
  forward passes.
- Action A = h Σ s_l², length C = h Σ s_l, and C² ≤ A (Cauchy–Schwarz, hL = 1), with
  equality iff the speed is constant; the gap A − C² is reported.
- Euclidean speed: E‖v_l‖² (the kinetic baseline of Finlay et al. 2020).
- Metric sensitivity at the boundary maps: tr G at the stem's output x_0 and at the
  head's input x_L, G = E_x J_lᵀ Λ J_l (also given at every block input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fisher._data import as_batch_stream
from ..fisher._params import check_eval_mode
from ..fisher.likelihood import FisherKind, Likelihood, check_outputs, output_sqrt_factors
from .adapter import ResidualPath

__all__ = ["PathProfile", "action_and_length", "path_profile", "pointwise_speeds"]


def action_and_length(speeds: Sequence[float] | np.ndarray, step: float) -> tuple[float, float]:
    """(A, C) = (h Σ s_l², h Σ s_l) for per-block speeds s_l ≥ 0."""
    s = np.asarray(speeds, dtype=np.float64)
    return float(step * (s**2).sum()), float(step * s.sum())


@dataclass
class PathProfile:
    """Per-block speeds and the action/length of a path.

    Attributes:
        metric: ``"fisher"`` or ``"euclidean"``: which speeds define action and length.
        speeds: s_l for the chosen metric, [L].
        euclidean_speeds: sqrt(E‖v_l‖²), [L] (always computed: it is free).
        fisher_speeds: Fisher speeds [L], or None for the Euclidean metric.
        metric_trace: tr G at each block input and at the last output, [L+1] (Fisher only).
        step: h.
        num_data: N.
    """

    metric: str
    speeds: np.ndarray
    euclidean_speeds: np.ndarray
    fisher_speeds: np.ndarray | None
    metric_trace: np.ndarray | None
    step: float
    num_data: int
    kind: str = "true"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> float:
        return action_and_length(self.speeds, self.step)[0]

    @property
    def length(self) -> float:
        return action_and_length(self.speeds, self.step)[1]

    @property
    def gap(self) -> float:
        """A − C² ≥ 0; zero iff the speed is constant over depth."""
        return self.action - self.length**2

    @property
    def boundary(self) -> dict[str, float]:
        """Fisher sensitivity of the boundary maps: tr G at x_0 (stem out) and x_L (head in)."""
        if self.metric_trace is None:
            return {}
        return {"stem_output": float(self.metric_trace[0]), "head_input": float(self.metric_trace[-1])}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        out = {
            "metric": self.metric, "kind": self.kind, "step": self.step, "num_data": self.num_data,
            "speeds": self.speeds.tolist(), "euclidean_speeds": self.euclidean_speeds.tolist(),
            "action": self.action, "length": self.length, "gap": self.gap, "boundary": self.boundary,
        }
        if self.fisher_speeds is not None:
            out["fisher_speeds"] = self.fisher_speeds.tolist()
            out["metric_trace"] = self.metric_trace.tolist()
        return out


@dataclass
class _BatchTerms:
    """Per-sample contributions of one batch: ‖v_l‖² [N, L], Σ_k⟨g_lk, v_l⟩² [N, L],
    Σ_k‖g_lk‖² [N, L+1] (the last two None for the Euclidean metric), states x_0..x_L."""

    euclidean: torch.Tensor
    fisher: torch.Tensor | None
    trace: torch.Tensor | None
    states: list[torch.Tensor]


def _batch_terms(model, path: ResidualPath, x, y, index: int, *, fisher: bool, kind: FisherKind,
                 likelihood: Likelihood, mc_samples: int, seed: int) -> _BatchTerms:
    """One forward with block hooks and, for the Fisher metric, one batched backward."""
    with torch.set_grad_enabled(fisher), path.capture(leaf_input=fisher) as record:
        logits = model(x)
    path.check_captured(record)
    velocities = [v.detach() for v in record.velocities()]
    states = [*record.inputs, record.outputs[-1]]
    euclidean = torch.stack([v.double().pow(2).flatten(1).sum(1) for v in velocities], dim=1)
    if not fisher:
        return _BatchTerms(euclidean, None, None, [s.detach() for s in states])
    if y is not None:
        check_outputs(logits, y, likelihood, f"batch {index}")
    gen = None
    if kind is FisherKind.MC:
        gen = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + index)
    factors = output_sqrt_factors(logits, y, likelihood, kind, mc_samples=mc_samples, generator=gen)
    # K > 1 columns go through one vmapped backward (is_grads_batched); one column
    # through a plain backward, which avoids vmap's overhead.
    if factors.shape[0] == 1:
        grads = [None if g is None else g.unsqueeze(0)
                 for g in torch.autograd.grad(logits, states, factors[0], allow_unused=True)]
    else:
        grads = torch.autograd.grad(logits, states, factors, is_grads_batched=True, allow_unused=True)
    grads = [torch.zeros((factors.shape[0], *s.shape), dtype=s.dtype, device=s.device) if g is None else g
             for g, s in zip(grads, states)]
    speed = torch.stack([(g * v).flatten(2).sum(2).double().pow(2).sum(0) for g, v in zip(grads, velocities)], 1)
    trace = torch.stack([g.double().pow(2).flatten(2).sum(2).sum(0) for g in grads], dim=1)
    return _BatchTerms(euclidean, speed, trace, [s.detach() for s in states])


def pointwise_speeds(model: nn.Module, inputs: torch.Tensor, *, kind: str = "true",
                     likelihood: str = "classification", block_names: Sequence[str] | None = None,
                     step: float | None = None, seed: int = 0, batch_size: int = 256
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Fisher speed of each data point at each block, and the points' trajectories.

    s_l(x)² = Σ_k ⟨g_lk(x), v_l(x)⟩² for one input x (labels from the model for
    ``kind="true"``: the targets are not used).

    Returns:
        ``(speeds [N, L], states [L+1, N, d])`` with the stream flattened to d features.
    """
    check_eval_mode(model)
    path = ResidualPath(model, block_names, step)
    kind_e, lik = FisherKind.parse(kind), Likelihood.parse(likelihood)
    if kind_e is FisherKind.EMPIRICAL:
        raise ValueError("pointwise speeds use the model's own labels: kind must be 'true' or 'mc'")
    speeds, states = [], []
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start : start + batch_size]
        terms = _batch_terms(model, path, x, None, start // batch_size, fisher=True, kind=kind_e,
                             likelihood=lik, mc_samples=1, seed=seed)
        speeds.append(terms.fisher.sqrt())
        states.append(torch.stack([s.flatten(1).double() for s in terms.states]))
    return torch.cat(speeds).cpu().numpy(), torch.cat(states, dim=1).cpu().numpy()


def path_profile(
    model: nn.Module,
    data: Any,
    *,
    metric: str = "fisher",
    kind: str = "true",
    mc_samples: int = 1,
    seed: int = 0,
    likelihood: str = "classification",
    block_names: Sequence[str] | None = None,
    step: float | None = None,
    batch_size: int = 256,
) -> PathProfile:
    """Speeds, action and length of the path a residual network traces (module doc).

    Args:
        model: a :class:`~memspace.paths.models.ResidualPathModel`, or any model with
            ``block_names`` given (modules mapping x_l to x_{l+1}).
        data: DataLoader, iterable of ``(x, y)`` or an ``(X, y)`` pair; streamed.
        metric: ``"fisher"`` or ``"euclidean"``.
        kind: ``"true"`` (exact over C classes), ``"mc"`` or ``"empirical"``.
        mc_samples: labels per input for ``kind="mc"``.
        seed: seed of the Monte-Carlo labels (per batch index).
        likelihood: ``"classification"`` or ``"regression"``.
        block_names, step: see :class:`~memspace.paths.adapter.ResidualPath`.
        batch_size: rows per batch for an ``(X, y)`` pair.
    """
    if metric not in ("fisher", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}; use 'fisher' or 'euclidean'")
    kind_e, lik = FisherKind.parse(kind), Likelihood.parse(likelihood)
    check_eval_mode(model)
    path = ResidualPath(model, block_names, step)
    first = next(model.parameters())
    stream = as_batch_stream(data, device=first.device, dtype=first.dtype, batch_size=batch_size)
    euclid = torch.zeros(path.depth, dtype=torch.float64)
    fisher = torch.zeros(path.depth, dtype=torch.float64)
    trace = torch.zeros(path.depth + 1, dtype=torch.float64)
    count = 0
    for index, (x, y) in enumerate(stream):
        terms = _batch_terms(model, path, x, y, index, fisher=metric == "fisher", kind=kind_e,
                             likelihood=lik, mc_samples=mc_samples, seed=seed)
        euclid += terms.euclidean.sum(0)
        if terms.fisher is not None:
            fisher += terms.fisher.sum(0)
            trace += terms.trace.sum(0)
        count += x.shape[0]
    euclidean_speeds = (euclid / count).sqrt().numpy()
    fisher_speeds = (fisher / count).sqrt().numpy() if metric == "fisher" else None
    return PathProfile(
        metric=metric,
        speeds=fisher_speeds if metric == "fisher" else euclidean_speeds,
        euclidean_speeds=euclidean_speeds,
        fisher_speeds=fisher_speeds,
        metric_trace=(trace / count).numpy() if metric == "fisher" else None,
        step=float(path.step),
        num_data=count,
        kind=kind_e.value if metric == "fisher" else "n/a",
    )
