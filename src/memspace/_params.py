"""Which parameters a Fisher is taken over, and flat-vector ↔ dict conversion.

The flat layout is the concatenation of the selected parameters, each flattened in
row-major order, in ``model.named_parameters()`` order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._errors import ArgumentTypeError, MemspaceError

__all__ = ["ParameterSpace", "check_eval_mode", "shared_parameters"]

_STOCHASTIC_OR_BATCH_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
)


def check_eval_mode(model: nn.Module) -> None:
    """Refuse layers whose training-mode output depends on the batch or on chance.

    BatchNorm in training mode couples the samples of a batch, and dropout makes the
    model random; a per-sample Fisher is then not defined.

    Raises:
        MemspaceError: naming the first such layer and asking for ``model.eval()``.
    """
    for name, module in model.named_modules():
        if isinstance(module, _STOCHASTIC_OR_BATCH_DEPENDENT) and module.training:
            kind = type(module).__name__
            raise MemspaceError(
                f"layer {name or '<root>'} ({kind}) is in training mode, where its "
                "output depends on the whole batch or on chance; call model.eval() "
                "before measuring the Fisher"
            )


def shared_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Parameters registered in more than one place (tied weights).

    Returns:
        For each such parameter's name in ``named_parameters`` (the first registration),
        the other names under which it is registered.
    """
    places: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        places.setdefault(id(param), []).append(name)
    return {names[0]: names[1:] for names in places.values() if len(names) > 1}


class ParameterSpace:
    """The parameters a Fisher acts on, and the maps between their two layouts.

    Args:
        model: the network.
        params: ``None`` for every parameter that requires grad, or a sequence of
            parameter names and/or sub-modules (all of whose parameters are taken).

    Attributes:
        names: selected parameter names, in ``named_parameters`` order.
        shapes: their shapes.
        numel: total number of selected scalars, the dimension of F.
    """

    def __init__(self, model: nn.Module, params: Sequence[str | nn.Module] | None = None):
        named = dict(model.named_parameters())
        if params is None:
            chosen = {n for n, p in named.items() if p.requires_grad}
        else:
            chosen = set()
            ids = {id(p): n for n, p in named.items()}
            for item in params:
                if isinstance(item, nn.Module):
                    sub = [ids[id(p)] for p in item.parameters() if id(p) in ids]
                    if not sub:
                        raise MemspaceError(
                            f"module {type(item).__name__} has no parameters of the model"
                        )
                    chosen.update(sub)
                elif isinstance(item, str):
                    if item not in named:
                        near = ", ".join(list(named)[:8])
                        raise MemspaceError(
                            f"unknown parameter name {item!r}; the model has {near}, ..."
                        )
                    chosen.add(item)
                else:
                    raise ArgumentTypeError(
                        f"params entries must be names or modules, got {type(item).__name__}"
                    )
        self.names: list[str] = [n for n in named if n in chosen]
        if not self.names:
            raise MemspaceError("no parameters selected: the Fisher would be empty")
        self.shapes: list[torch.Size] = [named[n].shape for n in self.names]
        self.sizes: list[int] = [named[n].numel() for n in self.names]
        self.numel: int = sum(self.sizes)
        self._model = model

    def tensors(self) -> dict[str, Tensor]:
        """The current selected parameters (live tensors, not copies)."""
        named = dict(self._model.named_parameters())
        return {n: named[n] for n in self.names}

    def to_dict(
        self, vector: Tensor | Mapping[str, Tensor], what: str = "vector"
    ) -> dict[str, Tensor]:
        """Accept a flat vector [P] or a dict of tensors; return a dict of tensors.

        Raises:
            MemspaceError: for a wrong length, missing/extra names or wrong shapes.
        """
        if isinstance(vector, Mapping):
            missing = [n for n in self.names if n not in vector]
            extra = [n for n in vector if n not in self.names]
            if missing or extra:
                raise MemspaceError(
                    f"{what} dict does not match the parameters: missing {missing[:5]}, "
                    f"unexpected {extra[:5]}"
                )
            for n, shape in zip(self.names, self.shapes):
                if tuple(vector[n].shape) != tuple(shape):
                    raise MemspaceError(
                        f"{what}[{n!r}] has shape {tuple(vector[n].shape)}; expected {tuple(shape)}"
                    )
            return {n: vector[n] for n in self.names}
        if not isinstance(vector, Tensor):
            raise ArgumentTypeError(
                f"{what} must be a tensor or a dict of tensors, got {type(vector).__name__}"
            )
        if vector.dim() != 1 or vector.shape[0] != self.numel:
            raise MemspaceError(
                f"{what} has shape {tuple(vector.shape)}; expected a flat vector of "
                f"{self.numel} entries (or a dict of parameter tensors)"
            )
        parts = vector.split(self.sizes)
        return {n: part.view(shape) for n, part, shape in zip(self.names, parts, self.shapes)}

    def to_vector(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Flatten a dict of tensors into the flat layout [P]."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])
