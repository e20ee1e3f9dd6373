"""Every bad option and data file through the real command line.

One line, exit 2, no traceback, no folder.

The cases run concurrently (each is a separate `memspace` process); each test checks one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cli_support import ARCH_FILE, assert_clean_failure, run_cases
from memspace import ResidualMLP

TRAIN = ["train", "--data", "moons", "--width", "4", "--depth", "2", "--out", "out"]
MEASURE = [
    "measure",
    "--model",
    "model.safetensors",
    "--arch",
    "arch.py:make",
    "--data",
    "moons",
    "--out",
    "out",
]


def _data_files(root: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 2)), np.arange(40) % 2
    np.savez(root / "flat.npz", X=X[:, 0], y=y)
    np.savez(root / "empty-test.npz", X_train=X, y_train=y, X_test=X[:0], y_test=y[:0])
    np.savez(root / "complex.npz", X=X + 1j * X, y=y)
    np.savez(root / "huge.npz", X=X * 1e300, y=y)
    np.savez(root / "no-features.npz", X=X[:, :0], y=y)
    np.savez(root / "label-1000.npz", X=X, y=np.where(np.arange(40) == 5, 1000, np.arange(40) % 10))
    np.savez(root / "cube.npz", X=rng.normal(size=(40, 3, 4)), y=y)
    np.savez(root / "words.npz", X=np.array(["a", "b"] * 20), y=y)
    np.savez(root / "float-labels.npz", X=X, y=y.astype(float))
    np.savez(root / "no-labels.npz", X=X)


def _model_files(root: Path) -> None:
    (root / "arch.py").write_text(ARCH_FILE)
    (root / "raises.py").write_text("def make():\n    raise RuntimeError('no GPU here')\n")
    (root / "syntax.py").write_text("def make(:\n    pass\n")
    (root / "wide.py").write_text(
        "from memspace import ResidualMLP\n\ndef make():\n    return ResidualMLP(3, 6, 3, 2)\n"
    )
    state = ResidualMLP(2, 6, 3, 2).state_dict()
    save_file(state, str(root / "model.safetensors"))
    save_file({k: v.round().long() for k, v in state.items()}, str(root / "integer.safetensors"))
    save_file(
        {k: v.clone().fill_(float("nan")) if k.endswith("weight") else v for k, v in state.items()},
        str(root / "nan.safetensors"),
    )
    save_file(ResidualMLP(3, 6, 3, 2).state_dict(), str(root / "wide.safetensors"))
    (root / "incomplete").mkdir()
    (root / "incomplete" / "metrics.json").write_text(
        json.dumps({"networks": {"plain": {"history": []}}})
    )
    (root / "not-metrics").mkdir()
    (root / "not-metrics" / "metrics.json").write_text("{}")
    (root / "a-file").write_text("")
    (root / "grid-unknown.yaml").write_text("grid:\n  dropout: [0.1]\n")
    (root / "grid-range.yaml").write_text("grid:\n  label_noise: [1.5]\n")
    (root / "grid-broken.yaml").write_text("grid: [unclosed\n")


CASES = {
    "batch size 0": (TRAIN + ["--batch-size", "0"], ["--batch-size", "from 1 to"]),
    "negative batch size": (TRAIN + ["--batch-size", "-3"], ["--batch-size"]),
    "zero epochs": (TRAIN + ["--epochs", "0"], ["--epochs"]),
    "negative epochs": (TRAIN + ["--epochs", "-2"], ["--epochs"]),
    "2^70 epochs": (TRAIN + ["--epochs", str(2**70)], ["--epochs", "100000"]),
    "zero width": (TRAIN + ["--width", "0"], ["--width"]),
    "negative λ": (TRAIN + ["--lam", "-1"], ["--lam"]),
    "NaN λ": (TRAIN + ["--lam", "nan"], ["--lam"]),
    "zero learning rate": (TRAIN + ["--lr", "0"], ["--lr"]),
    "demo with zero epochs": (
        ["demo", "--data", "moons", "--epochs", "0", "--out", "out"],
        ["--epochs"],
    ),
    "demo with negative λ": (["demo", "--data", "moons", "--lam", "-1", "--out", "out"], ["--lam"]),
    "1-D X": (["train", "--data", "flat.npz", "--out", "out"], ["flat.npz", "shape (40,)"]),
    "empty X_test": (
        ["train", "--data", "empty-test.npz", "--out", "out"],
        ["empty-test.npz", "non-empty"],
    ),
    "complex X": (["train", "--data", "complex.npz", "--out", "out"], ["complex.npz", "complex"]),
    "X·1e300": (["train", "--data", "huge.npz", "--out", "out"], ["huge.npz", "overflows"]),
    "X without features": (
        ["train", "--data", "no-features.npz", "--out", "out"],
        ["no-features.npz", "no features"],
    ),
    "one label 1000 among ten classes": (
        ["train", "--data", "label-1000.npz", "--out", "out"],
        ["label-1000.npz", "0..C−1", "num_classes"],
    ),
    "3-D X for the residual MLP": (
        ["train", "--data", "cube.npz", "--out", "out"],
        ["(3, 4)", "reshape"],
    ),
    "text X": (["train", "--data", "words.npz", "--out", "out"], ["words.npz", "numeric"]),
    "float labels": (
        ["train", "--data", "float-labels.npz", "--out", "out"],
        ["float-labels.npz", "integer"],
    ),
    "output under a file": (
        ["train", "--data", "moons", "--epochs", "1", "--out", "a-file/run"],
        ["a-file/run", "Not a directory"],
    ),
    "factory raises": (
        [
            "measure",
            "--model",
            "model.safetensors",
            "--arch",
            "raises.py:make",
            "--data",
            "moons",
            "--out",
            "out",
        ],
        ["raises.py:make raised RuntimeError: no GPU here"],
    ),
    "syntax error in the architecture file": (
        [
            "measure",
            "--model",
            "model.safetensors",
            "--arch",
            "syntax.py:make",
            "--data",
            "moons",
            "--out",
            "out",
        ],
        ["syntax.py", "SyntaxError", "line 1"],
    ),
    "integer weights": (
        [
            "measure",
            "--model",
            "integer.safetensors",
            "--arch",
            "arch.py:make",
            "--data",
            "moons",
            "--out",
            "out",
        ],
        ["integer.safetensors", "torch.int64"],
    ),
    "NaN weights": (
        [
            "measure",
            "--model",
            "nan.safetensors",
            "--arch",
            "arch.py:make",
            "--data",
            "moons",
            "--out",
            "out",
        ],
        ["nan.safetensors", "NaN"],
    ),
    "input size that does not fit the model": (
        [
            "measure",
            "--model",
            "wide.safetensors",
            "--arch",
            "wide.py:make",
            "--data",
            "moons",
            "--out",
            "out",
        ],
        ["cannot run on the data's inputs", "(2,)"],
    ),
    "unknown study": (
        ["study", "memory", "--out", "out"],
        ["unknown study 'memory'", "capacity, robustness"],
    ),
    "grokking on other data": (
        ["study", "grokking", "--quick", "--data", "digits", "--out", "out"],
        ["grokking study runs on modular arithmetic", "'digits'"],
    ),
    "disentanglement on other data": (
        ["study", "disentanglement", "--quick", "--data", "digits", "--out", "out"],
        ["dsprites-like (generated) or a dSprites .npz", "'digits'"],
    ),
    "disentanglement on an .npz that is not dSprites": (
        ["study", "disentanglement", "--quick", "--data", "flat.npz", "--out", "out"],
        ["flat.npz", "imgs and latents_classes"],
    ),
    "a capacity grid larger than the data": (
        ["study", "capacity", "--data", "moons", "--out", "out"],
        ["N = 800", "420 training points"],
    ),
    "study data without labels": (
        ["study", "robustness", "--quick", "--data", "no-labels.npz", "--out", "out"],
        ["no-labels.npz", "X and y"],
    ),
    "a grid with an unknown hyperparameter": (
        ["zoo", "run", "--grid", "grid-unknown.yaml", "--out", "out"],
        ["unknown hyperparameter 'dropout'"],
    ),
    "a grid value out of range": (
        ["zoo", "run", "--grid", "grid-range.yaml", "--out", "out"],
        ["label_noise = 1.5 is out of range"],
    ),
    "a grid that is not YAML": (
        ["zoo", "run", "--grid", "grid-broken.yaml", "--out", "out"],
        ["not valid YAML"],
    ),
    "an unknown zoo action": (["zoo", "train", "--out", "out"], ["unknown zoo action 'train'"]),
    "a zoo that was never run": (["zoo", "evaluate", "--out", "out"], ["zoo.sqlite not found"]),
    "report of metrics without measures": (["report", "incomplete"], ["incomplete", "'measures'"]),
    "report of metrics without networks": (
        ["report", "not-metrics"],
        ["not-metrics", "'networks'"],
    ),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case once, four processes at a time, each in its own folder."""
    torch.manual_seed(0)

    def prepare(folder):
        _data_files(folder)
        _model_files(folder)

    return run_cases(CASES, tmp_path_factory.mktemp("bad-inputs"), prepare)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_folder(outcomes, case):
    result, folder = outcomes[case]
    assert_clean_failure(result, *CASES[case][1])
    assert not (folder / "out").exists(), "refused before any folder was made"
