"""Capacity: Cover's closed form, its reproduction by the study's own trainer, thresholds.

Cost per bit, resume.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from memspace._runs import RunFolder
from memspace.studies.capacity import (
    capacity_study,
    capacity_threshold,
    cost_per_bit,
    cover_anchor,
    cover_probability,
    linearly_separable,
    memorise,
)


def test_cover_probability_closed_form():
    for d in (1, 2, 5, 10):
        assert cover_probability(2 * d, d) == 0.5
        assert cover_probability(d, d) == 1.0
    # On a line through the origin: only the two sign-consistent labellings
    assert cover_probability(3, 1) == 0.25
    assert all(cover_probability(n, 4) > cover_probability(n + 1, 4) for n in range(4, 20))


def test_the_linear_program_counts_exactly_covers_separable_labellings():
    rng = np.random.default_rng(0)
    n, d = 6, 2
    X = rng.standard_normal((n, d))  # in general position with probability one
    count = sum(
        linearly_separable(X, np.array(signs, dtype=float))
        for signs in itertools.product((-1, 1), repeat=n)
    )
    assert count == 2 * sum(math.comb(n - 1, k) for k in range(d))  # C(6, 2) = 12 of 64


def test_memorise_stops_once_every_point_is_fitted():
    torch.manual_seed(0)
    X = torch.randn(8, 3, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    model = nn.Linear(3, 2, bias=False).double()
    result = memorise(model, X, y, max_steps=1000, lr=0.5, batch_size=8, check_every=1)
    assert result.fitted and result.train_acc == 1.0 and result.steps < 1000
    assert len(result.snapshots) == 2 + int(math.log2(result.steps)) + (
        result.steps & (result.steps - 1) != 0
    )
    unfittable = memorise(
        nn.Linear(3, 2, bias=False).double(),
        torch.cat([X, X]),
        torch.cat([y, 1 - y]),
        max_steps=50,
        lr=0.5,
        batch_size=16,
    )
    assert not unfittable.fitted and unfittable.steps == 50


def test_the_study_on_a_linear_model_recovers_n_star_at_2d():
    d, trials = 4, 16
    anchor = cover_anchor(d=d, sizes=[4, 6, 8, 10, 12], trials=trials, seed=0)
    # The trainer finds every separator
    assert anchor["fitted_fraction"] == anchor["separable_fraction"]
    for fraction, p in zip(anchor["fitted_fraction"], anchor["cover_probability"]):
        assert abs(fraction - p) <= 3 * math.sqrt(p * (1 - p) / trials) + 1e-9
    assert abs(anchor["n_star_fitted"]["crossing"] - 2 * d) <= 2  # the grid's resolution
    assert anchor["n_star_cover"]["crossing"] == 2 * d


def test_capacity_threshold_and_cost_per_bit():
    assert capacity_threshold([10, 20, 30, 40], [1.0, 0.75, 0.25, 0.0]) == {
        "largest_fitted": 20.0,
        "crossing": 25.0,
    }
    assert capacity_threshold([10, 20], [1.0, 1.0]) == {"largest_fitted": 20.0, "crossing": None}
    bits = [10.0, 20.0, 30.0, 40.0]
    fit = cost_per_bit(bits, [0.5 + 0.02 * b for b in bits])
    assert (
        fit["slope"] == pytest.approx(0.02)
        and fit["intercept"] == pytest.approx(0.5)
        and fit["stderr"] < 1e-12
    )
    assert math.isnan(cost_per_bit([1.0], [2.0])["slope"])


TINY = dict(
    data="moons",
    sizes=[20, 40],
    lambdas=[0.0, 1.0],
    kinds=["random"],
    seeds=[0],
    width=6,
    depth=2,
    max_steps=60,
    lr=1e-2,
    batch_size=64,
    anchor=dict(d=2, sizes=[2, 4, 6], trials=4),
)

SCRIPT = """
import json, sys
from memspace._runs import RunFolder
from memspace.studies.capacity import capacity_study
config = json.loads(sys.argv[2])
with RunFolder.open(sys.argv[1], kind="study-capacity", config=config) as run:
    summary = capacity_study(run, config)
print(json.dumps(summary["table"]))
"""


def test_a_killed_study_resumes_to_the_same_table(tmp_path):
    with RunFolder.open(tmp_path / "whole", kind="study-capacity", config=TINY) as run:
        whole = capacity_study(run, TINY)["table"]
    env = {
        **os.environ,
        "MEMSPACE_TEST_CRASH": "after-rename:4",
    }  # manifest, manifest(+cells), cells 1, cells 2
    killed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "killed"), json.dumps(TINY)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    cells = (tmp_path / "killed" / "cells.jsonl").read_text().splitlines()
    assert 1 <= len(cells) < 5
    env.pop("MEMSPACE_TEST_CRASH")
    resumed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "killed"), json.dumps(TINY)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == json.loads(json.dumps(whole))
