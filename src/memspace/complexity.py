"""Complexity of a configuration in the Fisher metric (docs/theory.md §2).

- :func:`fisher_rao_norm`: ‖θ‖²_fr = θᵀ F θ (Liang, Poggio, Rakhlin & Stokes 2017).
- :func:`fisher_distance`: (θ − θ₀)ᵀ F (θ − θ₀), e.g. from initialisation.
- :func:`trajectory_length`: the Fisher arc length of training, Σ_k ‖Δθ_k‖_F over saved
  parameter states: the "write cost" of the memory.

Each quadratic form is one forward pass carrying a tangent per batch (J·u by
forward-mode AD, then uᵀJᵀΛ̂Ju); F is never built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from ._errors import MemspaceError
from .checkpoint import load_state
from .fisher import FisherOperator

__all__ = ["TrajectoryLength", "fisher_distance", "fisher_rao_norm", "trajectory_length"]


def fisher_rao_norm(
    model: nn.Module, data: Any, kind: str = "true", **operator_kwargs: Any
) -> float:
    """‖θ‖²_fr = θᵀ F(θ) θ over the model's (selected) parameters.

    For a bias-free ReLU network with K weight layers ⟨θ, ∇_θ f⟩ = K f, so with the
    true Fisher this equals K² E_x[fᵀ Λ(p) f] (docs/theory.md §2).

    Args:
        model: the network (its parameters are θ).
        data: data source, as for :class:`~memspace.fisher.FisherOperator`.
        kind: ``"true"``, ``"mc"`` or ``"empirical"``.
        **operator_kwargs: passed to :class:`~memspace.fisher.FisherOperator`
            (``likelihood``, ``params``, ``batch_size``, ...).
    """
    F = FisherOperator(model, data, kind=kind, **operator_kwargs)
    theta = {n: t.detach() for n, t in F.space.tensors().items()}
    return float(F.quad(theta))


def _as_state(reference: Mapping[str, Tensor] | nn.Module) -> Mapping[str, Tensor]:
    if isinstance(reference, nn.Module):
        return dict(reference.named_parameters())
    return reference


def fisher_distance(
    model: nn.Module,
    reference_params: Mapping[str, Tensor] | nn.Module,
    data: Any,
    kind: str = "true",
    **operator_kwargs: Any,
) -> float:
    """(θ − θ₀)ᵀ F(θ) (θ − θ₀), the squared Fisher length of the straight step θ₀ → θ.

    Args:
        model: the network at θ (F is taken there).
        reference_params: θ₀ as a dict of parameter tensors (a state dict) or a model.
        data: the data F is averaged over (as for :func:`fisher_rao_norm`).
        kind: the Fisher's kind.
        **operator_kwargs: further :class:`~memspace.FisherOperator` options.

    Raises:
        MemspaceError: if a parameter is missing from ``reference_params`` or mis-shaped.
    """
    F = FisherOperator(model, data, kind=kind, **operator_kwargs)
    reference = _as_state(reference_params)
    delta = {}
    for name, theta in F.space.tensors().items():
        if name not in reference:
            raise MemspaceError(f"reference_params has no entry for parameter {name!r}")
        if reference[name].shape != theta.shape:
            raise MemspaceError(
                f"reference_params[{name!r}] has shape {tuple(reference[name].shape)}; "
                f"expected {tuple(theta.shape)}"
            )
        delta[name] = theta.detach() - reference[name].detach().to(theta)
    return float(F.quad(delta))


@dataclass(frozen=True)
class TrajectoryLength:
    """Fisher arc length Σ_k ‖Δθ_k‖_F and the per-step lengths ‖Δθ_k‖_F (docs/theory.md §2)."""

    length: float
    step_lengths: np.ndarray

    @property
    def speeds(self) -> np.ndarray:
        """Per-step Fisher lengths (speed per checkpoint interval)."""
        return self.step_lengths


def trajectory_length(
    checkpoints: Sequence[str | Path | Mapping[str, Tensor]],
    model_factory: Callable[[], nn.Module],
    data: Any,
    kind: str = "true",
    **operator_kwargs: Any,
) -> TrajectoryLength:
    """Fisher arc length of training over saved parameter states.

    Each step's length is sqrt(Δθ_kᵀ F(θ̄_k) Δθ_k) with F at the midpoint
    θ̄_k = (θ_k + θ_{k+1})/2 (the midpoint rule: second-order accurate in the step).

    Args:
        checkpoints: parameter states in training order (dicts or files, see
            :func:`~memspace.checkpoint.load_state`), at least two.
        model_factory: builds a fresh model of the right architecture.
        data: the data F is averaged over (as for :func:`fisher_rao_norm`).
        kind: the Fisher's kind.
        **operator_kwargs: further :class:`~memspace.FisherOperator` options.
    """
    if len(checkpoints) < 2:
        raise MemspaceError(f"a trajectory needs at least two checkpoints, got {len(checkpoints)}")
    model = model_factory().eval()
    previous = load_state(checkpoints[0])
    lengths = []
    for item in checkpoints[1:]:
        current = load_state(item)
        names = [n for n, _ in model.named_parameters()]
        missing = [n for n in names if n not in current or n not in previous]
        if missing:
            raise MemspaceError(
                f"checkpoint {item if not isinstance(item, Mapping) else '(dict)'} lacks "
                f"parameter {missing[0]!r}"
            )
        midpoint = {n: (previous[n] + current[n]) / 2 for n in names}
        model.load_state_dict({**model.state_dict(), **midpoint})
        F = FisherOperator(model, data, kind=kind, **operator_kwargs)
        delta = {n: (current[n] - previous[n]).to(F.dtype) for n in F.space.names}
        lengths.append(float(F.quad(delta)) ** 0.5)
        previous = current
    steps = np.asarray(lengths)
    return TrajectoryLength(length=float(steps.sum()), step_lengths=steps)
