"""Action regularisers, least-action training with resume, and straightening (THEORY.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import jacrev, vmap

from memspace import ActionTerm, ResidualMLP, fit, load_dataset, path_profile, straighten
from memspace.train import latest_checkpoint, load_checkpoint


def _model(depth=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return ResidualMLP(4, 5, depth, 3).to(dtype).eval()


def _data(n=30):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _penalty(name, model, X, y, generator=None, **kw):
    term = ActionTerm(name, model, **kw)
    with term.capture() as record:
        logits = model(X)
    return term(record, logits, y, generator=generator)


def test_kinetic_and_exact_fisher_action_equal_the_profile():
    model, (X, y) = _model(), _data()
    profile = path_profile(model, (X, y))
    kinetic = float(profile.step * (profile.euclidean_speeds**2).sum())
    assert float(_penalty("kinetic", model, X, y)) == pytest.approx(kinetic, rel=1e-12)
    assert float(_penalty("fisher", model, X, y, kind="true")) == pytest.approx(profile.action, rel=1e-10)


def test_fisher_action_gradient_matches_finite_differences_with_fixed_output_fisher():
    model, (X, y) = _model(), _data()
    value = _penalty("fisher", model, X, y, kind="true")
    grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, model.parameters())]
    # finite difference along a random direction, holding Λ(p) at its current value
    direction = [torch.randn_like(p) for p in model.parameters()]
    probs = model(X).softmax(1).detach()

    def action_with_fixed_metric(eps):
        import copy

        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for p, d in zip(shifted.parameters(), direction):
                p += eps * d
        term = ActionTerm("fisher", shifted, kind="true")
        with term.capture() as record:
            logits = shifted(X)
        sq = torch.sqrt(probs).T.unsqueeze(2) * (torch.eye(3, dtype=torch.float64).unsqueeze(1) - probs.unsqueeze(0))
        total = 0.0
        for k in range(3):
            gs = torch.autograd.grad(logits, record.inputs, sq[k], retain_graph=True)
            total += sum(float(((g * v).sum(1) ** 2).mean()) for g, v in zip(gs, record.velocities()))
        return record.step * total

    eps = 1e-5
    numeric = (action_with_fixed_metric(eps) - action_with_fixed_metric(-eps)) / (2 * eps)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    assert analytic == pytest.approx(numeric, rel=1e-5)


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
    return fit(model, split.train, action=action, lam=lam, epochs=epochs, lr=1e-2, batch_size=64,
               val_data=split.test, seed=seed, checkpoint_dir=checkpoint_dir, progress=False)


@pytest.mark.parametrize("action", ["fisher", "kinetic"])
def test_action_term_lowers_the_action(moons, action):
    plain = _train(moons, None, 0.0)
    regularised = _train(moons, action, 1.0)
    key = "fisher_action" if action == "fisher" else "kinetic_action"
    assert regularised.history[-1][key] < 0.7 * plain.history[-1][key]
    assert regularised.history[-1]["train_acc"] > 0.8


def test_resumed_run_equals_uninterrupted(moons, tmp_path):
    full = _train(moons, "jacobian", 0.1, epochs=4, checkpoint_dir=tmp_path / "a")
    _train(moons, "jacobian", 0.1, epochs=2, checkpoint_dir=tmp_path / "b")  # "killed" after 2 epochs
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


def test_straightening_never_reports_a_ratio_below_one(moons):
    trained = _train(moons, None, 0.0, epochs=8).model
    X, y = moons.train
    result = straighten(trained, (X[:200], y[:200]), steps=60, eval_every=20, lr=3e-3)
    assert result.ratio >= 1 - 1e-9
    assert result.action_min <= result.action_trained
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
