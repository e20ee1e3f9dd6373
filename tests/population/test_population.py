"""A population trains each member exactly as ``fit`` trains it alone (float64, 1e-10).

Hundreds of steps, every action regulariser, weight decay, per-member learning rates,
members that stop early (by epochs, a target, a step budget), label noise and subsets,
SGD, a member that diverges while the others go on; checkpoints ``fit`` itself resumes,
a population resumed after real SIGKILLs, and the refusals.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from memspace import ResidualMLP
from memspace._errors import MemspaceError
from memspace.population import Member, Population, member_data, train_population
from memspace.train import fit, load_checkpoint

TOL = 1e-10


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)


def toy_data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 0.8).long()
    return X, y


def factory():
    return ResidualMLP(6, 8, 3, 3)


def alone(spec: Member, data, epochs: int, **kwargs):
    torch.manual_seed(spec.seed)
    model = factory()
    result = fit(
        model,
        data,
        action=spec.action,
        lam=spec.lam,
        epochs=epochs,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        batch_size=kwargs.pop("batch_size", 32),
        seed=spec.seed,
        progress=False,
        anchor=spec.anchor,
        **kwargs,
    )
    return model, result


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def train(specs, data, **kwargs):
    population = Population.from_seeds(factory, [s.seed for s in specs])
    kwargs.setdefault("batch_size", 32)
    return train_population(population, data, specs, progress=False, **kwargs)


SPECS = [
    Member(seed=1, epochs=40),
    Member(seed=2, action="predictive", lam=0.2, epochs=40, weight_decay=1e-3),
    Member(seed=3, action="kinetic", lam=0.05, epochs=25, lr=3e-3),
    Member(seed=4, action="jacobian", lam=0.05, epochs=30),
    Member(seed=5, action="predictive-excess", lam=0.3, epochs=40, lr=2e-3, weight_decay=1e-2),
    Member(seed=6, action="predictive", lam=0.05, epochs=12),
    # v2's anchor beside v3's default, in the same call
    Member(seed=7, action="predictive", lam=0.2, epochs=15, anchor="stem"),
    Member(seed=8, action="predictive-excess", lam=0.3, epochs=15, anchor="stem"),
]


@pytest.fixture(scope="module")
def trained():
    torch.set_default_dtype(torch.float64)
    data = toy_data()
    return data, train(SPECS, data, val_data=toy_data(60, seed=1))


def test_every_member_equals_fit_alone_after_hundreds_of_steps(trained):
    data, result = trained
    assert result.stopped == ["epochs"] * len(SPECS)
    for k, spec in enumerate(SPECS):
        model, alone_result = alone(spec, data, spec.epochs, val_data=toy_data(60, seed=1))
        steps = spec.epochs * math.ceil(len(data[0]) / 32)
        assert steps >= 84
        assert max_difference(result.population.state(k), model.state_dict()) < TOL, spec
        ours, theirs = result.histories[k], alone_result.history
        assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs]
        for key in ("batch_loss", "train_loss", "val_loss", "regulariser", "predictive_action"):
            assert ours[-1][key] == pytest.approx(theirs[-1][key], rel=1e-9, abs=1e-12), key
        assert ours[-1]["train_acc"] == theirs[-1]["train_acc"]


def test_the_population_trained_every_member_for_hundreds_of_steps(trained):
    _, result = trained
    assert sum(row["epoch"] for row in (h[-1] for h in result.histories)) * 7 >= 1000


def test_a_member_read_out_is_an_ordinary_network(trained):
    data, result = trained
    member = result.member(2)
    assert isinstance(member.model, ResidualMLP) and not member.model.training
    logits = result.population.logits(data[0][:5])
    assert logits.shape == (len(SPECS), 5, 3)
    assert torch.allclose(member.model(data[0][:5]), logits[2], atol=1e-12)
    scores = result.population.evaluate(data)
    assert scores[2][1] == pytest.approx(result.histories[2][-1]["train_acc"])


def test_a_target_accuracy_stops_a_member_while_the_others_go_on():
    data = toy_data()
    specs = [Member(seed=1, epochs=30, target_acc=0.8, lr=1e-2), Member(seed=2, epochs=30)]
    result = train(specs, data)
    history = result.histories[0]
    assert result.stopped == ["target_acc", "epochs"]
    assert history[-1]["train_acc"] >= 0.8 > max(r["train_acc"] for r in history[:-1])
    assert len(history) < 30 and history[-1]["stopped"] == "target_acc"
    model, _ = alone(specs[0], data, len(history))
    assert max_difference(result.population.state(0), model.state_dict()) < TOL
    model, _ = alone(specs[1], data, 30)
    assert max_difference(result.population.state(1), model.state_dict()) < TOL


def test_a_step_budget_stops_inside_an_epoch_and_leaves_the_others_alone():
    data = toy_data()  # 7 steps per epoch
    budget = Member(seed=1, epochs=10, max_steps=17)
    other = Member(seed=2, epochs=4, action="kinetic", lam=0.1)
    together = train([budget, other], data)
    assert together.stopped == ["max_steps", "epochs"]
    assert together.histories[0][-1]["steps"] == 17 and len(together.histories[0]) == 3
    single = train([budget], data)
    assert max_difference(together.population.state(0), single.population.state(0)) < 1e-12
    # a budget at an epoch's end is fit's epochs
    exact = train([Member(seed=1, epochs=10, max_steps=14)], data)
    model, _ = alone(budget, data, 2)
    assert max_difference(exact.population.state(0), model.state_dict()) < TOL


def test_sgd_members_equal_fit_with_sgd():
    data = toy_data()
    specs = [
        Member(seed=3, epochs=15, lr=0.05),
        Member(seed=4, epochs=9, lr=0.02, weight_decay=1e-3),
    ]
    result = train(specs, data, optimizer="sgd")
    for k, spec in enumerate(specs):
        model, _ = alone(spec, data, spec.epochs, optimizer="sgd")
        assert max_difference(result.population.state(k), model.state_dict()) < TOL


def test_label_noise_and_subsets_are_the_members_own_data():
    data = toy_data()
    specs = [
        Member(seed=1, epochs=6, label_noise=0.3),
        Member(seed=2, epochs=6, train_size=90, label_noise=0.1),
        Member(seed=3, epochs=6),
    ]
    result = train(specs, data, num_classes=3)
    for k, spec in enumerate(specs):
        own = member_data(data, spec, 3)
        model, _ = alone(spec, own, spec.epochs)
        assert max_difference(result.population.state(k), model.state_dict()) < TOL
    noisy = member_data(data, specs[0], 3)
    changed = float(
        (noisy[1] != data[1][torch.randperm(200, generator=torch.Generator().manual_seed(1))])
        .float()
        .mean()
    )
    assert 0.1 < changed < 0.35  # about 2/3 of the 30 % redrawn land on another class
    assert len(member_data(data, specs[1], 3)[0]) == 90


def test_the_labels_prior_is_fit_s_and_different_marginals_are_refused():
    data = toy_data()
    spec = Member(seed=3, action="predictive", lam=0.2, epochs=4)
    result = train([spec], data, prior="labels")
    model, alone_result = alone(spec, data, 4, prior="labels")
    assert max_difference(result.member(0).model.state_dict(), model.state_dict()) < TOL
    assert alone_result.history[-1]["path_anchor"] == "prior"
    noisy = [spec, Member(seed=4, action="predictive", lam=0.2, epochs=4, label_noise=0.5)]
    with pytest.raises(MemspaceError, match="different marginals"):
        train(noisy, data, prior="labels")
    with pytest.raises(MemspaceError, match="member 0: unknown anchor"):
        train([Member(seed=1, action="predictive", lam=0.1, anchor="start")], data)


def test_per_member_training_sets():
    sets = [toy_data(100, seed=s) for s in (5, 6)] + [toy_data(150, seed=7)]
    specs = [Member(seed=s, epochs=5) for s in (1, 2, 3)]
    result = train(specs, sets)
    for k, spec in enumerate(specs):
        model, _ = alone(spec, sets[k], 5)
        assert max_difference(result.population.state(k), model.state_dict()) < TOL


def test_a_diverging_member_is_stopped_by_index_and_the_others_go_on():
    data = toy_data()
    specs = [Member(seed=1, epochs=5), Member(seed=2, epochs=5, lr=1e300), Member(seed=3, epochs=5)]
    notes = []
    result = train(specs, data, log=notes.append)
    assert result.diverged == [1]
    assert result.stopped[1].startswith("diverged: the loss became")
    assert any("member 1" in note for note in notes)
    for k in (0, 2):
        model, _ = alone(specs[k], data, 5)
        assert max_difference(result.population.state(k), model.state_dict()) < TOL
    assert all(torch.isfinite(v).all() for v in result.population.state(1).values())


def test_members_of_another_architecture_are_refused():
    with pytest.raises(
        MemspaceError, match="member 1 has another architecture.*group the members by architecture"
    ):
        Population([ResidualMLP(6, 8, 3, 3), ResidualMLP(6, 9, 3, 3)])
    with pytest.raises(MemspaceError, match="another architecture"):
        Population([ResidualMLP(6, 8, 3, 3), ResidualMLP(6, 8, 4, 3)])
    with pytest.raises(MemspaceError, match="another architecture"):
        Population([ResidualMLP(6, 8, 3, 3), ResidualMLP(6, 8, 3, 3, activation="relu")])


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([Member(lr=0)], "member 0: lr"),
        ([Member(epochs=0)], "member 0: epochs"),
        ([Member(lam=0.1)], "without an action"),
        ([Member(action="fisher", lam=1.0)], "unknown action"),
        ([Member(), Member()], "2 member specifications for a population of 1"),
        ([Member(label_noise=1.5)], "label_noise"),
    ],
)
def test_bad_member_options_are_refused(specs, message):
    population = Population([factory()])
    with pytest.raises(MemspaceError, match=message):
        train_population(population, toy_data(), specs, progress=False)


def test_bad_data_is_refused():
    X, y = toy_data()
    X[3, 2] = float("nan")
    with pytest.raises(MemspaceError, match="NaN"):
        train([Member()], (X, y))
    with pytest.raises(MemspaceError, match="empty"):
        train([Member()], (X[:0], y[:0]))


def test_a_member_folder_is_a_fit_run_that_fit_itself_resumes(tmp_path):
    data = toy_data()
    spec = Member(seed=4, epochs=3, action="predictive", lam=0.1)
    result = train([spec, Member(seed=5, epochs=2)], data, checkpoint_dir=tmp_path / "pop")
    folder = result.folders[0]
    assert folder == tmp_path / "pop" / "member-000"
    assert (folder / "init.safetensors").exists() and (folder / "epoch-0003.safetensors").exists()
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    model = factory()
    load_checkpoint(folder / "epoch-0003.safetensors", model)
    assert max_difference(model.state_dict(), result.population.state(0)) == 0
    # fit continues the member's folder to 6 epochs and lands where 6 epochs alone do
    torch.manual_seed(spec.seed)
    continued = factory()
    extras = spec.extras()
    fit(
        continued,
        data,
        action="predictive",
        lam=0.1,
        epochs=6,
        batch_size=32,
        seed=4,
        checkpoint_dir=folder,
        run_config=extras,
        progress=False,
    )
    reference, _ = alone(spec, data, 6)
    assert max_difference(continued.state_dict(), reference.state_dict()) < TOL


def test_resuming_with_other_members_is_refused(tmp_path):
    data = toy_data()
    train([Member(seed=1, epochs=2)], data, checkpoint_dir=tmp_path / "pop")
    with pytest.raises(MemspaceError, match="other options"):
        train([Member(seed=1, epochs=2, lr=0.01)], data, checkpoint_dir=tmp_path / "pop")
    again = train([Member(seed=1, epochs=3)], data, checkpoint_dir=tmp_path / "pop")
    assert again.resumed_from == [2] and len(again.histories[0]) == 3


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from memspace import ResidualMLP
    from memspace.population import Member, Population, train_population
    torch.set_default_dtype(torch.float64)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 6, generator=g)
    y = (X[:, 0] > 0).long()
    specs = [Member(seed=1, epochs=4), Member(seed=2, epochs=3, action="kinetic", lam=0.1),
             Member(seed=3, epochs=4, target_acc=0.9, lr=1e-2)]
    pop = Population.from_seeds(lambda: ResidualMLP(6, 8, 3, 2), [1, 2, 3])
    train_population(pop, (X, y), specs, batch_size=32, checkpoint_dir=sys.argv[1], progress=False)
    """
)


def run_script(folder: Path, crash: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env.pop("MEMSPACE_TEST_CRASH", None)
    if crash:
        env["MEMSPACE_TEST_CRASH"] = crash
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder)], env=env, capture_output=True, text=True
    )


def test_a_population_killed_at_every_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    reference = run_script(tmp_path / "reference", None)
    assert reference.returncode == 0, reference.stderr
    kills = 0
    while True:
        # the 2nd checkpoint written in each process is killed before its metrics line
        result = run_script(tmp_path / "run", "between-checkpoint-and-metrics:2")
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr
        kills += 1
        assert kills < 20
    assert kills >= 3
    for k in range(3):
        ours, theirs = (
            tmp_path / "run" / f"member-{k:03d}",
            tmp_path / "reference" / f"member-{k:03d}",
        )
        names = sorted(p.name for p in theirs.glob("epoch-*.safetensors"))
        assert sorted(p.name for p in ours.glob("epoch-*.safetensors")) == names
        a, b = factory_for_script(), factory_for_script()
        load_checkpoint(ours / names[-1], a)
        load_checkpoint(theirs / names[-1], b)
        assert max_difference(a.state_dict(), b.state_dict()) == 0, k
        assert (ours / "metrics.jsonl").read_text() == (theirs / "metrics.jsonl").read_text()


def factory_for_script():
    return ResidualMLP(6, 8, 3, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_same_code_runs_on_cuda():
    data = toy_data()
    specs = [Member(seed=1, epochs=3, action="predictive", lam=0.1), Member(seed=2, epochs=3)]
    cpu = train(specs, data)
    population = Population.from_seeds(lambda: factory().cuda(), [1, 2])
    gpu = train_population(
        population, (data[0].cuda(), data[1].cuda()), specs, batch_size=32, progress=False
    )
    for k in range(2):
        ours = {n: v.cpu() for n, v in gpu.population.state(k).items()}
        assert max_difference(ours, cpu.population.state(k)) < 1e-8


class WithSpare(ResidualMLP):
    def __init__(self):
        super().__init__(6, 8, 3, 3)
        self.spare = torch.nn.Linear(2, 2)


def test_a_parameter_outside_the_loss_is_refused_and_a_frozen_one_is_kept():
    data = toy_data()
    with pytest.raises(MemspaceError, match="parameter spare.weight takes no part in the loss"):
        train_population([WithSpare(), WithSpare()], data, [Member(), Member()], progress=False)
    models = [WithSpare(), WithSpare()]
    for model in models:
        model.spare.requires_grad_(False)
    before = models[1].spare.weight.detach().clone()
    result = train_population(models, data, [Member(epochs=2), Member(epochs=2)], progress=False)
    assert torch.equal(result.population.state(1)["spare.weight"], before)


def test_running_statistics_are_each_members_own_even_after_others_stop():
    """BatchNorm's buffers change in the forward: a member alone in a step keeps its updates."""

    def batchnorm_net():
        return torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
        )

    data = toy_data()
    specs = [Member(seed=0, epochs=3), Member(seed=1, epochs=2), Member(seed=2, epochs=4)]
    population = Population.from_seeds(batchnorm_net, [0, 1, 2])
    result = train_population(population, data, specs, batch_size=32, progress=False)
    for k, spec in enumerate(specs):
        torch.manual_seed(spec.seed)
        model = batchnorm_net()
        fit(model, data, epochs=spec.epochs, seed=spec.seed, batch_size=32, progress=False)
        assert max_difference(result.population.state(k), model.state_dict()) < TOL
        assert int(result.population.state(k)["1.num_batches_tracked"]) == 7 * spec.epochs


class TiedWeights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = (
            torch.nn.Linear(4, 4),
            torch.nn.Linear(4, 4),
            torch.nn.Linear(4, 3),
        )
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x.mean(1))))))


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))


class Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.head = torch.nn.GRU(4, 6, batch_first=True), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


class TupleOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(x.mean(1)), x


def sequences():
    g = torch.Generator().manual_seed(3)
    return torch.randn(96, 5, 4, generator=g), torch.randint(3, (96,), generator=g)


@pytest.mark.parametrize("architecture", [TiedWeights, Attention])
def test_models_nobody_here_wrote_train_exactly_as_fit_trains_them(architecture):
    data = sequences()
    specs = [Member(seed=0, epochs=2), Member(seed=1, epochs=1, weight_decay=1e-3)]
    population = Population.from_seeds(architecture, [0, 1])
    with warnings.catch_warnings():  # torch notes attention's missing batching rule
        warnings.simplefilter("ignore")
        result = train_population(population, data, specs, batch_size=32, progress=False)
    for k, spec in enumerate(specs):
        torch.manual_seed(spec.seed)
        model = architecture()
        fit(
            model,
            data,
            epochs=spec.epochs,
            seed=spec.seed,
            weight_decay=spec.weight_decay,
            batch_size=32,
            progress=False,
        )
        assert max_difference(result.population.state(k), model.state_dict()) < TOL


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        (Recurrent, "cannot batch this model.*gru.*one by one with fit"),
        (TupleOutput, "returns tuple, not logits"),
    ],
)
def test_models_a_population_cannot_train_are_refused_by_name(architecture, message):
    population = Population.from_seeds(architecture, [0, 1])
    with pytest.raises(MemspaceError, match=message):
        train_population(
            population, sequences(), [Member(seed=0), Member(seed=1)], batch_size=32, progress=False
        )
