"""experiments/RESULTS.md is assembled from one section file per experiment script.

Each script writes ``experiments/results/<name>.md`` (atomically) and calls
:func:`publish`, which rebuilds RESULTS.md from every section file in a fixed order, so
two scripts never overwrite each other's results.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from memspace._runs import write_atomic  # noqa: E402

ORDER = ["least_action", "memory_space", "zoo"]


def publish(name: str, text: str) -> Path:
    """Write the section ``name`` and rebuild experiments/RESULTS.md; return its path."""
    sections = HERE / "results"
    sections.mkdir(exist_ok=True)
    write_atomic(sections / f"{name}.md", text)
    present = sorted(
        sections.glob("*.md"),
        key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem),
    )
    parts = [
        "# Experiment results",
        "",
        "Each section is written by the script it names (see `experiments/`); numbers are as "
        "measured.",
        "",
    ]
    parts += [p.read_text().rstrip() + "\n" for p in present]
    return write_atomic(HERE / "RESULTS.md", "\n".join(parts))
