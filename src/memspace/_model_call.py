"""How memspace calls a user's model: its output, its sample axis, and its kernels.

Shared by the Fisher engine and the path functions (one definition of "the model's
output for a batch", so the two can never disagree):

- :class:`ModelCall` holds the facts a layout needs and that memspace does not guess:
  ``sample_dim``, the axis of the *inputs* that indexes data points (0, or 1 for a
  sequence-first model taking [T, N, ...]); ``output``, how to pick the logits
  out of whatever the model returns (a tuple, a dict, a Hugging Face
  ``ModelOutput``, an object with attributes); and ``positions``, which positions of a
  sequence output [N, T, V] are data points of the Fisher (None: the outputs are [N, D]).
- The *inputs* of one batch are a tensor (the model's one positional input), a tuple of
  tensors (several positional inputs) or a mapping of tensors (keyword inputs: a tokenizer's
  ``BatchEncoding``, a collator's dict). Every tensor in them carries the samples on
  ``sample_dim``; :meth:`ModelCall.take` and the others act on all of them alike.
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
    "POSITIONS",
    "Inputs",
    "ModelCall",
    "axes_from_shapes",
    "call_with",
    "input_tensors",
    "map_inputs",
    "OutputSelector",
    "derivative_kernels",
    "sample_axes_by_probe",
    "select_output",
]

OutputSelector = Union[None, int, str, Callable[[Any], Tensor]]
"""None (the model returns a tensor), an index (tuple/list), a key or attribute name, a callable."""

Inputs = Union[Tensor, tuple, Mapping]
"""A batch's model inputs: a tensor, a tuple of tensors (positional) or a mapping (keywords)."""

POSITIONS = (None, "all", "last")
"""Which positions of a sequence output [N, T, V] count (see :class:`ModelCall`)."""


def input_tensors(x: Inputs) -> list[tuple[str, Tensor]]:
    """The tensors of a batch's inputs with their names (``x``, ``x[1]``, ``x['input_ids']``)."""
    if isinstance(x, Tensor):
        return [("x", x)]
    if isinstance(x, Mapping):
        return [(f"x[{k!r}]", v) for k, v in x.items() if isinstance(v, Tensor)]
    if isinstance(x, tuple):
        return [(f"x[{i}]", v) for i, v in enumerate(x) if isinstance(v, Tensor)]
    raise DataError(
        f"inputs of type {type(x).__name__}: expected a tensor, a tuple of tensors or a mapping "
        "of names to tensors"
    )


def map_inputs(x: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    """``x`` with ``fn`` applied to each of its tensors (other values kept)."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(v) if isinstance(v, Tensor) else v for k, v in x.items()}
    return tuple(fn(v) if isinstance(v, Tensor) else v for v in x)


def call_with(x: Inputs) -> tuple[tuple, dict]:
    """(positional, keyword) arguments of the model for the inputs ``x``."""
    if isinstance(x, Tensor):
        return (x,), {}
    if isinstance(x, Mapping):
        return (), dict(x)
    return tuple(x), {}


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
        positions: for outputs [N, T, V] (a language model's, a token classifier's): ``"all"``
            (every position the attention mask and the labels keep is a data point of the
            Fisher), ``"last"`` (the last attended position of each sequence, [N, V]); None
            for outputs [N, D]; or a callable ``inputs → mask [N, T]`` (bool or 0/1): ``"all"``
            with only the positions the mask keeps, as well as the attention mask and the labels
            (a loss mask, the answer tokens of a prompt, one position of interest).
        position_mask: that callable (set from ``positions``; None otherwise).

    With ``sample_dim=1`` and ``positions``, a sequence-first model's outputs are [T, N, V], and
    its attention mask and position mask [T, N], as its inputs; they are read as [N, T, V] and
    [N, T] (transposed views). Its labels are [N, T], samples first, as every target in memspace
    (the batch stream cuts targets along their first axis).
    """

    sample_dim: int = 0
    output: OutputSelector = None
    positions: str | Callable[[Inputs], Tensor] | None = None
    position_mask: Callable[[Inputs], Tensor] | None = None

    def __post_init__(self) -> None:
        if callable(self.positions):
            object.__setattr__(self, "position_mask", self.positions)
            object.__setattr__(self, "positions", "all")
        if self.positions not in POSITIONS:
            raise MemspaceError(
                f"positions must be None, 'all', 'last' or a callable inputs → mask [N, T], got "
                f"{self.positions!r}"
            )
        if (
            not isinstance(self.sample_dim, int)
            or isinstance(self.sample_dim, bool)
            or self.sample_dim < 0
        ):
            raise MemspaceError(
                "sample_dim must be a non-negative integer axis of the inputs, got "
                f"{self.sample_dim!r}"
            )

    def num_samples(self, x: Inputs) -> int:
        """N, the size of every tensor of the inputs ``x`` along the sample axis.

        Raises:
            DataError: no tensor, a tensor without that axis, or tensors that disagree on N.
        """
        tensors = input_tensors(x)
        if not tensors:
            raise DataError("the inputs hold no tensor")
        sizes = {}
        for name, t in tensors:
            if t.dim() <= self.sample_dim:
                raise DataError(
                    f"inputs {name} of shape {tuple(t.shape)} have no axis {self.sample_dim} "
                    "(sample_dim); pass the axis that indexes data points"
                )
            sizes[name] = t.shape[self.sample_dim]
        if len(set(sizes.values())) > 1:
            raise DataError(
                f"the inputs disagree on the number of samples along axis {self.sample_dim}: "
                + ", ".join(f"{n} has {k}" for n, k in sizes.items())
            )
        return next(iter(sizes.values()))

    def take(self, x: Inputs, index: Tensor | slice) -> Inputs:
        """The samples ``index`` of a batch, along the sample axis of every input tensor."""
        if isinstance(index, slice):
            lead = (slice(None),) * self.sample_dim + (index,)
            return map_inputs(x, lambda t: t[lead])
        return map_inputs(x, lambda t: t.index_select(self.sample_dim, index.to(t.device)))

    def repeat_first(self, x: Inputs, copies: int) -> Inputs:
        """A batch of ``copies`` copies of the first sample of ``x``."""
        first = self.take(x, slice(0, 1))
        return map_inputs(first, lambda t: torch.cat([t] * copies, dim=self.sample_dim))

    def sequence_mask(self, y: Any) -> Any:
        """A sequence-first model's mask [T, N] (an input's layout) as [N, T], as :meth:`outputs`.

        Anything else (a batch-first model's, not a tensor) passes unchanged.
        """
        if not isinstance(y, Tensor):
            return y
        if self.positions is None or self.sample_dim != 1 or y.dim() < 2:
            return y
        return y.transpose(0, 1)

    def single(self, x: Inputs) -> Inputs:
        """One sample without its sample axis (as ``vmap`` passes it) made a batch of one."""
        return map_inputs(x, lambda t: t.unsqueeze(self.sample_dim))

    def signature(self, x: Inputs) -> tuple:
        """What a plan depends on in the inputs: names, one sample's shapes and dtypes."""
        return tuple(
            (name, tuple(t.shape[: self.sample_dim]) + tuple(t.shape[self.sample_dim + 1 :]),
             t.dtype)
            for name, t in input_tensors(x)
        )  # fmt: skip

    def outputs(self, raw: Any, num: int, where: str = "the model") -> Tensor:
        """Select the outputs and check that they are [N, D] with the batch's N.

        With ``positions="all"`` they must be [N, T, V] (returned as they are; :meth:`last`
        picks the last position for ``"last"``), or [T, N, V] with ``sample_dim=1`` (a
        sequence-first model's: returned transposed, [N, T, V], a view).
        """
        out = select_output(raw, self.output, where)
        if self.positions is not None and self.sample_dim == 1:
            if out.dim() != 3 or out.shape[1] != num:
                raise DataError(
                    f"{where}: model output has shape {tuple(out.shape)} for a batch of {num} "
                    f"inputs; sample_dim=1 with positions={self.positions!r} expects "
                    f"sequence-first outputs [T, N, V] = [T, {num}, V] (labels [N, T])"
                )
            return out.transpose(0, 1)
        if self.positions is not None:
            if out.dim() != 3 or out.shape[0] != num:
                raise DataError(
                    f"{where}: model output has shape {tuple(out.shape)} for a batch of {num} "
                    f"inputs; positions={self.positions!r} expects sequence outputs [N, T, V] = "
                    f"[{num}, T, V]"
                )
            return out
        if out.dim() == 3 and out.shape[0] == num:
            raise DataError(
                f"{where}: model output has shape {tuple(out.shape)}, a sequence [N, T, V] for a "
                f"batch of {num} inputs; pass positions='all' (every position a data point of "
                "the Fisher, masked by the attention mask and labels -100) or positions='last'"
            )
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
                run(call.repeat_first(x, copies))
        finally:
            for handle in handles:
                handle.remove()
        records.append(seen)
    return [axes_from_shapes(small, large) for small, large in zip(*records)]


def axes_from_shapes(
    small: Sequence[tuple[Sequence[int], Sequence[int]]],
    large: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> list[tuple[int | None, int | None]] | None:
    """Per call, the (input, output) axes that go from 2 to 3 copies of one sample.

    ``small`` and ``large`` hold one module's (input shape, output shape) per call in the runs on
    2 and on 3 copies; None when its number of calls differs between them.
    """
    if len(small) != len(large):
        return None
    return [
        (_axis_from_shapes(a[0], b[0]), _axis_from_shapes(a[1], b[1])) for a, b in zip(small, large)
    ]
