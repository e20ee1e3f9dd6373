"""The one check of a numeric option, shared by the library and the command line.

Each option is checked once, where it is used (``fit`` checks the training options, the demo its
own, the command line only what exists on the command line alone), and the message names it as
both a Python argument and a command-line flag, so it reads right from either.
"""

from __future__ import annotations

import math
import numbers

from ._errors import MemspaceError

__all__ = ["MAX_SEED", "check_number"]

MAX_SEED = 2**32 - 1
"""Seeds run from 0 to 2³² − 1 (NumPy's and torch's generators take them; SQLite stores them)."""


def check_number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    flag: str | None = None,
    strict_low: bool = False,
) -> None:
    """Refuse a non-finite ``value``, one out of range, or a non-integer where one is needed.

    Args:
        name: the Python argument (``batch_size``).
        value: the value given (None: not given, nothing to check).
        low: the smallest value allowed (None: no lower bound).
        high: the largest value allowed (None: no upper bound).
        integer: whether the value must be an integer.
        flag: the command-line flag (default ``--`` + ``name`` with dashes); ``""`` for none.
        strict_low: ``low`` itself is refused (the range is (low, high]).

    Raises:
        MemspaceError: ``"batch_size (--batch-size) must be an integer from 1 to 1000000, got 0"``.
    """
    if value is None:
        return
    flag = f"--{name.replace('_', '-')}" if flag is None else flag
    label = f"{name} ({flag})" if flag else name
    if low is not None and high is not None:
        bounds = f"from {low} to {high}"
    elif low is not None:
        bounds = f"> {low}" if strict_low else f"≥ {low}"
    else:
        bounds = "finite"
    rule = (
        f"{'an integer ' if integer else 'finite and '}{bounds}" if bounds != "finite" else "finite"
    )
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    if ok and low is not None:
        ok = value > low if strict_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise MemspaceError(f"{label} must be {rule}, got {value}")
