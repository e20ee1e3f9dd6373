"""The standard disentanglement scores, with disentanglement_lib's semantics (docs/theory.md §5.4).

On arrays: ``codes`` [N, num_codes] (real), ``factors`` [N, num_factors] (integer class
indices). Mutual information is sklearn's plug-in estimator in nats on codes discretised by
:func:`histogram_discretize` (20 equal-width bins per code between its min and max).

- :func:`mig`: (1/K) Σ_k (m_(1)k − m_(2)k) / H_k, the gap between the two codes most
  informative about factor k, over its entropy.
- :func:`sap`: mean over factors of the gap between the top two scores of a codes × factors
  matrix: per-code LinearSVC accuracy (discrete factors, the study's default) or R²
  (continuous).
- :func:`dci`: from the impurity importances of a gradient-boosted classifier per factor:
  disentanglement, completeness and informativeness (mean train/test accuracy).
- :func:`modularity` and :func:`explicitness` (Ridgeway & Mozer 2018).
- :func:`beta_vae_score` and :func:`factor_vae_score` need a sampler and an encoder
  (:mod:`.data` and any callable observations → codes).

sklearn's estimators get their options pinned explicitly (their defaults move between versions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import MemspaceError

__all__ = [
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "explicitness",
    "factor_vae_score",
    "factor_vae_vote_accuracy",
    "histogram_discretize",
    "mig",
    "modularity",
    "modularity_from_mi",
    "mutual_info_matrix",
    "sap",
    "sap_from_matrix",
]


def _check(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2:
        raise MemspaceError(
            f"codes and factors must be 2-D [N, dims], got shapes {codes.shape} and {factors.shape}"
        )
    if len(codes) != len(factors):
        raise MemspaceError(f"codes have {len(codes)} rows and factors {len(factors)}")
    if not np.isfinite(codes).all():
        raise MemspaceError("codes contain NaN or Inf")
    if not np.issubdtype(factors.dtype, np.integer):
        raise MemspaceError(f"factors must be integer class indices, got {factors.dtype}")
    return codes.astype(np.float64), factors


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Per code: the bin index (1..num_bins) of each value among equal-width bins from min to max.

    numpy's ``digitize`` against ``histogram``'s edges without the last one, so the maximum
    lands in the last bin (0.1, …, 0.6 in 3 bins → 1, 1, 2, 2, 3, 3); a constant code lands
    in a single bin and carries no information.
    """
    codes = np.asarray(codes, dtype=np.float64)
    out = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram(codes[:, i], num_bins)[1][:-1]
        out[:, i] = np.digitize(codes[:, i], edges)
    return out


def mutual_info_matrix(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """m[i, k] = I(code_i; factor_k) in nats.

    Sklearn's plug-in estimate [num_codes, num_factors].
    """
    from sklearn.metrics import mutual_info_score

    return np.array(
        [
            [
                mutual_info_score(factors[:, k], discrete_codes[:, i])
                for k in range(factors.shape[1])
            ]
            for i in range(discrete_codes.shape[1])
        ]
    )


def _entropies(factors: np.ndarray) -> np.ndarray:
    from sklearn.metrics import mutual_info_score

    return np.array(
        [mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])]
    )


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> dict[str, Any]:
    """Mutual information gap (disentanglement_lib's discretised variant, module doc).

    Returns ``{"mig": score, "per_factor": [...], "mutual_info": m, "entropy": H}``.

    Raises:
        MemspaceError: fewer than two codes (no gap), a factor with one value (H = 0), bad shapes.
    """
    codes, factors = _check(codes, factors)
    if codes.shape[1] < 2:
        raise MemspaceError("MIG needs at least two codes")
    m = mutual_info_matrix(histogram_discretize(codes, num_bins), factors)
    entropy = _entropies(factors)
    if (entropy <= 0).any():
        raise MemspaceError(
            f"factor {int(np.argmax(entropy <= 0))} takes a single value: its entropy is 0"
        )
    top = np.sort(m, axis=0)[::-1]
    per_factor = (top[0] - top[1]) / entropy
    return {
        "mig": float(per_factor.mean()),
        "per_factor": per_factor.tolist(),
        "mutual_info": m.tolist(),
        "entropy": entropy.tolist(),
    }


def sap_from_matrix(scores: np.ndarray) -> float:
    """Mean over factors (columns) of the gap between the two largest scores over codes (rows)."""
    top = np.sort(np.asarray(scores, dtype=float), axis=0)[::-1]
    return float((top[0] - top[1]).mean())


def sap(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray | None = None,
    factors_test: np.ndarray | None = None,
    *,
    continuous_factors: bool = False,
) -> dict[str, Any]:
    """Separated attribute predictability (Kumar et al. 2018), disentanglement_lib's version.

    Discrete (default): S[i, k] = test accuracy of ``LinearSVC(C=0.01, class_weight="balanced")`` on
    code i alone predicting factor k. Continuous: S[i, k] = Cov(z_i, y_k)²/(Var z_i Var y_k)
    (ddof 1), 0 where Var z_i ≤ 1e-12.
    """
    codes, factors = _check(codes, factors)
    if codes.shape[1] < 2:
        raise MemspaceError("SAP needs at least two codes")
    num_codes, num_factors = codes.shape[1], factors.shape[1]
    scores = np.zeros((num_codes, num_factors))
    if continuous_factors:
        for i in range(num_codes):
            var_z = np.var(codes[:, i], ddof=1)
            for k in range(num_factors):
                if var_z > 1e-12:
                    cov = np.cov(codes[:, i], factors[:, k], ddof=1)
                    scores[i, k] = (
                        cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[1, 1] > 0 else 0.0
                    )
    else:
        from sklearn.svm import LinearSVC

        if codes_test is None or factors_test is None:
            raise MemspaceError("discrete SAP needs held-out codes_test and factors_test")
        codes_test, factors_test = _check(codes_test, factors_test)
        for i in range(num_codes):
            for k in range(num_factors):
                if np.var(codes[:, i]) <= 1e-12 or len(np.unique(factors[:, k])) < 2:
                    scores[i, k] = float(
                        np.mean(factors_test[:, k] == np.bincount(factors[:, k]).argmax())
                    )
                    continue
                classifier = LinearSVC(C=0.01, class_weight="balanced", max_iter=1000)
                classifier.fit(codes[:, i : i + 1], factors[:, k])
                scores[i, k] = float(
                    np.mean(classifier.predict(codes_test[:, i : i + 1]) == factors_test[:, k])
                )
    return {"sap": sap_from_matrix(scores), "scores": scores.tolist()}


def _entropy_base(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each column of p (columns sum to 1) in log base ``base`` (scipy's convention)."""
    from scipy.stats import entropy

    return entropy(p, base=base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) from an importance matrix R [num_codes, num_factors]."""
    R = np.abs(np.asarray(importance, dtype=float))
    num_codes, num_factors = R.shape
    per_code = (
        1.0 - _entropy_base((R.T + 1e-11), base=num_factors)
        if num_factors > 1
        else np.ones(num_codes)
    )
    rho = R.sum(1) / R.sum() if R.sum() > 0 else np.ones(num_codes) / num_codes
    disentanglement = float((rho * per_code).sum())
    per_factor = (
        1.0 - _entropy_base(R + 1e-11, base=num_codes) if num_codes > 1 else np.ones(num_factors)
    )
    weights = R.sum(0) / R.sum() if R.sum() > 0 else np.ones(num_factors) / num_factors
    completeness = float((weights * per_factor).sum())
    return disentanglement, completeness


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    seed: int = 0,
    trees: int = 100,
) -> dict[str, Any]:
    """DCI (Eastwood & Williams 2018) with gradient-boosting importances (module doc).

    ``trees``: boosting stages per factor, 100 as in disentanglement_lib; fewer only for smoke runs
    (a quick study's VAEs learn no factors, and 100 stages cost it most of its minute).
    """
    from sklearn.ensemble import GradientBoostingClassifier

    codes_train, factors_train = _check(codes_train, factors_train)
    codes_test, factors_test = _check(codes_test, factors_test)
    importance = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    train_acc, test_acc = [], []
    for k in range(factors_train.shape[1]):
        model = GradientBoostingClassifier(
            n_estimators=trees, learning_rate=0.1, max_depth=3, random_state=seed
        )
        model.fit(codes_train, factors_train[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_acc.append(float(np.mean(model.predict(codes_train) == factors_train[:, k])))
        test_acc.append(float(np.mean(model.predict(codes_test) == factors_test[:, k])))
    disentanglement, completeness = dci_from_importance(importance)
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness_train": float(np.mean(train_acc)),
        "informativeness_test": float(np.mean(test_acc)),
        "importance": importance.tolist(),
    }


def modularity_from_mi(mutual_info: np.ndarray) -> float:
    """Mean over codes of 1 − (Σ_k m_ik² − θ_i)/(θ_i (K − 1)), θ_i = max_k m_ik²; 0 for θ_i = 0."""
    m2 = np.asarray(mutual_info, dtype=float) ** 2
    theta = m2.max(1)
    num_factors = m2.shape[1]
    scores = np.zeros(len(m2))
    ok = theta > 0
    scores[ok] = 1.0 - (m2[ok].sum(1) - theta[ok]) / (theta[ok] * (num_factors - 1))
    return float(scores.mean())


def modularity(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """Modularity (Ridgeway & Mozer 2018) on 20-bin discretised codes."""
    codes, factors = _check(codes, factors)
    return modularity_from_mi(mutual_info_matrix(histogram_discretize(codes, num_bins), factors))


def explicitness(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
) -> dict[str, float]:
    """Mean over factors of the macro ROC-AUC of a logistic regression on standardised codes.

    ``LogisticRegression`` pinned to lbfgs, C = 1, 1000 iterations; the binariser is fitted on
    the training labels (the reference refits it on the test labels and breaks when a class
    is missing there: documented difference).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import label_binarize

    codes_train, factors_train = _check(codes_train, factors_train)
    codes_test, factors_test = _check(codes_test, factors_test)
    mean, std = codes_train.mean(0), codes_train.std(0)
    std[std == 0] = 1.0
    train, test = (codes_train - mean) / std, (codes_test - mean) / std
    scores_train, scores_test = [], []
    for k in range(factors_train.shape[1]):
        model = LogisticRegression(solver="lbfgs", C=1.0, max_iter=1000)
        model.fit(train, factors_train[:, k])
        classes = model.classes_
        for codes_part, labels, out in (
            (train, factors_train[:, k], scores_train),
            (test, factors_test[:, k], scores_test),
        ):
            proba = model.predict_proba(codes_part)
            if len(classes) == 2:
                out.append(float(roc_auc_score(labels == classes[1], proba[:, 1])))
            else:
                out.append(
                    float(
                        roc_auc_score(
                            label_binarize(labels, classes=classes), proba, average="macro"
                        )
                    )
                )
    return {
        "explicitness_train": float(np.mean(scores_train)),
        "explicitness_test": float(np.mean(scores_test)),
    }


def _encode_batches(
    encode: Callable[[np.ndarray], np.ndarray], observations: np.ndarray
) -> np.ndarray:
    codes = np.asarray(encode(observations), dtype=np.float64)
    if codes.ndim != 2 or len(codes) != len(observations) or not np.isfinite(codes).all():
        raise MemspaceError(
            f"the encoder must return finite codes [N, num_codes], got shape {codes.shape}"
        )
    return codes


def _beta_vae_points(dataset, encode, num_points: int, batch_size: int, rng: np.random.RandomState):
    features, labels = [], []
    for _ in range(num_points):
        k = rng.randint(len(dataset.factor_sizes))
        f1 = dataset.sample_factors(batch_size, rng)
        f2 = dataset.sample_factors(batch_size, rng)
        f2[:, k] = f1[:, k]
        z1 = _encode_batches(encode, dataset.render(f1))
        z2 = _encode_batches(encode, dataset.render(f2))
        features.append(np.abs(z1 - z2).mean(0))
        labels.append(k)
    return np.array(features), np.array(labels)


def beta_vae_score(
    dataset,
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    seed: int = 0,
) -> dict[str, float]:
    """BetaVAE score (Higgins et al. 2017).

    Accuracy of a logistic regression predicting the fixed factor.

    ``dataset`` has ``factor_sizes``, ``sample_factors(n, rng)`` and ``render(factors)``;
    ``LogisticRegression`` is pinned (lbfgs, C = 1, 1000 iterations, ``random_state`` drawn
    from the RandomState). Chance is 1/num_factors.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.RandomState(seed)
    x_train, y_train = _beta_vae_points(dataset, encode, num_train, batch_size, rng)
    x_eval, y_eval = _beta_vae_points(dataset, encode, num_eval, batch_size, rng)
    model = LogisticRegression(
        solver="lbfgs", C=1.0, max_iter=1000, random_state=rng.randint(2**31 - 1)
    )
    model.fit(x_train, y_train)
    return {
        "train_accuracy": float(model.score(x_train, y_train)),
        "eval_accuracy": float(model.score(x_eval, y_eval)),
    }


def factor_vae_vote_accuracy(votes: np.ndarray) -> tuple[np.ndarray, float]:
    """The majority-vote classifier: c_j = argmax_k V[k, j]; accuracy Σ_j V[c_j, j] / Σ V."""
    votes = np.asarray(votes)
    classifier = votes.argmax(0)
    return classifier, float(votes[classifier, np.arange(votes.shape[1])].sum() / votes.sum())


def factor_vae_score(
    dataset,
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int = 64,
    num_variance_estimate: int = 10_000,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    prune_threshold: float = 0.05,
    faithful: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """FactorVAE score (Kim & Mnih 2018), disentanglement_lib's version (module doc).

    Codes whose global standard deviation is below ``prune_threshold`` are inactive. Each vote:
    fix one factor over a batch, a = argmin over active codes of local/global variance.
    ``faithful=True`` keeps the reference's quirk (a indexes the active subset, so with pruned
    codes the vote lands in the wrong column); ``faithful=False`` maps a back to its code.
    """
    rng = np.random.RandomState(seed)
    observations = dataset.render(dataset.sample_factors(num_variance_estimate, rng))
    global_var = np.var(_encode_batches(encode, observations), axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    num_codes = len(global_var)
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active": 0}
    active_index = np.nonzero(active)[0]

    def votes(count: int) -> np.ndarray:
        matrix = np.zeros((len(dataset.factor_sizes), num_codes), dtype=np.int64)
        for _ in range(count):
            k = rng.randint(len(dataset.factor_sizes))
            factors = dataset.sample_factors(batch_size, rng)
            factors[:, k] = factors[0, k]
            local = np.var(_encode_batches(encode, dataset.render(factors)), axis=0, ddof=1)
            a = int(np.argmin(local[active] / global_var[active]))
            matrix[k, a if faithful else active_index[a]] += 1
        return matrix

    train_votes = votes(num_train)
    classifier, train_accuracy = factor_vae_vote_accuracy(train_votes)
    eval_votes = votes(num_eval)
    eval_accuracy = float(eval_votes[classifier, np.arange(num_codes)].sum() / eval_votes.sum())
    return {
        "train_accuracy": train_accuracy,
        "eval_accuracy": eval_accuracy,
        "num_active": int(active.sum()),
    }
