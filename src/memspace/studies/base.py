"""What a study is (:class:`Study`); the list of them is :mod:`.registry`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Study", "StudySummary"]


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
        figure: its main figure in :mod:`memspace.report.figures` (what ``StudySummary.plot``
            draws).
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
    figure: str = ""
    summary_keys: tuple[str, ...] = ()
    in_demo: bool = True
    demo_data: Callable[[str, tuple[int, ...]], str | None] = lambda data, shape: data
    data_help: str = ""


class StudySummary(dict):
    """A study's summary: the JSON dict it stores in ``metrics.json``, with its study's name.

    ``summary["table"]`` and ``json.dumps(summary)`` work as on the dict; it adds a concise
    ``repr``, the report's section as its HTML repr in a notebook, and :meth:`plot`.
    """

    def __init__(self, name: str, summary: Mapping[str, Any]):
        super().__init__(summary)
        self.name = name

    @classmethod
    def from_dict(cls, name: str, data: Any, source: str = "the metrics") -> StudySummary:
        """A stored summary of study ``name``, checked: a mapping with every key the study declares.

        Raises:
            MemspaceError: naming ``source``, the study and what is missing.
        """
        from .._errors import MemspaceError
        from .registry import get_study

        if not isinstance(data, Mapping):
            raise MemspaceError(
                f"{source}: the {name} study's summary is a {type(data).__name__}, not a mapping"
            )
        missing = [key for key in get_study(name).summary_keys if key not in data]
        if missing:
            raise MemspaceError(
                f"{source}: the {name} study's summary lacks {', '.join(missing)}; "
                "rerun the study that wrote it"
            )
        return cls(name, data)

    def __repr__(self) -> str:
        cells = next(
            (len(self[k]) for k in ("table", "cells", "rows") if isinstance(self.get(k), list)),
            None,
        )
        return (
            f"StudySummary({self.name!r}, {len(self)} entries"
            + (f", {cells} cells" if cells is not None else "")
            + f": {', '.join(list(self)[:6])}"
            + (", ..." if len(self) > 6 else "")
            + ")"
        )

    def _repr_html_(self) -> str:
        from ..report.html import study_section

        title, draw = study_section(self.name)
        return f"<h3>{title}</h3>{draw(dict(self))}"

    def plot(self, ax: Any = None) -> Any:
        """The report's main figure for this study (it lays out its own panels).

        Args:
            ax: must be None: these figures draw several panels of their own.

        Returns:
            The matplotlib figure.

        Raises:
            MemspaceError: ``ax`` given, or a study without a figure.
        """
        from .._errors import MemspaceError
        from ..report import figures
        from .registry import get_study

        name = get_study(self.name).figure
        if ax is not None:
            raise MemspaceError(
                f"the {self.name} figure lays out its own panels; call plot() without ax"
            )
        if not name:
            raise MemspaceError(
                f"the {self.name} study has no figure of its own; see its report section"
            )
        return getattr(figures, name)(dict(self))
