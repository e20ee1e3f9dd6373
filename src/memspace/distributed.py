"""Every memspace quantity over data sharded across processes (``torch.distributed``).

Each quantity is a sum over data points divided by their number, so each rank streams its own
shard, and the sums and counts are all-reduced before the division: the result is the
one-process result (up to the order of floating-point additions) and identical on every rank.
Quantities built on products (trace, Lanczos, Hutch++, SLQ, effective dimension) use seeded
probes, so every rank runs the same iteration on the same reduced products.

Pass ``distributed=True`` to :class:`~memspace.FisherOperator` (and so to K-FAC, the Fisher–Rao
norm, the Fisher distance and the trajectory length), :func:`~memspace.predictive_path` and
:func:`~memspace.block_sensitivity` after :func:`init_process_group` (or your own
``torch.distributed.init_process_group``). Without an initialised group, or with one process,
``distributed=True`` changes nothing.

A rank that fails does not leave the others waiting. Every reduction first exchanges a status
word; a rank whose quantity raises announces the failure in that exchange before re-raising, and
every other rank raises :class:`DistributedError` naming the failed rank and its message. A rank
that dies outright (killed, out of memory) is caught by the process group's timeout, which
:func:`init_process_group` sets (default 300 s), and reported the same way.

Launch with ``torchrun --nproc-per-node N your_script.py`` (``env://`` rendezvous), or see
``examples/distributed_measure.py`` and ``memspace measure --distributed``. On one machine
prefer a file rendezvous (``file:///path``) or ``MASTER_ADDR=127.0.0.1`` with
``GLOO_SOCKET_IFNAME=lo``: a TCP store otherwise listens on every interface.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor

from ._errors import MemspaceError

__all__ = ["Collective", "DistributedError", "init_process_group", "shard"]

_MESSAGE_BYTES = 400
_ANNOUNCED = "__memspace_announced__"
Method = TypeVar("Method", bound=Callable[..., Any])


class DistributedError(MemspaceError):
    """Another rank failed (its rank and message are named), or the ranks lost contact."""


def _available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Collective:
    """Status-checked all-reduce over the default process group (module doc).

    Args:
        enabled: ``distributed=`` as the quantity received it. ``True`` with an initialised
            group of more than one process activates the reductions.
        what: the quantity's name, for error messages.
    """

    def __init__(self, enabled: bool, what: str = "memspace"):
        self.what = what
        self.active = bool(enabled) and _available() and torch.distributed.get_world_size() > 1
        self.rank = torch.distributed.get_rank() if self.active else 0
        self.world = torch.distributed.get_world_size() if self.active else 1
        self._depth = 0

    def _status_device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _exchange(self, failure: str | None) -> None:
        """Share each rank's status; raise :class:`DistributedError` if another rank failed."""
        word = torch.zeros(_MESSAGE_BYTES + 1, dtype=torch.int64, device=self._status_device())
        if failure is not None:
            encoded = failure.encode("utf-8", "replace")[:_MESSAGE_BYTES]
            word[0] = 1
            word[1 : 1 + len(encoded)] = torch.tensor(list(encoded), dtype=torch.int64)
        words = [torch.empty_like(word) for _ in range(self.world)]
        try:
            torch.distributed.all_gather(words, word)
        except RuntimeError as error:  # a timeout or a closed connection: a rank died outright
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other ranks during {self.what} "
                f"({str(error).splitlines()[0][:200]}); one of them died or stopped outside "
                "memspace"
            ) from None
        if failure is not None:
            return
        failed = [(r, w) for r, w in enumerate(words) if int(w[0]) and r != self.rank]
        if failed:
            rank, w = failed[0]
            message = bytes(w[1:].cpu().tolist()).rstrip(b"\0").decode("utf-8", "replace")
            error = DistributedError(
                f"rank {rank} failed during {self.what}: {message} (rank {self.rank} stopped too)"
            )
            setattr(error, _ANNOUNCED, True)
            raise error

    def reduce(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks, in place, after the status exchange; returns it."""
        if not self.active:
            return tensor
        self._exchange(None)
        device = self._status_device()
        moved = tensor if tensor.device.type == device.type else tensor.to(device)
        try:
            torch.distributed.all_reduce(moved)
        except RuntimeError as error:
            raise DistributedError(
                f"rank {self.rank}: all-reduce failed during {self.what} "
                f"({str(error).splitlines()[0][:200]})"
            ) from None
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Around one quantity's pass.

        Announce a local failure to the others, meet them at the end.
        """
        if not self.active:
            yield
            return
        self._depth += 1
        try:
            yield
        except BaseException as error:
            if not getattr(error, _ANNOUNCED, False):
                try:
                    setattr(error, _ANNOUNCED, True)
                except AttributeError:  # an exception type that refuses attributes: announce anyway
                    pass
                self._exchange(f"{type(error).__name__}: {error}")
            raise
        else:
            if self._depth == 1:
                # The final meeting: a rank that fails after its last reduction is heard
                self._exchange(None)
        finally:
            self._depth -= 1


def guarded(method: Method) -> Method:
    """Run a method of an object with a ``guard()`` (a :class:`Collective`'s) inside that guard."""

    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        with self.guard():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def init_process_group(
    init_method: str = "env://",
    *,
    backend: str | None = None,
    timeout_s: float = 300.0,
    rank: int | None = None,
    world_size: int | None = None,
) -> tuple[int, int]:
    """Initialise the default process group with a timeout, so a dead rank cannot hang the others.

    Args:
        init_method: ``env://`` (torchrun's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or
            ``file:///shared/path`` (then ``rank`` and ``world_size`` are needed, or read from
            RANK and WORLD_SIZE).
        backend: ``gloo`` (CPU) or ``nccl``; default nccl when CUDA is available, else gloo.
        timeout_s: how long a collective waits for the other ranks.
        rank: this process's rank (a file rendezvous; default: RANK).
        world_size: the number of processes (a file rendezvous; default: WORLD_SIZE).

    Returns:
        (rank, world size).

    Raises:
        MemspaceError: no torch.distributed, missing rendezvous variables, or a group that
            cannot be joined.
    """
    if not torch.distributed.is_available():
        raise MemspaceError("this torch build has no torch.distributed")
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if rank is None and "RANK" in os.environ:
        rank = int(os.environ["RANK"])
    if world_size is None and "WORLD_SIZE" in os.environ:
        world_size = int(os.environ["WORLD_SIZE"])
    if init_method == "env://":
        missing = [
            k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
        ]
        if missing:
            raise MemspaceError(
                f"--distributed with env:// rendezvous needs {', '.join(missing)} set: launch with "
                "torchrun --nproc-per-node N, or give a file:// rendezvous"
            )
    elif rank is None or world_size is None:
        raise MemspaceError(
            f"a {init_method.split(':', 1)[0]} rendezvous needs RANK and WORLD_SIZE"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    kwargs: dict[str, Any] = (
        {"rank": rank, "world_size": world_size} if init_method != "env://" else {}
    )
    try:
        torch.distributed.init_process_group(
            backend,
            init_method=init_method,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    except (RuntimeError, ValueError) as error:
        raise MemspaceError(
            f"could not join the process group at {init_method}: {str(error).splitlines()[0][:200]}"
        ) from None
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def shard(data: tuple[Tensor, ...], rank: int, world: int) -> tuple[Tensor, ...]:
    """This rank's contiguous share of equally long tensors (sizes differ by at most one).

    Raises:
        MemspaceError: when a rank would get no data point.
    """
    n = len(data[0])
    if n < world:
        raise MemspaceError(f"{n} data points cannot be shared among {world} processes")
    start, stop = rank * n // world, (rank + 1) * n // world
    return tuple(t[start:stop] for t in data)
