"""Action regularisers, least-action training with resume, and straightening (docs/theory.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import jacrev, vmap

from memspace import (
    ActionTerm,
    ResidualMLP,
    block_sensitivity,
    fit,
    load_dataset,
    predictive_path,
    straighten,
)
from memspace.train import latest_checkpoint, load_checkpoint


def _model(depth=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return ResidualMLP(4, 5, depth, 3).to(dtype).eval()


def _data(n=30):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def _penalty(name, model, X, y, generator=None, **kw):
    term = ActionTerm(name, model, **kw)
    with term.capture() as record:
        logits = model(X)
    return term(record, logits, generator=generator)


def test_kinetic_action_equals_the_measured_one():
    model, (X, y) = _model(), _data()
    measured = block_sensitivity(model, (X, y), deletion=False)
    assert float(_penalty("kinetic", model, X, y)) == pytest.approx(
        measured.kinetic_action, rel=1e-12
    )


@pytest.mark.parametrize("name", ["predictive", "predictive-excess"])
def test_predictive_action_gradient_matches_finite_differences(name):
    model, (X, y) = _model(), _data()
    value = _penalty(name, model, X, y)
    grads = torch.autograd.grad(value, list(model.parameters()))
    direction = [torch.randn_like(p) for p in model.parameters()]

    def shifted_action(eps):
        import copy

        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for p, d in zip(shifted.parameters(), direction):
                p += eps * d
        result = predictive_path(shifted, (X, y))
        return result.action - (result.least_action if name == "predictive-excess" else 0.0)

    eps = 1e-6
    numeric = (shifted_action(eps) - shifted_action(-eps)) / (2 * eps)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_the_former_fisher_action_is_refused_with_its_replacement():
    with pytest.raises(ValueError, match="no positive floor; use 'predictive'"):
        ActionTerm("fisher", _model())


def test_jacobian_action_hutchinson_converges():
    model, (X, y) = _model(), _data()
    with torch.no_grad():
        states = model.stream(X)
    exact = 0.0
    for l, block in enumerate(model.blocks):
        jac = vmap(jacrev(lambda s: block.velocity(s.unsqueeze(0)).squeeze(0)))(states[l])
        exact += float(jac.pow(2).sum((1, 2)).mean())
    exact *= model.step
    gen = torch.Generator().manual_seed(0)
    estimates = [float(_penalty("jacobian", model, X, y, generator=gen)) for _ in range(400)]
    assert np.mean(estimates) == pytest.approx(exact, rel=0.05)


def test_unknown_action_name():
    with pytest.raises(ValueError, match="unknown action 'magic'"):
        ActionTerm("magic", _model())


@pytest.fixture(scope="module")
def moons():
    split = load_dataset("moons", seed=0)
    return split


def _train(split, action, lam, epochs=12, seed=0, checkpoint_dir=None):
    torch.manual_seed(seed)
    model = ResidualMLP(2, 8, 6, 2)
    return fit(
        model,
        split.train,
        action=action,
        lam=lam,
        epochs=epochs,
        lr=1e-2,
        batch_size=64,
        val_data=split.test,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        progress=False,
    )


@pytest.mark.parametrize("action", ["predictive", "kinetic"])
def test_action_term_lowers_the_action(moons, action):
    plain = _train(moons, None, 0.0)
    regularised = _train(moons, action, 1.0)
    X = moons.train[0][:256]
    if action == "predictive":
        before, after = (
            predictive_path(r.model, (X, moons.train[1][:256])).action for r in (plain, regularised)
        )
    else:
        before, after = (
            block_sensitivity(r.model, (X, moons.train[1][:256]), deletion=False).kinetic_action
            for r in (plain, regularised)
        )
    assert after < 0.7 * before
    assert regularised.history[-1]["train_acc"] > 0.8
    assert regularised.history[-1]["action_ratio"] >= 1


def test_resumed_run_equals_uninterrupted(moons, tmp_path):
    full = _train(moons, "jacobian", 0.1, epochs=4, checkpoint_dir=tmp_path / "a")
    # "killed" after 2 epochs
    _train(moons, "jacobian", 0.1, epochs=2, checkpoint_dir=tmp_path / "b")
    resumed = _train(moons, "jacobian", 0.1, epochs=4, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from == 2
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 4
    assert latest_checkpoint(tmp_path / "b").name == "epoch-0004.safetensors"


def test_checkpoint_of_another_architecture_is_refused(moons, tmp_path):
    _train(moons, None, 0.0, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_checkpoint(latest_checkpoint(tmp_path), ResidualMLP(2, 9, 6, 2))


def test_straightening_approaches_the_exact_least_action_and_never_passes_it(moons):
    trained = _train(moons, None, 0.0, epochs=8).model
    X, y = moons.train
    result = straighten(trained, (X[:200], y[:200]), steps=60, eval_every=20, lr=3e-3)
    exact = predictive_path(trained, (X[:200], y[:200]))
    assert result.ratio_trained == pytest.approx(exact.ratio, rel=1e-12)
    assert 1 - 1e-9 <= result.ratio_straightened <= result.ratio_trained
    assert result.action_straightened <= result.action_trained
    assert result.kl <= 1e-3
    with torch.no_grad():
        drift = (result.model(X[:200]).softmax(1) - trained(X[:200]).softmax(1)).abs().max()
    assert drift < 0.1
    for a, b in zip(result.model.stem.parameters(), trained.stem.parameters()):
        torch.testing.assert_close(a, b)


def test_fit_accepts_an_optimizer_factory_and_refuses_nan(moons):
    torch.manual_seed(0)
    model = ResidualMLP(2, 6, 3, 2)
    made = []

    def factory(params):
        made.append(torch.optim.SGD(params, lr=0.3, momentum=0.9))
        return made[-1]

    result = fit(model, moons.train, epochs=4, optimizer=factory, progress=False)
    assert len(made) == 1 and made[0].state  # the factory's optimizer did the steps
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    X, y = moons.train
    bad = X.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="training inputs contains 1 NaN/Inf"):
        fit(model, (bad, y), epochs=1, progress=False)
