"""A zoo's grid: hyperparameters in YAML, expanded to one configuration per model.

A grid file::

    data: digits
    stop: {target_ce: 0.01, max_epochs: 60}     # the stopping rule of every model
                                                 # (or target_acc: a train-accuracy target)
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
import math
from pathlib import Path
from typing import Any

import yaml

from .._errors import MemspaceError
from .._options import MAX_SEED
from .._runs import read_regular

__all__ = ["DEFAULTS", "GRIDS", "expand", "load_grid", "model_id"]

DEFAULTS = {
    "width": 32,
    "depth": 8,
    "lr": 3e-3,
    "batch_size": 64,
    "weight_decay": 0.0,
    "lam": 0.0,
    "label_noise": 0.0,
    "train_size": None,
}
_RANGES = {
    "width": (1, 4096),
    "depth": (1, 1024),
    "lr": (0, 10.0),
    "batch_size": (1, 1_000_000),
    "weight_decay": (0, 10.0),
    "lam": (0, 1e6),
    "label_noise": (0, 1),
    "train_size": (2, 10_000_000),
}
_INTEGERS = {"width", "depth", "batch_size", "train_size"}

GRIDS = {
    "quick": {
        "data": "digits",
        "stop": {"target_ce": 0.25, "max_epochs": 12},
        "seeds": [0],
        "grid": {
            "width": [8, 16],
            "depth": [2],
            "lr": [1e-2],
            "batch_size": [64],
            "lam": [0.0, 0.1],
            "train_size": [300, 600],
        },
    },
    "digits": {
        "data": "digits",
        "stop": {"target_ce": 0.01, "max_epochs": 60},
        "seeds": [0],
        "grid": {
            "width": [16, 32],
            "depth": [4, 8],
            "lr": [3e-3],
            "batch_size": [64],
            "weight_decay": [0.0, 5e-4],
            "lam": [0.0, 0.1],
            "label_noise": [0.0, 0.2],
            "train_size": [600, 1257],
        },
    },
}


MAX_GRID_BYTES = 1 << 20
"""The largest grid file read (a grid is a few lines; a larger file is not one)."""
MAX_MODELS = 100_000
"""The most models a grid may expand to (configurations × seeds)."""
_TOP_KEYS = {"data", "stop", "seeds", "grid"}
_STOP_KEYS = {"target_ce", "target_acc", "max_epochs"}


class _GridLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases.

    A grid needs neither, and aliases are how a few hundred bytes expand into gigabytes (the
    'billion laughs').
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"aliases are not allowed in a grid (line {event.start_mark.line + 1})"
            )
        if getattr(self.peek_event(), "anchor", None):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"anchors are not allowed in a grid (line {event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_grid(source: str | Path | dict) -> dict[str, Any]:
    """A grid from a YAML file, a name of :data:`GRIDS`, or a dict — checked.

    The file is untrusted input: at most :data:`MAX_GRID_BYTES`, no YAML anchors or
    aliases, only the keys ``data``, ``stop``, ``seeds`` and ``grid``, finite values in
    range, seeds from 0 to 2³² − 1, and at most :data:`MAX_MODELS` models.

    Raises:
        MemspaceError: a missing, oversized or malformed file, an unknown key or
            hyperparameter, a value out of range or not finite, an empty axis, too many
            models.
    """
    if isinstance(source, dict):
        grid = json.loads(json.dumps(source))
    elif str(source) in GRIDS:
        grid = json.loads(json.dumps(GRIDS[str(source)]))
    else:
        path = Path(source)
        if not path.is_file():
            raise MemspaceError(
                f"grid file {path} does not exist (or give one of {', '.join(GRIDS)})"
            )
        text = read_regular(path, "grid file", MAX_GRID_BYTES)
        try:
            grid = yaml.load(text.decode("utf-8"), Loader=_GridLoader)  # noqa: S506 - a safe loader, bounded
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
            raise MemspaceError(
                f"grid file {path} is not valid YAML: {str(error).splitlines()[0]}"
            ) from None
    if not isinstance(grid, dict) or not isinstance(grid.get("grid"), dict):
        raise MemspaceError(
            f"grid {source}: needs a mapping 'grid' from hyperparameter names to value lists"
        )
    unknown = sorted(str(k) for k in set(grid) - _TOP_KEYS)
    if unknown:
        raise MemspaceError(
            f"grid {source}: unknown key {unknown[0]!r}; a grid has {', '.join(sorted(_TOP_KEYS))}"
        )
    grid.setdefault("data", "digits")
    grid.setdefault("seeds", [0])
    grid.setdefault("stop", {"target_ce": 0.01, "max_epochs": 60})
    if not isinstance(grid["data"], str) or not grid["data"]:
        raise MemspaceError(f"grid {source}: data must be the name of a data set or an .npz path")
    for name, values in grid["grid"].items():
        if name not in DEFAULTS:
            raise MemspaceError(
                f"grid: unknown hyperparameter {name!r}; choose from {', '.join(DEFAULTS)}"
            )
        if not isinstance(values, list) or not values:
            raise MemspaceError(f"grid: {name} must be a non-empty list of values")
        low, high = _RANGES[name]
        integer = name in _INTEGERS
        for value in values:
            if (
                not _real(value)
                or value < low
                or (high is not None and value > high)
                or (name == "lr" and value <= 0)
                or (integer and not isinstance(value, int))
            ):
                raise MemspaceError(
                    f"grid: {name} = {value!r} is out of range (it must be "
                    f"{'an integer' if integer else 'a finite number'} ≥ {low}"
                    f"{f' and ≤ {high}' if high is not None else ''})"
                )
    stop = grid["stop"]
    if (
        not isinstance(stop, dict)
        or not isinstance(stop.get("max_epochs"), int)
        or isinstance(stop.get("max_epochs"), bool)
        or not 1 <= stop["max_epochs"] <= 10_000
    ):
        raise MemspaceError("grid: stop.max_epochs must be an integer from 1 to 10000")
    if set(stop) - _STOP_KEYS:
        raise MemspaceError(
            f"grid: unknown key stop.{sorted(map(str, set(stop) - _STOP_KEYS))[0]}; stop has "
            f"{', '.join(sorted(_STOP_KEYS))}"
        )
    if "target_ce" in stop and (not _real(stop["target_ce"]) or stop["target_ce"] < 0):
        raise MemspaceError(
            f"grid: stop.target_ce = {stop['target_ce']!r} must be a finite number ≥ 0"
        )
    if "target_acc" in stop and (not _real(stop["target_acc"]) or not 0 < stop["target_acc"] <= 1):
        raise MemspaceError(
            f"grid: stop.target_acc = {stop['target_acc']!r} must be a number in (0, 1]"
        )
    seeds = grid["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds
        )
    ):
        raise MemspaceError(
            f"grid: seeds must be a non-empty list of integers from 0 to {MAX_SEED}"
        )
    count = len(seeds) * math.prod(len(v) for v in grid["grid"].values())
    if count > MAX_MODELS:
        raise MemspaceError(
            f"grid: {count} models (configurations × seeds) is over the bound of {MAX_MODELS}"
        )
    return grid


def expand(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (configuration, seed) of the grid, as ``{"hparams": {...}, "seed": s, "id": ...}``."""
    names = list(grid["grid"])
    models = []
    for values in itertools.product(*(grid["grid"][n] for n in names)):
        hparams = {**DEFAULTS, **dict(zip(names, values))}
        for seed in grid["seeds"]:
            models.append(
                {
                    "id": model_id(grid["data"], hparams, seed, grid["stop"]),
                    "hparams": hparams,
                    "seed": seed,
                }
            )
    return models


def model_id(data: str, hparams: dict[str, Any], seed: int, stop: dict[str, Any]) -> str:
    """A stable id of one model: a hash of everything that determines it."""
    key = json.dumps({"data": data, "hparams": hparams, "seed": seed, "stop": stop}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
