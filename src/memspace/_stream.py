"""Streaming over a data source and checking each batch on the way.

A *data source* is one of
- a ``torch.utils.data.DataLoader`` (or any re-iterable of batches), whose batches are
  ``(x, y)`` pairs or mappings;
- a pair of tensors ``(X, y)``, cut into batches of ``batch_size`` rows;
- a mapping of tensors with the samples first (a tokenizer's ``BatchEncoding`` of a whole
  data set), cut likewise.

A batch's inputs x are a tensor, a tuple of tensors (the model's positional inputs) or a
mapping (its keyword inputs, :mod:`memspace._model_call`). In a mapping batch every key but
``labels`` goes to the model, and ``labels`` (optional: the true and Monte-Carlo Fisher never
read them) are the targets y; a ``{"x": ..., "y": ...}`` mapping is an (x, y) pair.

Memory is bounded by one batch: nothing here concatenates batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._errors import DataError
from ._model_call import ModelCall, input_tensors, map_inputs

__all__ = ["BatchStream", "as_batch_stream", "check_finite"]


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry of a floating tensor is finite, without a mask of its size.

    A NaN or an infinity makes the float64 sum non-finite, so a finite sum proves every entry
    finite; only a sum that overflowed (or a tensor with a bad entry) takes the entrywise test.
    """
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum(dtype=_WIDE[tensor.is_complex()]))):
        return True
    return bool(torch.isfinite(tensor).all())


_WIDE = {False: torch.float64, True: torch.complex128}


def check_finite(tensor: Tensor, what: str) -> None:
    """Raise :class:`DataError` if a floating tensor holds NaN or Inf."""
    if tensor.is_floating_point() or tensor.is_complex():
        if not all_finite(tensor):
            bad = int((~torch.isfinite(tensor)).sum())
            raise DataError(f"{what} contains {bad} NaN/Inf value(s)")


@dataclass(frozen=True)
class _MappingBatches:
    """A mapping of tensors [N, ...] (samples on ``sample_dim``) cut into mapping batches."""

    tensors: dict
    batch_size: int
    sample_dim: int = 0

    def __iter__(self) -> Iterator[dict]:
        first = next(iter(self.tensors.values()))
        lead = (slice(None),) * self.sample_dim
        for start in range(0, first.shape[self.sample_dim], self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield {  # labels are samples-first like every target
                k: v[rows] if k == "labels" else v[(*lead, rows)] for k, v in self.tensors.items()
            }


@dataclass(frozen=True)
class _TensorBatches:
    inputs: Tensor
    targets: Tensor
    batch_size: int
    sample_dim: int = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.inputs.shape[self.sample_dim]
        lead = (slice(None),) * self.sample_dim
        for start in range(0, n, self.batch_size):
            stop = start + self.batch_size
            yield self.inputs[(*lead, slice(start, stop))], self.targets[start:stop]


class BatchStream:
    """A re-iterable, checked stream of ``(x, y)`` batches on a device and dtype.

    Every pass yields the same batches in the same order (for a DataLoader this
    requires ``shuffle=False``), so a fixed seed per batch index gives a fixed
    Monte-Carlo operator.

    Args:
        source: the batches (see module docstring).
        device: where to move each batch.
        dtype: floating dtype the inputs are cast to (integer targets stay integer).
    """

    def __init__(
        self,
        source: Iterable[Any],
        device: torch.device,
        dtype: torch.dtype,
        *,
        prechecked: bool = False,
        size: int | None = None,
        sample_dim: int = 0,
    ):
        self._source = source
        self.sample_dim = sample_dim
        self.device = device
        self.dtype = dtype
        self._prechecked = prechecked
        self.size = size
        """Number of samples when known without a pass (an ``(X, y)`` pair), else None."""

    def moved(self, device: torch.device, dtype: torch.dtype, sample_dim: int) -> BatchStream:
        """The same batches on another device or dtype, or cut along another sample axis."""
        return BatchStream(
            self._source,
            device,
            dtype,
            prechecked=self._prechecked,
            size=self.size,
            sample_dim=sample_dim,
        )

    def __iter__(self) -> Iterator[tuple[Any, Tensor | None]]:
        count = 0
        for index, batch in enumerate(self._source):
            x, y = _split_batch(batch, index)
            if not self._prechecked:
                for name, tensor in input_tensors(x):
                    label = "" if isinstance(x, Tensor) else f" {name}"
                    check_finite(tensor, f"batch {index} (inputs{label})")
                if y is not None:
                    check_finite(y, f"batch {index} (targets)")
            try:
                num = ModelCall(self.sample_dim).num_samples(x)
            except DataError as error:
                raise DataError(f"batch {index}: {error}") from None
            if num == 0:
                continue
            if y is not None and y.shape[0] != num:
                raise DataError(
                    f"batch {index}: {num} inputs (axis {self.sample_dim}) but {y.shape[0]} targets"
                )
            x = map_inputs(
                x, lambda t: t.to(self.device, self.dtype if t.is_floating_point() else t.dtype)
            )
            if y is not None:
                y = y.to(self.device, self.dtype if y.is_floating_point() else y.dtype)
            count += 1
            yield x, y
        if count == 0:
            raise DataError("the data source is empty: it yielded no (x, y) batch")


def _split_batch(batch: Any, index: int) -> tuple[Any, Tensor | None]:
    """(inputs, targets or None) of one batch (module doc)."""
    if isinstance(batch, Mapping):
        if {"x", "y"} <= batch.keys():
            batch = (batch["x"], batch["y"])
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            labels = batch.get("labels")
            if labels is not None and not isinstance(labels, Tensor):
                raise DataError(f"batch {index}: its labels are not a tensor")
            return inputs, labels
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(
            f"batch {index} is a {type(batch).__name__}; expected an (x, y) pair or a mapping "
            "of model inputs"
        )
    x, y = batch[0], batch[1]
    if isinstance(x, list):
        x = tuple(x)
    if not isinstance(x, (Tensor, tuple, Mapping)) or not input_tensors(x):
        raise DataError(
            f"batch {index}: inputs must be a tensor, a tuple of tensors or a mapping of tensors"
        )
    if y is not None and not isinstance(y, Tensor):
        raise DataError(f"batch {index}: targets must be a torch tensor")
    return x, y


def as_batch_stream(
    data: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 256,
    sample_dim: int = 0,
) -> BatchStream:
    """Turn a data source into a :class:`BatchStream` (see module docstring).

    Raises:
        DataError: for a source that is neither a pair of tensors nor an iterable.
    """
    if isinstance(data, BatchStream):
        return data.moved(device, dtype, sample_dim)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        inputs, targets = data
        if inputs.dim() <= sample_dim:
            raise DataError(
                f"X of shape {tuple(inputs.shape)} has no sample axis {sample_dim} (sample_dim)"
            )
        if sample_dim:
            inputs = inputs.movedim(sample_dim, 0)
        if inputs.shape[0] != targets.shape[0]:
            raise DataError(
                f"X has {inputs.shape[0]} samples (axis {sample_dim}) but y has {targets.shape[0]}"
            )
        if inputs.shape[0] == 0:
            raise DataError("the data source is empty: X has no rows")
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        # Tensors are checked once here, naming the batch a bad row falls in, so
        # that repeated passes (Lanczos, Hutch++) do not re-check them.
        for what, tensor in (("inputs", inputs), ("targets", targets)):
            if tensor.is_floating_point() and not all_finite(tensor):
                bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
                if bool(bad.any()):
                    row = int(bad.nonzero()[0, 0])
                    check_finite(
                        tensor[
                            (row // batch_size) * batch_size : (row // batch_size + 1) * batch_size
                        ],
                        f"batch {row // batch_size} ({what})",
                    )
        if sample_dim:
            inputs = inputs.movedim(0, sample_dim)
        return BatchStream(
            _TensorBatches(inputs, targets, batch_size, sample_dim),
            device,
            dtype,
            prechecked=True,
            size=targets.shape[0],
            sample_dim=sample_dim,
        )
    if isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        num = ModelCall(sample_dim).num_samples({k: v for k, v in data.items() if k != "labels"})
        if num == 0:
            raise DataError("the data source is empty: its tensors have no rows")
        return BatchStream(
            _MappingBatches(dict(data), batch_size, sample_dim),
            device,
            dtype,
            size=num,
            sample_dim=sample_dim,
        )
    if isinstance(data, Tensor):
        raise DataError("data is a single tensor; pass (X, y) or a DataLoader")
    if not isinstance(data, Iterable):
        raise DataError(
            f"data of type {type(data).__name__} is not a DataLoader, an iterable of "
            "(x, y) batches or an (X, y) pair"
        )
    if iter(data) is data:
        raise DataError(
            "data is a one-shot iterator; pass a re-iterable (a list or DataLoader), "
            "since Fisher products stream over the data more than once"
        )
    return BatchStream(data, device, dtype, sample_dim=sample_dim)
