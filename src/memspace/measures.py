"""The generalization measures of the literature, on any model (Jiang et al. 2020; Dziugaite et al. 2020).

The definitions follow the robust-generalization-measures code, keyed by the equation
numbers of "Fantastic generalization measures" (docs/theory.md §5.3). Notation:

- W_l: the weight of every ``nn.Linear`` and ``nn.Conv*`` layer, reshaped to
  [out, in·k…] (biases and norm layers excluded); W_l⁰ its initial value; d the number
  of such layers; w the vector of all their entries, ω = |w|; m the training-set size.
- γ: the margin, the ⌊m/10⌋-th smallest (1-based) of the logit margins
  f(x)_y − max_{k≠y} f(x)_k over the training set, in absolute value (a non-positive
  10th-percentile margin is flagged: the margin measures are then meaningless).
- ‖W‖₂ the spectral norm, ‖W‖_F the Frobenius norm; norms are squared unless stated.

========================  =========================================================
PARAMS (20)               ω
INVERSE_MARGIN (22)       1/γ²
LOG_PROD_OF_SPEC (32)     Σ_l log ‖W_l‖₂²
LOG_PROD_OF_SPEC_OVER_MARGIN (31)   (32) − 2 log γ
LOG_SPEC_INIT_MAIN (29)   (31) + log Σ_l ‖W_l − W_l⁰‖_F² / ‖W_l‖₂²
FRO_OVER_SPEC (33)        Σ_l ‖W_l‖_F² / ‖W_l‖₂²
LOG_SPEC_ORIG_MAIN (30)   (31) + log (33)
LOG_SUM_OF_SPEC_OVER_MARGIN (34)    log d + ((32) − 2 log γ)/d
LOG_SUM_OF_SPEC (35)      log d + (32)/d
LOG_PROD_OF_FRO (37)      Σ_l log ‖W_l‖_F²;  (36) = (37) − 2 log γ
LOG_SUM_OF_FRO (39)       log d + (37)/d;  (38) = log d + ((37) − 2 log γ)/d
FRO_DIST (40)             Σ_l ‖W_l − W_l⁰‖_F²
DIST_SPEC_INIT (41)       Σ_l ‖W_l − W_l⁰‖₂²
PARAM_NORM (42)           Σ_l ‖W_l‖_F²
PATH_NORM (44)            Σ_k f_{θ²}(𝟙)_k (every parameter squared, an all-ones input);
                          (43) = (44)/γ²
L2 (100), L2_DIST (101)   ‖w‖₂, ‖w − w⁰‖₂ (not squared)
PACBAYES_INIT (48)        ‖w − w⁰‖²/(4σ²) + log(m/σ) + 10; ORIG (49) with ‖w‖²;
                          FLATNESS (53) 1/σ²
PACBAYES_MAG_INIT (56)    ¼ Σ_i log[(ε² + (σ′²+1)‖w − w⁰‖²/ω)/(ε² + σ′²(w_i − w_i⁰)²)]
                          + log(m/σ′) + 10; ORIG (57) with ‖w‖² in the numerator;
                          FLATNESS (61) 1/σ′²
========================  =========================================================

σ (σ′) is found by :func:`pac_bayes_sigma`: bisection on [0, 2], depth 15, for the noise
level at which the mean training accuracy of 10 perturbed copies deviates from the
trained accuracy by 0.1 ± 0.01. Every value is then adjusted for the data-set size as the
reference does: ``LOG_*`` ↦ ½(value − log m), others ↦ √(value/m).

``faithful=True`` reproduces the reference's quirks: the isotropic noise has standard
deviation σ² (not σ), the magnitude-aware one σ′²|w_i|² + ε² (not √(σ′²w_i² + ε²)), and
PACBAYES_MAG_ORIG keeps (w_i − w_i⁰)² in its denominator. ``faithful=False`` fixes all three.
Models with BatchNorm are refused (the reference folds BN into the preceding layer first).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import MemspaceError

__all__ = ["PacBayesSigma", "generalization_measures", "margin", "pac_bayes_sigma", "path_norm", "weight_matrices"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_no_batchnorm(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise MemspaceError(f"layer {name!r} is a BatchNorm: fold it into the preceding layer first "
                                "(the literature's measures are defined on BN-folded weights)")


def weight_matrices(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, W_l [out, in·k…]) for every Linear/Conv layer, in module order (module doc)."""
    _check_no_batchnorm(model)
    found = [(f"{name}.weight" if name else "weight", module.weight.detach().reshape(module.weight.shape[0], -1))
             for name, module in model.named_modules() if isinstance(module, _LAYERS)]
    if not found:
        raise MemspaceError("the model has no Linear or Conv layer: the norm measures need weight matrices")
    return found


def margin(model: nn.Module, data: tuple[Tensor, Tensor], batch_size: int = 5000) -> tuple[float, float]:
    """(γ, signed 10th-percentile margin): γ = |⌊m/10⌋-th smallest logit margin| (module doc)."""
    X, y = data
    margins = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            logits = model(X[start : start + batch_size]).double()
            target = y[start : start + batch_size]
            correct = logits.gather(1, target[:, None]).squeeze(1)
            others = logits.scatter(1, target[:, None], -math.inf).max(1).values
            margins.append(correct - others)
    values = torch.cat(margins).sort().values
    k = max(len(values) // 10, 1)
    signed = float(values[k - 1])
    return abs(signed), signed


def path_norm(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Σ_k f_{θ²}(𝟙)_k: every parameter squared elementwise, one all-ones input, outputs summed."""
    squared = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in squared.parameters():
            p.copy_(p * p)
        first = next(squared.parameters())
        return float(squared(torch.ones(1, *input_shape, dtype=first.dtype, device=first.device)).sum())


@dataclass(frozen=True)
class PacBayesSigma:
    """The σ of the PAC-Bayes search, its achieved deviation D and whether |D − 0.1| < tolerance."""

    sigma: float
    deviation: float
    converged: bool


def _accuracy(model: nn.Module, data: tuple[Tensor, Tensor], batch_size: int = 5000) -> float:
    X, y = data
    correct = 0
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            correct += int((model(X[start : start + batch_size]).argmax(1) == y[start : start + batch_size]).sum())
    return correct / len(X)


def pac_bayes_sigma(model: nn.Module, data: tuple[Tensor, Tensor], accuracy: float, *, magnitude_aware: bool = False,
                    faithful: bool = True, seed: int = 0, target: float = 0.1, tolerance: float = 0.01,
                    depth: int = 15, samples: int = 10, epsilon: float = 1e-3) -> PacBayesSigma:
    """Bisection for the noise level whose mean accuracy deviates by ``target`` (module doc).

    All parameters (biases included) are perturbed; accuracy on the whole ``data``; the
    generator is seeded with 10348628753 + seed, as in the reference.
    """
    model.eval()
    originals = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator(device=originals[0].device).manual_seed(10348628753 + seed)
    lo, hi, sigma, deviation = 0.0, 2.0, 1.0, math.nan
    try:
        for _ in range(depth):
            sigma = (lo + hi) / 2
            accuracies = []
            for _ in range(samples):
                with torch.no_grad():
                    for p, w in zip(model.parameters(), originals):
                        if magnitude_aware:
                            std = sigma**2 * w.abs() ** 2 + epsilon**2 if faithful else torch.sqrt(
                                sigma**2 * w**2 + epsilon**2)
                        else:
                            std = sigma**2 if faithful else sigma
                        noise = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
                        p.copy_(w + std * noise)
                accuracies.append(_accuracy(model, data))
            deviation = abs(sum(accuracies) / samples - accuracy)
            if abs(deviation - target) < tolerance:
                break
            if deviation > target:
                hi = sigma
            else:
                lo = sigma
    finally:
        with torch.no_grad():
            for p, w in zip(model.parameters(), originals):
                p.copy_(w)
    return PacBayesSigma(sigma, deviation, abs(deviation - target) < tolerance)


def generalization_measures(model: nn.Module, initial: nn.Module | dict[str, Tensor], data: tuple[Tensor, Tensor], *,
                            seed: int = 0, faithful: bool = True, pac_bayes: bool = True,
                            adjust: bool = True) -> dict[str, Any]:
    """Every measure of the module table for ``model`` (trained) against ``initial`` on training ``data``.

    Returns ``{name: value}`` (adjusted for m when ``adjust``) plus diagnostics: ``margin_signed``,
    ``margin_flag`` (True when the 10th-percentile margin is ≤ 0), and the σ searches'
    ``pacbayes_sigma``, ``pacbayes_deviation``, ``pacbayes_mag_sigma``, ``pacbayes_mag_deviation``.
    """
    if isinstance(initial, nn.Module):
        initial = initial.state_dict()
    X, y = data
    m = len(X)
    layers = weight_matrices(model)
    init = {name: initial[name].reshape(w.shape[0], -1).to(w) for name, w in layers}
    d = len(layers)
    spec = [float(torch.linalg.matrix_norm(w.double(), ord=2)) ** 2 for _, w in layers]
    fro = [float(w.double().pow(2).sum()) for _, w in layers]
    dist_fro = [float((w - init[n]).double().pow(2).sum()) for n, w in layers]
    dist_spec = [float(torch.linalg.matrix_norm((w - init[n]).double(), ord=2)) ** 2 for n, w in layers]
    w_all = torch.cat([w.flatten().double() for _, w in layers])
    w0_all = torch.cat([init[n].flatten().double() for n, _ in layers])
    omega = len(w_all)
    model.eval()
    gamma, signed = margin(model, data)
    log_prod_spec = sum(_log(s) for s in spec)
    log_prod_fro = sum(_log(f) for f in fro)
    log_gamma = _log(gamma)
    raw: dict[str, float] = {
        "PARAMS": float(omega),
        "INVERSE_MARGIN": 1.0 / gamma**2 if gamma > 0 else math.inf,
        "LOG_PROD_OF_SPEC": log_prod_spec,
        "LOG_PROD_OF_SPEC_OVER_MARGIN": log_prod_spec - 2 * log_gamma,
        "FRO_OVER_SPEC": sum(f / s for f, s in zip(fro, spec)),
        "LOG_SUM_OF_SPEC_OVER_MARGIN": math.log(d) + (log_prod_spec - 2 * log_gamma) / d,
        "LOG_SUM_OF_SPEC": math.log(d) + log_prod_spec / d,
        "LOG_PROD_OF_FRO": log_prod_fro,
        "LOG_PROD_OF_FRO_OVER_MARGIN": log_prod_fro - 2 * log_gamma,
        "LOG_SUM_OF_FRO_OVER_MARGIN": math.log(d) + (log_prod_fro - 2 * log_gamma) / d,
        "LOG_SUM_OF_FRO": math.log(d) + log_prod_fro / d,
        "FRO_DIST": sum(dist_fro),
        "DIST_SPEC_INIT": sum(dist_spec),
        "PARAM_NORM": sum(fro),
        "L2": float(w_all.norm()),
        "L2_DIST": float((w_all - w0_all).norm()),
    }
    raw["LOG_SPEC_INIT_MAIN"] = raw["LOG_PROD_OF_SPEC_OVER_MARGIN"] + _log(
        sum(df / s for df, s in zip(dist_fro, spec)))
    raw["LOG_SPEC_ORIG_MAIN"] = raw["LOG_PROD_OF_SPEC_OVER_MARGIN"] + _log(raw["FRO_OVER_SPEC"])
    raw["PATH_NORM"] = path_norm(model, tuple(X.shape[1:]))
    raw["PATH_NORM_OVER_MARGIN"] = raw["PATH_NORM"] / gamma**2 if gamma > 0 else math.inf
    extra: dict[str, Any] = {"margin_signed": signed, "margin_flag": signed <= 0}
    if pac_bayes:
        accuracy = _accuracy(model, data)
        iso = pac_bayes_sigma(model, data, accuracy, seed=seed, faithful=faithful)
        mag = pac_bayes_sigma(model, data, accuracy, seed=seed, faithful=faithful, magnitude_aware=True)
        sigma, sigma_mag, eps = iso.sigma, mag.sigma, 1e-3
        dist_sq, norm_sq = float((w_all - w0_all).pow(2).sum()), float(w_all.pow(2).sum())
        raw["PACBAYES_INIT"] = dist_sq / (4 * sigma**2) + math.log(m / sigma) + 10
        raw["PACBAYES_ORIG"] = norm_sq / (4 * sigma**2) + math.log(m / sigma) + 10
        raw["PACBAYES_FLATNESS"] = 1.0 / sigma**2
        delta_sq = (w_all - w0_all).pow(2)
        denominator_orig = delta_sq if faithful else w_all.pow(2)
        raw["PACBAYES_MAG_INIT"] = float(0.25 * torch.log(
            (eps**2 + (sigma_mag**2 + 1) * dist_sq / omega) / (eps**2 + sigma_mag**2 * delta_sq)).sum()) + math.log(
            m / sigma_mag) + 10
        raw["PACBAYES_MAG_ORIG"] = float(0.25 * torch.log(
            (eps**2 + (sigma_mag**2 + 1) * norm_sq / omega) / (eps**2 + sigma_mag**2 * denominator_orig)).sum()) + \
            math.log(m / sigma_mag) + 10
        raw["PACBAYES_MAG_FLATNESS"] = 1.0 / sigma_mag**2
        extra.update(pacbayes_sigma=sigma, pacbayes_deviation=iso.deviation, pacbayes_mag_sigma=sigma_mag,
                     pacbayes_mag_deviation=mag.deviation)
    values = {name: (_adjust(name, value, m) if adjust else value) for name, value in raw.items()}
    return {**values, **extra}


def _log(x: float) -> float:
    """log x, with log 0 = −∞ (a zero distance from initialisation, a zero margin)."""
    return math.log(x) if x > 0 else -math.inf


def _adjust(name: str, value: float, m: int) -> float:
    """The reference's data-set-size adjustment: LOG_* ↦ ½(value − log m), others ↦ √(value/m)."""
    if name.startswith("LOG_"):
        return 0.5 * (value - math.log(m))
    return math.sqrt(value / m) if value >= 0 else -math.sqrt(-value / m)
