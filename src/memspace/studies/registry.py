"""The one list of memspace's studies, read by the command line, the demo and the report.

A :class:`Study` says everything a surface needs: its name and one-line description (the CLI's
help), the report section's title, its configurations (``"quick"`` for tests and the demo,
``"full"`` for the result), how to check its data before any work (:attr:`Study.prepare`), how
to run it in a run folder (:attr:`Study.run`), and whether the demo includes its quick version.
Adding a study is adding one module that defines these and a line in :data:`STUDIES`; the report
draws a generic section for a study it has no figures for.
"""

from __future__ import annotations

from typing import Any

from .._errors import MemspaceError
from .base import Study, StudySummary

__all__ = ["STUDIES", "Study", "get_study", "prepare_study", "run_study"]


def _registered() -> dict[str, Study]:
    from . import capacity, disentanglement, grokking, robustness

    return {
        study.name: study
        for study in (capacity.STUDY, robustness.STUDY, disentanglement.STUDY, grokking.STUDY)
    }


STUDIES: dict[str, Study] = _registered()
"""Every study by name, in the order of the report."""


def get_study(name: str) -> Study:
    """The study called ``name``.

    Raises:
        MemspaceError: for an unknown name, listing the known ones.
    """
    if name not in STUDIES:
        raise MemspaceError(f"unknown study {name!r}; choose {', '.join(STUDIES)}")
    return STUDIES[name]


def prepare_study(
    name: str, size: str = "quick", data: str | None = None, **overrides: Any
) -> tuple[dict, Any]:
    """A study's configuration and its data, checked before any work.

    The configuration is ``"quick"`` or ``"full"``, with ``data`` and the overrides.

    Raises:
        MemspaceError: an unknown study, data the study cannot use, or a grid that cannot run.
    """
    study = get_study(name)
    config = {**study.configs[size], **({"data": data} if data else {}), **overrides}
    return config, study.prepare(config)


def run_study(
    name: str, run: Any, config: dict[str, Any], split: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """Run (or resume) the study ``name`` in the run folder ``run``.

    Return its :class:`StudySummary`.
    """
    return StudySummary(name, get_study(name).run(run, config, split=split, **kwargs))
