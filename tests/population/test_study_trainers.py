"""The studies' own trainers, run as populations, equal the one-at-a-time trainers (float64)."""

from __future__ import annotations

import pytest
import torch

from memspace import ResidualMLP
from memspace.studies.capacity import memorise, memorise_population, random_labels

TOL = 1e-10


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_memorise_population_equals_memorise_cell_by_cell():
    """Cells of several sizes (full batch and mini-batches), with and without λ, stopping apart."""
    g = torch.Generator().manual_seed(0)
    cells = [
        (60, None, 0.0, 0),
        (60, "predictive", 1.0, 1),
        (120, None, 0.0, 2),
        (300, "predictive", 0.5, 3),
        (300, "jacobian", 0.1, 4),
    ]
    data = [(torch.randn(n, 8, generator=g), random_labels(n, 4, s)) for n, _, _, s in cells]

    def make(seed):
        torch.manual_seed(seed)
        return ResidualMLP(8, 16, 3, 4)

    models = [make(seed) for *_, seed in cells]
    together = memorise_population(
        models,
        data,
        actions=[c[1] for c in cells],
        lams=[c[2] for c in cells],
        seeds=[c[3] for c in cells],
        max_steps=300,
        lr=1e-2,
    )
    assert {r.fitted for r in together} == {True, False}
    assert len({r.steps for r in together}) > 1
    for k, (_, action, lam, seed) in enumerate(cells):
        model = make(seed)
        alone = memorise(model, *data[k], action=action, lam=lam, seed=seed, max_steps=300, lr=1e-2)
        assert (alone.fitted, alone.steps) == (together[k].fitted, together[k].steps)
        assert alone.train_acc == together[k].train_acc
        assert max_difference(model.state_dict(), models[k].state_dict()) < TOL
        assert len(alone.snapshots) == len(together[k].snapshots)
        for a, b in zip(alone.snapshots, together[k].snapshots):
            assert max_difference(a, b) < TOL
