"""Accuracy, negative log-likelihood and calibration error of a classifier's predictions.

The expected calibration error (Guo et al. 2017, "On calibration of modern neural
networks") bins the points by confidence max_k p_k into ``bins`` equal-width bins and
averages |accuracy − mean confidence| over bins, weighted by their share of points:

    ECE = Σ_b (n_b / N) · |acc(b) − conf(b)|.

A regulariser that pulls predictions toward the prior (the full predictive action under
v3's prior anchor) lowers confidence: judge it by NLL and ECE as well as accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._errors import MemspaceError

__all__ = ["classification_metrics", "expected_calibration_error"]


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE of probabilities [N, C] against integer labels [N] (module doc); bins (0, 1]."""
    if probabilities.dim() != 2 or labels.shape != probabilities.shape[:1]:
        raise MemspaceError(
            f"probabilities [N, C] and labels [N] expected, got {list(probabilities.shape)} "
            f"and {list(labels.shape)}"
        )
    confidence, predicted = probabilities.double().max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1], right=False)  # bin b: (e_b, e_{b+1}]
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap = correct[inside].mean() - confidence[inside].mean()
            total += float(inside.double().mean() * gap.abs())
    return total


def classification_metrics(logits: Tensor, labels: Tensor, bins: int = 15) -> dict[str, float]:
    """``{"accuracy", "nll", "ece"}`` of logits [N, C] against labels [N] (mean NLL in nats)."""
    if len(labels) == 0:
        raise MemspaceError("no points to evaluate")
    if not torch.isfinite(logits).all():
        raise MemspaceError("the logits hold NaN or Inf")
    logp = logits.double().log_softmax(1)
    nll = float(-logp.gather(1, labels.long()[:, None]).mean())
    accuracy = float((logp.argmax(1) == labels).double().mean())
    ece = expected_calibration_error(logp.exp(), labels, bins)
    return {"accuracy": accuracy, "nll": nll, "ece": ece}
