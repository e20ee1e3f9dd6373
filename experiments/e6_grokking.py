"""E6 — grokking: do the Fisher measures rise while a network memorises and fall when it groks?

The grokking study's full configuration (``memspace.studies.grokking``: (a + b) mod 47 with 40 %
of the pairs, a one-block residual MLP of width 128, full-batch AdamW at lr 3·10⁻³ for 12 000
steps; arms weight decay 0, 0.1, 1 and 1 + the prior-anchored least action λ = 0.1; seeds 0–4),
run into ``experiments/e6/run`` (a study run folder: each checkpoint a line of ``cells.jsonl``,
each run's training state beside it, resumed after a kill). The claims (g1)–(g4) are
``GROKKING_PREDICTIONS`` in that module, committed before the run; their verdicts are computed
by ``grokking_verdicts`` from the stored checkpoints.

    python experiments/e6_grokking.py run      # train and measure (resumes), then publish
    python experiments/e6_grokking.py publish  # results.json and the RESULTS.md section
    python experiments/e6_grokking.py run --config anchor --device cuda --out DIR  # p = 113

The CPU study runs at p = 47, where a width-128 MLP groks in a few thousand steps (about 4 ms a
step on one core of the 2-core machine); Nanda et al.'s transformer at p = 113 (3 830 training
pairs) is ``benchmarks/device.sh``'s. One torch thread: the networks are small, and a second
thread only waits on the other core's work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _preregistered import (  # noqa: E402
    commit,
    estimate_text,
    machine,
    verdict_table,
    write_results,
)

from memspace._runs import RunFolder, read_regular  # noqa: E402
from memspace.evaluation import mean_ci  # noqa: E402
from memspace.studies.grokking import (  # noqa: E402
    COMPLEXITY_MEASURES,
    GROKKING_CONFIGS,
    GROKKING_PREDICTIONS,
    grokking_study,
    summarise_grokking,
)

NAME = "e6_grokking"
FOLDER = HERE / "e6"
RUN = FOLDER / "run"
CONFIG = GROKKING_CONFIGS["full"]


def run(config: dict, out: Path = RUN) -> None:
    """Train and measure every (arm, seed) run not yet complete, in ``out``."""
    torch.set_num_threads(1)
    started = time.time()
    write_results(
        out.parent / f"{out.name}-machine.json", {"machine": machine(), "commit": commit()}
    )
    with RunFolder.open(out, kind="study-grokking", config=config) as folder:
        grokking_study(
            folder,
            config,
            status=lambda m: print(f"[{time.time() - started:7.0f} s] {m}", flush=True),
        )


def analyse(cells: list[dict], config: dict) -> dict:
    """The summary (curves, events, verdicts), the runs' completeness, and beside (g1) per arm.

    ``by_arm`` is descriptive, not pre-registered: per arm and measure, the mean over seeds of
    log10(peak / initial) and log10(final / peak) with their intervals — whether a rise and fall
    is grokking's or every arm's.
    """
    summary = summarise_grokking(cells, config)
    complete = [r for r in summary["runs"] if r["steps"][-1] == config["steps"]]
    by_arm: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in summary["runs"]):
        runs = [r for r in summary["runs"] if r["arm"] == arm]
        by_arm[arm] = {}
        for measure in COMPLEXITY_MEASURES:
            events = [r["events"][measure] for r in runs]
            by_arm[arm][measure] = {
                "rise": mean_ci([e["rise"] for e in events]),
                "fall": mean_ci([e["fall"] for e in events]),
                "peak_step": [e["peak"] for e in events],
            }
            by_arm[arm][measure] = {
                k: v.as_dict() if hasattr(v, "as_dict") else v
                for k, v in by_arm[arm][measure].items()
            }
    return {
        "models": len(complete),
        "expected": len(config["arms"]) * len(config["seeds"]),
        "verdicts": summary["verdicts"] if len(complete) == len(summary["runs"]) else [],
        "by_arm": by_arm,
        "runs": summary["runs"],
    }


def _run_machine(out: Path) -> dict[str, str]:
    """The machine and commit the run recorded when it started (this process's otherwise, said)."""
    path = out.parent / f"{out.name}-machine.json"
    if path.is_file():
        return json.loads(read_regular(path, "the run's machine").decode())
    return {"machine": f"{machine()} (the publishing process's)", "commit": commit()}


def _arms(runs: list[dict]) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    return arms


def publish(config: dict, out: Path = RUN, results_file: Path = FOLDER / "results.json") -> dict:
    """``experiments/e6/results.json`` from the stored checkpoints.

    ``cells.jsonl`` is read as it stands (never through a link), so a run still in progress, which
    holds the folder's lock, can be published as interim results.
    """
    text = read_regular(out / "cells.jsonl", "the stored checkpoints").decode()
    cells = [json.loads(line) for line in text.splitlines() if line.strip()]
    results = {
        "experiment": NAME,
        "config": config,
        "predictions": [dict(p.as_dict(), key=k) for k, p in GROKKING_PREDICTIONS.items()],
        **_run_machine(out),
        "cells": len(cells),
        "analysis": analyse(cells, config),
    }
    write_results(results_file, results)
    return json.loads(results_file.read_text())


def section(results: dict) -> str:
    """The RESULTS.md section, written from ``results`` alone."""
    from _preregistered import predictions_table

    cfg, a = results["config"], results["analysis"]
    seconds = sum(r["seconds"] for r in a["runs"])
    lines = [
        "## E6 — grokking through the Fisher lens (pre-registered)",
        "",
        f"Generated by `experiments/e6_grokking.py publish` from `experiments/e6/results.json` "
        f"({a['models']} of {a['expected']} runs complete, {results['cells']} checkpoints; "
        f"{seconds / 60:.0f} min of training and measuring summed; machine: "
        f"{results['machine']}). (a + b) mod {cfg['p']}, {cfg['train_fraction']:.0%} of the "
        f"pairs for training; a {cfg['model']} of width {cfg['width']} and depth {cfg['depth']}; "
        f"full-batch AdamW, lr {cfg['lr']:g}, betas {cfg['betas']}, "
        f"{cfg['steps']} steps; arms "
        + ", ".join(f"{arm['name']}" for arm in cfg["arms"])
        + f"; seeds {cfg['seeds']}. Checkpoints: {cfg['checkpoints']} log-spaced, plus one every "
        f"{cfg['dense_every']} steps while the test accuracy is in [0.02, 0.98]; Fisher measures "
        f"on {cfg['measure_points']} train and {cfg['measure_points']} test pairs (true Fisher). "
        "Intervals: 95 % percentile bootstrap over seeds.",
        "",
        *predictions_table(results["predictions"]),
    ]
    if a["models"] < a["expected"]:
        lines += [
            f"**Running — {a['models']} of {a['expected']} runs complete.** The verdicts are "
            "read when every run is in; `python experiments/e6_grokking.py run` resumes.",
            "",
        ]
    else:
        lines += verdict_table(a["verdicts"])
        lines += [
            "",
            "### Beside (g1), every arm (descriptive, not pre-registered)",
            "",
            "Whether a measure's rise and fall belongs to grokking or to every arm: per arm, the "
            "mean over seeds of log10(peak / initial) and log10(final / peak), 95 % intervals, "
            "and the steps of the peaks.",
            "",
            "| arm | measure | rise | fall | peak steps |",
            "|---|---|---|---|---|",
        ]
        for arm, measures in a.get("by_arm", {}).items():
            for measure, e in measures.items():
                rise, fall = (estimate_text(e[k], "{:+.2f}") for k in ("rise", "fall"))
                name = measure.replace("_", " ")
                lines.append(f"| {arm} | {name} | {rise} | {fall} | {e['peak_step']} |")
        silent = [
            arm
            for arm, runs in _arms(a["runs"]).items()
            if all(r["events"][COMPLEXITY_MEASURES[0]]["grokked"] is None for r in runs)
        ]
        falls = [
            f"{measure.replace('_', ' ')} in {arm}"
            for arm in silent
            for measure in COMPLEXITY_MEASURES
            if (a["by_arm"][arm][measure]["fall"]["high"] or 0) < 0
        ]
        if falls:
            lines += [
                "",
                f"Read by code: in the arms where no run grokked ({', '.join(silent)}), these "
                f"measures fall from their peak all the same: {'; '.join(falls)}. Their fall is "
                "not grokking's: the Fisher of a network that fits its training pairs with "
                "growing confidence shrinks whether or not it generalizes, and (g1)'s support "
                "says nothing beyond that for them.",
            ]
        lines.append("")
    lines += [
        "### Runs",
        "",
        "| arm | seed | memorised at | grokked at | final test acc. | "
        + " | ".join(
            f"{m.replace('_', ' ')}: init → peak (step) → end" for m in COMPLEXITY_MEASURES
        )
        + " | Fourier conc. at peak d_eff → end | weight norm end |",
        "|---|---|---|---|---|" + "---|" * len(COMPLEXITY_MEASURES) + "---|---|",
    ]
    for r in a["runs"]:
        e = r["events"]
        first = e[COMPLEXITY_MEASURES[0]]
        running = " (running)" if r["steps"][-1] < cfg["steps"] else ""
        lines.append(
            f"| {r['arm']}{running} | {r['seed']} | {first['memorised']} | "
            f"{first['grokked'] if first['grokked'] is not None else 'never'} | "
            f"{r['test_accuracy'][-1]:.3f} | "
            + " | ".join(
                f"{e[m]['initial']:.3g} → {e[m]['peak_value']:.3g} ({e[m]['peak']}) → "
                f"{e[m]['final']:.3g}"
                for m in COMPLEXITY_MEASURES
            )
            + f" | {first['fourier_at_peak']:.2f} → {first['fourier_final']:.2f} | "
            f"{r['weight_norm'][-1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "publish"])
    parser.add_argument("--config", choices=["full", "anchor"], default="full")
    parser.add_argument("--device", help="where to train (default: the configuration's)")
    parser.add_argument("--out", type=Path, help="the run folder (the anchor's: required)")
    args = parser.parse_args()
    config = dict(GROKKING_CONFIGS[args.config])
    if args.device:
        config["device"] = args.device
    if args.config == "full" and args.out is None and "device" not in config:
        if args.command == "run":
            run(config)
        from _publish import publish as publish_section

        print(publish_section(NAME, section(publish(config))))
        return
    if args.out is None:
        parser.error("--out is required with --config anchor or --device")
    if args.command == "run":
        run(config, args.out)
    results = publish(config, args.out, args.out / "results.json")
    (args.out / f"{NAME}.md").write_text(section(results))
    print(args.out / f"{NAME}.md")


if __name__ == "__main__":
    main()
