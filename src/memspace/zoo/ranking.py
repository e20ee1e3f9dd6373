"""Does a complexity measure predict generalization? The literature's evaluation protocols.

Inputs are plain sequences with one entry per trained model: ``measure`` (the complexity
value μ_i), ``gap`` (g_i = train accuracy − test accuracy) and ``hparams``, a mapping
from each hyperparameter name to the sequence of its values over the models.

- :func:`kendall_tau`: Kendall's τ_a (Jiang et al. 2020, "Fantastic generalization
  measures"): τ = Σ_{i≠j} sign(μ_i − μ_j) sign(g_i − g_j) / (N(N−1)); ties count 0 and
  the denominator is not tie-corrected (scipy's ``kendalltau`` is τ_b).
- :func:`granulated_kendall`: Ψ = (1/n) Σ_i ψ_i, ψ_i the mean τ over groups of models that
  differ only in hyperparameter i; groups with fewer than two models are skipped and ψ_i
  divides by the groups used (reported).
- :func:`pgdl_cmi`: the NeurIPS 2020 PGDL competition scorer: the minimum over pairs of
  hyperparameters of the conditional mutual information between the signs of measure
  and gap differences, normalised by the gap-sign entropy, with the scorer's exact
  semantics (all ordered pairs including self-pairs, strict ">", +10⁻¹² inside the
  entropy only, slices weighted equally, |S| = 2, complete and unique grids).
- :func:`robust_sign_error`: Dziugaite et al. 2020 ("In search of robust measures of
  generalization"): per environment (two configurations differing in one hyperparameter)
  the Hoeffding-weighted mean sign error over all cross-seed pairs of runs, kept when its
  effective sample size is ≥ ``min_ess``; mean, 90th percentile, max and CDF of the losses.

docs/theory.md §5.3 restates every definition.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import MemspaceError

__all__ = [
    "RobustSignError",
    "granulated_kendall",
    "granulated_taus",
    "hoeffding_weight",
    "kendall_tau",
    "pgdl_cmi",
    "robust_sign_error",
    "sign_error",
]


def _arrays(measure: Sequence[float], gap: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    mu, g = np.asarray(measure, dtype=float), np.asarray(gap, dtype=float)
    if mu.shape != g.shape or mu.ndim != 1:
        raise MemspaceError(
            f"measure and gap must be sequences of one length, got {mu.shape} and {g.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(g).all()):
        raise MemspaceError(
            "measure and gap must be finite (drop the models where a measure failed)"
        )
    return mu, g


def _hparam_table(hparams: Mapping[str, Sequence[Any]], n: int) -> dict[str, list[Any]]:
    table = {name: list(values) for name, values in hparams.items()}
    for name, values in table.items():
        if len(values) != n:
            raise MemspaceError(f"hyperparameter {name!r} has {len(values)} values for {n} models")
    if not table:
        raise MemspaceError("hparams is empty")
    return table


def kendall_tau(measure: Sequence[float], gap: Sequence[float]) -> float:
    """Kendall's τ_a between measure and gap (module doc); NaN for fewer than two models."""
    mu, g = _arrays(measure, gap)
    n = len(mu)
    if n < 2:
        return math.nan
    agreement = np.sign(mu[:, None] - mu[None, :]) * np.sign(g[:, None] - g[None, :])
    return float(agreement.sum() / (n * (n - 1)))


def granulated_kendall(
    measure: Sequence[float],
    gap: Sequence[float],
    hparams: Mapping[str, Sequence[Any]],
) -> tuple[float, dict[str, float], dict[str, int]]:
    """Ψ and ψ_i of Jiang et al. 2020 (module doc).

    Returns:
        ``(Ψ, {name: ψ_i}, {name: groups used})``; a hyperparameter with no group of two
        or more models has ψ_i = NaN and is left out of Ψ.
    """
    psi, used = {}, {}
    for name, taus in granulated_taus(measure, gap, hparams).items():
        used[name] = len(taus)
        psi[name] = float(np.mean(taus)) if len(taus) else math.nan
    finite = [v for v in psi.values() if not math.isnan(v)]
    return (float(np.mean(finite)) if finite else math.nan), psi, used


def granulated_taus(
    measure: Sequence[float],
    gap: Sequence[float],
    hparams: Mapping[str, Sequence[Any]],
) -> dict[str, np.ndarray]:
    """The τ of every granulation group, per hyperparameter: ψ_i is the mean of ``out[i]``.

    A group of hyperparameter i holds the models that share every other hyperparameter (all
    their seeds); groups with fewer than two models are skipped. Resampling these groups is a
    bootstrap of Ψ that never puts one model twice into a group (a resample of models would,
    and its ties shrink τ towards 0).
    """
    mu, g = _arrays(measure, gap)
    table = _hparam_table(hparams, len(mu))
    out = {}
    for name in table:
        others = [o for o in table if o != name]
        groups: dict[tuple, list[int]] = {}
        for i in range(len(mu)):
            groups.setdefault(tuple(table[o][i] for o in others), []).append(i)
        out[name] = np.array(
            [kendall_tau(mu[idx], g[idx]) for idx in groups.values() if len(idx) >= 2]
        )
    return out


def _entropy_bits(p: np.ndarray) -> float:
    return float(-(p * np.log2(p + 1e-12)).sum())


def _mutual_information_bits(joint: np.ndarray) -> float:
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    mask = joint > 0
    return float((joint[mask] * np.log2(joint[mask] / (pa @ pb)[mask])).sum())


def pgdl_cmi(
    measure: Sequence[float],
    gap: Sequence[float],
    hparams: Mapping[str, Sequence[Any]],
    *,
    possible_values: Mapping[str, Sequence[Any]] | None = None,
    faithful: bool = True,
) -> tuple[float, dict[tuple[str, str], float]]:
    """The PGDL competition score: min over hyperparameter pairs of the normalised CMI (module doc).

    Args:
        measure: the measure's value per model.
        gap: the generalization gap per model.
        hparams: ``{name: value per model}`` (module doc).
        possible_values: each hyperparameter's full grid axis (default: the values seen).
        faithful: ``True`` reproduces the scorer (a complete grid with one model per cell
            is required, slices weighted equally); ``False`` accepts incomplete grids, drops
            empty slices and weights slices by their pair counts (the paper-level definition).

    Returns:
        ``(score, {(h1, h2): CMI})`` over ordered pairs h1 ≠ h2 (the two orders are equal).

    Raises:
        MemspaceError: fewer than two hyperparameters, or (faithful) a grid that is not
            complete or not unique, as the scorer refuses.
    """
    mu, g = _arrays(measure, gap)
    table = _hparam_table(hparams, len(mu))
    if len(table) < 2:
        raise MemspaceError("pgdl_cmi conditions on pairs of hyperparameters: give at least two")
    values = {
        name: list(possible_values[name])
        if possible_values
        else sorted(set(table[name]), key=_order_key)
        for name in table
    }
    if faithful:
        cells: dict[tuple, int] = {}
        for i in range(len(mu)):
            cells[tuple(table[name][i] for name in sorted(table))] = (
                cells.get(tuple(table[name][i] for name in sorted(table)), 0) + 1
            )
        expected = math.prod(len(values[name]) for name in table)
        if len(cells) < expected:
            raise MemspaceError(
                f"pgdl_cmi: the grid is not complete ({len(cells)} of {expected} configurations); "
                "use faithful=False for an incomplete grid"
            )
        if max(cells.values()) > 1:
            raise MemspaceError(
                "pgdl_cmi: the grid is not unique (a configuration has several models); "
                "use faithful=False"
            )
    gap_sign = g[:, None] > g[None, :]  # ordered pairs incl. i = j; ties and self-pairs are "−"
    measure_sign = mu[:, None] > mu[None, :]
    scores = {}
    for h1, h2 in itertools.permutations(table, 2):
        index1 = {v: k for k, v in enumerate(values[h1])}
        index2 = {v: k for k, v in enumerate(values[h2])}
        a = np.array([index1[v] for v in table[h1]])
        b = np.array([index2[v] for v in table[h2]])
        n1, n2 = len(values[h1]), len(values[h2])
        slices = ((a[:, None] * n1 + a[None, :]) * n2 + b[:, None]) * n2 + b[None, :]
        counts = np.zeros((n1 * n1 * n2 * n2, 2, 2))
        np.add.at(
            counts,
            (slices.ravel(), gap_sign.ravel().astype(int), measure_sign.ravel().astype(int)),
            1,
        )
        totals = counts.sum(axis=(1, 2))
        present = totals > 0
        if faithful and not present.all():
            raise MemspaceError("pgdl_cmi: an empty slice (incomplete grid)")
        mi, h, weights = [], [], []
        for k in np.nonzero(present)[0]:
            joint = counts[k] / totals[k]
            mi.append(_mutual_information_bits(joint))
            h.append(_entropy_bits(joint.sum(1)))
            weights.append(totals[k])
        w = np.ones(len(mi)) if faithful else np.asarray(weights)
        scores[(h1, h2)] = float(np.dot(w, mi) / w.sum() / (np.dot(w, h) / w.sum()))
    return min(scores.values()), scores


def _order_key(value: Any) -> tuple:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def sign_error(c1: float, c2: float, g1: float, g2: float) -> float:
    """ℓ = (1 − sign(c1 − c2) sign(g1 − g2)) / 2 ∈ {0, ½, 1}."""
    return (1.0 - np.sign(c1 - c2) * np.sign(g1 - g2)) / 2.0


def hoeffding_weight(
    delta: float | np.ndarray, n_test: int = 10_000, shift: float = 0.0
) -> np.ndarray:
    """W = (w_H − ½)₊ with w_H = (max(0, 1 − 2 exp(−2n (max(Δ − s, 0)/2)²)))².

    Dziugaite et al. 2020.
    """
    x = np.maximum(np.abs(np.asarray(delta, dtype=float)) - shift, 0.0)
    phi = 2.0 * np.exp(-2.0 * n_test * (x / 2.0) ** 2)
    w_h = np.maximum(0.0, 1.0 - phi) ** 2
    return np.maximum(w_h - 0.5, 0.0)


@dataclass
class RobustSignError:
    """What :func:`robust_sign_error` returns.

    Attributes:
        environments: one record per kept environment: ``hyperparameter``, ``v1``, ``v2``,
            ``loss`` (weighted mean sign error), ``ess`` (W²/ΣW²), ``pairs``.
        summary: for ``"all"`` and each hyperparameter: ``mean``, ``p90``, ``max``,
            ``count`` and ``cdf`` (the empirical CDF on 100 bins of [0, 1]).
        dropped: environments with ESS below ``min_ess``.
    """

    environments: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: int = 0


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b))
        except (TypeError, ValueError):
            return False
    return a == b


def robust_sign_error(
    measure: Sequence[float],
    gap: Sequence[float],
    hparams: Mapping[str, Sequence[Any]],
    *,
    seeds: Sequence[Any] | None = None,
    n_test: int = 10_000,
    shift: float = 0.0,
    min_ess: float = 12.0,
    filter_noise: bool = True,
) -> RobustSignError:
    """Environments of Dziugaite et al. 2020 and their weighted sign errors (module doc).

    Args:
        measure: the measure's value per model (a run).
        gap: the generalization gap per model.
        hparams: ``{name: value per model}``; a configuration is the tuple of all
            hyperparameter values; rows of one configuration are repeats.
        seeds: the seed of each row (informational: every cross-seed pair is used, as in
            the reference; seeds are never part of the configuration).
        n_test: test points behind each gap (Hoeffding weighting).
        shift: s, subtracted from |Δg| before weighting.
        min_ess: environments with ESS = W²/ΣW² below this (and not close to it) are dropped.
        filter_noise: ``False`` gives every pair weight 1.
    """
    mu, g = _arrays(measure, gap)
    table = _hparam_table(hparams, len(mu))
    if seeds is not None and len(seeds) != len(mu):
        raise MemspaceError(f"seeds has {len(seeds)} entries for {len(mu)} models")
    names = list(table)
    configs = [tuple(table[name][i] for name in names) for i in range(len(mu))]
    accumulated: dict[tuple, list[float]] = {}
    for r1, r2 in itertools.permutations(range(len(mu)), 2):
        differ = [k for k in range(len(names)) if not _same(configs[r1][k], configs[r2][k])]
        if len(differ) != 1:
            continue
        w = float(hoeffding_weight(g[r1] - g[r2], n_test, shift)) if filter_noise else 1.0
        loss = sign_error(mu[r1], mu[r2], g[r1], g[r2])
        key = (configs[r1], configs[r2], differ[0])
        acc = accumulated.setdefault(key, [0.0, 0.0, 0.0, 0])
        acc[0] += w * loss
        acc[1] += w
        acc[2] += w * w
        acc[3] += 1
    environments, dropped = [], 0
    for (c1, c2, k), (weighted_loss, weight, weight_sq, pairs) in accumulated.items():
        ess = weight**2 / (weight_sq if weight > 1e-12 else 1.0)
        if ess < min_ess and not math.isclose(ess, min_ess):
            dropped += 1
            continue
        environments.append(
            {
                "hyperparameter": names[k],
                "v1": c1[k],
                "v2": c2[k],
                "others": {names[j]: c1[j] for j in range(len(names)) if j != k},
                "loss": weighted_loss / weight,
                "ess": ess,
                "pairs": pairs,
            }
        )
    result = RobustSignError(environments, dropped=dropped)
    for name in ["all", *names]:
        losses = np.array(
            [e["loss"] for e in environments if name == "all" or e["hyperparameter"] == name]
        )
        if len(losses) == 0:
            result.summary[name] = {
                "mean": math.nan,
                "p90": math.nan,
                "max": math.nan,
                "count": 0,
                "cdf": [],
            }
            continue
        edges = np.linspace(0.0, 1.0, 101)
        result.summary[name] = {
            "mean": float(losses.mean()),
            "p90": float(np.percentile(losses, 90)),
            "max": float(losses.max()),
            "count": int(len(losses)),
            "cdf": [float((losses <= edge).mean()) for edge in edges[1:]],
        }
    return result
