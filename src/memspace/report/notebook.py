"""What a result shows in a notebook: a small HTML table of its headline numbers.

Every public result (:class:`~memspace.paths.PredictivePath`,
:class:`~memspace.paths.BlockSensitivity`,
:class:`~memspace.studies.results.NetworkMeasures`, a study's
:class:`~memspace.studies.StudySummary`,
the operator's :class:`~memspace.fisher.operator.TapPlan`) has a concise ``repr``, an
``_repr_html_`` built here or from the report's own section, and a ``.plot(ax=None)`` that draws
the report's figure for it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from .html import _num

__all__ = ["key_value_table"]


def key_value_table(title: str, rows: Sequence[tuple[str, Any, str]]) -> str:
    """An HTML table headed ``title`` with one (label, value, format spec) per row."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
        f"<td>{_num(value, '{:' + spec + '}')}</td></tr>"
        for label, value, spec in rows
    )
    return f"<table><caption><b>{html.escape(title)}</b></caption>{body}</table>"
