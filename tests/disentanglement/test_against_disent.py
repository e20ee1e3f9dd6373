"""The scores against disent's implementation on the same codes and factors (disent: pip install --no-deps)."""

from __future__ import annotations

import numpy as np
import pytest

from memspace.disentanglement import dci_from_importance, histogram_discretize, mig, sap

from disent_loader import load_disent_metrics

DISENT = load_disent_metrics()
pytestmark = pytest.mark.skipif(DISENT is None, reason="disent not installed (requirements-peers.txt)")


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
        matrix = DISENT["_sap"]._compute_score_matrix(codes[train].T, factors[train].T, codes[test].T,
                                                      factors[test].T, continuous)
        ours = sap(codes[train], factors[train], codes[test], factors[test], continuous_factors=continuous)
        assert np.allclose(ours["scores"], matrix, atol=1e-12)
        assert ours["sap"] == pytest.approx(DISENT["_sap"]._compute_avg_diff_top_two(matrix), abs=1e-12)


def test_dci_from_an_importance_matrix_equals_disents():
    rng = np.random.RandomState(1)
    for shape in ((4, 3), (6, 2), (3, 5)):
        importance = rng.rand(*shape) ** 3
        dci = DISENT["_dci"]
        assert dci_from_importance(importance) == pytest.approx(
            (dci._disentanglement(importance), dci._completeness(importance)), abs=1e-12)
