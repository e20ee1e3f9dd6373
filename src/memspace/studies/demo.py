"""The demo study: train residual networks with and without least action, measure both.

Trains two networks from the same initialisation on the same data — one with plain
cross-entropy, one with the predictive action term (λ·A, docs/theory.md §4) — measures each
with :func:`~memspace.studies.measure.measure_network`, and writes into the run folder

- ``train-plain/``, ``train-least-action/``: checkpoints (safetensors) and
  ``metrics.jsonl`` per epoch, so that an interrupted run resumes;
- ``measures-<name>.json``: each network's measures as soon as they are computed;
- ``metrics.json``: everything (the marker of a finished run), and ``report.html``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .._errors import MemspaceError
from ..complexity import load_state
from ..data import load_dataset
from ..paths import ResidualCNN, ResidualMLP
from ..train import fit
from .measure import measure_network

__all__ = ["DEFAULTS", "prepare_run_dir", "run_demo"]

MARKER = ".memspace-run"
DEFAULTS = {
    "digits": dict(width=32, depth=8, epochs=30, lr=3e-3, batch_size=64, lam=0.1, limit=None, spectral_points=None),
    "moons": dict(width=8, depth=8, epochs=40, lr=1e-2, batch_size=64, lam=0.1, limit=None, spectral_points=None),
    "fashion-mnist": dict(width=8, depth=4, epochs=4, lr=3e-3, batch_size=64, lam=0.1, limit=3000,
                          spectral_points=256),
}


def prepare_run_dir(out: Path, overwrite: bool) -> bool:
    """Create or reuse a run folder; return True when resuming an interrupted run.

    A folder holding a finished run (``metrics.json``) or anything that is not a
    memspace run is refused unless ``overwrite``, so nothing written is lost by accident.
    """
    if out.exists() and not out.is_dir():
        raise MemspaceError(f"output path {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        finished = (out / "metrics.json").exists()
        ours = (out / MARKER).exists()
        if overwrite:
            if not ours and not finished:
                raise MemspaceError(f"refusing to overwrite {out}: it is not a memspace run folder")
            shutil.rmtree(out)
        elif finished or not ours:
            raise MemspaceError(f"output folder {out} already exists; pass --overwrite to replace it "
                                "or choose another --out")
        else:
            return True
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("memspace run folder\n")
    return False


def build_model(data: str, input_shape: tuple[int, ...], classes: int, cfg: dict) -> nn.Module:
    if len(input_shape) == 3:
        return ResidualCNN(input_shape[0], cfg["width"], cfg["depth"], classes, image_size=input_shape[-1])
    return ResidualMLP(input_shape[0], cfg["width"], cfg["depth"], classes)


def run_demo(data: str = "digits", out: str | Path = "runs/demo", *, seed: int = 0, device: str = "cpu",
             epochs: int | None = None, lam: float | None = None, overwrite: bool = False, progress: bool = True,
             status: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo study (module doc) and return its metrics."""
    if data not in DEFAULTS and not data.endswith(".npz"):
        raise MemspaceError(f"unknown data set {data!r}; choose one of {', '.join(DEFAULTS)} or an .npz file")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MemspaceError(f"device {device!r} requested but CUDA is not available")
    cfg = dict(DEFAULTS.get(data, DEFAULTS["digits"]))
    if epochs is not None:
        cfg["epochs"] = epochs
    if lam is not None:
        cfg["lam"] = lam
    out = Path(out)
    started = time.time()
    split = load_dataset(data, seed=seed, limit=cfg["limit"])
    resuming = prepare_run_dir(out, overwrite)
    if resuming:
        status(f"resuming the interrupted run in {out}")
    networks: dict[str, Any] = {}
    for name, action in (("plain", None), ("least-action", "predictive")):
        torch.manual_seed(seed)
        model = build_model(data, split.input_shape, split.num_classes, cfg).to(device)
        run_dir = out / f"train-{name}"
        run_dir.mkdir(exist_ok=True)
        init_file = run_dir / "init.safetensors"
        if not init_file.exists():
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(init_file))
        initial = load_state(init_file)
        status(f"training the {name} network ({cfg['epochs']} epochs, {'λ·A, λ = ' + str(cfg['lam']) if action else 'λ = 0'})")
        train = tuple(t.to(device) for t in split.train)
        test = tuple(t.to(device) for t in split.test)
        result = fit(model, train, action=action, lam=cfg["lam"] if action else 0.0, epochs=cfg["epochs"],
                     lr=cfg["lr"], batch_size=cfg["batch_size"], val_data=test, seed=seed,
                     checkpoint_dir=run_dir, progress=progress)
        checkpoints = [init_file, *sorted(run_dir.glob("epoch-*.safetensors"))]
        status(f"measuring the {name} network")
        measures = measure_network(
            result.model, split, initial_params=initial, checkpoints=checkpoints,
            model_factory=lambda: build_model(data, split.input_shape, split.num_classes, cfg).to(device),
            spectral_points=cfg["spectral_points"], seed=seed, status=lambda m: status(f"  {m}"))
        networks[name] = {"action": action or "none", "lambda": cfg["lam"] if action else 0.0,
                          "history": result.history, "measures": measures}
        (out / f"measures-{name}.json").write_text(json.dumps(networks[name], indent=1))
    metrics = {
        "run": {"data": data, "seed": seed, "device": device, "config": cfg, "out": str(out),
                "num_train": len(split.train[0]), "num_test": len(split.test[0]),
                "input_shape": list(split.input_shape), "num_classes": split.num_classes,
                "seconds": time.time() - started, "torch": torch.__version__},
        "networks": networks,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
