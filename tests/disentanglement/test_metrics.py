"""Disentanglement scores on hand-built cases (answers worked out by hand), the sanity ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memspace import MemspaceError
from memspace.disentanglement import (
    DSpritesLike,
    beta_vae_score,
    dci,
    dci_from_importance,
    factor_vae_score,
    factor_vae_vote_accuracy,
    histogram_discretize,
    mig,
    modularity,
    modularity_from_mi,
    mutual_info_matrix,
    sap,
    sap_from_matrix,
)


def test_the_histogram_discretiser_of_the_reference():
    codes = np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.6]])
    assert histogram_discretize(codes, 3)[:, 0].tolist() == [1, 1, 2, 2, 3, 3]


def test_mutual_information_and_mig_exactly_on_a_small_factor_set():
    # factor a uniform on {0,1,2,3}; code 0 = a (4 values in 4 bins): I = H(a) = ln 4;
    # code 1 = a // 2 (two values): I = ln 2; MIG = (ln 4 − ln 2)/ln 4 = ½
    a = np.repeat(np.arange(4), 25)
    codes = np.stack([a, a // 2], 1).astype(float)
    m = mutual_info_matrix(histogram_discretize(codes, 4), a[:, None])
    assert m[:, 0] == pytest.approx([math.log(4), math.log(2)])
    assert mig(codes, a[:, None], num_bins=4)["mig"] == pytest.approx(0.5)


def test_sap_dci_modularity_and_factor_vae_hand_examples():
    # SPECS.md §5.5: gaps 0.6 and 0.4
    assert sap_from_matrix([[0.9, 0.1], [0.3, 0.6], [0.2, 0.2]]) == pytest.approx(0.5)
    # §5.6: D_i = (0.531004, 0.278072, 0), ρ = (½, ½, 0); C_k = (0.568420, 0.682479), weights (0.55,
    # 0.45)
    d, c = dci_from_importance(np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 0.0]]))
    assert d == pytest.approx(0.4045382, abs=1e-6) and c == pytest.approx(0.6197466, abs=1e-6)
    # §5.7: per code (0.888889, 0.96, 0)
    assert modularity_from_mi([[0.6, 0.2], [0.1, 0.5], [0.0, 0.0]]) == pytest.approx(
        0.616296, abs=1e-6
    )
    # §5.3: c = (0, 1, 1), accuracy (40 + 30 + 2)/80
    classifier, accuracy = factor_vae_vote_accuracy(np.array([[40, 5, 0], [3, 30, 2]]))
    assert classifier.tolist() == [0, 1, 1] and accuracy == pytest.approx(0.9)


def test_dci_and_modularity_sanity_values_of_the_reference():
    eye = np.eye(5) * 5
    assert dci_from_importance(eye) == pytest.approx((1.0, 1.0))
    assert dci_from_importance([[1, 0], [0, 1], [0, 0]]) == pytest.approx((1.0, 1.0))
    assert dci_from_importance(np.zeros((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-7)
    assert dci_from_importance(np.vstack([eye, eye]))[1] == pytest.approx(
        1 - math.log(2) / math.log(10)
    )
    assert dci_from_importance(np.hstack([eye, eye]))[0] == pytest.approx(
        1 - math.log(2) / math.log(10)
    )
    assert modularity_from_mi(np.eye(3)) == 1.0
    assert modularity_from_mi([[1, 0], [0, 1], [0, 0]]) == pytest.approx(2 / 3)
    assert modularity_from_mi(np.zeros((2, 2))) == 0.0
    assert modularity_from_mi(np.vstack([np.eye(5), np.eye(5)])) == 1.0  # redundant codes
    # one code, two factors, with K = 10 factors: δ = (2 − 1)/(1·9) for every code
    assert modularity_from_mi(np.hstack([np.eye(5), np.eye(5)])) == pytest.approx(1 - 1 / 9)
    # K = 3: δ = (2 − 1)/(1·2) = ½ for code 0
    one_code_two_factors = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert modularity_from_mi(one_code_two_factors) == pytest.approx((0.5 + 1.0) / 2)


@pytest.fixture(scope="module")
def ground_truth():
    rng = np.random.RandomState(0)
    factors = rng.randint(0, 10, size=(3000, 5))
    return factors


def test_perfect_rotated_and_duplicated_codes_on_ten_valued_factors(ground_truth):
    y = ground_truth
    perfect = mig(y.astype(float), y)["mig"]
    assert 0.9 <= perfect <= 1.0
    rotation = np.linalg.qr(np.random.RandomState(1).randn(5, 5))[0]
    assert mig(y @ rotation, y)["mig"] < 0.2
    # Two codes share each factor: gap 0
    assert mig(np.hstack([y, y]).astype(float), y)["mig"] <= 0.1
    assert modularity(y.astype(float), y) >= 0.9
    assert modularity(np.hstack([y, y]).astype(float), y) >= 0.9
    assert sap(y.astype(float), y, continuous_factors=True)["sap"] >= 0.9
    assert sap(np.zeros((3000, 5)), y, continuous_factors=True)["sap"] <= 0.2


def test_a_perfect_code_of_a_forty_valued_factor_stays_below_one_under_twenty_bins():
    # orientation has 40 classes; a perfect code binned into 20 equal bins merges pairs of classes:
    # I = ln 20 of H = ln 40, so MIG (the second code carries nothing) = ln 20 / ln 40 ≈ 0.812
    y = np.repeat(np.arange(40), 50)[:, None]
    codes = np.stack([y[:, 0].astype(float), np.zeros(len(y))], 1)
    assert mig(codes, y)["mig"] == pytest.approx(math.log(20) / math.log(40), abs=1e-12)


def test_dci_on_ground_truth_codes(ground_truth):
    y = ground_truth[:600, :3]
    result = dci(y[:400].astype(float), y[:400], y[400:].astype(float), y[400:])
    assert result["disentanglement"] >= 0.9 and result["completeness"] >= 0.9
    assert result["informativeness_test"] >= 0.95


class Identity:
    """A 'data set' whose observations are its factors.

    The reference's own synthetic ground truth.
    """

    factor_sizes = (10, 10, 10)

    def sample_factors(self, n, rng):
        return rng.randint(0, 10, size=(n, 3))

    def render(self, factors):
        return factors.astype(float)


def test_beta_vae_and_factor_vae_scores_of_the_identity_code():
    beta = beta_vae_score(Identity(), lambda x: x, batch_size=5, num_train=300, num_eval=300)
    assert beta["eval_accuracy"] >= 0.9
    factor = factor_vae_score(
        Identity(),
        lambda x: x,
        batch_size=5,
        num_variance_estimate=1000,
        num_train=300,
        num_eval=300,
    )
    assert factor["eval_accuracy"] >= 0.9 and factor["num_active"] == 3
    zeros = factor_vae_score(
        Identity(),
        lambda x: np.zeros((len(x), 3)),
        batch_size=5,
        num_variance_estimate=100,
        num_train=10,
        num_eval=10,
    )
    assert zeros == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active": 0}


def test_bad_codes_get_a_clear_error():
    y = np.zeros((10, 2), dtype=int)
    with pytest.raises(MemspaceError, match="NaN"):
        mig(np.full((10, 2), np.nan), y)
    with pytest.raises(MemspaceError, match="10 rows and factors 9"):
        mig(np.zeros((10, 2)), y[:9])
    with pytest.raises(MemspaceError, match="single value"):
        mig(np.random.RandomState(0).randn(10, 2), y)
    with pytest.raises(MemspaceError, match="integer class indices"):
        mig(np.zeros((10, 2)), y.astype(float))


def test_the_generator_has_dsprites_factor_structure():
    data = DSpritesLike()
    assert data.num_images == 737_280
    index = np.array([0, 1, 31, 32, 737_279])
    factors = data.index_to_factors(index)
    assert factors[1].tolist() == [0, 0, 0, 0, 1] and factors[3].tolist() == [
        0,
        0,
        0,
        1,
        0,
    ]  # posY fastest
    assert factors[-1].tolist() == [2, 5, 39, 31, 31]
    assert (data.factors_to_index(factors) == index).all()
    images = data.render(factors)
    assert (
        images.shape == (5, 1, 64, 64)
        and images.dtype == np.uint8
        and set(np.unique(images)) <= {0, 1}
    )
    assert np.array_equal(images, data.render(factors))  # deterministic
    small, large = data.render(np.array([[0, 0, 0, 16, 16], [0, 5, 0, 16, 16]]))
    # (2·5)², (2·10)²
    assert small.sum() == pytest.approx(100, rel=0.15) and large.sum() == pytest.approx(
        400, rel=0.1
    )
    moved = data.render(np.array([[1, 3, 7, 20, 9]]))[0, 0]
    shifted = data.render(np.array([[1, 3, 7, 21, 9]]))[0, 0]
    # PosX moves x
    assert abs(np.nonzero(shifted)[1].mean() - np.nonzero(moved)[1].mean() - 40 / 31) < 0.3


def _render_on_the_full_grid(data, factors):
    """The rasteriser's definition (module doc) evaluated on all 256 × 256 subsamples."""
    from memspace.disentanglement.data import _inside_polygon

    s = data.supersample
    grid = (np.arange(64 * s) + 0.5) / s
    gx, gy = np.meshgrid(grid, grid)
    images = np.zeros((len(factors), 1, 64, 64), dtype=np.uint8)
    for n, (shape, scale, orientation, px, py) in enumerate(factors):
        size = (0.5 + 0.5 * scale / 5) * 10.0
        theta = 2 * np.pi * orientation / 40
        dx, dy = gx - (12 + 40 * px / 31), gy - (12 + 40 * py / 31)
        u = (np.cos(theta) * dx + np.sin(theta) * dy) / size
        v = (-np.sin(theta) * dx + np.cos(theta) * dy) / size
        if shape == 0:
            mask = (np.abs(u) <= 1) & (np.abs(v) <= 1)
        elif shape == 1:
            mask = u**2 + (v / 0.5) ** 2 <= 1
        else:
            mask = _inside_polygon(u.ravel(), -v.ravel(), data._heart).reshape(u.shape)
        images[n, 0] = mask.reshape(64, s, 64, s).mean(axis=(1, 3)) >= 0.5
    return images


def test_rendering_on_the_bounding_box_equals_the_full_grid_bit_for_bit():
    data = DSpritesLike()
    corners = np.array(
        [
            [shape, scale, orientation, x, y]
            for shape in range(3)
            for scale in (0, 5)
            for orientation in (0, 5, 17)
            for x in (0, 31)
            for y in (0, 31)
        ]
    )
    factors = np.concatenate([corners, data.sample_factors(200, np.random.RandomState(3))])
    assert np.array_equal(data.render(factors), _render_on_the_full_grid(data, factors))
