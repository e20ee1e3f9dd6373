"""Small seeded models and data sets shared by the tests (float64 by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class TinyResidual(nn.Module):
    """Linear stem → two residual blocks x + h·v(x) → linear head."""

    def __init__(self, d_in: int = 4, width: int = 5, classes: int = 3):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
            for _ in range(2)
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + 0.5 * block(x)
        return self.head(x)


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 3, 3, stride=2)
        self.head = nn.Linear(3 * 2 * 2, classes)

    def forward(self, x):
        x = torch.tanh(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(x.flatten(1))


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    likelihood: str = "classification"


def _mlp() -> Case:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    return Case("mlp", model, torch.randn(11, 4), torch.randint(0, 3, (11,)))


def _cnn() -> Case:
    torch.manual_seed(1)
    return Case("cnn", TinyCNN(), torch.randn(7, 1, 6, 6), torch.randint(0, 3, (7,)))


def _residual() -> Case:
    torch.manual_seed(2)
    return Case("residual", TinyResidual(), torch.randn(9, 4), torch.randint(0, 3, (9,)))


def _regression() -> Case:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    return Case("regression", model, torch.randn(10, 3), torch.randn(10, 2), "regression")


def _layernorm() -> Case:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3))
    return Case("layernorm", model, torch.randn(8, 4), torch.randint(0, 3, (8,)))


CASE_FACTORIES: dict[str, Callable[[], Case]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "residual": _residual,
    "regression": _regression,
    "layernorm": _layernorm,
}


def make_case(name: str, dtype: torch.dtype = torch.float64) -> Case:
    case = CASE_FACTORIES[name]()
    case.model = case.model.to(dtype).eval()
    case.inputs = case.inputs.to(dtype)
    if case.targets.is_floating_point():
        case.targets = case.targets.to(dtype)
    return case
