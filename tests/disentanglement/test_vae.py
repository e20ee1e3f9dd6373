"""The decoder's pull-back metric.

Exact on a product decoder and against a dense reference; a short VAE run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from memspace.disentanglement import DSpritesLike
from memspace.disentanglement.vae import (
    block_diagonality,
    kl_weight,
    latent_groups,
    pullback_metric,
    train_vae,
)


class ProductDecoder(nn.Module):
    """Left half of the image from z[:2] only, right half from z[2:4] only."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Linear(2, 64 * 32), nn.Linear(2, 64 * 32)

    def forward(self, z):
        left = torch.tanh(self.left(z[:, :2])).view(-1, 1, 64, 32)
        right = torch.tanh(self.right(z[:, 2:4])).view(-1, 1, 64, 32)
        return torch.cat([left, right], dim=3)


def test_a_product_decoder_has_an_exactly_block_diagonal_metric():
    torch.manual_seed(0)
    decoder = ProductDecoder().double()
    z = torch.randn(5, 4, dtype=torch.float64)
    G = pullback_metric(decoder, z)
    assert torch.all(G[:, :2, 2:] == 0) and torch.all(G[:, 2:, :2] == 0)
    assert block_diagonality(G, [0, 0, 1, 1])["block_diagonality"] == 1.0
    mixed = block_diagonality(G, [0, 1, 0, 1])["block_diagonality"]
    assert mixed < 1.0
    # against a dense reference: J by finite differences of the logits, Λ = diag(p(1 − p))
    eps, point = 1e-6, z[:1]
    columns = [
        (decoder(point + eps * e) - decoder(point - eps * e)).reshape(-1) / (2 * eps)
        for e in torch.eye(4, dtype=torch.float64)
    ]
    J = torch.stack(columns, 1)
    p = torch.sigmoid(decoder(point).reshape(-1))
    assert torch.allclose(G[0], J.T @ torch.diag(p * (1 - p)) @ J, atol=1e-7)


def test_kl_warmup_is_linear_then_flat():
    assert [kl_weight(4.0, t, 4) for t in range(6)] == [1.0, 2.0, 3.0, 4.0, 4.0, 4.0]
    assert [kl_weight(2.0, t, 0) for t in range(3)] == [2.0, 2.0, 2.0]


def test_a_warmup_trains_a_different_vae_and_is_checked():
    data = DSpritesLike()
    kwargs = dict(steps=3, batch_size=4, latents=3, width=8, depth=2, seed=0, beta=4.0)
    plain = train_vae(data, **kwargs)
    warm = train_vae(data, warmup=100, **kwargs)
    # the first step is the same loss but for β's weight on its KL: the reconstructions agree
    assert warm.reconstruction[0] == pytest.approx(plain.reconstruction[0], rel=1e-12)
    assert warm.kl[0] == pytest.approx(plain.kl[0], rel=1e-12)
    assert warm.kl[-1] != pytest.approx(plain.kl[-1], rel=1e-6)
    with pytest.raises(ValueError, match="warmup"):
        train_vae(data, steps=2, warmup=-1)


def test_latent_groups_and_inactive_latents():
    mi = np.array([[0.9, 0.1], [0.0, 0.01], [0.2, 0.7]])
    assert latent_groups(mi) == [0, -1, 1]
    G = torch.eye(3)[None].repeat(2, 1, 1)
    assert block_diagonality(G, [0, -1, 1])["active"] == 2
    assert np.isnan(block_diagonality(G, [0, 0, -1])["block_diagonality"])  # one group: undefined


def test_a_short_vae_run_learns_and_its_action_term_shrinks_the_path():
    data = DSpritesLike()
    plain = train_vae(data, steps=40, batch_size=16, width=16, depth=2, seed=0)
    assert plain.reconstruction[-1] < plain.reconstruction[0]
    charged = train_vae(data, steps=40, batch_size=16, width=16, depth=2, seed=0, lam=10.0)
    from memspace import block_sensitivity

    z = torch.randn(32, 10)
    plain_action = block_sensitivity(
        plain.model.path, (z, torch.zeros(32, dtype=torch.long)), deletion=False
    ).kinetic_action
    charged_action = block_sensitivity(
        charged.model.path, (z, torch.zeros(32, dtype=torch.long)), deletion=False
    ).kinetic_action
    assert charged_action < plain_action
    with pytest.raises(ValueError, match="steps"):
        train_vae(data, steps=0)


def write_small_dsprites(path, sizes=(3, 2, 2, 4, 4), *, drop=None, seed=0):
    """A complete factor grid rendered by the generator, rows shuffled.

    In the real dSprites file layout.
    """
    generated = DSpritesLike()
    factors = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(
        -1, 5
    )
    factors = factors[np.random.RandomState(seed).permutation(len(factors))]
    if drop is not None:
        factors = np.delete(factors, drop, axis=0)
    images = generated.render(factors)[:, 0]
    classes = np.concatenate([np.zeros((len(factors), 1), np.int64), factors], 1)
    np.savez_compressed(path, imgs=images, latents_classes=classes)
    return generated, factors


def test_a_stored_grid_renders_its_own_images_by_factor(tmp_path):
    from memspace.disentanglement import DSpritesFile

    generated, _ = write_small_dsprites(tmp_path / "d.npz")
    stored = DSpritesFile(tmp_path / "d.npz")
    assert stored.factor_sizes == (3, 2, 2, 4, 4) and stored.num_images == 192
    factors = stored.sample_factors(50, np.random.RandomState(1))
    assert factors.max(0).tolist() <= [2, 1, 1, 3, 3]
    assert np.array_equal(stored.render(factors), generated.render(factors))
    assert np.array_equal(stored.index_to_factors(stored.factors_to_index(factors)), factors)


@pytest.mark.parametrize(
    "problem, message",
    [
        ("drop", r"not a complete grid .* \[\d, \d, \d, \d, \d\] is missing"),
        ("grey", "must be binary"),
        ("small", "must be 64×64"),
    ],
)
def test_a_stored_set_that_is_not_a_binary_64x64_grid_is_refused(tmp_path, problem, message):
    from memspace._errors import DataError
    from memspace.disentanglement import DSpritesFile

    path = tmp_path / "d.npz"
    write_small_dsprites(path, drop=5 if problem == "drop" else None)
    if problem != "drop":
        with np.load(path) as data:
            images, classes = data["imgs"], data["latents_classes"]
        images = images * 255 if problem == "grey" else images[:, :32, :32]
        np.savez(path, imgs=images, latents_classes=classes)
    with pytest.raises(DataError, match=message):
        DSpritesFile(path)


def test_the_study_runs_on_a_stored_grid_stores_each_model_and_resumes(tmp_path):
    from memspace._runs import RunFolder
    from memspace.disentanglement import DSpritesFile
    from memspace.studies import prepare_study, run_study

    write_small_dsprites(tmp_path / "d.npz")
    config, data = prepare_study(
        "disentanglement",
        "quick",
        data=str(tmp_path / "d.npz"),
        betas=[1.0],
        lams=[0.0, 1.0],
        steps=8,
        num_train=200,
        num_test=100,
        vae_score_points=20,
        metric_points=8,
    )
    assert isinstance(data, DSpritesFile)
    with RunFolder.open(tmp_path / "s", kind="study-disentanglement", config=config) as run:
        summary = run_study("disentanglement", run, config, data)
    assert [(row["beta"], row["lam"]) for row in summary["table"]] == [(1.0, 0.0), (1.0, 1.0)]
    for row in summary["table"]:
        assert (
            0 <= row["mig"] <= 1
            and 0 <= row["dci_disentanglement"] <= 1
            and 0 <= row["beta_vae"] <= 1
        )
    assert np.asarray(summary["traversal"]).shape == (10, 7, 64 * 64)
    assert set(summary["tau_block_diagonality"]) == {"mig", "dci_disentanglement"}
    additivity = summary["additivity"]["numbers"]
    # D² ≤ d_a² + d_b² on the sphere
    assert 0 < additivity["pythagorean_ratio"]["mean"] <= 1 + 1e-12
    cells = (tmp_path / "s" / "cells.jsonl").read_text()
    with RunFolder.open(tmp_path / "s", kind="study-disentanglement", config=config) as run:
        again = run_study(
            "disentanglement", run, config, data, status=lambda m: pytest.fail(f"retrained: {m}")
        )
    assert json.dumps(again["table"]) == json.dumps(summary["table"])  # NaN-aware
    assert (tmp_path / "s" / "cells.jsonl").read_text() == cells
