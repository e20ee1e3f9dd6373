"""Figures of the report, drawn from saved metrics only (so reports can be re-rendered).

Each function takes the metrics of the networks ``{name: {"history", "measures"}}``
and returns a matplotlib Figure, or None when the data for it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLCONFIGDIR", str(Path.cwd() / ".cache" / "matplotlib"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["speed_profile", "spectrum", "trajectories", "training_curves"]

COLORS = {"plain": "#4C72B0", "least-action": "#DD8452"}


def _color(name: str) -> str:
    return COLORS.get(name, "#55A868")


def _finish(fig: Figure, axes, legend_size: int = 8) -> Figure:
    """Legends and grids on every panel, tight layout."""
    for ax in axes:
        ax.legend(fontsize=legend_size)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def speed_profile(networks: dict[str, Any]) -> Figure:
    """Fisher speed s_l per block (left) and the Euclidean speed (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, net in networks.items():
        path = net["measures"]["path"]
        blocks = np.arange(1, len(path["speeds"]) + 1)
        label = f"{name}: A_F = {path['action']:.3g}, C_F = {path['length']:.3g}"
        axes[0].plot(blocks, path["speeds"], "o-", color=_color(name), label=label)
        axes[1].plot(blocks, path["euclidean_speeds"], "s--", color=_color(name), label=name)
    axes[0].set(xlabel="block l", ylabel="Fisher speed $s_l$", title="Fisher speed over depth")
    axes[1].set(xlabel="block l", ylabel="$\\sqrt{E\\|v_l\\|^2}$", title="Euclidean speed over depth")
    for ax in axes:
        ax.set_ylim(bottom=0)
    return _finish(fig, axes)


def spectrum(networks: dict[str, Any]) -> Figure:
    """Top eigenvalues (left, log scale) and the SLQ spectral density (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, net in networks.items():
        m = net["measures"]
        values = np.asarray(m["top_eigenvalues"])
        axes[0].semilogy(np.arange(1, len(values) + 1), np.clip(values, 1e-12, None), "o-", color=_color(name),
                         label=f"{name}: tr F = {m['fisher_trace']:.3g}, d_eff = {m['effective_dimension']:.1f}")
        dens = m["spectral_density"]
        axes[1].plot(10.0 ** np.asarray(dens["log10_grid"]), dens["mass_per_decade"], color=_color(name),
                     label=f"{name}: {100 * dens['fraction_near_zero']:.0f}% of the spectrum below "
                           f"{dens['floor']:.1e}")
    axes[0].set(xlabel="rank i", ylabel="eigenvalue $\\lambda_i$ of F", title="Top of the Fisher spectrum (Lanczos)")
    axes[1].set(xlabel="$\\lambda$", ylabel="spectral mass per decade", xscale="log",
                title="Spectral density (SLQ)")
    axes[1].set_ylim(bottom=0)
    return _finish(fig, axes)


def training_curves(networks: dict[str, Any]) -> Figure | None:
    """Loss, accuracy and Fisher action per epoch."""
    if not any(net.get("history") for net in networks.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for name, net in networks.items():
        hist = net.get("history") or []
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        color = _color(name)
        axes[0].plot(epochs, [h["train_loss"] for h in hist], "-", color=color, label=f"{name} train")
        if "val_loss" in hist[0]:
            axes[0].plot(epochs, [h["val_loss"] for h in hist], "--", color=color, label=f"{name} test")
        axes[1].plot(epochs, [h["train_acc"] for h in hist], "-", color=color, label=f"{name} train")
        if "val_acc" in hist[0]:
            axes[1].plot(epochs, [h["val_acc"] for h in hist], "--", color=color, label=f"{name} test")
        if "fisher_action" in hist[0]:
            axes[2].plot(epochs, [h["fisher_action"] for h in hist], "-", color=color, label=name)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    axes[2].set(xlabel="epoch", ylabel="$A_F$", title="Fisher action of the path")
    return _finish(fig, axes, legend_size=7)


def trajectories(networks: dict[str, Any]) -> Figure | None:
    """Paths of test points through depth (2-D inputs), segments coloured by Fisher speed."""
    nets = {n: v for n, v in networks.items() if "trajectories" in v["measures"]}
    if not nets:
        return None
    from matplotlib.collections import LineCollection

    fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 4.2), squeeze=False)
    # A robust colour scale: the 95th percentile, so a few fast points do not wash out the rest.
    vmax = max(float(np.percentile(v["measures"]["trajectories"]["speeds"], 95)) for v in nets.values()) or 1.0
    for ax, (name, net) in zip(axes[0], nets.items()):
        traj = net["measures"]["trajectories"]
        points = np.asarray(traj["points"])  # [L+1, N, 2]
        speeds = np.asarray(traj["speeds"])  # [N, L]
        segments = np.stack([points[:-1], points[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)
        lines = LineCollection(segments, array=speeds.reshape(-1), cmap="viridis", linewidths=1.2)
        lines.set_clim(0, vmax)
        ax.add_collection(lines)
        labels = np.asarray(traj["labels"])
        ax.scatter(points[0, :, 0], points[0, :, 1], c=labels, cmap="coolwarm", s=10, marker="o",
                   edgecolors="none", label="x_0 (after stem)")
        ax.scatter(points[-1, :, 0], points[-1, :, 1], c=labels, cmap="coolwarm", s=18, marker="^",
                   edgecolors="k", linewidths=0.3, label="x_L (into head)")
        ax.autoscale()
        ax.set(title=f"{name}: paths through depth", xlabel="principal axis 1", ylabel="principal axis 2")
        ax.legend(fontsize=7, loc="best")
        fig.colorbar(lines, ax=ax, label="Fisher speed $s_l(x)$", extend="max")
    fig.tight_layout()
    return fig
