"""Modular arithmetic, the grokking models read as paths, and the Fourier structure of embeddings.

The data hold every pair once with an exact train fraction; the spectrum is Parseval's split of
‖E‖² (checked against an explicit basis); a network that implements the Fourier algorithm by
hand is exact on the test pairs and has concentration 1, a random embedding about 2k/p; both
models work with the predictive path and the Fisher engine as they are (against the dense
float64 reference).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from memspace import FisherOperator, MemspaceError, modular_arithmetic, predictive_path
from memspace.fisher.reference import dense_fisher
from memspace.paths import (
    ModularMLP,
    ModularTransformer,
    embedding_matrix,
    fourier_concentration,
    fourier_spectrum,
)


@pytest.mark.parametrize("op, rule", [("+", lambda a, b: a + b), ("-", lambda a, b: a - b)])
def test_every_pair_once_the_fraction_exact_and_seeded(op, rule):
    p = 11
    split = modular_arithmetic(p, op, train_fraction=0.3, seed=4)
    (xtr, ytr), (xte, yte) = split.train, split.test
    assert len(xtr) == math.floor(0.3 * p * p) and len(xtr) + len(xte) == p * p
    assert len(modular_arithmetic(113, op).train[0]) == 3830  # Nanda et al.'s split size
    pairs = torch.cat([xtr, xte])[:, :2].tolist()
    assert sorted(map(tuple, pairs)) == [(a, b) for a in range(p) for b in range(p)]
    x, y = torch.cat([xtr, xte]), torch.cat([ytr, yte])
    assert (x[:, 2] == p).all() and x.dtype == torch.int64 and split.num_classes == p
    assert torch.equal(y, rule(x[:, 0], x[:, 1]) % p)
    again = modular_arithmetic(p, op, train_fraction=0.3, seed=4)
    assert torch.equal(again.train[0], xtr)
    assert not torch.equal(modular_arithmetic(p, op, train_fraction=0.3, seed=5).train[0], xtr)
    assert torch.equal(
        modular_arithmetic(7, "*").train[1],
        (lambda t: t[:, 0] * t[:, 1] % 7)(modular_arithmetic(7, "*").train[0]),
    )


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(p=1), "modulus"),
        (dict(p=7, op="/"), "operation"),
        (dict(p=3, train_fraction=0.01), "no training"),
    ],
)
def test_bad_modular_arguments_are_refused(kwargs, word):
    p = kwargs.pop("p")
    with pytest.raises(MemspaceError, match=word):
        modular_arithmetic(p, **kwargs)


@pytest.mark.parametrize("p", [7, 8])
def test_the_spectrum_is_the_projection_on_an_orthonormal_fourier_basis(p):
    rng = np.random.default_rng(0)
    E = rng.standard_normal((p, 5))
    x = np.arange(p)
    basis = [np.ones(p) / math.sqrt(p)]
    groups = [[0]]
    for k in range(1, p // 2 + 1):
        if 2 * k == p:
            basis.append(np.cos(np.pi * x) / math.sqrt(p))
            groups.append([len(basis) - 1])
        else:
            basis += [
                math.sqrt(2 / p) * np.cos(2 * np.pi * k * x / p),
                math.sqrt(2 / p) * np.sin(2 * np.pi * k * x / p),
            ]
            groups.append([len(basis) - 2, len(basis) - 1])
    B = np.stack(basis)
    np.testing.assert_allclose(B @ B.T, np.eye(p), atol=1e-12)
    coefficients = B @ E
    expected = [float((coefficients[g] ** 2).sum()) for g in groups]
    spectrum = fourier_spectrum(E)
    np.testing.assert_allclose(spectrum.energy, expected, rtol=1e-12)
    assert spectrum.energy.sum() == pytest.approx(spectrum.total, rel=1e-12)


class FourierAlgorithm(nn.Module):
    """(a + b) mod p by hand: a, b at key frequencies, read out Σ_k cos(w_k(a + b − c))."""

    def __init__(self, p: int, frequencies: list[int]):
        super().__init__()
        x = torch.arange(p, dtype=torch.float64)
        w = 2 * math.pi * torch.tensor(frequencies, dtype=torch.float64) / p
        # the embedding of x: [cos w_k x, sin w_k x] for each key frequency
        self.embedding = torch.cat([torch.cos(w * x[:, None]), torch.sin(w * x[:, None])], 1)
        self.w, self.p, self.k = w, p, len(frequencies)

    def forward(self, tokens):
        ea, eb = self.embedding[tokens[:, 0]], self.embedding[tokens[:, 1]]
        ca, sa, cb, sb = ea[:, : self.k], ea[:, self.k :], eb[:, : self.k], eb[:, self.k :]
        cos_sum, sin_sum = ca * cb - sa * sb, sa * cb + ca * sb  # cos, sin of w(a + b)
        c = torch.arange(self.p, dtype=torch.float64)
        return cos_sum @ torch.cos(self.w[:, None] * c) + sin_sum @ torch.sin(self.w[:, None] * c)


def test_the_fourier_algorithm_is_exact_and_fully_concentrated_a_random_embedding_is_not():
    p, frequencies = 23, [3, 7, 10]
    model = FourierAlgorithm(p, frequencies)
    x, y = modular_arithmetic(p, "+").test
    assert (model(x).argmax(1) == y).all()
    spectrum = fourier_spectrum(model.embedding)
    assert sorted(spectrum.key_frequencies(3)) == frequencies
    assert fourier_concentration(model.embedding, k=3) == pytest.approx(1.0, abs=1e-12)
    assert fourier_concentration(model.embedding, k=2) == pytest.approx(2 / 3, abs=1e-12)
    rng = np.random.default_rng(1)
    k, shares = 3, []
    for _ in range(200):
        shares.append(fourier_concentration(rng.standard_normal((p, 64)), k=k))
    # near k/(p/2), a little above (the top k of p//2 frequencies are chosen)
    assert 2 * k / p < np.mean(shares) < 1.35 * 2 * k / p


@pytest.mark.parametrize(
    "make", [lambda p: ModularTransformer(p, 8, 2, 16), lambda p: ModularMLP(p, 8, 2)]
)
def test_both_models_are_paths_the_fisher_engine_reads_exactly(make):
    torch.manual_seed(0)
    p = 5
    model = make(p).double().eval()
    x, y = modular_arithmetic(p, "+", train_fraction=0.5).train
    assert model(x).shape == (len(x), p)
    path = predictive_path(model, (x, y))
    assert path.ratio >= 1 - 1e-9 and path.depth == len(model.blocks)
    assert embedding_matrix(model).shape[0] == p
    F = FisherOperator(model, (x, y), batch_size=len(x))
    dense = dense_fisher(model, x, y)
    torch.testing.assert_close(F.diag(), dense.diagonal(), rtol=1e-9, atol=1e-12)
    v = torch.randn(dense.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, dense @ v, rtol=1e-9, atol=1e-12)
    tapped = {t.weight_name for t in F.tap_plan().taps}
    assert "head.unembed.weight" in tapped or "head.weight" in tapped


def test_a_few_full_batch_steps_lower_the_training_loss():
    torch.manual_seed(0)
    split = modular_arithmetic(13, "+", train_fraction=0.5)
    x, y = split.train
    model = ModularTransformer(13, 16, 2, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1
