"""The HTML report: figures and a summary a person can read at a glance."""

from .html import render_report

__all__ = ["render_report"]
