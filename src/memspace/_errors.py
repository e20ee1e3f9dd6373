"""Errors raised by memspace, shared by the library and the command line.

One family: every error memspace raises on purpose is a :class:`MemspaceError`. It subclasses
``ValueError`` (and :class:`ArgumentTypeError` also ``TypeError``), so code that catches the
built-in types keeps working. The command line turns a ``MemspaceError`` into one line on
stderr and exit code 2; anything else that escapes is a bug in memspace and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "DataError",
    "MemspaceError",
    "MemspaceWarning",
    "ModelError",
]


class MemspaceError(ValueError):
    """A problem with what the user handed to memspace (data, model, file, option)."""


class DataError(MemspaceError):
    """Bad data: NaN/Inf values, an empty source, wrong shapes or labels."""


class ModelError(MemspaceError):
    """A model memspace cannot measure as asked.

    Unsupported layers, wrong outputs, shared parameters.
    """


class ArgumentTypeError(MemspaceError, TypeError):
    """An argument of the wrong type (a ``TypeError`` too, as Python's own would be)."""


class MemspaceWarning(UserWarning):
    """A result memspace computed, but not all of it the way the caller may assume.

    Such as K-FAC layers that have no Kronecker block and take their exact diagonal instead.
    """
