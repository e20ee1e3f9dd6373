"""The grokking study: schedule, measures, resumption after a kill, and the verdicts' code.

Its measures are checked against closed forms and the dense float64 engine, its resumption by a
kill at a deterministic point. The science (does the complexity fall when the network groks?) is
the full run's, in experiments/e6; these tests check that each number is the quantity it claims
to be and that the verdicts follow from the numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memspace import MemspaceError, fisher_distance, fisher_rao_norm
from memspace._runs import RunFolder
from memspace.data import modular_arithmetic
from memspace.fisher.reference import dense_fisher
from memspace.studies import GROKKING_CONFIGS, checkpoint_measures, grokking_study
from memspace.studies.grokking import (
    build_modular_model,
    checkpoint_schedule,
    grokking_verdicts,
    run_events,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(
    GROKKING_CONFIGS["quick"],
    p=11,
    train_fraction=0.6,
    width=16,
    steps=60,
    checkpoints=6,
    probe_every=10,
    dense_every=20,
    measure_points=24,
    slq_probes=2,
    slq_steps=4,
    noise_samples=2,
)
"""A configuration of seconds: two arms, one seed, 60 steps."""


def test_the_schedule_is_log_spaced_from_zero_to_the_last_step():
    steps = checkpoint_schedule(10000, 30)
    assert steps[0] == 0 and steps[-1] == 10000 and steps == sorted(set(steps))
    assert steps[1:4] == [1, 2, 3]  # every step where the log grid is denser than the integers
    ratios = np.diff(np.log(steps[8:]))
    assert np.allclose(ratios, ratios.mean(), rtol=0.2)  # geometric where integers do not bind
    with pytest.raises(MemspaceError, match="schedule"):
        checkpoint_schedule(0, 5)


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained a few steps on (a + b) mod 11, in float64, with its initialisation."""
    torch.set_default_dtype(torch.float64)
    try:
        split = modular_arithmetic(11, "+", train_fraction=0.6, seed=0)
        model = build_modular_model(TINY, seed=1)
        init = {k: v.detach().clone() for k, v in model.named_parameters()}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0)
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(split.train[0]), split.train[1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_default_dtype(torch.float32)
    return model, split, init


def test_each_fisher_measure_is_the_quantity_it_names(trained):
    model, split, init = trained
    record = checkpoint_measures(model, split, init, TINY, seed=0)
    n = TINY["measure_points"]
    for part, (X, y) in (("train", split.train), ("test", split.test)):
        data = (X[:n], y[:n])
        F = dense_fisher(model, *data).double()
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        delta = theta - torch.cat([init[k].reshape(-1) for k, _ in model.named_parameters()])
        measures = record[part]
        assert measures["fisher_rao_norm"] == pytest.approx(float(theta @ F @ theta), rel=1e-8)
        assert measures["fisher_rao_norm"] == pytest.approx(fisher_rao_norm(model, data), rel=1e-8)
        assert measures["fisher_trace"] == pytest.approx(float(F.trace()), rel=1e-8)
        assert measures["distance_from_init"] == pytest.approx(float(delta @ F @ delta), rel=1e-8)
        assert measures["distance_from_init"] == pytest.approx(
            fisher_distance(model, init, data), rel=1e-8
        )
        logits = model(X)
        accuracy = float((logits.argmax(1) == y).double().mean())
        assert measures["accuracy"] == pytest.approx(accuracy)
        assert measures["loss"] == pytest.approx(
            float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-8
        )
    # SLQ on the train pairs: the effective dimension lies in (0, P], λ_max near the top eigenvalue
    F = dense_fisher(model, split.train[0][:n], split.train[1][:n]).double()
    eigenvalues = torch.linalg.eigvalsh(F)
    assert record["train"]["lambda_max"] == pytest.approx(float(eigenvalues[-1]), rel=0.05)
    assert 0 < record["train"]["effective_dimension"] <= F.shape[0]
    assert "effective_dimension" not in record["test"]  # its cost is spent once, on train
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert record["weight_norm"] == pytest.approx(float(theta.norm()))
    assert sum(record["fourier_spectrum"]) == pytest.approx(1.0, abs=1e-5)  # Parseval


def test_weight_noise_kl_is_half_sigma_squared_trace_at_small_sigma(trained):
    """E KL(p_θ ‖ p_{θ+δ}) = (σ²/2) tr F + O(σ⁴) (docs/theory.md §5.2), within Monte-Carlo error."""
    model, split, init = trained
    config = dict(TINY, noise_sigma=1e-3, noise_samples=64)
    record = checkpoint_measures(model, split, init, config, seed=3)
    for part in ("train", "test"):
        predicted = 0.5 * 1e-6 * record[part]["fisher_trace"]
        assert record[part]["noise_kl"] == pytest.approx(predicted, rel=0.25)


def test_a_segment_is_the_midpoint_fisher_length_and_leaves_the_model_as_it_was(trained):
    from memspace.studies.grokking import _segment_length

    model, split, init = trained
    data = (split.train[0][:24], split.train[1][:24])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    length = _segment_length(model, data, init, seed=0)
    after = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    midpoint = build_modular_model(TINY, seed=1).double()
    midpoint.load_state_dict({k: (init[k] + before[k]) / 2 for k in before})
    F = dense_fisher(midpoint, *data).double()
    delta = torch.cat([(before[k] - init[k]).reshape(-1) for k in before])
    assert length == pytest.approx(math.sqrt(float(delta @ F @ delta)), rel=1e-8)
    assert _segment_length(model, data, before, seed=0) == 0.0  # a zero step, never complex


def _study(out: Path, config: dict, crash: str | None = None) -> subprocess.CompletedProcess:
    """The study in a fresh process (killed at ``crash`` when given), one torch thread."""
    code = (
        "import json, sys, torch; torch.set_num_threads(1)\n"
        "from memspace._runs import RunFolder\n"
        "from memspace.studies import grokking_study\n"
        "config = json.loads(sys.argv[2])\n"
        "with RunFolder.open(sys.argv[1], kind='study-grokking', config=config) as run:\n"
        "    grokking_study(run, config)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MEMSPACE_TEST_CRASH", None)
    if crash:
        env["MEMSPACE_TEST_CRASH"] = crash
    return subprocess.run(
        [sys.executable, "-c", code, str(out), json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _cells(out: Path) -> dict[str, dict]:
    lines = (out / "cells.jsonl").read_text().splitlines()
    return {c["key"]: c for c in map(json.loads, lines)}


def test_a_study_killed_between_a_cell_and_its_state_resumes_to_the_uninterrupted_run(tmp_path):
    whole = _study(tmp_path / "whole", TINY)
    assert whole.returncode == 0, whole.stderr
    # the 9th stored cell of the run is stored, its state is not: the kill lands between them
    killed = _study(tmp_path / "killed", TINY, crash="grokking-cell:9")
    assert killed.returncode == -9, killed.stderr
    before = _cells(tmp_path / "killed")
    assert len(before) == 9
    resumed = _study(tmp_path / "killed", TINY)
    assert resumed.returncode == 0, resumed.stderr
    after, reference = _cells(tmp_path / "killed"), _cells(tmp_path / "whole")
    assert list(after) == list(reference)
    for key, cell in before.items():  # stored checkpoints are not measured again
        assert after[key] == cell
    for key, cell in reference.items():  # and the resumed run retrains to the same numbers
        mine = {k: v for k, v in after[key].items() if k != "seconds"}
        theirs = {k: v for k, v in cell.items() if k != "seconds"}
        assert mine == theirs, key


def test_a_damaged_training_state_is_refused_naming_the_file(tmp_path):
    config = dict(TINY, arms=TINY["arms"][:1], steps=12)
    with RunFolder.open(tmp_path / "run", kind="study-grokking", config=config) as run:
        grokking_study(run, config)
        state = next((tmp_path / "run").glob("state-*.safetensors"))
        state.write_bytes(state.read_bytes()[:100])
        (tmp_path / "run" / "cells.jsonl").write_text("")
        with pytest.raises(MemspaceError, match=f"{state.name}: not a training state"):
            grokking_study(run, config)


def _cell(arm, seed, step, train_acc, test_acc, measure, fourier):
    part = {m: measure for m in ("effective_dimension", "fisher_rao_norm", "fisher_trace")}
    return {
        "arm": arm,
        "seed": seed,
        "step": step,
        "train": {"accuracy": train_acc, **part},
        "test": {"accuracy": test_acc},
        "fourier_concentration": fourier,
    }


def _synthetic(grok_after_peak: bool, action_delay: int = 0) -> list[dict]:
    """Five seeds of runs whose measures rise while memorising and then fall (or the reverse)."""
    cells = []
    for seed in range(5):
        peak = 100 + 10 * seed
        grok = peak + (300 if grok_after_peak else -80) + 7 * seed
        for arm, decay_groks, delay in (
            ("wd=0", False, 0),
            ("wd=1", True, 0),
            ("wd=1+action", True, action_delay),
        ):
            for step in range(0, 2001, 10):
                memorised = min(1.0, step / 50)
                test = float(decay_groks and step >= grok + delay + 5 * seed)
                shape = math.exp(-(((step - peak) / 60) ** 2))
                measure = 1.0 + 10 * shape if step <= peak else 1.0 + 10 * shape - 0.5
                fourier = 0.2 + 0.6 * test
                cells.append(_cell(arm, seed, step, memorised, test, measure, fourier))
    return cells


def test_verdicts_follow_from_the_numbers():
    verdicts = {v["claim"]: v for v in grokking_verdicts(_synthetic(True, action_delay=200))}
    for measure in ("effective dimension", "fisher rao norm", "fisher trace"):
        assert verdicts[f"(g1) rise: {measure}"]["verdict"] == "supported"
        assert verdicts[f"(g1) fall: {measure}"]["verdict"] == "supported"
        assert verdicts[f"(g2) lead: {measure}"]["verdict"] == "supported"
        assert verdicts[f"(g2) lead: {measure}"]["effect"] > 0
    assert verdicts["(g1) no decay"]["verdict"] == "supported"
    assert verdicts["(g4) Fourier"]["verdict"] == "supported"
    g3 = verdicts["(g3) least action"]
    assert g3["verdict"] == "supported" and g3["effect"] > 0 and "slower" in g3["note"]
    # the peak after the transition: the lead is negative, the claim contradicted
    late = {v["claim"]: v for v in grokking_verdicts(_synthetic(False))}
    assert late["(g2) lead: fisher trace"]["verdict"] == "contradicted"
    assert late["(g3) least action"]["verdict"] == "not established"  # the same grok steps


def test_events_mark_memorisation_grokking_and_the_peak():
    cells = [c for c in _synthetic(True) if c["arm"] == "wd=1" and c["seed"] == 0]
    events = run_events(cells)
    assert events["memorised"] == 50 and events["peak"] == 100
    assert events["grokked"] == 400 and events["censored_at"] is None
    never = run_events([c for c in _synthetic(True) if c["arm"] == "wd=0" and c["seed"] == 0])
    assert never["grokked"] is None and never["censored_at"] == 2000
