"""The generalization measures of the literature.

On any model (Jiang et al. 2020; Dziugaite et al. 2020).

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
SHARPNESS_FLATNESS        1/α²; ORIG ‖w‖² log(2ω)/(4α²) + log(m/δ) + 10; INIT with ‖w − w⁰‖²
SHARPNESS_MAG_INIT        ¼ Σ_i log[(ε² + (α′² + 4 log(2ω/δ))‖w − w⁰‖²/ω)/(ε² + α′²(w_i − w_i⁰)²)]
                          + log(m/δ) + 10; ORIG with w; FLATNESS 1/α′²  (δ = 0.05)
========================  =========================================================

σ (σ′) is found by :func:`pac_bayes_sigma`: bisection on [0, 2], depth 15, for the noise
level at which the mean training accuracy of 10 perturbed copies deviates from the
trained accuracy by 0.1 ± 0.01. Every value is then adjusted for the data-set size as the
reference does: ``LOG_*`` ↦ ½(value − log m), others ↦ √(value/m). α (α′), the worst-case
sharpness box, is found by :func:`sharpness_alpha` (Fantastic's search; optional, slower).

``faithful=True`` reproduces the reference's quirks: the isotropic noise has standard
deviation σ² (not σ), the magnitude-aware one σ′²|w_i|² + ε² (not √(σ′²w_i² + ε²)), and
PACBAYES_MAG_ORIG keeps (w_i − w_i⁰)² in its denominator. ``faithful=False`` fixes all three.
Models with BatchNorm are refused (the reference folds BN into the preceding layer first).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import MemspaceError
from ..train import evaluate

__all__ = [
    "PacBayesSigma",
    "SharpnessAlpha",
    "generalization_measures",
    "is_literature_measure",
    "margin",
    "pac_bayes_sigma",
    "path_norm",
    "sharpness_alpha",
    "size_adjusted",
    "size_unadjusted",
    "weight_matrices",
]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_no_batchnorm(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise MemspaceError(
                f"layer {name!r} is a BatchNorm: fold it into the preceding layer first "
                "(the literature's measures are defined on BN-folded weights)"
            )


def _check_layers(model: nn.Module) -> None:
    """Refuse a model whose weights the norm measures would count wrongly, naming the parameter.

    Every parameter with two or more axes must be the weight of a Linear or Conv layer (an
    attention ``in_proj_weight``, a recurrent or embedding weight would be left out), and no
    parameter may be registered twice (a tied weight would be counted twice).
    """
    from .._params import shared_parameters

    _check_no_batchnorm(model)
    tied = shared_parameters(model)
    if tied:
        name, others = next(iter(tied.items()))
        raise MemspaceError(
            f"parameter {name!r} is also registered as {others[0]!r} (a tied weight): the norm "
            "measures would count it twice"
        )
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and not (isinstance(module, _LAYERS) and name == "weight"):
                full = f"{module_name}.{name}" if module_name else name
                raise MemspaceError(
                    f"parameter {full!r} of {type(module).__name__} is a weight outside the Linear "
                    "and Conv layers the norm measures are defined on: it would be left out"
                )


def weight_matrices(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, W_l [out, in·k…]) for every Linear/Conv layer, in module order (module doc).

    Raises:
        MemspaceError: BatchNorm, tied weights, or weight matrices in other layers (named).
    """
    _check_layers(model)
    found = [
        (
            f"{name}.weight" if name else "weight",
            module.weight.detach().reshape(module.weight.shape[0], -1),
        )
        for name, module in model.named_modules()
        if isinstance(module, _LAYERS)
    ]
    if not found:
        raise MemspaceError(
            "the model has no Linear or Conv layer: the norm measures need weight matrices"
        )
    return found


def margin(
    model: nn.Module, data: tuple[Tensor, Tensor], batch_size: int = 5000
) -> tuple[float, float]:
    """(γ, signed 10th-percentile margin): γ = |⌊m/10⌋-th smallest logit margin| (module doc)."""
    X, y = data
    margins = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            target = y[start : start + batch_size]
            logits = _logits(model, X[start : start + batch_size], len(target)).double()
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
        return float(
            squared(torch.ones(1, *input_shape, dtype=first.dtype, device=first.device)).sum()
        )


def _logits(model: nn.Module, x: Tensor, rows: int) -> Tensor:
    """The model's output on x, which must be logits [rows, C] (samples along axis 0)."""
    out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != rows:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise MemspaceError(
            f"the measures need logits [N, C] with samples along the inputs' axis 0; the model "
            f"maps {rows} inputs to {shape}"
        )
    return out


@dataclass(frozen=True)
class PacBayesSigma:
    """The σ of the PAC-Bayes search, its achieved deviation D and whether |D − 0.1| < tolerance."""

    sigma: float
    deviation: float
    converged: bool


def _bisect(
    deviation_at: Callable[[float], float],
    upper: float,
    depth: int,
    target: float,
    tolerance: float,
) -> tuple[float, float]:
    """Bisection on [0, upper], first candidate upper/2.

    For x with |deviation_at(x) − target| < tolerance.

    A deviation above the target shrinks the interval from above. Returns the last candidate
    and its deviation, converged or not (the reference has no early failure).
    """
    lo, hi, x, deviation = 0.0, upper, upper / 2, math.nan
    for _ in range(depth):
        x = (lo + hi) / 2
        deviation = deviation_at(x)
        if abs(deviation - target) < tolerance:
            break
        if deviation > target:
            hi = x
        else:
            lo = x
    return x, deviation


def _restore(model: nn.Module, originals: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for p, w in zip(model.parameters(), originals):
            p.copy_(w)


def pac_bayes_sigma(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    accuracy: float,
    *,
    magnitude_aware: bool = False,
    faithful: bool = True,
    seed: int = 0,
    target: float = 0.1,
    tolerance: float = 0.01,
    depth: int = 15,
    samples: int = 10,
    epsilon: float = 1e-3,
) -> PacBayesSigma:
    """Bisection for the noise level whose mean accuracy deviates by ``target`` (module doc).

    All parameters (biases included) are perturbed; accuracy on the whole ``data``; the
    generator is seeded with 10348628753 + seed, as in the reference.
    """
    model.eval()
    originals = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator(device=originals[0].device).manual_seed(10348628753 + seed)

    def deviation_at(sigma: float) -> float:
        accuracies = []
        for _ in range(samples):
            with torch.no_grad():
                for p, w in zip(model.parameters(), originals):
                    if magnitude_aware:
                        std = (
                            sigma**2 * w.abs() ** 2 + epsilon**2
                            if faithful
                            else torch.sqrt(sigma**2 * w**2 + epsilon**2)
                        )
                    else:
                        std = sigma**2 if faithful else sigma
                    noise = torch.randn(
                        w.shape, generator=generator, device=w.device, dtype=w.dtype
                    )
                    p.copy_(w + std * noise)
            accuracies.append(evaluate(model, data)[1])
        return abs(sum(accuracies) / samples - accuracy)

    try:
        sigma, deviation = _bisect(deviation_at, 2.0, depth, target, tolerance)
    finally:
        _restore(model, originals)
    return PacBayesSigma(sigma, deviation, abs(deviation - target) < tolerance)


@dataclass(frozen=True)
class SharpnessAlpha:
    """The α of the worst-case sharpness search, its achieved deviation and convergence."""

    alpha: float
    deviation: float
    converged: bool


def _perturbation_bound(
    originals, alpha: float, magnitude_aware: bool, epsilon: float
) -> list[Tensor]:
    if magnitude_aware:
        return [alpha * w.abs() + epsilon for w in originals]
    return [torch.full_like(w, alpha) for w in originals]


def sharpness_alpha(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    accuracy: float,
    *,
    magnitude_aware: bool = False,
    seed: int = 0,
    target: float = 0.1,
    tolerance: float = 0.01,
    alpha_max: float = 2.0,
    iterations: int = 15,
    restarts: int = 10,
    eval_batches: int = 20,
    ascent_steps: int = 20,
    batch_size: int = 256,
    epsilon: float = 1e-3,
) -> SharpnessAlpha:
    """Worst-case sharpness (Fantastic §4.6).

    Bisection for the box size α whose worst perturbation costs ``target``.

    For each candidate α (M₁ = ``iterations``), ``restarts`` (M₂) times: u uniform in the box
    |u_i| ≤ α (magnitude-aware: |u_i| ≤ α|w_i| + ε), then ``ascent_steps`` (M₄) steps of
    gradient ascent on the training cross-entropy over random mini-batches — each a signed step
    of 2·bound/M₄, projected back onto the box — and the accuracy on ``eval_batches`` (M₃)
    mini-batches. The worst accuracy over restarts gives D = accuracy − worst; bisection as for
    :func:`pac_bayes_sigma`. The step rule is our choice [SPECS §4.6 leaves it open].
    """
    X, y = data
    model.eval()
    params = list(model.parameters())
    originals = [p.detach().clone() for p in params]
    generator = torch.Generator(device=originals[0].device).manual_seed(20200101 + seed)

    def batches(count: int):
        for _ in range(count):
            yield torch.randint(
                len(X), (min(batch_size, len(X)),), generator=generator, device=X.device
            )

    def deviation_at(alpha: float) -> float:
        bounds = _perturbation_bound(originals, alpha, magnitude_aware, epsilon)
        worst = math.inf
        for _ in range(restarts):
            with torch.no_grad():
                for p, w, b in zip(params, originals, bounds):
                    u = (
                        torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype) * 2
                        - 1
                    ) * b
                    p.copy_(w + u)
            for idx in batches(ascent_steps):
                model.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                with torch.no_grad():
                    for p, w, b in zip(params, originals, bounds):
                        if p.grad is not None:
                            p.add_(2 * b / ascent_steps * p.grad.sign())
                        p.copy_(w + torch.maximum(torch.minimum(p - w, b), -b))
            with torch.no_grad():
                correct = total = 0
                for idx in batches(eval_batches):
                    correct += int((model(X[idx]).argmax(1) == y[idx]).sum())
                    total += len(idx)
            worst = min(worst, correct / total)
        return accuracy - worst

    try:
        alpha, deviation = _bisect(deviation_at, alpha_max, iterations, target, tolerance)
    finally:
        model.zero_grad(set_to_none=True)
        _restore(model, originals)
    return SharpnessAlpha(alpha, deviation, abs(deviation - target) < tolerance)


def generalization_measures(
    model: nn.Module,
    initial: nn.Module | dict[str, Tensor],
    data: tuple[Tensor, Tensor],
    *,
    seed: int = 0,
    faithful: bool = True,
    pac_bayes: bool = True,
    sharpness: dict[str, int] | None = None,
    adjust: bool = True,
) -> dict[str, Any]:
    """Every measure of the module table for ``model`` (trained) against ``initial`` on ``data``.

    Returns ``{name: value}`` (adjusted for m when ``adjust``) plus diagnostics: ``margin_signed``,
    ``margin_flag`` (True when the 10th-percentile margin is ≤ 0), and the σ searches'
    ``pacbayes_sigma``, ``pacbayes_deviation``, ``pacbayes_mag_sigma``, ``pacbayes_mag_deviation``.
    ``sharpness``: the worst-case sharpness measures with these search sizes (``iterations``,
    ``restarts``, ``eval_batches``, ``ascent_steps``; ``{}`` for the defaults M₁..M₄ = 15, 10, 20,
    20),
    with the α diagnostics ``sharpness_alpha`` and ``sharpness_mag_alpha``; None skips them.
    """
    if isinstance(initial, nn.Module):
        initial = initial.state_dict()
    X, y = data
    if len(X) != len(y):
        raise MemspaceError(
            f"data: {len(X)} inputs along axis 0 and {len(y)} labels; the measures take samples "
            "along axis 0"
        )
    m = len(X)
    layers = weight_matrices(model)
    init = {name: initial[name].reshape(w.shape[0], -1).to(w) for name, w in layers}
    d = len(layers)
    spec = [float(torch.linalg.matrix_norm(w.double(), ord=2)) ** 2 for _, w in layers]
    fro = [float(w.double().pow(2).sum()) for _, w in layers]
    dist_fro = [float((w - init[n]).double().pow(2).sum()) for n, w in layers]
    dist_spec = [
        float(torch.linalg.matrix_norm((w - init[n]).double(), ord=2)) ** 2 for n, w in layers
    ]
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
        sum(df / s for df, s in zip(dist_fro, spec))
    )
    raw["LOG_SPEC_ORIG_MAIN"] = raw["LOG_PROD_OF_SPEC_OVER_MARGIN"] + _log(raw["FRO_OVER_SPEC"])
    raw["PATH_NORM"] = path_norm(model, tuple(X.shape[1:]))
    raw["PATH_NORM_OVER_MARGIN"] = raw["PATH_NORM"] / gamma**2 if gamma > 0 else math.inf
    extra: dict[str, Any] = {"margin_signed": signed, "margin_flag": signed <= 0}
    if pac_bayes:
        accuracy = evaluate(model, data)[1]
        iso = pac_bayes_sigma(model, data, accuracy, seed=seed, faithful=faithful)
        mag = pac_bayes_sigma(
            model, data, accuracy, seed=seed, faithful=faithful, magnitude_aware=True
        )
        sigma, sigma_mag, eps = iso.sigma, mag.sigma, 1e-3
        dist_sq, norm_sq = float((w_all - w0_all).pow(2).sum()), float(w_all.pow(2).sum())
        raw["PACBAYES_INIT"] = dist_sq / (4 * sigma**2) + math.log(m / sigma) + 10
        raw["PACBAYES_ORIG"] = norm_sq / (4 * sigma**2) + math.log(m / sigma) + 10
        raw["PACBAYES_FLATNESS"] = 1.0 / sigma**2
        delta_sq = (w_all - w0_all).pow(2)
        denominator_orig = delta_sq if faithful else w_all.pow(2)
        raw["PACBAYES_MAG_INIT"] = (
            float(
                0.25
                * torch.log(
                    (eps**2 + (sigma_mag**2 + 1) * dist_sq / omega)
                    / (eps**2 + sigma_mag**2 * delta_sq)
                ).sum()
            )
            + math.log(m / sigma_mag)
            + 10
        )
        raw["PACBAYES_MAG_ORIG"] = (
            float(
                0.25
                * torch.log(
                    (eps**2 + (sigma_mag**2 + 1) * norm_sq / omega)
                    / (eps**2 + sigma_mag**2 * denominator_orig)
                ).sum()
            )
            + math.log(m / sigma_mag)
            + 10
        )
        raw["PACBAYES_MAG_FLATNESS"] = 1.0 / sigma_mag**2
        extra.update(
            pacbayes_sigma=sigma,
            pacbayes_deviation=iso.deviation,
            pacbayes_mag_sigma=sigma_mag,
            pacbayes_mag_deviation=mag.deviation,
        )
    if sharpness is not None:
        accuracy = evaluate(model, data)[1]
        worst = sharpness_alpha(model, data, accuracy, seed=seed, **sharpness)
        worst_mag = sharpness_alpha(
            model, data, accuracy, seed=seed, magnitude_aware=True, **sharpness
        )
        alpha, alpha_mag, eps, delta = worst.alpha, worst_mag.alpha, 1e-3, 0.05
        dist_sq, norm_sq = float((w_all - w0_all).pow(2).sum()), float(w_all.pow(2).sum())
        confidence = math.log(m / delta) + 10
        raw["SHARPNESS_FLATNESS"] = 1.0 / alpha**2
        raw["SHARPNESS_ORIG"] = norm_sq * math.log(2 * omega) / (4 * alpha**2) + confidence
        raw["SHARPNESS_INIT"] = dist_sq * math.log(2 * omega) / (4 * alpha**2) + confidence
        spread = alpha_mag**2 + 4 * math.log(2 * omega / delta)
        delta_sq = (w_all - w0_all).pow(2)
        raw["SHARPNESS_MAG_INIT"] = (
            float(
                0.25
                * torch.log(
                    (eps**2 + spread * dist_sq / omega) / (eps**2 + alpha_mag**2 * delta_sq)
                ).sum()
            )
            + confidence
        )
        raw["SHARPNESS_MAG_ORIG"] = (
            float(
                0.25
                * torch.log(
                    (eps**2 + spread * norm_sq / omega) / (eps**2 + alpha_mag**2 * w_all.pow(2))
                ).sum()
            )
            + confidence
        )
        raw["SHARPNESS_MAG_FLATNESS"] = 1.0 / alpha_mag**2
        extra.update(
            sharpness_alpha=alpha,
            sharpness_deviation=worst.deviation,
            sharpness_mag_alpha=alpha_mag,
            sharpness_mag_deviation=worst_mag.deviation,
        )
    values = {
        name: (size_adjusted(name, value, m) if adjust else value) for name, value in raw.items()
    }
    return {**values, **extra}


def _log(x: float) -> float:
    """Log x, with log 0 = −∞ (a zero distance from initialisation, a zero margin)."""
    return math.log(x) if x > 0 else -math.inf


def size_adjusted(name: str, value: float, m: int) -> float:
    """The reference's data-set-size adjustment: LOG_* ↦ ½(value − log m), others ↦ √(value/m).

    Jiang et al. 2020 (the robust-generalization-measures code) apply it to every measure they
    rank; a zoo that varies the training-set size m must apply it to every measure or to none,
    since it alone moves a measure's ψ on the m axis (docs/theory.md §5.3). A negative value
    keeps its sign: −√(−value/m).
    """
    if m < 1:
        raise MemspaceError(f"the training-set size must be at least 1, got {m}")
    if name.startswith("LOG_"):
        return 0.5 * (value - math.log(m))
    return math.sqrt(value / m) if value >= 0 else -math.sqrt(-value / m)


def size_unadjusted(name: str, value: float, m: int) -> float:
    """The inverse of :func:`size_adjusted`: a stored, adjusted value back to the raw one."""
    if m < 1:
        raise MemspaceError(f"the training-set size must be at least 1, got {m}")
    if name.startswith("LOG_"):
        return 2.0 * value + math.log(m)
    return value * value * m if value >= 0 else -value * value * m


def is_literature_measure(name: str) -> bool:
    """Whether ``name`` is one of the literature's measures (named in capitals, as the reference).

    memspace's own measures are named in lower case; the two sets never share a name.
    """
    return name.isupper()
