"""Additivity of least action over independent factors: the spherical Pythagorean law, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memspace._errors import DataError
from memspace.disentanglement import (
    marginal_probabilities,
    path_action,
    product_distance,
    product_task,
)
from memspace.paths import fisher_rao_distance


def simplex(*shape, generator):
    return torch.rand(*shape, generator=generator, dtype=torch.float64).add(0.05).log().softmax(-1)


def product(p_a, p_b):
    return torch.einsum("...a,...b->...ab", p_a, p_b).flatten(-2)


def test_the_distance_between_products_obeys_the_spherical_pythagorean_law():
    g = torch.Generator().manual_seed(0)
    p_a, q_a, p_b, q_b = (
        simplex(200, 3, generator=g),
        simplex(200, 3, generator=g),
        simplex(200, 4, generator=g),
        simplex(200, 4, generator=g),
    )
    d_a, d_b = fisher_rao_distance(p_a.log(), q_a.log()), fisher_rao_distance(p_b.log(), q_b.log())
    joint = fisher_rao_distance(product(p_a, p_b).log(), product(q_a, q_b).log())
    torch.testing.assert_close(joint, product_distance(d_a, d_b), rtol=0, atol=1e-12)
    assert (joint.pow(2) <= d_a.pow(2) + d_b.pow(2) + 1e-12).all()  # sub-additive for finite steps
    assert (joint >= torch.maximum(d_a, d_b) - 1e-12).all()


def test_certainty_from_uniform_costs_less_together_than_apart():
    sizes = (3, 4)
    d_a, d_b = (2 * math.acos(1 / math.sqrt(c)) for c in sizes)  # uniform → one class
    joint = 2 * math.acos(1 / math.sqrt(sizes[0] * sizes[1]))
    got = product_distance(
        torch.tensor(d_a, dtype=torch.float64), torch.tensor(d_b, dtype=torch.float64)
    )
    assert float(got) == pytest.approx(joint, abs=1e-13)
    assert joint**2 < 0.85 * (d_a**2 + d_b**2)  # 6.53 against 8.04


def test_the_action_of_a_fine_product_path_is_additive_to_second_order():
    """A = (1/h) Σ d² over a smooth path of product distributions.

    Sub-additive, → additive as O(h²).
    """
    g = torch.Generator().manual_seed(1)
    start_a, end_a = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(5, 3, generator=g, dtype=torch.float64) * 3,
    )
    start_b, end_b = (
        torch.randn(5, 4, generator=g, dtype=torch.float64),
        torch.randn(5, 4, generator=g, dtype=torch.float64) * 3,
    )

    def excess(depth):
        t = torch.linspace(0, 1, depth + 1, dtype=torch.float64)[None, :, None]
        p_a = (start_a[:, None] * (1 - t) + end_a[:, None] * t).softmax(-1)
        # Different speed profile
        p_b = (start_b[:, None] * (1 - t) ** 2 + end_b[:, None] * t**2).softmax(-1)
        joint = path_action(product(p_a, p_b))["action"]
        return 1 - joint / (path_action(p_a)["action"] + path_action(p_b)["action"])

    coarse, fine = excess(4), excess(64)
    assert 0 < fine < coarse and coarse > 1e-3
    assert fine < coarse * (4 / 64) ** 2 * 4  # the O(h²) rate, with room for the constant


def test_marginals_of_a_joint_prediction():
    # A ∈ {0, 1}, b ∈ {0, 1, 2}
    joint = torch.tensor([[0.1, 0.2, 0.3, 0.05, 0.15, 0.2]], dtype=torch.float64)
    p_a, p_b = marginal_probabilities(joint, (2, 3))
    torch.testing.assert_close(p_a, torch.tensor([[0.6, 0.4]], dtype=torch.float64))
    torch.testing.assert_close(p_b, torch.tensor([[0.15, 0.35, 0.5]], dtype=torch.float64))
    with pytest.raises(DataError, match="needs 6 classes, got 5"):
        marginal_probabilities(joint[:, :5], (2, 3))


def test_the_product_task_is_seeded_and_its_pair_label_is_a_times_cb_plus_b():
    task = product_task(50, (3, 4), dims=2, seed=3)
    again = product_task(50, (3, 4), dims=2, seed=3)
    assert task["X"].shape == (50, 4) and all(np.array_equal(task[k], again[k]) for k in task)
    assert np.array_equal(task["pair"], task["a"] * 4 + task["b"])
    with pytest.raises(DataError):
        product_task(10, (1, 4))
