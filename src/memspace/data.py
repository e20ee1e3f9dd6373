"""Data sets that work offline: embedded, generated, and optional packaged ones.

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes).
- ``moons``: scikit-learn's generated two moons (2-D, 2 classes), for pictures of paths.
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` package (28×28, 10 classes),
  read from ``/usr/share/datasets/fashion-mnist`` when installed
  (``apt-get install dataset-fashion-mnist``); a clear error otherwise.
- :func:`modular_arithmetic`: every pair (a, b) of Z_p once, labelled a ∘ b mod p for ∘ ∈ {+, −, ×},
  as the tokens [a, b, =] of the grokking literature (Power et al. 2022; Nanda et al. 2023),
  with an exact, seeded training fraction.
- a path to your own ``.npz`` file with arrays ``X`` and ``y`` (split here), or
  ``X_train``, ``y_train``, ``X_test``, ``y_test``; loaded with ``allow_pickle=False``.
  Labels must cover 0..C−1, or the file stores the class count as ``num_classes``.
  X must be real (complex is refused), have at least one feature, and standardise
  without overflow; both parts must be non-empty.

Nothing downloads at run time. Float inputs are float32, standardised with training-set
statistics; integer inputs of an ``.npz`` (token ids) stay int64 and are not standardised;
labels are int64.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._errors import DataError, MemspaceError
from ._npz import load_npz

__all__ = ["DATASETS", "MODULAR_OPERATIONS", "DataSplit", "load_dataset", "modular_arithmetic"]

DATASETS = ("digits", "moons", "fashion-mnist")
MODULAR_OPERATIONS = {
    "+": lambda a, b, p: (a + b) % p,
    "-": lambda a, b, p: (a - b) % p,
    "*": lambda a, b, p: (a * b) % p,
}
"""The operations of :func:`modular_arithmetic`, each (a, b, p) ↦ a ∘ b mod p."""
MAX_CLASSES = 2**20
"""The most classes a data file may have (labels beyond are refused before any work)."""
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DataSplit:
    """A train/test split.

    Attributes:
        name: data set name.
        train / test: ``(X, y)`` with X [N, *input_shape] float32 and y [N] int64.
        num_classes: C.
        input_shape: shape of one input (``(64,)``, ``(2,)`` or ``(1, 28, 28)``).
    """

    name: str
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, (D,) or (C, H, W)."""
        return tuple(self.train[0].shape[1:])


def _split(
    name: str, X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, classes: int
) -> DataSplit:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    n_test = int(round(test_fraction * len(X)))
    test, train = order[:n_test], order[n_test:]
    with np.errstate(over="ignore", invalid="ignore"):
        mean = X[train].mean(axis=0, keepdims=True)
        std = X[train].std(axis=0, keepdims=True) + 1e-6
    X = _standardise(name, X, mean, std)
    as_pair = lambda idx: (torch.from_numpy(X[idx]), torch.from_numpy(y[idx].astype(np.int64)))  # noqa: E731
    return DataSplit(name, as_pair(train), as_pair(test), classes)


def _split_integer(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    test_fraction: float,
    seed: int,
    classes: int,
    parts: int | None,
) -> DataSplit:
    """A split of integer inputs (token ids), kept as int64."""
    if parts is None:
        order = np.random.default_rng(seed).permutation(len(X))
        n_test = int(round(test_fraction * len(X)))
        test, train = order[:n_test], order[n_test:]
    else:
        train, test = np.arange(parts), np.arange(parts, len(X))

    def as_pair(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(X[idx].astype(np.int64)), torch.from_numpy(y[idx].astype(np.int64))

    return DataSplit(name, as_pair(train), as_pair(test), classes)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_mnist(limit: int | None, seed: int) -> DataSplit:
    files = {
        part: FASHION_MNIST_DIR / f"{part}-ubyte.gz"
        for part in (
            "train-images-idx3",
            "train-labels-idx1",
            "t10k-images-idx3",
            "t10k-labels-idx1",
        )
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise DataError(
            f"fashion-mnist is not installed ({missing[0]} not found); install Debian's "
            "package with `apt-get install dataset-fashion-mnist`, or use --data digits"
        )
    rng = np.random.default_rng(seed)
    parts = []
    for prefix, default in (("train", limit or 60000), ("t10k", (limit or 60000) // 6)):
        images = _read_idx(files[f"{prefix}-images-idx3"]).astype(np.float32) / 255.0
        labels = _read_idx(files[f"{prefix}-labels-idx1"]).astype(np.int64)
        keep = rng.permutation(len(images))[: min(default, len(images))]
        parts.append((images[keep], labels[keep]))
    (xtr, ytr), (xte, yte) = parts
    mean, std = xtr.mean(), xtr.std()

    def as_pair(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(((x - mean) / std)[:, None].astype(np.float32)), torch.from_numpy(y)

    return DataSplit("fashion-mnist", as_pair(xtr, ytr), as_pair(xte, yte), 10)


def _npz(path: Path, test_fraction: float, seed: int) -> DataSplit:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    content = load_npz(path, "data file")
    if {"X", "y"} <= content.keys():
        X, y = content["X"], content["y"]
        parts = None
    elif {"X_train", "y_train", "X_test", "y_test"} <= content.keys():
        X = np.concatenate([content["X_train"], content["X_test"]])
        y = np.concatenate([content["y_train"], content["y_test"]])
        parts = len(content["X_train"])
    else:
        raise DataError(
            f"data file {path} must hold arrays X and y (or X_train, y_train, X_test, y_test); "
            f"it has {', '.join(content) or 'none'}"
        )
    X, y, classes = _check_arrays(path, X, y, parts, content.get("num_classes"))
    if np.issubdtype(
        X.dtype, np.integer
    ):  # token ids or counts: kept as integers, never standardised
        return _split_integer(str(path), X, y, test_fraction, seed, classes, parts)
    X = X.astype(np.float64)
    if parts is None:
        return _split(str(path), X, y, test_fraction, seed, classes)
    mean, std = X[:parts].mean(0, keepdims=True), X[:parts].std(0, keepdims=True) + 1e-6
    X = _standardise(path, X, mean, std)
    pair = lambda a, b: (torch.from_numpy(X[a:b]), torch.from_numpy(y[a:b].astype(np.int64)))  # noqa: E731
    return DataSplit(str(path), pair(0, parts), pair(parts, len(X)), classes)


def _check_arrays(
    path: Path, X: np.ndarray, y: np.ndarray, parts: int | None, num_classes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every check of an .npz's arrays, before any work: dtypes, shapes, finiteness, labels.

    Returns ``(X, y, C)``; C is ``num_classes`` when the file gives it, else max(y) + 1,
    which then must be a label set 0..C−1 with every class present.
    """
    where = f"data file {path}"
    if np.iscomplexobj(X):
        raise DataError(f"{where}: X is complex ({X.dtype}); memspace takes real inputs")
    if X.dtype == np.bool_:
        X = X.astype(np.int64)
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{where}: X must be numeric, it holds {X.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: y must hold integer class labels, it holds {y.dtype}")
    if X.ndim < 2:
        raise DataError(
            f"{where}: X has shape {X.shape}; it needs one row per sample and at least one feature "
            "axis ([N, D], or [N, C, H, W] for images)"
        )
    if y.ndim != 1:
        raise DataError(
            f"{where}: y has shape {y.shape}; it must be one label per sample, shape [N]"
        )
    if len(X) != len(y) or len(X) < 2:
        raise DataError(
            f"{where}: X has {len(X)} rows and y has {len(y)}; it needs one label per row and at "
            "least two rows"
        )
    if X[0].size == 0:
        raise DataError(f"{where}: X has shape {X.shape}: its samples have no features")
    if parts is not None and not 0 < parts < len(X):
        raise DataError(
            f"{where}: X_train and X_test must both be non-empty (they have {parts} and "
            f"{len(X) - parts} rows)"
        )
    bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: X contains NaN/Inf (first in row {int(np.argmax(bad))})")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be non-negative integers")
    if y.max() >= MAX_CLASSES:
        raise DataError(f"{where}: label {int(y.max())} is over the bound of {MAX_CLASSES} classes")
    if num_classes is not None:
        if (
            num_classes.size != 1
            or not np.issubdtype(num_classes.dtype, np.integer)
            or not 2 <= int(num_classes.reshape(-1)[0]) <= MAX_CLASSES
        ):
            raise DataError(f"{where}: num_classes must be one integer from 2 to {MAX_CLASSES}")
        classes = int(num_classes.reshape(-1)[0])
        if y.max() >= classes:
            raise DataError(f"{where}: label {int(y.max())} is not below num_classes = {classes}")
        return X, y, classes
    present = np.unique(y)
    classes = int(y.max()) + 1
    if classes < 2:
        raise DataError(f"{where}: y has a single class; a classifier needs at least two")
    if (
        len(present) != classes
    ):  # present is sorted and unique: the first gap is the first missing label
        gaps = np.nonzero(present != np.arange(len(present)))[0]
        first = int(gaps[0]) if len(gaps) else len(present)
        raise DataError(
            f"{where}: labels must cover 0..C−1, but {classes - len(present)} of "
            f"0..{classes - 1} never "
            f"occur (first {first}); relabel them, or store the number of classes as an array "
            "num_classes in the file"
        )
    return X, y, classes


def _standardise(path, X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(X − mean)/std as float32, refusing values whose standardisation overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (X - mean) / std
        finite = np.isfinite(mean).all() and np.isfinite(std).all() and np.isfinite(out).all()
        if finite:
            out = out.astype(np.float32)
            finite = np.isfinite(out).all()
    if not finite:
        raise DataError(
            f"data file {path}: standardising X overflows (its values reach "
            f"{float(np.abs(X).max()):.3g}); rescale X"
        )
    return out


def load_dataset(
    name: str, *, seed: int = 0, test_fraction: float = 0.3, limit: int | None = None
) -> DataSplit:
    """Load a data set by name (see module doc) with a seeded train/test split.

    Args:
        name: one of :data:`DATASETS`.
        seed: seed of the split (and of the moons' noise).
        test_fraction: share of the data held out (digits, moons).
        limit: for fashion-mnist, the number of training images kept (test: limit/6).

    Raises:
        MemspaceError: for an unknown name; DataError if an optional set is missing.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return _split(name, bunch.data.astype(np.float64), bunch.target, test_fraction, seed, 10)
    if name == "moons":
        from sklearn.datasets import make_moons

        X, y = make_moons(n_samples=600, noise=0.2, random_state=seed)
        return _split(name, X, y, test_fraction, seed, 2)
    if name == "fashion-mnist":
        return _fashion_mnist(limit, seed)
    if name.endswith(".npz"):
        return _npz(Path(name), test_fraction, seed)
    raise MemspaceError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def modular_arithmetic(
    p: int, op: str = "+", *, train_fraction: float = 0.3, seed: int = 0
) -> DataSplit:
    """All p² pairs of Z_p, labelled (a ∘ b) mod p, split into train and test pairs.

    Each input is the token sequence [a, b, p] (p is the ``=`` token, so the vocabulary has
    p + 1 tokens and the answer is read at the last position), int64 [3]; the label is
    a ∘ b mod p (C = p classes). Exactly ⌊train_fraction · p²⌋ pairs (as Nanda et al.: 3 830
    of 12 769 at p = 113 and 0.3), drawn by a seeded permutation, are for training; every
    other pair is a test pair.

    Args:
        p: the modulus (at least 2; a prime for the grokking anchors, e.g. 113 as Nanda et al.).
        op: ``"+"``, ``"-"`` or ``"*"`` (:data:`MODULAR_OPERATIONS`).
        train_fraction: the share of pairs for training, in (0, 1).
        seed: seed of the permutation.

    Raises:
        MemspaceError: for p < 2, an unknown operation, or a fraction that leaves either part
            empty.
    """
    if not isinstance(p, int) or p < 2 or p > 4096:
        raise MemspaceError(f"the modulus p must be an integer in [2, 4096], got {p!r}")
    if op not in MODULAR_OPERATIONS:
        raise MemspaceError(
            f"unknown operation {op!r}; choose one of {', '.join(MODULAR_OPERATIONS)}"
        )
    n_train = int(math.floor(train_fraction * p * p + 1e-9))
    if not 0 < n_train < p * p:
        raise MemspaceError(
            f"train_fraction {train_fraction} leaves no training or no test pair of the {p * p}"
        )
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    tokens = np.stack([a, b, np.full_like(a, p)], 1).astype(np.int64)
    labels = MODULAR_OPERATIONS[op](a, b, p).astype(np.int64)
    order = np.random.default_rng(seed).permutation(p * p)
    train, test = order[:n_train], order[n_train:]

    def part(idx: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(tokens[idx]), torch.from_numpy(labels[idx])

    return DataSplit(f"modular-{op}-{p}", part(train), part(test), p)
