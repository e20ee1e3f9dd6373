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


def test_a_zoo_group_trains_each_model_as_it_would_be_trained_alone(tmp_path):
    from safetensors.torch import load_file

    from memspace.zoo.runner import architecture_groups, train_group_and_measure

    torch.set_default_dtype(torch.float32)  # the zoo's data are float32
    models = [
        {
            "id": f"m{i}",
            "seed": i,
            "hparams": {
                "width": 8,
                "depth": 2,
                "lr": 1e-2,
                "batch_size": bs,
                "lam": lam,
                "train_size": 300,
                "label_noise": noise,
                "weight_decay": wd,
            },
        }
        for i, (bs, lam, noise, wd) in enumerate(
            [(64, 0.0, 0.0, 0.0), (64, 0.1, 0.2, 1e-3), (32, 0.1, 0.0, 0.0)]
        )
    ]
    stop = {"target_ce": 0.8, "max_epochs": 5}
    together = train_group_and_measure(models, "digits", stop, str(tmp_path), measures=False)
    epochs = {row["epochs"] for row, _ in together}
    assert len(epochs) > 1  # one stops on its target before the others
    for model, (row, _) in zip(models, together):
        alone_dir = tmp_path / model["id"]
        alone_dir.mkdir()
        ((alone, _),) = train_group_and_measure([model], "digits", stop, str(alone_dir), False)
        assert alone["epochs"] == row["epochs"] and alone["converged"] == row["converged"]
        ours = load_file(str(tmp_path / row["final_file"]))
        theirs = load_file(str(alone_dir / alone["final_file"]))
        assert max_difference(ours, theirs) < 1e-5  # float32 batched against unbatched products
    groups = architecture_groups(
        models + [{**models[0], "id": "wide", "hparams": {**models[0]["hparams"], "width": 16}}], 2
    )
    assert [[m["id"] for m in g] for g in groups] == [["m0", "m1"], ["m2"], ["wide"]]


@pytest.mark.parametrize("warmup", [0, 3])
def test_vae_population_equals_train_vae_cell_by_cell(warmup):
    from memspace.disentanglement import DSpritesLike
    from memspace.disentanglement.vae import train_vae, train_vae_population

    dataset = DSpritesLike()
    cells = [(1.0, 0.0, 0), (4.0, 0.5, 1), (2.0, 0.0, 2)]
    kwargs = dict(steps=4, batch_size=4, latents=3, width=8, depth=2, warmup=warmup)
    together = train_vae_population(dataset, cells, **kwargs)
    for k, (beta, lam, seed) in enumerate(cells):
        alone = train_vae(dataset, beta=beta, lam=lam, seed=seed, **kwargs)
        assert max_difference(alone.model.state_dict(), together[k].model.state_dict()) < TOL
        assert alone.reconstruction == pytest.approx(together[k].reconstruction, rel=1e-12)
        assert alone.kl == pytest.approx(together[k].kl, rel=1e-10, abs=1e-12)
