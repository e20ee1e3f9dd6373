"""Additivity of least action on a product task (docs/theory.md §5.4).

Two independent factors a ∈ {0..C_a−1}, b ∈ {0..C_b−1} are learned jointly (one network predicting
the pair, C_a·C_b classes) or separately (one network per factor). Is the least action of the joint
predictive path the sum of the separate ones?

The geometry answers exactly. If the joint prediction factorises, p = p_a ⊗ p_b, the Bhattacharyya
coefficients multiply, Σ √(p q) = Σ √(p_a q_a) · Σ √(p_b q_b), and with d = 2·arccos(Σ √(p q)):

    cos(d/2) = cos(d_a/2) · cos(d_b/2)                                   (:func:`product_distance`)

the spherical Pythagorean theorem on the Fisher–Rao sphere. Hence

- to second order (short steps) d² = d_a² + d_b² − O(d⁴): the *action* of a finely sampled path is
  additive over independent factors;
- for finite end points d² ≤ d_a² + d_b² (right spherical triangles are thinner than flat ones), so
  the *least action* E d_0L² of the joint path is sub-additive, and strictly so for confident
  predictions: two factors each learned to d ≈ π (certainty from uniform) cost 2π² apart but at
  most π² together.

:func:`memspace.studies.disentanglement.additivity_cell` measures the three networks on held-out
points: the joint network's A and
A_min, the separate networks' A and A_min and their sums, the Pythagorean prediction of the joint
least action from the joint network's own marginals, and how far the joint prediction is from the
product of its marginals (the factorisation gap, in Fisher–Rao distance).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._errors import DataError

__all__ = ["marginal_probabilities", "path_action", "product_distance", "product_task"]


def product_distance(d_a: Tensor, d_b: Tensor) -> Tensor:
    """Fisher–Rao distance between p_a ⊗ p_b and q_a ⊗ q_b from the factors' distances d_a.

    D_b ∈ [0, π].

    d = 2·arccos(cos(d_a/2)·cos(d_b/2)) (module doc), elementwise.
    """
    return 2 * torch.arccos((torch.cos(d_a / 2) * torch.cos(d_b / 2)).clamp(-1.0, 1.0))


def marginal_probabilities(joint: Tensor, sizes: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Marginals of a joint prediction over the pair (a, b), class index a·C_b + b.

    Args:
        joint: probabilities [..., C_a·C_b].
        sizes: (C_a, C_b).

    Returns:
        (p_a [..., C_a], p_b [..., C_b]).
    """
    size_a, size_b = sizes
    if joint.shape[-1] != size_a * size_b:
        raise DataError(
            f"a joint prediction over {size_a}×{size_b} pairs needs {size_a * size_b} classes, "
            f"got {joint.shape[-1]}"
        )
    table = joint.reshape(*joint.shape[:-1], size_a, size_b)
    return table.sum(-1), table.sum(-2)


def product_task(
    num_points: int,
    sizes: tuple[int, int] = (3, 4),
    *,
    dims: int = 6,
    noise: float = 0.6,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Generated data with two independent factors, entangled in the input coordinates.

    Factor a's class k puts the first ``dims`` coordinates at a random unit-scale centre, factor b's
    the
    next ``dims``; Gaussian noise of scale ``noise`` is added and a fixed random rotation mixes all
    2·dims coordinates, so no input coordinate belongs to one factor.

    Returns:
        ``X`` [N, 2·dims] float32, ``a`` [N], ``b`` [N] and ``pair`` = a·C_b + b [N] (int64).
    """
    if num_points < 1 or min(sizes) < 2 or dims < 1:
        raise DataError(
            "a product task needs at least one point, two classes per factor and one dimension"
        )
    rng = np.random.RandomState(seed)
    centres_a = rng.randn(sizes[0], dims) * 1.5
    centres_b = rng.randn(sizes[1], dims) * 1.5
    rotation, _ = np.linalg.qr(rng.randn(2 * dims, 2 * dims))
    a = rng.randint(sizes[0], size=num_points)
    b = rng.randint(sizes[1], size=num_points)
    X = np.concatenate([centres_a[a], centres_b[b]], 1) + noise * rng.randn(num_points, 2 * dims)
    return {
        "X": (X @ rotation).astype(np.float32),
        "a": a.astype(np.int64),
        "b": b.astype(np.int64),
        "pair": (a * sizes[1] + b).astype(np.int64),
    }


def path_action(probabilities: Tensor) -> dict[str, float]:
    """E A and E d_0L² of paths given as probabilities [N, L+1, C] (float64)."""
    from ..paths.predictive import fisher_rao_distance

    logs = probabilities.clamp_min(1e-300).log()
    steps = fisher_rao_distance(logs[:, :-1], logs[:, 1:])  # [N, L]
    depth = steps.shape[1]
    endpoint = fisher_rao_distance(logs[:, 0], logs[:, -1])
    return {
        "action": float((depth * steps.pow(2).sum(1)).mean()),
        "least_action": float(endpoint.pow(2).mean()),
    }
