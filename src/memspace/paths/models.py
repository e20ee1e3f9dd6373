"""Ready-made residual networks read as paths (docs/theory.md §3).

stem → L residual blocks x_{l+1} = x_l + h·v_l(x_l), h = 1/L → head. Every block is a
:class:`ResidualBlock` whose ``velocity`` is v_l; the stem and head are boundary maps.
With ``identity_init=True`` the last layer of every velocity starts at zero, so the
network starts as the identity path (v_l ≡ 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._errors import MemspaceError

__all__ = [
    "ResidualBlock",
    "ResidualCNN",
    "ResidualMLP",
    "ResidualPathModel",
    "build_model",
    "check_architecture_fits",
]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise MemspaceError(
            f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}"
        ) from None


class ResidualBlock(nn.Module):
    """x ↦ x + h·v(x): one Euler step of the flow with velocity field ``velocity``."""

    def __init__(self, velocity: nn.Module, step: float):
        super().__init__()
        self.velocity = velocity
        self.step = step

    def forward(self, x: Tensor) -> Tensor:
        """The step x + h·v(x)."""
        return x + self.step * self.velocity(x)


class ResidualPathModel(nn.Module):
    """Base of the ready-made models: ``stem``, ``blocks`` (ModuleList), ``head``.

    Attributes:
        step: h = 1/L.
    """

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Module

    @property
    def depth(self) -> int:
        """L, the number of residual blocks."""
        return len(self.blocks)

    @property
    def step(self) -> float:
        """The step size h = 1/L."""
        return 1.0 / len(self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [N, C]: stem, the L blocks, head."""
        return self.forward_from(0, self.stem(x))

    def forward_from(self, layer: int, state: Tensor) -> Tensor:
        """Logits from the residual stream x_layer: blocks layer..L−1, then the head."""
        for block in self.blocks[layer:]:
            state = block(state)
        return self.head(state)

    def stream(self, x: Tensor) -> list[Tensor]:
        """The states x_0 … x_L of the residual stream, each [N, ...]."""
        states = [self.stem(x)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def _zero_last_layers(self) -> None:
        for block in self.blocks:
            last = [m for m in block.velocity.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][
                -1
            ]
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)


def mlp_blocks(width: int, depth: int, hidden: int, activation: str) -> nn.ModuleList:
    """L blocks x ↦ x + h·(W₂ σ(W₁x + b₁) + b₂) on a stream of ``width``, h = 1/L."""
    return nn.ModuleList(
        ResidualBlock(
            nn.Sequential(
                nn.Linear(width, hidden), _activation(activation), nn.Linear(hidden, width)
            ),
            1.0 / depth,
        )
        for _ in range(depth)
    )


class ResidualMLP(ResidualPathModel):
    """Linear stem → L blocks v_l(x) = W₂ σ(W₁x + b₁) + b₂ → linear head.

    Args:
        in_features: input dimension.
        width: residual-stream dimension d.
        depth: number of blocks L (h = 1/L).
        num_classes: outputs C.
        hidden: width of each velocity's hidden layer (default ``width``).
        activation: ``tanh`` (smooth, default), ``relu``, ``gelu`` or ``softplus``.
        identity_init: start from the identity path (v_l ≡ 0).
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        num_classes: int,
        *,
        hidden: int | None = None,
        activation: str = "tanh",
        identity_init: bool = False,
    ):
        super().__init__()
        if depth < 1:
            raise MemspaceError(f"depth must be at least 1, got {depth}")
        self.stem = nn.Linear(in_features, width)
        self.blocks = mlp_blocks(width, depth, hidden or width, activation)
        self.head = nn.Linear(width, num_classes)
        if identity_init:
            self._zero_last_layers()


class ResidualCNN(ResidualPathModel):
    """Conv stem → L blocks v_l = conv σ(conv x) at fixed resolution → pool → linear head.

    Args:
        in_channels: input channels.
        channels: residual-stream channels.
        depth: number of blocks L.
        num_classes: outputs C.
        image_size: input height = width (the head pools to 4×4 when the size allows).
        activation: as for :class:`ResidualMLP`.
        identity_init: as for :class:`ResidualMLP`.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        depth: int,
        num_classes: int,
        *,
        image_size: int = 28,
        activation: str = "relu",
        identity_init: bool = False,
    ):
        super().__init__()
        if depth < 1:
            raise MemspaceError(f"depth must be at least 1, got {depth}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), _activation(activation)
        )
        self.blocks = nn.ModuleList(
            ResidualBlock(
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, padding=1),
                    _activation(activation),
                    nn.Conv2d(channels, channels, 3, padding=1),
                ),
                1.0 / depth,
            )
            for _ in range(depth)
        )
        pooled = min(4, image_size)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(pooled), nn.Flatten(), nn.Linear(channels * pooled**2, num_classes)
        )
        if identity_init:
            self._zero_last_layers()


def build_model(input_shape: tuple[int, ...], classes: int, cfg: dict) -> nn.Module:
    """The residual network memspace trains on data of this shape.

    A :class:`ResidualCNN` for images.

    Args:
        input_shape: one sample's shape, ``(D,)`` for vectors or ``(C, H, H)`` for square images.
        classes: number of classes C (the width of the logits).
        cfg: at least ``width`` (of the residual stream) and ``depth`` (the number of blocks L).

    Returns:
        A :class:`ResidualMLP` for vectors, a :class:`ResidualCNN` for images.
    """
    if len(input_shape) == 3:
        return ResidualCNN(
            input_shape[0], cfg["width"], cfg["depth"], classes, image_size=input_shape[-1]
        )
    return ResidualMLP(input_shape[0], cfg["width"], cfg["depth"], classes)


def check_architecture_fits(split: Any) -> None:
    """Refuse data the memspace residual models cannot take: vectors [N, D] or square images.

    Args:
        split: a :class:`~memspace.data.DataSplit`.

    Raises:
        MemspaceError: for integer inputs or samples of another shape, naming the data set.
    """
    shape = split.input_shape
    if split.train[0].dtype not in (torch.float32, torch.float64):
        raise MemspaceError(
            f"{split.name}: the residual models take real-valued inputs, X holds "
            f"{split.train[0].dtype}; measure your own model with `memspace measure`"
        )
    if len(shape) == 1 or (len(shape) == 3 and shape[1] == shape[2]):
        return
    raise MemspaceError(
        f"{split.name}: X has samples of shape {shape}; the residual models take vectors [N, D] "
        "or square images [N, C, H, H] (reshape X, or measure your own model with `memspace "
        "measure`)"
    )
