"""What every pre-registered experiment shares: its cell store, its results file, its section.

An experiment (``experiments/e*_*.py``) states its predictions before it runs, stores each
cell (one trained group of networks and their measures) in an SQLite database as it is
produced (:class:`memspace.zoo.ZooStore`: WAL, one transaction per network, resumable),
and publishes by reading that database: a machine-readable ``results.json`` with the
configuration, the seeds, the machine, every network's numbers, the statistics and the
verdicts computed by code (:mod:`memspace.evaluation`), and its RESULTS.md section
written from that file alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402

from memspace import load_dataset  # noqa: E402
from memspace._runs import write_atomic  # noqa: E402
from memspace.evaluation import Estimate, Verdict  # noqa: E402
from memspace.zoo import ZooStore  # noqa: E402


def training_draw(cfg: dict[str, Any]):
    """The experiments' shared data, images as stored (unflattened).

    ``train_size`` training images drawn once (seed 0), the first ``test_size`` test images,
    and the number of classes.
    """
    split = load_dataset(cfg["data"])
    keep = torch.randperm(len(split.train[0]), generator=torch.Generator().manual_seed(0))
    X, y = split.train
    X, y = X[keep[: cfg["train_size"]]], y[keep[: cfg["train_size"]]]
    test = split.test[0][: cfg["test_size"]], split.test[1][: cfg["test_size"]]
    return (X, y), test, split.num_classes


def machine() -> str:
    """The machine a cell ran on, as its row records it."""
    return (
        f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )


def commit() -> str:
    """The git commit the code ran at (``unknown`` outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkpoint_wal(path: Path) -> None:
    """Fold the store's write-ahead log into the database file (before it is committed)."""
    if path.exists():
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """The experiment's machine-readable results, atomically (NaN written as null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return write_atomic(path, json.dumps(clean(results), indent=1, sort_keys=True) + "\n")


def estimate_text(estimate: Estimate | dict[str, Any], fmt: str = "{:.3f}") -> str:
    """``value [low, high]`` (or ``value (one cluster: no interval)``)."""
    e = estimate if isinstance(estimate, dict) else estimate.as_dict()
    if e["value"] is None or e["value"] != e["value"]:
        return "— (not measurable)"
    value = fmt.format(e["value"])
    if e["low"] is None or e["low"] != e["low"]:
        return f"{value} (no interval: {e['clusters']} cluster)"
    return f"{value} [{fmt.format(e['low'])}, {fmt.format(e['high'])}]"


def verdict_table(verdicts: list[Verdict | dict[str, Any]]) -> list[str]:
    """The markdown table of verdicts, as read from the results."""
    lines = [
        "| claim | verdict | test | n | effect | interval | p | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        v = v if isinstance(v, dict) else v.as_dict()
        interval = (
            "—"
            if v["low"] is None or v["low"] != v["low"]
            else f"[{v['low']:.3g}, {v['high']:.3g}]"
        )
        p = "—" if v["p"] is None else f"{v['p']:.3g}"
        effect = "—" if v["effect"] is None else f"{v['effect']:.3g}"  # NaN was written as null
        lines.append(
            f"| {v['claim']} | **{v['verdict']}** | {v['test']} | {v['n']} | {effect} "
            f"| {interval} | {p} | {v['note']} |"
        )
    return lines


def cells_of(store: ZooStore) -> list[dict[str, Any]]:
    """Every row of an open store with its measures (``measures``), by id."""
    measures = store.measures()
    return [dict(m, measures=measures.get(m["id"], {})) for m in store.models()]


def stored_cells(store_path: Path) -> list[dict[str, Any]]:
    """:func:`cells_of` the store at ``store_path``."""
    store = ZooStore(store_path)
    try:
        return cells_of(store)
    finally:
        store.close()


CELL_FIELDS = ("id", "seed", "hparams", "seconds", "measures")


def publish_cells(
    module: Any,
    store_path: Path,
    cfg: dict[str, Any],
    out: Path,
    fields: tuple[str, ...] = CELL_FIELDS,
    **extra: Any,
) -> Path:
    """An experiment's results file from its store: config, predictions, cells, analysis.

    ``module`` provides ``NAME``, ``PREDICTIONS`` and ``analyse(cells, cfg)``; ``fields`` are
    the stored row's fields each cell keeps; ``extra`` adds top-level entries (fixed thresholds).
    """
    checkpoint_wal(store_path)
    cells = stored_cells(store_path)
    results = dict(
        experiment=module.NAME,
        config=cfg,
        predictions=[dict(p.as_dict(), key=k) for k, p in module.PREDICTIONS.items()],
        cells=[{k: c[k] for k in fields} for c in cells],
        analysis=module.analyse(cells, cfg),
        **extra,
    )
    write_results(out, results)
    return out


def predictions_table(predictions: list[dict[str, str]]) -> list[str]:
    """The section's "Predictions (written before the run)" heading and table."""
    lines = [
        "### Predictions (written before the run)",
        "",
        "| claim | prediction | test | supported if | contradicted if |",
        "|---|---|---|---|---|",
    ]
    fields = ("claim", "statement", "test", "supported_if", "contradicted_if")
    lines += ["| " + " | ".join(p[f] for f in fields) + " |" for p in predictions]
    return lines + ["", "### Verdicts (read by code from the cells)", ""]


def main(module: Any) -> None:
    """An experiment's command line: ``run`` (then publish) or ``publish``.

    ``module`` provides ``NAME``, ``FOLDER``, ``CONFIG``, ``QUICK`` and ``run(cfg, store,
    progress)``, ``publish(store, cfg, results_file)``, ``section(results)``. The default store
    publishes into experiments/RESULTS.md; another store (or ``--quick``) writes its section
    beside the store.
    """
    parser = argparse.ArgumentParser(description=module.__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "publish"])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes")
    parser.add_argument("--store", type=Path, default=module.FOLDER / "cells.sqlite")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    cfg = module.QUICK if args.quick else module.CONFIG
    if args.command == "run":
        module.run(cfg, args.store, progress=not args.no_progress)
    results_file = args.store.parent / "results.json"
    module.publish(args.store, cfg, results_file)
    text = module.section(json.loads(results_file.read_text()))
    if args.store == module.FOLDER / "cells.sqlite" and not args.quick:
        from _publish import publish as publish_section

        print(publish_section(module.NAME, text))
    else:
        (args.store.parent / f"{module.NAME}.md").write_text(text)
        print(args.store.parent / f"{module.NAME}.md")
