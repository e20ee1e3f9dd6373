"""Results people look at from Python.

Typed measures checked on read, and for every public result a concise repr, an HTML repr and a plot
that draws the report's figure (on the caller's axes when given).
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from memspace import (
    FisherOperator,
    MemspaceError,
    ResidualMLP,
    block_sensitivity,
    load_dataset,
    predictive_path,
)
from memspace.studies import StudySummary, measure_network
from memspace.studies.results import SCHEMA_VERSION, NetworkMeasures


@pytest.fixture(scope="module")
def moons_net():
    split = load_dataset("moons", seed=0)
    torch.manual_seed(0)
    return ResidualMLP(2, 6, 3, 2).eval(), split


def test_measures_are_typed_round_trip_and_are_checked_on_read(moons_net):
    model, split = moons_net
    measures = measure_network(model, split, max_points=64, top_k=3)
    assert isinstance(measures, NetworkMeasures) and measures.schema == SCHEMA_VERSION
    assert measures.gap == pytest.approx(measures.train_acc - measures.test_acc)
    stored = json.loads(json.dumps(measures.to_dict()))  # what metrics.json holds
    assert NetworkMeasures.from_dict(stored) == measures
    older = {k: v for k, v in stored.items() if k != "schema"}  # written before the schema field
    assert NetworkMeasures.from_dict(older).fisher_trace == measures.fisher_trace
    with pytest.raises(MemspaceError, match="schema 2"):
        NetworkMeasures.from_dict({**stored, "schema": SCHEMA_VERSION + 1}, "run/metrics.json")
    with pytest.raises(MemspaceError, match="lack fisher_trace"):
        NetworkMeasures.from_dict({k: v for k, v in stored.items() if k != "fisher_trace"})
    text = repr(measures)
    assert text.startswith("NetworkMeasures(test_acc=") and "A/A_min=" in text and len(text) < 200
    assert "<table>" in measures._repr_html_() and "Fisher trace" in measures._repr_html_()
    fig = measures.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    plt.close(fig)


def test_paths_have_reprs_and_draw_on_given_axes(moons_net):
    model, split = moons_net
    path = predictive_path(model, split.train)
    assert repr(path).startswith("PredictivePath(A=") and f"L={path.depth}" in repr(path)
    assert "least action A_min" in path._repr_html_()
    fig, axes = plt.subplots(1, 2)
    assert path.plot(ax=axes) is fig and axes[0].lines  # drew on the caller's axes
    plt.close(fig)
    with pytest.raises(MemspaceError, match="2 axes, 1 given"):
        path.plot(ax=plt.gca())
    plt.close("all")
    sens = block_sensitivity(model, split.train)
    assert repr(sens).startswith("BlockSensitivity(L=3") and "block 1" in sens._repr_html_()
    fig = sens.plot()
    assert len(fig.axes) == 3
    plt.close(fig)


def test_the_tap_plan_says_what_it_planned(moons_net):
    model, split = moons_net
    from memspace.fisher import clear_plan_cache

    clear_plan_cache()
    plan = FisherOperator(model, split.train).tap_plan()
    assert repr(plan) == f"TapPlan({len(plan.taps)} tapped layers, 0 parameters on the exact path)"
    again = FisherOperator(model, split.train).tap_plan()
    assert repr(again) == repr(plan)[:-1] + ", from the cache)"


def test_a_study_summary_is_its_json_with_a_report_section_and_figure(demo_run):
    run, _ = demo_run
    metrics = json.loads((run / "metrics.json").read_text())
    summary = StudySummary("robustness", metrics["studies"]["robustness"])
    assert json.loads(json.dumps(summary)) == metrics["studies"]["robustness"]
    assert repr(summary).startswith("StudySummary('robustness', ")
    assert (
        "Robustness ↔ generalization" in summary._repr_html_()
        and "<table>" in summary._repr_html_()
    )
    fig = summary.plot()
    assert isinstance(fig, Figure)
    plt.close(fig)
    with pytest.raises(MemspaceError, match="without ax"):
        summary.plot(ax=object())
    assert StudySummary.from_dict("robustness", metrics["studies"]["robustness"]) == summary
    damaged = {k: v for k, v in metrics["studies"]["robustness"].items() if k != "kendall_pooled"}
    with pytest.raises(MemspaceError, match="robustness study's summary lacks kendall_pooled"):
        StudySummary.from_dict("robustness", damaged, "run/metrics.json")


def test_the_report_refuses_a_study_summary_missing_what_its_section_reads(demo_run, tmp_path):
    from memspace.report import render_report

    run, _ = demo_run
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["studies"]["capacity"]["anchor"]
    with pytest.raises(MemspaceError, match="study 'capacity': the capacity study's summary lacks"):
        render_report(metrics, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
