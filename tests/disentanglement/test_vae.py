"""The decoder's pull-back metric: exact on a product decoder and against a dense reference; a short VAE run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from memspace.disentanglement import DSpritesLike
from memspace.disentanglement.vae import block_diagonality, latent_groups, pullback_metric, train_vae


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
    columns = [(decoder(point + eps * e) - decoder(point - eps * e)).reshape(-1) / (2 * eps)
               for e in torch.eye(4, dtype=torch.float64)]
    J = torch.stack(columns, 1)
    p = torch.sigmoid(decoder(point).reshape(-1))
    assert torch.allclose(G[0], J.T @ torch.diag(p * (1 - p)) @ J, atol=1e-7)


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
    plain_action = block_sensitivity(plain.model.path, (z, torch.zeros(32, dtype=torch.long)),
                                     deletion=False).kinetic_action
    charged_action = block_sensitivity(charged.model.path, (z, torch.zeros(32, dtype=torch.long)),
                                       deletion=False).kinetic_action
    assert charged_action < plain_action
    with pytest.raises(ValueError, match="steps"):
        train_vae(data, steps=0)


def test_the_study_stores_each_model_and_resumes(tmp_path):
    from memspace._runs import RunFolder
    from memspace.studies import prepare_study, run_study

    config, _ = prepare_study("disentanglement", "quick", betas=[1.0], lams=[0.0, 1.0], steps=8, num_train=200,
                              num_test=100, vae_score_points=20, metric_points=8)
    with RunFolder.open(tmp_path / "s", kind="study-disentanglement", config=config) as run:
        summary = run_study("disentanglement", run, config, None)
    assert [(row["beta"], row["lam"]) for row in summary["table"]] == [(1.0, 0.0), (1.0, 1.0)]
    for row in summary["table"]:
        assert 0 <= row["mig"] <= 1 and 0 <= row["dci_disentanglement"] <= 1 and 0 <= row["beta_vae"] <= 1
    assert np.asarray(summary["traversal"]).shape == (10, 7, 64 * 64)
    assert set(summary["tau_block_diagonality"]) == {"mig", "dci_disentanglement"}
    cells = (tmp_path / "s" / "cells.jsonl").read_text()
    with RunFolder.open(tmp_path / "s", kind="study-disentanglement", config=config) as run:
        again = run_study("disentanglement", run, config, None, status=lambda m: pytest.fail(f"retrained: {m}"))
    assert again["table"] == summary["table"] and (tmp_path / "s" / "cells.jsonl").read_text() == cells
