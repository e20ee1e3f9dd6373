"""A residual network as a path of near-identity maps (THEORY.md §3)."""

from .adapter import ResidualPath, StreamCapture
from .models import ResidualBlock, ResidualCNN, ResidualMLP, ResidualPathModel
from .profile import PathProfile, action_and_length, path_profile, pointwise_speeds

__all__ = [
    # models
    "ResidualBlock",
    "ResidualPathModel",
    "ResidualMLP",
    "ResidualCNN",
    # any model
    "ResidualPath",
    "StreamCapture",
    # measures
    "PathProfile",
    "path_profile",
    "action_and_length",
    "pointwise_speeds",
]
