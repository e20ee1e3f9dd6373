"""Likelihoods and the Fisher of their output distribution (docs/theory.md §1).

For a model with outputs f (logits for classification, means for regression) the
Fisher of the output distribution is a small D×D matrix per sample,

- classification (softmax / cross-entropy): Λ(p) = diag(p) − p pᵀ, p = softmax(f);
- regression (Gaussian, unit variance): Λ = I.

The parameter Fisher is F = E_x[Jᵀ Λ̂ J], where Λ̂ depends on the *kind*:

- ``true``: Λ̂ = Λ, the exact expectation over the model's own labels;
- ``mc``: Λ̂ = (1/M) Σ_m r_m r_mᵀ with r_m = ∇_f log p(y_m|f), y_m ~ p(·|f);
- ``empirical``: Λ̂ = r rᵀ with r = ∇_f log p(y|f) at the data label y
  (Kunstner et al. 2019: not a metric of the model; offered and labelled).

Every kind is written as a sum of outer products Λ̂ = Σ_k s_k s_kᵀ: the columns s_k are
what gets back-propagated to build diagonals and K-FAC factors.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from .._errors import DataError, MemspaceError

__all__ = [
    "FisherKind",
    "Likelihood",
    "apply_output_fisher",
    "output_fisher_quad_terms",
    "check_outputs",
    "log_likelihood",
    "categorical_sqrt_factors",
    "exact_column_count",
    "output_sqrt_factors",
    "sequence_sqrt_factors",
]


def _parse_option(enum: type[Enum], value, label: str):
    """The member of a str-Enum named by ``value``, or a ValueError listing the choices."""
    try:
        return enum(value)
    except ValueError:
        names = ", ".join(repr(m.value) for m in enum)
        raise MemspaceError(f"unsupported {label} {value!r}; use one of {names}") from None


class Likelihood(str, Enum):
    """The model's output distribution p(y | f(x))."""

    CLASSIFICATION = "classification"
    """Categorical over C classes with logits f ∈ R^C; y is an integer class."""
    REGRESSION = "regression"
    """Gaussian N(f, I) with mean f ∈ R^D; y has the shape of f."""

    @classmethod
    def parse(cls, value: str | Likelihood) -> Likelihood:
        """The likelihood named ``value`` (or ``value`` itself); a MemspaceError lists the names."""
        return _parse_option(cls, value, "likelihood")


class FisherKind(str, Enum):
    """Which Fisher: exact expectation, Monte-Carlo or empirical (see module doc)."""

    TRUE = "true"
    """E_x[Jᵀ Λ(p) J]: exact expectation over the model's own labels."""
    MC = "mc"
    """Labels sampled from the model, ``mc_samples`` per input (unbiased for TRUE)."""
    EMPIRICAL = "empirical"
    """Gradients at the data labels; not a metric of the model (Kunstner et al. 2019)."""

    @classmethod
    def parse(cls, value: str | FisherKind) -> FisherKind:
        """The kind named ``value`` (or ``value`` itself); a MemspaceError lists the names."""
        return _parse_option(cls, value, "Fisher kind")


def check_outputs(
    outputs: Tensor, targets: Tensor | None, likelihood: Likelihood, where: str
) -> None:
    """Check model outputs [N, D] against targets; raise :class:`DataError` if wrong.

    Classification needs integer targets [N] in [0, C); regression needs targets of
    the outputs' shape. ``targets=None`` (no labels: the true and MC Fisher) checks the outputs.
    """
    if outputs.dim() != 2:
        raise DataError(f"{where}: model output has shape {tuple(outputs.shape)}; expected [N, D]")
    if targets is None:
        return
    if likelihood is Likelihood.CLASSIFICATION:
        if targets.is_floating_point() or targets.dim() != 1:
            raise DataError(
                f"{where}: classification targets must be integer class indices of "
                f"shape [N], got dtype {targets.dtype} and shape {tuple(targets.shape)}"
            )
        num_classes = outputs.shape[1]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise DataError(
                f"{where}: target labels span [{int(targets.min())}, {int(targets.max())}] "
                f"but the model has {num_classes} classes (labels must be in [0, {num_classes}))"
            )
    elif targets.shape != outputs.shape:
        raise DataError(
            f"{where}: regression targets have shape {tuple(targets.shape)} but the "
            f"model output has shape {tuple(outputs.shape)}"
        )


def log_likelihood(outputs: Tensor, targets: Tensor, likelihood: Likelihood) -> Tensor:
    """Per-sample log p(y | f), shape [N] (Gaussian up to its constant)."""
    if likelihood is Likelihood.CLASSIFICATION:
        return -torch.nn.functional.cross_entropy(outputs, targets, reduction="none")
    return -0.5 * ((outputs - targets) ** 2).sum(dim=1)


def apply_output_fisher(outputs: Tensor, tangent: Tensor, likelihood: Likelihood) -> Tensor:
    """The exact output Fisher applied to a tangent: Λ u, shapes [N, D] → [N, D].

    Classification: Λ(p) u = p ⊙ u − p (pᵀu), computed as p ⊙ (u − pᵀu) (the same in exact
    arithmetic; the centred form keeps a confident network's product accurate, see
    :func:`output_fisher_quad_terms`); regression: u.
    """
    if likelihood is Likelihood.REGRESSION:
        return tangent
    probs = outputs.softmax(dim=1)
    return probs * (tangent - (probs * tangent).sum(dim=1, keepdim=True))


def output_fisher_quad_terms(outputs: Tensor, tangent: Tensor, likelihood: Likelihood) -> Tensor:
    """Terms [N, D] whose sum over D is uᵀ Λ(p) u per sample, each term ≥ 0 for classification.

    Classification: p_i (u_i − ū)², ū = pᵀu (Λ1 = 0, so centring changes nothing in exact
    arithmetic). The plain uᵀ(p ⊙ u) − (pᵀu)² subtracts two numbers of size ‖u‖² to leave one of
    size ε‖u‖² when p is nearly one-hot — in float32 a trained network's θᵀFθ came out negative
    (−5·10⁻³ where the true value is about 10⁻⁴). Regression: u².
    """
    if likelihood is Likelihood.REGRESSION:
        return tangent * tangent
    probs = outputs.softmax(dim=1)
    centred = tangent - (probs * tangent).sum(dim=1, keepdim=True)
    return probs * centred * centred


def output_sqrt_factors(
    outputs: Tensor,
    targets: Tensor,
    likelihood: Likelihood,
    kind: FisherKind,
    *,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Columns s_k with Λ̂ = Σ_k s_k s_kᵀ per sample, shape [K, N, D].

    - TRUE, classification: K = C − 1 columns of :func:`categorical_sqrt_factors` (Λ = diag p −
      p pᵀ has rank C − 1: one back-propagated column fewer than the C of s_c = √p_c (e_c − p));
    - TRUE, regression: s_d = e_d, K = D;
    - MC: s_m = r_m / √M with r_m = e_{y_m} − p (classification) or r_m = ε_m ~ N(0, I);
    - EMPIRICAL: s = e_y − p (classification) or y − f (regression), K = 1.
    """
    outputs = outputs.detach()
    num, dim = outputs.shape
    if kind is FisherKind.TRUE:
        if likelihood is Likelihood.REGRESSION:
            eye = torch.eye(dim, dtype=outputs.dtype, device=outputs.device)
            return eye.unsqueeze(1).expand(dim, num, dim)
        return categorical_sqrt_factors(outputs.softmax(dim=1))
    if kind is FisherKind.EMPIRICAL:
        if likelihood is Likelihood.REGRESSION:
            return (targets - outputs).unsqueeze(0)
        probs = outputs.softmax(dim=1)
        onehot = torch.nn.functional.one_hot(targets, dim).to(outputs.dtype)
        return (onehot - probs).unsqueeze(0)
    if mc_samples < 1:
        raise MemspaceError(f"mc_samples must be >= 1, got {mc_samples}")
    scale = mc_samples**-0.5
    if likelihood is Likelihood.REGRESSION:
        noise = torch.randn(
            (mc_samples, num, dim),
            generator=generator,
            dtype=outputs.dtype,
            device=outputs.device,
        )
        return noise * scale
    probs = outputs.softmax(dim=1)
    labels = torch.multinomial(probs, mc_samples, replacement=True, generator=generator)
    onehot = torch.nn.functional.one_hot(labels.T, dim).to(outputs.dtype)  # [M, N, D]
    return (onehot - probs.unsqueeze(0)) * scale


def exact_column_count(dim: int, likelihood: Likelihood) -> int:
    """How many columns the true output Fisher of one D-dimensional output takes.

    C − 1 for a classifier over C = D classes (:func:`categorical_sqrt_factors`; one for C = 1),
    D for a regressor.
    """
    if likelihood is Likelihood.CLASSIFICATION:
        return max(dim - 1, 1)
    return dim


def categorical_sqrt_factors(probs: Tensor) -> Tensor:
    """C − 1 columns s'_j [C − 1, N, C], Σ_j s'_j s'_jᵀ = diag p − p pᵀ, for each row p of [N, C].

    The C columns s_c = √p_c (e_c − p) square to Λ = diag p − p pᵀ but are dependent
    (Σ_c √p_c s_c = 0), so with d the most probable class, s_d = −Σ_{c≠d} a_c s_c, a_c = √(p_c/p_d),
    and Λ = S (I + a aᵀ) Sᵀ over the other C − 1 columns S. (I + β a aᵀ)² = I + a aᵀ for
    β = 1 / (1 + √(1 + ‖a‖²)), which gives

        s'_j = s_j − β a_j s_d = √p_j (e_j − β e_d − (1 − β) p),   j ≠ d.

    ‖a‖² = Σ_{c≠d} p_c / p_d ≤ C − 1 is formed from the small probabilities, never as 1 − p_d, so
    a confident network's Λ_dd = Σ_{c≠d} p_c (1 − (1 − β) p_c)² + … keeps its relative accuracy.
    One class (C = 1) has Λ = 0: its one column is zero.
    """
    num, classes = probs.shape
    if classes == 1:
        return torch.zeros_like(probs).unsqueeze(0)
    top = probs.argmax(dim=1, keepdim=True)  # d, [N, 1]
    p_top = probs.gather(1, top)
    others = probs.scatter(1, top, 0.0)  # p with p_d zeroed
    beta = 1 / (1 + torch.sqrt(1 + others.sum(dim=1, keepdim=True) / p_top))  # [N, 1]
    columns = torch.diag_embed(torch.ones_like(probs))  # [N, j, i]: e_j
    columns.scatter_add_(
        2, top.unsqueeze(1).expand(num, classes, 1), -beta.unsqueeze(1).expand(num, classes, 1)
    )
    columns -= ((1 - beta) * probs).unsqueeze(1)  # − (1 − β) p
    columns *= probs.sqrt().unsqueeze(2)  # √p_j
    index = torch.arange(classes - 1, device=probs.device)
    kept = (index + (index >= top)).unsqueeze(2)  # per sample, j ≠ d in order [N, C − 1, 1]
    return columns.gather(1, kept.expand(num, classes - 1, classes)).transpose(0, 1)


def sequence_sqrt_factors(
    outputs: Tensor,
    targets: Tensor | None,
    mask: Tensor,
    likelihood: Likelihood,
    kind: FisherKind,
    *,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    exact_columns: bool = True,
) -> Tensor:
    """Columns s_k [K, N, T, V] of the output Fisher of sequence outputs [N, T, V].

    Every position t kept by ``mask`` [N, T] (1 kept, 0 dropped) is a data point, so sample n's
    output Fisher is block-diagonal over its positions, Λ̂_n = ⊕_t m_nt Λ̂(f_nt), and F =
    (1/Σ m) Σ_n J_nᵀ Λ̂_n J_n sums over (sequence, position) pairs.

    - ``exact_columns`` (TRUE): (V − 1)·T columns (V·T for regression outputs), each supported on
      its position: Σ_k s_k s_kᵀ is Λ̂_n exactly;
    - otherwise (MC; TRUE with ``exact_columns=False``): ``mc_samples`` labels drawn at every
      position, one column per draw holding all positions' scores, K = M. Labels at different
      positions are independent given the logits (teacher forcing) and their scores have mean
      zero, so the cross-position terms of s sᵀ vanish in expectation: E Σ_k s_k s_kᵀ = Λ̂_n, an
      unbiased estimate at a cost independent of T (the per-sequence gradient, as in kronfluence);
    - EMPIRICAL: one column of the data labels' scores at every position, K = 1.
    """
    num, length, dim = outputs.shape
    rows = outputs.detach().reshape(num * length, dim)
    row_targets = None if targets is None else targets.reshape(num * length, *targets.shape[2:])
    weight = mask.to(outputs.dtype).reshape(num, length, 1)
    if kind is FisherKind.TRUE and exact_columns:
        base = output_sqrt_factors(rows, row_targets, likelihood, kind)
        per_position = base.shape[0]  # C − 1 for classification, D for regression
        base = base.reshape(per_position, num, length, dim) * weight.sqrt()
        columns = base.new_zeros(per_position, length, num, length, dim)
        for t in range(length):
            columns[:, t, :, t] = base[:, :, t]
        return columns.reshape(per_position * length, num, length, dim)
    sampled = FisherKind.MC if kind is FisherKind.TRUE else kind
    base = output_sqrt_factors(
        rows, row_targets, likelihood, sampled, mc_samples=mc_samples, generator=generator
    )
    return base.reshape(-1, num, length, dim) * weight
