"""The demo study: train residual networks with and without least action, measure both.

Trains two networks from the same initialisation on the same data — one with plain
cross-entropy, one with the predictive action term (λ·A, docs/theory.md §4) — measures each
with :func:`~memspace.studies.measure.measure_network`, and writes into the run folder

- ``train/plain/``, ``train/least-action/``: :func:`~memspace.fit` run folders (initial
  weights, checkpoints with their metrics), so that an interrupted run resumes; the two
  networks train together as one population (:mod:`memspace.population`);
- ``measures-<name>.json``: each network's measures as soon as they are computed;
- ``report.html``, then ``metrics.json``: everything, written last as the marker of a
  finished run.

The folder is a :class:`memspace._runs.RunFolder`: locked while the demo runs, every file
written atomically and listed in its manifest (``--overwrite`` removes only those), and a
rerun with other options refused rather than mixed into it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._errors import MemspaceError
from .._options import MAX_SEED, check_number
from .._runs import RunFolder
from ..checkpoint import load_state
from ..data import load_dataset
from ..paths import build_model, check_architecture_fits
from ..population import Member, Population, train_population
from ..train import MAX_EPOCHS
from .measure import measure_network

__all__ = ["DEFAULTS", "run_demo"]

DEFAULTS = {
    "digits": dict(
        width=32,
        depth=8,
        epochs=30,
        lr=3e-3,
        batch_size=64,
        lam=0.1,
        limit=None,
        spectral_points=None,
    ),
    "moons": dict(
        width=8,
        depth=8,
        epochs=40,
        lr=1e-2,
        batch_size=64,
        lam=0.1,
        limit=None,
        spectral_points=None,
    ),
    "fashion-mnist": dict(
        width=8, depth=4, epochs=4, lr=3e-3, batch_size=64, lam=0.1, limit=3000, spectral_points=256
    ),
}


def run_demo(
    data: str = "digits",
    out: str | Path = "runs/demo",
    *,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    lam: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
    studies: bool = True,
    status: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo study (module doc) and return its metrics.

    ``report``: also write report.html; ``studies``: add the quick capacity and robustness
    studies (one report section per memory leg).
    """
    if data not in DEFAULTS and not data.endswith(".npz"):
        raise MemspaceError(
            f"unknown data set {data!r}; choose one of {', '.join(DEFAULTS)} or an .npz file"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MemspaceError(f"device {device!r} requested but CUDA is not available")
    check_number("epochs", epochs, 1, MAX_EPOCHS, integer=True)
    check_number("lam", lam, 0)
    check_number("seed", seed, 0, MAX_SEED, integer=True)
    cfg = dict(DEFAULTS.get(data, DEFAULTS["digits"]))
    if epochs is not None:
        cfg["epochs"] = epochs
    if lam is not None:
        cfg["lam"] = lam
    started = time.time()
    split = load_dataset(data, seed=seed, limit=cfg["limit"])
    check_architecture_fits(split)
    config = {"data": data, "seed": seed, "device": device, **cfg}
    with RunFolder.open(
        out, kind="demo", config=config, overwrite=overwrite, finished="metrics.json"
    ) as run:
        if run.resumed:
            status(f"resuming the interrupted run in {run.root}")
        metrics = _run_demo(run, data, split, cfg, seed, device, progress, status, started)
        if studies:
            metrics["studies"] = _quick_studies(run, data, split, status)
        if report:
            from ..report import render_report

            render_report(metrics, run.path("report.html"))
        run.write_json("metrics.json", metrics)  # last: the marker of a finished run
    return metrics


def _quick_studies(
    run: RunFolder, data: str, split, status: Callable[[str], None]
) -> dict[str, Any]:
    """The quick configuration of every study of the registry the demo includes.

    Each in its own run folder (on the demo's data where the study can use it), then the quick zoo.
    """
    from .base import StudySummary
    from .registry import STUDIES, prepare_study

    summaries = {}
    for study in STUDIES.values():
        if not study.in_demo:
            continue
        study_data = study.demo_data(data, split.input_shape)
        config, study_split = prepare_study(study.name, "quick", study_data)
        status(f"{study.name} study (quick, {config['data']})")
        with RunFolder.open(
            run.path(f"study-{study.name}"), kind=f"study-{study.name}", config=config
        ) as folder:
            summaries[study.name] = StudySummary(
                study.name,
                study.run(folder, config, split=study_split, status=lambda m: status(f"  {m}")),
            )
    status("model zoo (quick grid on digits)")
    summaries["zoo"] = quick_zoo(run.path("zoo"), status=lambda m: status(f"  {m}"))
    return summaries


def quick_zoo(folder: Path, status: Callable[[str], None] = print) -> dict[str, Any]:
    """The CI-sized zoo, trained, measured and ranked.

    Its leaderboard and the top measures' values.
    """
    from ..zoo import evaluate_zoo, leaderboard_points, run_zoo

    run_zoo("quick", folder, workers=2, status=status)
    evaluation = evaluate_zoo(folder)
    evaluation["points"] = leaderboard_points(folder, evaluation)
    return evaluation


def _run_demo(
    run: RunFolder, data, split, cfg, seed, device, progress, status, started
) -> dict[str, Any]:
    networks: dict[str, Any] = {}
    arms = (("plain", None), ("least-action", "predictive"))
    status(
        f"training the plain (λ = 0) and least-action (λ·A, λ = {cfg['lam']}) networks together, "
        f"{cfg['epochs']} epochs"
    )
    train = tuple(t.to(device) for t in split.train)
    test = tuple(t.to(device) for t in split.test)
    trained = train_population(
        Population.from_seeds(
            lambda: build_model(split.input_shape, split.num_classes, cfg).to(device), [seed, seed]
        ),
        train,
        [
            Member(
                seed=seed,
                action=action,
                lam=cfg["lam"] if action else 0.0,
                epochs=cfg["epochs"],
                lr=cfg["lr"],
            )
            for _, action in arms
        ],
        batch_size=cfg["batch_size"],
        val_data=test,
        checkpoint_dir=run.path("train"),
        member_names=[name for name, _ in arms],
        progress=progress,
        log=status,
        run_config={"data": data, "width": cfg["width"], "depth": cfg["depth"]},
    )
    for k, (name, action) in enumerate(arms):
        result = trained.member(k)
        run_dir = trained.folders[k]
        init_file = run_dir / "init.safetensors"
        initial = load_state(init_file)
        epochs_done = [e["epoch"] for e in result.history]
        checkpoints = [init_file, *(run_dir / f"epoch-{e:04d}.safetensors" for e in epochs_done)]
        status(f"measuring the {name} network")
        measures = measure_network(
            result.model,
            split,
            initial_params=initial,
            checkpoints=checkpoints,
            model_factory=lambda: build_model(split.input_shape, split.num_classes, cfg).to(device),
            spectral_points=cfg["spectral_points"],
            seed=seed,
            status=lambda m: status(f"  {m}"),
        )
        networks[name] = {
            "action": action or "none",
            "lambda": cfg["lam"] if action else 0.0,
            "history": result.history,
            "measures": measures.to_dict(),
        }
        run.write_json(f"measures-{name}.json", networks[name])
    return {
        "run": {
            "data": data,
            "seed": seed,
            "device": device,
            "config": cfg,
            "out": str(run.root),
            "num_train": len(split.train[0]),
            "num_test": len(split.test[0]),
            "input_shape": list(split.input_shape),
            "num_classes": split.num_classes,
            "seconds": time.time() - started,
            "torch": torch.__version__,
        },
        "networks": networks,
    }
