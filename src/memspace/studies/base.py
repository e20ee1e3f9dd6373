"""What a study is (:class:`Study`); the list of them is :mod:`.registry`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Study"]


@dataclass(frozen=True)
class Study:
    """One study: what the command line, the demo and the report need of it (:mod:`.registry`).

    Attributes:
        name: what ``memspace study NAME`` takes; the run folder is ``runs/study-NAME``.
        summary: one line for ``--help``.
        title: the heading of its report section.
        configs: ``{"quick": {...}, "full": {...}}``; each has at least ``data``.
        prepare: ``config → data`` (a split or a dataset), raising :class:`MemspaceError` for data
            or a grid the study cannot use, before any folder is made.
        run: ``(run, config, *, split, status, progress) → summary``; resumes from finished cells.
        in_demo: whether ``memspace demo`` adds its quick version to the report.
        demo_data: ``(the demo's data, its sample shape) → the data set the quick version runs on``
            (None: the configuration's own).
        data_help: what ``--data`` may name for it.
    """

    name: str
    summary: str
    title: str
    configs: Mapping[str, Mapping[str, Any]]
    prepare: Callable[[dict[str, Any]], Any]
    run: Callable[..., dict[str, Any]]
    in_demo: bool = True
    demo_data: Callable[[str, tuple[int, ...]], str | None] = lambda data, shape: data
    data_help: str = ""
