"""The zoo's results in SQLite (WAL): one row per model, one per (model, measure).

Every model is committed in one transaction with its measures, so a kill at any moment
loses at most the models in flight, never a committed row; ``synchronous=FULL`` makes a
commit durable before the next model starts. Only the parent process writes.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["ZooStore"]

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

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def model_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT id FROM models")}

    def measure_names(self, model_id: str) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT name FROM measures WHERE model_id = ?", (model_id,))}

    def add(self, row: dict[str, Any], measures: dict[str, float]) -> None:
        """Commit one model and its measures in one transaction (idempotent: replaces)."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (row["id"], json.dumps(row["hparams"], sort_keys=True), row["seed"], row["train_acc"],
                 row["test_acc"], row["train_ce"], row["gap"], row["epochs"], int(row["converged"]), row["seconds"],
                 row["init_file"], row["final_file"]))
            self.add_measures(row["id"], measures, commit=False)

    def add_measures(self, model_id: str, measures: dict[str, float], commit: bool = True) -> None:
        rows = [(model_id, name, _real(value)) for name, value in measures.items()]
        if commit:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO measures VALUES (?,?,?)", rows)
        else:
            self.db.executemany("INSERT OR REPLACE INTO measures VALUES (?,?,?)", rows)

    def models(self) -> list[dict[str, Any]]:
        columns = [d[1] for d in self.db.execute("PRAGMA table_info(models)")]
        rows = []
        for values in self.db.execute("SELECT * FROM models ORDER BY id"):
            row = dict(zip(columns, values))
            row["hparams"] = json.loads(row["hparams"])
            row["converged"] = bool(row["converged"])
            rows.append(row)
        return rows

    def measures(self) -> dict[str, dict[str, float]]:
        """{model id: {measure: value}} (NULL values, from non-finite results, as NaN)."""
        out: dict[str, dict[str, float]] = {}
        for model_id, name, value in self.db.execute("SELECT model_id, name, value FROM measures"):
            out.setdefault(model_id, {})[name] = math.nan if value is None else value
        return out

    def close(self) -> None:
        self.db.close()


def _real(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
