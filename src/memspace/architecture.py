"""The user's own model: an architecture named ``MODULE:FACTORY`` and the weights that fit it.

``memspace measure --arch`` takes a module (importable) or a ``.py`` file and a callable in it
that returns the ``nn.Module``; the weights come from :func:`memspace.checkpoint.load_state`.
The user's code runs with its prints sent to stderr (stdout is memspace's, for ``--json``), and
anything it raises, or an ``exit()`` it calls, is reported as one :class:`~memspace.MemspaceError`
naming it: nothing is measured.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ._errors import MemspaceError
from .checkpoint import check_weights, load_state

__all__ = ["build_network", "load_factory", "load_network", "one_line"]


def one_line(error: BaseException) -> str:
    """``Type: first line`` of an exception, with the line number of a syntax error."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, SyntaxError) and error.lineno:
        text = f"{error.msg} (line {error.lineno})"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _users_code() -> contextlib.AbstractContextManager:
    """Run the user's code with its prints sent to stderr: stdout is memspace's (``--json``)."""
    return contextlib.redirect_stdout(sys.stderr)


def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``spec``: ``module.name:factory`` or ``path/to/file.py:factory``.

    Raises:
        MemspaceError: a malformed spec, a missing file, a module that cannot be imported (or
            exits while loading), or no callable of that name in it.
    """
    if ":" not in spec:
        raise MemspaceError(
            f"--arch {spec!r} must be MODULE:FACTORY (a module or .py file, and a callable in it)"
        )
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise MemspaceError(f"architecture file {path} does not exist")
        loaded = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loaded)
        try:
            with _users_code():
                loaded.loader.exec_module(module)
        except SystemExit as error:
            raise MemspaceError(
                f"architecture file {path} called exit({error.code!r}) while loading; "
                "nothing was measured"
            ) from None
        except Exception as error:  # the user's file: a syntax error or one raised at import
            raise MemspaceError(
                f"cannot load architecture file {path}: {one_line(error)}"
            ) from None
    else:
        try:
            with _users_code():
                module = importlib.import_module(module_name)
        except SystemExit as error:
            raise MemspaceError(
                f"architecture module {module_name!r} called exit({error.code!r}) while loading; "
                "nothing was measured"
            ) from None
        except Exception as error:
            raise MemspaceError(
                f"cannot import architecture module {module_name!r}: {one_line(error)}"
            ) from None
    if not callable(getattr(module, attr, None)):
        raise MemspaceError(f"module {module_name!r} has no factory {attr!r}")
    return getattr(module, attr)


def build_network(factory: Callable[[], Any], spec: str) -> nn.Module:
    """``factory()``, checked to be an ``nn.Module``.

    Raises:
        MemspaceError: the factory raised, exited, or returned something else.
    """
    try:
        with _users_code():
            network = factory()
    except SystemExit as error:
        raise MemspaceError(
            f"the factory {spec} called exit({error.code!r}); nothing was measured"
        ) from None
    except Exception as error:
        raise MemspaceError(f"the factory {spec} raised {one_line(error)}") from None
    if not isinstance(network, nn.Module):
        raise MemspaceError(
            f"factory {spec} returned {type(network).__name__}, not a torch.nn.Module"
        )
    return network


def load_network(weights: Path, spec: str) -> nn.Module:
    """The architecture ``spec`` with the checked weights of the file ``weights``.

    Raises:
        MemspaceError: anything :func:`load_factory`, :func:`build_network`,
            :func:`~memspace.checkpoint.load_state` or :func:`~memspace.checkpoint.check_weights`
            refuses, or weights that do not match the architecture.
    """
    network = build_network(load_factory(spec), spec)
    state = load_state(weights)
    check_weights(state, network, weights)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise MemspaceError(
            f"checkpoint {weights} does not match the architecture {spec}: "
            f"{first[1].strip() if len(first) > 1 else first[0]}"
        ) from None
    return network
