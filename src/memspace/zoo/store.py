"""The zoo's results in SQLite (WAL): one row per model, one per (model, measure).

Every model is committed in one transaction with its measures, so a kill at any moment
loses at most the models in flight, never a committed row; ``synchronous=FULL`` makes a
commit durable before the next model starts. Only the parent process writes.

A database is untrusted input (a zoo folder may come from elsewhere): a file that is a
link or not a regular file, is not SQLite, is truncated, has another schema, or cannot be
written (read-only, a full disk) ends in one :class:`~memspace.MemspaceError` naming the
file, never a ``sqlite3`` traceback.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from .._errors import MemspaceError
from .._runs import entry_parts

__all__ = ["ZooStore"]

_COLUMNS = {
    "models": [
        "id",
        "hparams",
        "seed",
        "train_acc",
        "test_acc",
        "train_ce",
        "gap",
        "epochs",
        "converged",
        "seconds",
        "init_file",
        "final_file",
    ],
    "measures": ["model_id", "name", "value"],
}


def _sqlite_errors(method):
    """Turn an ``sqlite3.Error`` (or a malformed row) into one MemspaceError naming the database."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise MemspaceError(
                f"zoo database {self.path}: {error} ({type(error).__name__}); it may be damaged, "
                "read-only or on a full disk"
            ) from None

    return wrapper


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, hparams TEXT NOT NULL, seed INTEGER NOT NULL,
    train_acc REAL, test_acc REAL, train_ce REAL, gap REAL, epochs INTEGER, converged INTEGER,
    seconds REAL, init_file TEXT, final_file TEXT);
CREATE TABLE IF NOT EXISTS measures (
    model_id TEXT NOT NULL REFERENCES models(id), name TEXT NOT NULL, value REAL,
    PRIMARY KEY (model_id, name));
"""


class ZooStore:
    """An SQLite database of trained models and their measures (module doc)."""

    @_sqlite_errors
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = None
        if self.path.is_symlink() or (os.path.lexists(self.path) and not self.path.is_file()):
            raise MemspaceError(
                f"zoo database {self.path} is a link or not a regular file; memspace opens only "
                "the plain file it wrote"
            )
        self.db = sqlite3.connect(self.path, timeout=60)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            for table, expected in _COLUMNS.items():
                columns = [row[1] for row in self.db.execute(f"PRAGMA table_info({table})")]
                if columns != expected:
                    raise MemspaceError(
                        f"zoo database {self.path}: table {table} has columns {columns}, not "
                        "memspace's; it was not written by this memspace"
                    )
        except BaseException:
            self.db.close()
            raise

    @_sqlite_errors
    def model_ids(self) -> set[str]:
        """The ids of every stored model."""
        return {row[0] for row in self.db.execute("SELECT id FROM models")}

    @_sqlite_errors
    def measure_names(self, model_id: str) -> set[str]:
        """The names of the measures stored for ``model_id``."""
        return {
            row[0]
            for row in self.db.execute("SELECT name FROM measures WHERE model_id = ?", (model_id,))
        }

    @_sqlite_errors
    def add(self, row: dict[str, Any], measures: dict[str, float]) -> None:
        """Commit one model and its measures in one transaction (idempotent: replaces)."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row["id"],
                    json.dumps(row["hparams"], sort_keys=True),
                    row["seed"],
                    row["train_acc"],
                    row["test_acc"],
                    row["train_ce"],
                    row["gap"],
                    row["epochs"],
                    int(row["converged"]),
                    row["seconds"],
                    row["init_file"],
                    row["final_file"],
                ),
            )
            self.add_measures(row["id"], measures, commit=False)

    @_sqlite_errors
    def add_measures(self, model_id: str, measures: dict[str, float], commit: bool = True) -> None:
        """Store ``measures`` of ``model_id`` (non-finite as NULL), committed when ``commit``."""
        rows = [(model_id, name, _real(value)) for name, value in measures.items()]
        if commit:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO measures VALUES (?,?,?)", rows)
        else:
            self.db.executemany("INSERT OR REPLACE INTO measures VALUES (?,?,?)", rows)

    @_sqlite_errors
    def models(self) -> list[dict[str, Any]]:
        """Every stored model as a dict (its row, hyperparameters decoded), by id."""
        columns = [d[1] for d in self.db.execute("PRAGMA table_info(models)")]
        rows = []
        for values in self.db.execute("SELECT * FROM models ORDER BY id"):
            row = dict(zip(columns, values))
            try:
                row["hparams"] = json.loads(row["hparams"])
            except (TypeError, ValueError, RecursionError):
                row["hparams"] = None
            numbers = ("train_acc", "test_acc", "train_ce", "gap", "seconds")
            for k in numbers[:4]:  # NULL: not measured (a memorisation cell has no test set,
                # a VAE no accuracy)
                row[k] = math.nan if row[k] is None else row[k]
            if (
                not isinstance(row["hparams"], dict)
                or not isinstance(row["id"], str)
                or not isinstance(row["seed"], int)
                or not isinstance(row["epochs"], int)
                or not all(isinstance(row[k], (int, float)) for k in numbers)
                or not all(
                    isinstance(row[k], str) and _plain_name(row[k])
                    for k in ("init_file", "final_file")
                )
            ):
                raise MemspaceError(
                    f"zoo database {self.path}: model row {str(row['id'])[:40]!r} is not one "
                    "memspace wrote (damaged or crafted)"
                )
            row["converged"] = bool(row["converged"])
            rows.append(row)
        return rows

    @_sqlite_errors
    def measures(self) -> dict[str, dict[str, float]]:
        """{model id: {measure: value}} (NULL values, from non-finite results, as NaN)."""
        out: dict[str, dict[str, float]] = {}
        for model_id, name, value in self.db.execute("SELECT model_id, name, value FROM measures"):
            if not isinstance(value, (int, float, type(None))):
                raise MemspaceError(
                    f"zoo database {self.path}: measure {str(name)[:40]!r} of model "
                    f"{str(model_id)[:40]!r} is not a number (damaged or crafted)"
                )
            out.setdefault(model_id, {})[name] = math.nan if value is None else float(value)
        return out

    def close(self) -> None:
        """Close the database (idempotent)."""
        if self.db is not None:
            self.db.close()


def _plain_name(name: str) -> bool:
    """A file name of one component inside the weights folder (no path, no bookkeeping name)."""
    try:
        return len(entry_parts(name)) == 1
    except ValueError:
        return False


def _real(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
