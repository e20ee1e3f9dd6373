"""Checkpoints in, checked.

A parameter state from a file or a dict, and the check that it fits a model.

Only tensors are ever read: ``.safetensors`` files, or ``torch.save`` files loaded with
``weights_only=True`` (nothing is unpickled); a :func:`memspace.fit` checkpoint yields its model
tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ._errors import MemspaceError

__all__ = ["check_weights", "load_state"]


def load_state(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A parameter state from a dict, a ``.safetensors`` file or a ``torch.save`` file.

    A :func:`memspace.train.fit` checkpoint yields its model tensors (prefix removed).

    ``torch.load`` runs with ``weights_only=True``: arbitrary objects are never unpickled.

    Raises:
        MemspaceError: for a missing, unreadable or corrupt file, naming it.
    """
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise MemspaceError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or untrusted content: one clear line
        raise MemspaceError(
            f"cannot read checkpoint {path}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'unreadable'}"
        ) from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MemspaceError(f"checkpoint {path} does not hold a dict of tensors")
    if any(k.startswith("model.") for k in state):  # a memspace.train checkpoint
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return dict(state)


def check_weights(
    state: Mapping[str, Tensor], model: nn.Module, source: str | Path = "the checkpoint"
) -> None:
    """Refuse weights that would load silently wrong into ``model``.

    A floating-point parameter or buffer of ``model`` must receive a floating-point,
    finite tensor: integer or boolean tensors would be cast without a word, and NaN/Inf
    weights fail only later, deep inside a spectral routine.

    Raises:
        MemspaceError: naming ``source`` and the tensor.
    """
    expected = model.state_dict()
    for name, value in state.items():
        target = expected.get(name)
        if target is None or not torch.is_floating_point(target):
            continue
        if not torch.is_floating_point(value):
            raise MemspaceError(
                f"checkpoint {source}: tensor {name!r} is {value.dtype}; the model's weights are "
                "floating point"
            )
        if not torch.isfinite(value).all():
            raise MemspaceError(f"checkpoint {source}: tensor {name!r} contains NaN or Inf")
