"""Reading ``.npz`` files that may come from anyone, within a stated memory budget.

A ``.npz`` is a zip of ``.npy`` arrays; its members are deflated, so a file of a few
megabytes can claim gigabytes. :func:`load_npz` reads each member's declared size (the
zip directory) and its ``.npy`` header (dtype and shape) *before* inflating anything,
refuses object arrays (they would need pickle) and any member or total over the budget,
and only then inflates — Python's zip reader stops at the declared size, so the budget
bounds the memory whatever the compressed bytes say.

The budget is :data:`MAX_NPZ_BYTES` (4 GiB, enough for the real dSprites file, about
3.1 GB), or the environment variable ``MEMSPACE_MAX_NPZ_BYTES``.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ._errors import DataError

__all__ = ["MAX_NPZ_BYTES", "load_npz", "npz_budget"]

MAX_NPZ_BYTES = 4 * 2**30


def npz_budget() -> int:
    """The byte budget of one ``.npz`` (``MEMSPACE_MAX_NPZ_BYTES`` or :data:`MAX_NPZ_BYTES`)."""
    text = os.environ.get("MEMSPACE_MAX_NPZ_BYTES")
    if text is None:
        return MAX_NPZ_BYTES
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 1:
        raise DataError(f"MEMSPACE_MAX_NPZ_BYTES={text!r} must be a positive number of bytes")
    return value


def _header(member, name: str, where: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{where}: member {name!r} is not a readable .npy array ({error})"
        ) from None
    return dtype, tuple(shape), bool(fortran)


def _read_into(stream, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream``; the number of bytes read (less at a premature end)."""
    done = 0
    while done < len(buffer):
        count = stream.readinto(buffer[done:])
        if not count:
            break
        done += count
    return done


def load_npz(
    path: str | Path,
    what: str = "data file",
    names: Iterable[str] | None = None,
    max_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path`` (only ``names`` when given), checked before inflating.

    Args:
        path: the file.
        what: how errors name it ("data file", "dSprites file").
        names: the members to load (others are not inflated); None for all.
        max_bytes: the budget for all loaded arrays together (default :func:`npz_budget`).

    Returns:
        ``{name: array}`` without the ``.npy`` suffix.

    Raises:
        DataError: naming the file and the bound: not a file, not a zip of ``.npy``
            arrays, an object (pickled) array, a member or total over the budget, or a
            member whose data ends before its header's shape.
    """
    path = Path(path)
    where = f"{what} {path}"
    budget = npz_budget() if max_bytes is None else max_bytes
    if not path.is_file():
        raise DataError(f"{where} does not exist (or is not a regular file)")
    wanted = None if names is None else set(names)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise DataError(f"cannot read {where}: not an .npz archive ({error})") from None
    arrays: dict[str, np.ndarray] = {}
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        chosen = [
            info
            for info in members
            if wanted is None or info.filename.removesuffix(".npy") in wanted
        ]
        declared = sum(info.file_size for info in chosen)
        if declared > budget:
            raise DataError(
                f"{where}: its arrays inflate to {declared} bytes, over the bound of {budget} "
                "bytes "
                "(set MEMSPACE_MAX_NPZ_BYTES to allow more)"
            )
        for info in chosen:
            name = info.filename.removesuffix(".npy")
            try:
                with archive.open(info) as member:
                    dtype, shape, fortran = _header(member, name, where)
                    if dtype.hasobject:
                        raise DataError(
                            f"{where}: array {name!r} holds Python objects ({dtype}); memspace "
                            "never "
                            "unpickles, store numbers"
                        )
                    size = math.prod(shape) * dtype.itemsize
                    if size > budget or size > info.file_size:
                        raise DataError(
                            f"{where}: array {name!r} of shape {shape} and {dtype} needs {size} "
                            "bytes, "
                            f"over the {min(budget, info.file_size)} bytes its file or the bound "
                            "allows"
                        )
                    flat = np.empty(math.prod(shape), dtype=dtype)
                    got = _read_into(member, memoryview(flat.view(np.uint8)))
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                RuntimeError,
                NotImplementedError,
            ) as error:
                raise DataError(
                    f"cannot read {where}: member {name!r} is damaged ({error})"
                ) from None
            if got != size:
                raise DataError(
                    f"{where}: array {name!r} ends after {got} of its {size} bytes (truncated)"
                )
            arrays[name] = flat.reshape(shape, order="F" if fortran else "C")
    return arrays
