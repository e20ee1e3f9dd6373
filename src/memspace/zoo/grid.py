"""A zoo's grid: hyperparameters in YAML, expanded to one configuration per model.

A grid file::

    data: digits
    stop: {target_ce: 0.01, max_epochs: 60}     # the stopping rule of every model
    seeds: [0]
    grid:                                        # every combination is one configuration
      width: [16, 32]
      depth: [4, 8]
      lr: [0.003]
      batch_size: [64]
      weight_decay: [0.0, 0.0005]
      lam: [0.0, 0.1]            # λ of the predictive action
      label_noise: [0.0, 0.2]    # share of training labels replaced by random ones
      train_size: [600, 1257]

Hyperparameters not given take :data:`DEFAULTS`; unknown names are refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from .._errors import MemspaceError

__all__ = ["DEFAULTS", "GRIDS", "expand", "load_grid", "model_id"]

DEFAULTS = {"width": 32, "depth": 8, "lr": 3e-3, "batch_size": 64, "weight_decay": 0.0, "lam": 0.0,
            "label_noise": 0.0, "train_size": None}
_RANGES = {"width": (1, None), "depth": (1, None), "lr": (0, None), "batch_size": (1, None),
           "weight_decay": (0, None), "lam": (0, None), "label_noise": (0, 1), "train_size": (2, None)}

GRIDS = {
    "quick": {"data": "digits", "stop": {"target_ce": 0.25, "max_epochs": 12}, "seeds": [0],
              "grid": {"width": [8, 16], "depth": [2], "lr": [1e-2], "batch_size": [64], "lam": [0.0, 0.1],
                       "train_size": [300, 600]}},
    "digits": {"data": "digits", "stop": {"target_ce": 0.01, "max_epochs": 60}, "seeds": [0],
               "grid": {"width": [16, 32], "depth": [4, 8], "lr": [3e-3], "batch_size": [64],
                        "weight_decay": [0.0, 5e-4], "lam": [0.0, 0.1], "label_noise": [0.0, 0.2],
                        "train_size": [600, 1257]}},
}


def load_grid(source: str | Path | dict) -> dict[str, Any]:
    """A grid from a YAML file, a name of :data:`GRIDS`, or a dict — checked.

    Raises:
        MemspaceError: a missing or malformed file, an unknown hyperparameter, a value out
            of range, an empty axis.
    """
    if isinstance(source, dict):
        grid = json.loads(json.dumps(source))
    elif str(source) in GRIDS:
        grid = json.loads(json.dumps(GRIDS[str(source)]))
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise MemspaceError(f"grid file {path} does not exist (or give one of {', '.join(GRIDS)})")
        try:
            grid = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise MemspaceError(f"grid file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(grid, dict) or not isinstance(grid.get("grid"), dict):
        raise MemspaceError(f"grid {source}: needs a mapping 'grid' from hyperparameter names to value lists")
    grid.setdefault("data", "digits")
    grid.setdefault("seeds", [0])
    grid.setdefault("stop", {"target_ce": 0.01, "max_epochs": 60})
    for name, values in grid["grid"].items():
        if name not in DEFAULTS:
            raise MemspaceError(f"grid: unknown hyperparameter {name!r}; choose from {', '.join(DEFAULTS)}")
        if not isinstance(values, list) or not values:
            raise MemspaceError(f"grid: {name} must be a non-empty list of values")
        low, high = _RANGES[name]
        for value in values:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low or (
                    high is not None and value > high) or (low == 0 and name in ("lr",) and value <= 0):
                raise MemspaceError(f"grid: {name} = {value!r} is out of range")
    stop = grid["stop"]
    if not isinstance(stop, dict) or not isinstance(stop.get("max_epochs"), int) or not 1 <= stop["max_epochs"] <= 10_000:
        raise MemspaceError("grid: stop.max_epochs must be an integer from 1 to 10000")
    if not isinstance(grid["seeds"], list) or not grid["seeds"] or not all(isinstance(s, int) for s in grid["seeds"]):
        raise MemspaceError("grid: seeds must be a non-empty list of integers")
    return grid


def expand(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (configuration, seed) of the grid, as ``{"hparams": {...}, "seed": s, "id": ...}``."""
    names = list(grid["grid"])
    models = []
    for values in itertools.product(*(grid["grid"][n] for n in names)):
        hparams = {**DEFAULTS, **dict(zip(names, values))}
        for seed in grid["seeds"]:
            models.append({"id": model_id(grid["data"], hparams, seed, grid["stop"]), "hparams": hparams,
                           "seed": seed})
    return models


def model_id(data: str, hparams: dict[str, Any], seed: int, stop: dict[str, Any]) -> str:
    """A stable id of one model: a hash of everything that determines it."""
    key = json.dumps({"data": data, "hparams": hparams, "seed": seed, "stop": stop}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
