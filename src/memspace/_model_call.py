"""How memspace calls a user's model: its output, its sample axis, and its kernels.

Shared by the Fisher engine and the path functions (one definition of "the model's
output for a batch", so the two can never disagree):

- :class:`ModelCall` holds the two facts a layout needs and that memspace does not guess:
  ``sample_dim``, the axis of the *inputs* that indexes data points (0, or 1 for a
  sequence-first model taking [T, N, ...]), and ``output``, how to pick the logits
  [N, D] out of whatever the model returns (a tuple, a dict, a Hugging Face
  ``ModelOutput``, an object with attributes).
- :func:`derivative_kernels` selects, for the duration of memspace's own passes, the
  kernels that have every derivative rule memspace uses (forward mode, vmap): the math
  kernel of scaled-dot-product attention, no fused fast path of ``MultiheadAttention``
  and ``TransformerEncoderLayer``, and no oneDNN kernels for recurrent layers. The
  previous settings are restored on exit. The math kernels compute the same function.
- :func:`sample_axes_by_probe` finds, by shape tracing, which axis of a layer's input
  indexes the data points: the model runs on 2 and on 3 copies of one input, and the
  axis whose size goes from 2 to 3 is the sample axis. An input in which no axis does
  (a Linear applied to [N·T, d] rows) has none, and per-sample shortcuts must not be
  taken for that layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from ._errors import DataError, MemspaceError

__all__ = [
    "ModelCall",
    "OutputSelector",
    "derivative_kernels",
    "sample_axes_by_probe",
    "select_output",
]

OutputSelector = Union[None, int, str, Callable[[Any], Tensor]]
"""None (the model returns a tensor), an index (tuple/list), a key or attribute name, a callable."""


def select_output(raw: Any, output: OutputSelector, where: str = "the model") -> Tensor:
    """The tensor of outputs [N, D] in what the model returned.

    Raises:
        MemspaceError: when the result is not a tensor and no selector says which one
            (the message lists what was returned), or when the selector does not apply.
    """
    if output is None:
        value = raw
    elif callable(output):
        value = output(raw)
    elif isinstance(output, int) and not isinstance(output, bool):
        if not isinstance(raw, (tuple, list)):
            raise MemspaceError(
                f"output={output!r} indexes a tuple, but {where} returned {type(raw).__name__}"
            )
        if not -len(raw) <= output < len(raw):
            raise MemspaceError(f"output={output!r}: {where} returned {len(raw)} values")
        value = raw[output]
    elif isinstance(output, str):
        if isinstance(raw, Mapping) and output in raw:
            value = raw[output]
        elif hasattr(raw, output):
            value = getattr(raw, output)
        else:
            keys = (
                list(raw.keys())
                if isinstance(raw, Mapping)
                else [a for a in vars(raw)]
                if hasattr(raw, "__dict__")
                else []
            )
            raise MemspaceError(
                f"output={output!r}: {where} returned a {type(raw).__name__} without it "
                f"(it has {', '.join(map(str, keys[:8])) or 'no named fields'})"
            )
    else:
        raise MemspaceError(
            f"output must be None, an index, a key or attribute name, or a callable; got {output!r}"
        )
    if not isinstance(value, Tensor):
        if output is None:
            if isinstance(raw, Mapping):
                keys = ", ".join(map(str, list(raw)[:8]))
                what = f"a value of type {type(raw).__name__} with keys {keys}"
            elif isinstance(raw, (tuple, list)):
                what = f"a {type(raw).__name__} of {len(raw)} values"
            else:
                what = f"a {type(raw).__name__}"
            raise MemspaceError(
                f"{where} returned {what}, not a tensor of outputs [N, D]; pass output= "
                "(an index, a key or attribute name such as 'logits', or a callable) to say "
                "which value holds the logits"
            )
        raise MemspaceError(
            f"output={output!r} selects a {type(value).__name__} from {where}, not a tensor"
        )
    return value


def _has_recurrent(model: nn.Module) -> bool:
    return any(isinstance(m, nn.RNNBase) for m in model.modules())


@contextmanager
def derivative_kernels(model: nn.Module) -> Iterator[None]:
    """Kernels with every derivative rule (module doc), restored on exit."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    onednn = torch._C._get_mkldnn_enabled()
    with ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        torch.backends.mha.set_fastpath_enabled(False)
        if onednn and _has_recurrent(model):
            torch._C._set_mkldnn_enabled(False)  # only the switch: no TF32 side effects
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            torch._C._set_mkldnn_enabled(onednn)


@dataclass(frozen=True)
class ModelCall:
    """The layout of a model's inputs and outputs (module doc).

    Attributes:
        sample_dim: axis of the inputs that indexes data points.
        output: selector of the outputs [N, D] (see :func:`select_output`).
    """

    sample_dim: int = 0
    output: OutputSelector = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.sample_dim, int)
            or isinstance(self.sample_dim, bool)
            or self.sample_dim < 0
        ):
            raise MemspaceError(
                "sample_dim must be a non-negative integer axis of the inputs, got "
                f"{self.sample_dim!r}"
            )

    def num_samples(self, x: Tensor) -> int:
        """N, the size of ``x`` along the sample axis."""
        if x.dim() <= self.sample_dim:
            raise MemspaceError(
                f"inputs of shape {tuple(x.shape)} have no axis {self.sample_dim} "
                "(sample_dim); pass the axis that indexes data points"
            )
        return x.shape[self.sample_dim]

    def take(self, x: Tensor, index: Tensor | slice) -> Tensor:
        """The samples ``index`` of a batch, along the sample axis."""
        if isinstance(index, slice):
            return x[(slice(None),) * self.sample_dim + (index,)]
        return x.index_select(self.sample_dim, index.to(x.device))

    def outputs(self, raw: Any, num: int, where: str = "the model") -> Tensor:
        """Select the outputs and check that they are [N, D] with the batch's N."""
        out = select_output(raw, self.output, where)
        if out.dim() != 2 or out.shape[0] != num:
            hint = (
                " (for a sequence-first model pass sample_dim=1; the outputs must be [N, D] with "
                "samples first: pool or transpose in output=)"
            )
            raise DataError(
                f"{where}: model output has shape {tuple(out.shape)} for a batch of {num} inputs; "
                f"expected [N, D] = [{num}, D]{hint}"
            )
        return out


def _axis_from_shapes(small: Sequence[int], large: Sequence[int]) -> int | None:
    """The unique axis whose size is 2 in ``small`` and 3 in ``large``, all others equal."""
    if len(small) != len(large):
        return None
    changed = [i for i, (a, b) in enumerate(zip(small, large)) if a != b]
    if len(changed) == 1 and small[changed[0]] == 2 and large[changed[0]] == 3:
        return changed[0]
    return None


def sample_axes_by_probe(
    run: Callable[[Tensor], Any],
    x: Tensor,
    call: ModelCall,
    modules: Sequence[nn.Module],
) -> list[list[tuple[int | None, int | None]] | None]:
    """For each module, per call in one forward, (input sample axis, output sample axis).

    ``run(x)`` runs the model; it is called on 2 and on 3 copies of the first sample of
    ``x``. An entry is ``None`` when the module's number of calls differs between the two
    runs; an axis is ``None`` when no axis of that tensor goes from 2 to 3.
    """
    first = call.take(x, slice(0, 1))
    records: list[list[list[tuple[tuple[int, ...], tuple[int, ...]]]]] = []
    for copies in (2, 3):
        seen: list[list[tuple[tuple[int, ...], tuple[int, ...]]]] = [[] for _ in modules]
        handles = []
        for i, module in enumerate(modules):

            def hook(mod, args, out, i=i):
                inp = args[0] if args and isinstance(args[0], Tensor) else None
                seen[i].append(
                    (
                        tuple(inp.shape) if inp is not None else (),
                        tuple(out.shape) if isinstance(out, Tensor) else (),
                    )
                )

            handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                run(torch.cat([first] * copies, dim=call.sample_dim))
        finally:
            for handle in handles:
                handle.remove()
        records.append(seen)
    result: list[list[tuple[int | None, int | None]] | None] = []
    for small, large in zip(*records):
        if len(small) != len(large):
            result.append(None)
            continue
        result.append(
            [
                (_axis_from_shapes(a[0], b[0]), _axis_from_shapes(a[1], b[1]))
                for a, b in zip(small, large)
            ]
        )
    return result
