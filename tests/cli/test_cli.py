"""The command line: a real end-to-end run, and bad input → one line, exit 2, no traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cli_support import ARCH_FILE, assert_clean_failure, run_cli
from memspace import ResidualMLP


def test_demo_writes_metrics_and_report(demo_run):
    run, printed = demo_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert printed["networks"].keys() == metrics["networks"].keys() == {"plain", "least-action"}
    for net in metrics["networks"].values():
        m = net["measures"]
        assert len(net["history"]) == 3
        assert m["fisher_trace"] > 0 and m["fisher_rao_norm"] > 0
        path = m["predictive_path"]
        assert path["anchor"] == "prior" and len(path["speeds"]) == 9  # the stem's step first
        assert path["ratio"] >= 1 and path["detour_factor"] >= 1
        assert path["unevenness"] * path["detour_factor"] == pytest.approx(path["ratio"])
        stem = m["predictive_path_stem"]
        assert stem["anchor"] == "stem" and len(stem["speeds"]) == 8 and stem["ratio"] >= 1
        assert (
            len(m["sensitivity"]["deletion_kl"]) == 8
            and len(m["predictive_points"]["angle"][0]) == 9
        )
        assert len(m["trajectories"]["points"]) == 9
        assert m["trajectory_length"] > 0 and len(m["trajectory_step_lengths"]) == 3
    html = (run / "report.html").read_text()
    assert html.count("<figure") == 13 and "http://" not in html and "https://" not in html
    assert metrics["studies"].keys() == {
        "capacity",
        "robustness",
        "zoo",
        "disentanglement",
        "grokking",
    }
    grokking = {r["arm"]: r for r in metrics["studies"]["grokking"]["runs"]}
    assert grokking["wd=1"]["test_accuracy"][-1] > 0.9  # the quick version groks with decay
    assert grokking["wd=0"]["test_accuracy"][-1] < 0.1  # and stays at chance without it
    assert "Memorise, then compress" in html
    assert len(metrics["studies"]["disentanglement"]["table"]) == 4
    assert metrics["studies"]["zoo"]["models"] == 8 and metrics["studies"]["zoo"]["leaderboard"]
    assert "Capacity ↔ complexity" in html and "Robustness ↔ generalization" in html


def test_existing_output_is_kept_unless_overwrite(demo_run):
    run, _ = demo_run
    before = (run / "metrics.json").read_bytes()
    result = run_cli("demo", "--data", "moons", "--epochs", "1", "--out", str(run), cwd=run.parent)
    assert_clean_failure(result, "already exists", "--overwrite")
    assert (run / "metrics.json").read_bytes() == before


def test_report_rerenders_from_saved_metrics(demo_run, tmp_path):
    run, _ = demo_run
    result = run_cli("report", str(run), "--output", str(tmp_path / "again.html"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "again.html").read_text().count("<figure") == 13
    assert_clean_failure(
        run_cli("report", str(tmp_path / "nowhere"), cwd=tmp_path), "metrics.json not found"
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    assert_clean_failure(
        run_cli("report", str(tmp_path / "broken"), cwd=tmp_path), "corrupt or truncated"
    )


def test_user_text_is_escaped(tmp_path):
    from memspace.report import render_report

    evil = "<script>alert(1)</script>"
    run = {"data": evil, "out": evil}
    measures = {
        "train_acc": 1.0,
        "test_acc": 0.9,
        "gap": 0.1,
        "fisher_rao_norm": 1.0,
        "fisher_trace": 2.0,
        "num_params": 10,
        "top_eigenvalues": [1.0, 0.5],
        "effective_dimension": 2.0,
        "spectral_density": {
            "log10_grid": [-2, 0],
            "mass_per_decade": [1, 1],
            "fraction_near_zero": 0.5,
            "floor": 1e-6,
        },
        "predictive_path": {
            "speeds": [1, 2],
            "action": 2.5,
            "length": 1.5,
            "least_action": 2.0,
            "ratio": 1.25,
            "detour": 1.1,
            "lens_accuracy": [0.5, 0.7, 0.9],
        },
    }
    path = render_report(
        {"run": run, "networks": {evil: {"history": [], "measures": measures}}}, tmp_path / "r.html"
    )
    text = path.read_text()
    assert evil not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_unknown_data_set(tmp_path):
    assert_clean_failure(
        run_cli("demo", "--data", "cifar", "--out", "x", cwd=tmp_path), "unknown data set 'cifar'"
    )
    assert not (tmp_path / "x").exists()


def test_nan_data_file(tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 2))
    X[7, 1] = np.nan
    np.savez(tmp_path / "bad.npz", X=X, y=np.arange(20) % 2)
    assert_clean_failure(
        run_cli("demo", "--data", "bad.npz", "--out", "x", cwd=tmp_path), "NaN/Inf", "row 7"
    )


@pytest.fixture
def user_model(tmp_path):
    (tmp_path / "arch.py").write_text(ARCH_FILE)
    torch.manual_seed(0)
    model = ResidualMLP(2, 6, 3, 2)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    return tmp_path


def test_measure_a_user_model(user_model):
    result = run_cli(
        "measure",
        "--model",
        "model.pt",
        "--arch",
        "arch.py:make",
        "--data",
        "moons",
        "--out",
        "m",
        "--json",
        cwd=user_model,
    )
    assert result.returncode == 0, result.stderr
    measures = json.loads(result.stdout)["networks"]["model"]["measures"]
    assert measures["num_params"] == sum(p.numel() for p in ResidualMLP(2, 6, 3, 2).parameters())
    assert (user_model / "m" / "report.html").exists()


def test_measure_a_model_without_residual_blocks_says_how_to_get_the_path(tmp_path):
    (tmp_path / "flat.py").write_text(
        "from torch import nn\n\ndef make():\n"
        "    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2))\n"
    )
    torch.manual_seed(0)
    save_file(
        nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2)).state_dict(),
        str(tmp_path / "flat.safetensors"),
    )
    result = run_cli(
        "measure",
        "--model",
        "flat.safetensors",
        "--arch",
        "flat.py:make",
        "--data",
        "moons",
        "--out",
        "m",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    measures = json.loads(result.stdout)["networks"]["flat"]["measures"]
    assert measures["fisher_trace"] > 0 and "predictive_path" not in measures
    assert "--blocks" in measures["path_skipped"] and "path skipped" in result.stderr
    wrong = run_cli(
        "measure",
        "--model",
        "flat.safetensors",
        "--arch",
        "flat.py:make",
        "--data",
        "moons",
        "--out",
        "n",
        "--blocks",
        "7",
        cwd=tmp_path,
    )
    assert_clean_failure(wrong, "no module named '7'")
    assert not (tmp_path / "n").exists()  # refused before any work or any folder


def test_measure_bad_inputs(user_model):
    base = ["measure", "--arch", "arch.py:make", "--data", "moons", "--out", "m"]
    assert_clean_failure(
        run_cli(*base, "--model", "missing.safetensors", cwd=user_model), "does not exist"
    )
    (user_model / "corrupt.safetensors").write_bytes(b"\x00garbage")
    assert_clean_failure(
        run_cli(*base, "--model", "corrupt.safetensors", cwd=user_model), "cannot read checkpoint"
    )
    torch.save(ResidualMLP(2, 7, 3, 2).state_dict(), user_model / "other.pt")
    assert_clean_failure(
        run_cli(*base, "--model", "other.pt", cwd=user_model), "does not match the architecture"
    )

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"w": Evil()}, user_model / "evil.pt")
    assert_clean_failure(
        run_cli(*base, "--model", "evil.pt", cwd=user_model), "cannot read checkpoint"
    )
    assert not (user_model / "pwned").exists()
    assert_clean_failure(
        run_cli("measure", "--model", "model.pt", "--arch", "nope", cwd=user_model),
        "MODULE:FACTORY",
    )


def test_train_resumes(tmp_path):
    args = [
        "train",
        "--data",
        "moons",
        "--action",
        "kinetic",
        "--width",
        "6",
        "--depth",
        "3",
        "--out",
        "t",
        "--json",
    ]
    first = run_cli(*args, "--epochs", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args, "--epochs", "3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resumed from epoch 2" in second.stderr
    assert [h["epoch"] for h in json.loads(second.stdout)] == [1, 2, 3]
    assert_clean_failure(
        run_cli("train", "--action", "magic", "--out", "u", cwd=tmp_path), "unknown action"
    )


def test_a_quick_study_runs_reports_and_resumes(tmp_path):
    first = run_cli("study", "robustness", "--quick", "--out", "s", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["layers"][0] == "stem" and summary["layers"][-1] == "head"
    assert len(summary["error"]) == len(summary["layers"]) and summary["columns"][0] == "rnd"
    assert (tmp_path / "s" / "report.html").read_text().count("<figure") == 2
    assert_clean_failure(
        run_cli("study", "robustness", "--quick", "--out", "s", cwd=tmp_path), "already exists"
    )
    cells = (tmp_path / "s" / "cells.jsonl").read_text()
    (
        tmp_path / "s" / "metrics.json"
    ).unlink()  # as if killed before the end: the finished cell is reused
    again = run_cli("study", "robustness", "--quick", "--out", "s", "--json", cwd=tmp_path)
    assert (
        again.returncode == 0 and "resuming" in again.stderr and "training seed" not in again.stderr
    )
    assert json.loads(again.stdout)["error"] == summary["error"]
    assert (tmp_path / "s" / "cells.jsonl").read_text() == cells


def test_help_explains_options_with_defaults(tmp_path):
    result = run_cli("demo", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert (
        "digits" in result.stdout
        and "runs/demo" in result.stdout
        and "--overwrite" in result.stdout
    )
