"""Errors raised by memspace, shared by the library and the command line."""

from __future__ import annotations

__all__ = ["MemspaceError", "DataError"]


class MemspaceError(ValueError):
    """A problem with what the user handed to memspace (data, model, file, option).

    It subclasses ``ValueError`` so callers that catch ``ValueError`` keep working;
    the command line turns it into one line on stderr and exit code 2.
    """


class DataError(MemspaceError):
    """Bad data: NaN/Inf values, an empty source, wrong shapes or labels."""
