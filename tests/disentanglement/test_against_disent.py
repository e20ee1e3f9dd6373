"""The scores against disent's on the same codes and factors (disent: pip install --no-deps)."""

from __future__ import annotations

import numpy as np
import pytest
from disent_loader import load_disent_metrics

from memspace.disentanglement import (
    dci_from_importance,
    factor_vae_score,
    histogram_discretize,
    mig,
    sap,
)

DISENT = load_disent_metrics()
pytestmark = pytest.mark.skipif(
    DISENT is None, reason="disent not installed (requirements-peers.txt)"
)


@pytest.fixture(scope="module")
def codes_and_factors():
    rng = np.random.RandomState(0)
    factors = np.stack([rng.randint(0, n, size=1500) for n in (3, 6, 10)], 1)
    mixing = np.array([[1.0, 0.2, 0.0, 0.1], [0.0, 1.0, 0.3, 0.0], [0.1, 0.0, 1.0, 0.5]])
    codes = factors @ mixing + 0.3 * rng.randn(1500, 4)
    return codes, factors


def test_discretiser_and_mig_equal_disents(codes_and_factors):
    codes, factors = codes_and_factors
    utils = DISENT["utils"]
    assert np.array_equal(histogram_discretize(codes), utils.histogram_discretize(codes.T).T)
    theirs = DISENT["_mig"]._compute_mig(codes.T, factors.T)["mig.discrete_score"]
    assert mig(codes, factors)["mig"] == pytest.approx(theirs, abs=1e-12)


def test_sap_equals_disents_in_both_modes(codes_and_factors):
    codes, factors = codes_and_factors
    train, test = slice(0, 1000), slice(1000, 1500)
    for continuous in (True, False):
        matrix = DISENT["_sap"]._compute_score_matrix(
            codes[train].T, factors[train].T, codes[test].T, factors[test].T, continuous
        )
        ours = sap(
            codes[train], factors[train], codes[test], factors[test], continuous_factors=continuous
        )
        assert np.allclose(ours["scores"], matrix, atol=1e-12)
        assert ours["sap"] == pytest.approx(
            DISENT["_sap"]._compute_avg_diff_top_two(matrix), abs=1e-12
        )


def test_dci_from_an_importance_matrix_equals_disents():
    rng = np.random.RandomState(1)
    for shape in ((4, 3), (6, 2), (3, 5)):
        importance = rng.rand(*shape) ** 3
        dci = DISENT["_dci"]
        assert dci_from_importance(importance) == pytest.approx(
            (dci._disentanglement(importance), dci._completeness(importance)), abs=1e-12
        )


class _FactorsAsObservations:
    """A ground-truth set whose 'images' are the factor vectors.

    Both libraries' FactorVAE samplers run on it (ours through ``sample_factors``/``render``,
    disent's through its DisentDataset interface).
    """

    factor_sizes = (3, 6, 10, 8)

    def __init__(self):
        self.gt_data = self
        self.num_factors = len(self.factor_sizes)

    def sample_factors(self, n, rng=None):
        rng = rng if rng is not None else np.random  # disent samples with the global generator
        return np.stack([rng.randint(size, size=n) for size in self.factor_sizes], 1)

    def render(self, factors):
        return np.asarray(factors, dtype=np.float64)

    def dataset_batch_from_factors(self, factors, mode="input"):
        return self.render(factors)

    def dataset_sample_batch(self, n, mode="input"):
        return self.render(self.sample_factors(n))


@pytest.mark.parametrize("code", ["disentangled", "partial"])
def test_factor_vae_end_to_end_agrees_with_disents_within_sampling_noise(code):
    """Same sampler semantics, other random draws: the accuracies agree to a few standard errors."""
    data = _FactorsAsObservations()
    noise = np.random.RandomState(7)

    def encode(observations):
        obs = np.asarray(observations, dtype=np.float64)
        scaled = obs / np.array(data.factor_sizes) + 0.02 * noise.randn(*obs.shape)
        if (
            code == "partial"
        ):  # factors 0 and 1 share one code and the other is noise: one of them is misread
            scaled = np.concatenate(
                [scaled[:, :1] + scaled[:, 1:2], noise.randn(len(obs), 1), scaled[:, 2:]], 1
            )
        return scaled

    sizes = dict(batch_size=32, num_train=400, num_eval=400, num_variance_estimate=2000)
    ours = factor_vae_score(data, encode, prune_threshold=0.0, seed=3, **sizes)["eval_accuracy"]
    np.random.seed(3)
    theirs = DISENT["_factor_vae"].metric_factor_vae(data, lambda x: encode(x), **sizes)[
        "factor_vae.eval_accuracy"
    ]
    if code == "disentangled":
        assert ours == theirs == 1.0
    else:
        assert 0.5 < ours < 0.95 and abs(ours - theirs) < 0.08, (ours, theirs)
