"""A study's results, one cell at a time, in its run folder (shared by the studies).

Cells are kept in ``cells.jsonl`` (one JSON object per line, with its ``key``), rewritten
atomically after each new cell: a killed study loses at most the cell in flight, and a
rerun skips every cell already there.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import MemspaceError
from .._runs import RunFolder

CELLS = "cells.jsonl"


class CellStore:
    """The finished cells of a study in ``run`` (module doc)."""

    def __init__(self, run: RunFolder):
        self.run = run
        self.cells: dict[str, dict[str, Any]] = {}
        stored = run.read(CELLS)
        for number, line in enumerate(
            (stored or b"").decode("utf-8", errors="replace").splitlines(), 1
        ):
            try:
                record = json.loads(line)
                self.cells[str(record["key"])] = record
            except (ValueError, KeyError, TypeError, RecursionError):
                raise MemspaceError(
                    f"{run.root / CELLS}, line {number}: not a cell memspace wrote (damaged); "
                    "rerun with --overwrite to start the study afresh"
                ) from None

    def __contains__(self, key: str) -> bool:
        return key in self.cells

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.cells[key]

    def add(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """Store a finished cell (atomically, with everything before it)."""
        record = {"key": key, **record}
        self.cells[key] = record
        self.run.write(CELLS, "".join(json.dumps(r) + "\n" for r in self.cells.values()))
        return record

    def values(self) -> list[dict[str, Any]]:
        return list(self.cells.values())
