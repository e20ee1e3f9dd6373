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

__all__ = [
    "capacity",
    "cover_anchor",
    "grokking_curves",
    "literal",
    "point_paths",
    "predictive_profile",
    "reinitialization",
    "sensitivity",
    "spectrum",
    "traversal",
    "trajectories",
    "training_curves",
    "weight_noise",
    "zoo_cdf",
    "zoo_scatter",
]

COLORS = {"plain": "#4C72B0", "least-action": "#DD8452"}


def literal(text: str) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _color(name: str) -> str:
    return COLORS.get(name, "#55A868")


def _finish(fig: Figure, axes, legend_size: int = 8) -> Figure:
    """Legends and grids on every panel, tight layout."""
    for ax in axes:
        ax.legend(fontsize=legend_size)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _axes(axes: Any, count: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """(figure, ``count`` axes): the given ones (a notebook's), or a new figure's."""
    if axes is None:
        return plt.subplots(1, count, figsize=figsize)
    axes = list(np.atleast_1d(axes))
    if len(axes) != count:
        from .._errors import MemspaceError

        raise MemspaceError(f"this figure draws on {count} axes, {len(axes)} given")
    return axes[0].figure, axes


def predictive_profile(networks: dict[str, Any], axes: Any = None) -> Figure | None:
    """Predictive speed per block against the constant speed of least action, and lens accuracy."""
    nets = {n: v for n, v in networks.items() if v["measures"].predictive_path is not None}
    if not nets:
        return None
    fig, axes = _axes(axes, 2, (9, 3.4))
    for name, net in nets.items():
        path = net["measures"].predictive_path
        prior = path.get("anchor", "stem") == "prior"
        # under the prior anchor step 0 is the stem's, from the prior π to p_0
        blocks = np.arange(0 if prior else 1, len(path["speeds"]) + (0 if prior else 1))
        color = _color(name)
        factors = (
            f" = {path['unevenness']:.2f} × {path['detour_factor']:.2f}"
            if "detour_factor" in path
            else ""
        )
        axes[0].plot(
            blocks,
            path["speeds"],
            "o-",
            color=color,
            label=f"{name}: A/A_min = {path['ratio']:.2f}{factors}",
        )
        # At least action every point moves along its geodesic at constant speed d_0L, so A = E
        # d_0L².
        axes[0].axhline(
            np.sqrt(path["least_action"]),
            color=color,
            ls=":",
            lw=1.2,
            label=f"{name}: least action, speed $\\sqrt{{E d_{{0L}}^2}}$",
        )
        if path.get("lens_accuracy") is not None:
            axes[1].plot(
                np.arange(len(path["lens_accuracy"])),
                path["lens_accuracy"],
                "s-",
                color=color,
                label=name,
            )
    anchored = any(n["measures"].predictive_path.get("anchor") == "prior" for n in nets.values())
    axes[0].set(
        xlabel="step (0 = the stem's, from the prior)" if anchored else "block l",
        ylabel="RMS step length / h",
        title="Predictive speed over depth (uneven × detour)",
    )
    axes[1].set(
        xlabel="state l (0 = after stem)",
        ylabel="accuracy of head($x_l$)",
        title="Lens accuracy over depth",
    )
    axes[0].set_ylim(bottom=0)
    return _finish(fig, axes, legend_size=7)


def point_paths(networks: dict[str, Any]) -> Figure | None:
    """Per-point predictive paths against their geodesics.

    The angle on the quarter circle for two classes, else the distance from the start over depth
    (normalised by the endpoint distance).
    """
    nets = {n: v for n, v in networks.items() if v["measures"].predictive_points is not None}
    if not nets:
        return None
    fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 3.6), squeeze=False)
    for ax, (name, net) in zip(axes[0], nets.items()):
        pts = net["measures"].predictive_points
        if "angle" in pts:
            values = np.degrees(np.asarray(pts["angle"]))  # [N, L+1]
            ylabel, title = "angle θ = atan2(√p₁, √p₀) [°]", f"{name}: paths on the quarter circle"
        else:
            dist = np.asarray(pts["from_start"])
            values = dist / np.maximum(dist[:, -1:], 1e-12)
            ylabel, title = "$d(p_0, p_l)/d(p_0, p_L)$", f"{name}: distance from the start"
        depth = values.shape[1] - 1
        t = np.arange(depth + 1) / depth
        for row in values[:60]:
            ax.plot(t, row, "-", color=_color(name), alpha=0.35, lw=0.8)
            ax.plot([0, 1], [row[0], row[-1]], ":", color="k", alpha=0.25, lw=0.6)
        ax.plot([], [], "-", color=_color(name), label="predictive path")
        ax.plot([], [], ":", color="k", label="its geodesic at constant speed")
        ax.set(xlabel="depth l/L", ylabel=ylabel, title=title)
    return _finish(fig, axes[0], legend_size=7)


def sensitivity(networks: dict[str, Any], axes: Any = None) -> Figure | None:
    """Block sensitivity s_l and the deletion KL, linearised (h²s²/2) against measured."""
    nets = {n: v for n, v in networks.items() if v["measures"].sensitivity is not None}
    if not nets:
        return None
    fig, axes = _axes(axes, 3, (12, 3.4))
    for name, net in nets.items():
        sens = net["measures"].sensitivity
        blocks = np.arange(1, len(sens["sensitivity"]) + 1)
        color = _color(name)
        axes[0].plot(blocks, sens["sensitivity"], "o-", color=color, label=name)
        axes[1].semilogy(
            blocks,
            np.clip(sens["deletion_kl"], 1e-12, None),
            "o-",
            color=color,
            label=f"{name} measured",
        )
        axes[1].semilogy(
            blocks,
            np.clip(sens["linearised_kl"], 1e-12, None),
            "x--",
            color=color,
            label=f"{name} $h^2 s_l^2/2$",
        )
        axes[2].plot(
            blocks,
            sens["euclidean_speeds"],
            "s--",
            color=color,
            label=f"{name}: kinetic action {sens['kinetic_action']:.3g}",
        )
    axes[0].set(xlabel="block l", ylabel="$s_l$", title="Block sensitivity (J after the block)")
    axes[1].set(xlabel="block l", ylabel="E KL(p ‖ p without block l)", title="Deleting one block")
    axes[2].set(xlabel="block l", ylabel="$\\sqrt{E\\|v_l\\|^2}$", title="Euclidean speed")
    axes[0].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    return _finish(fig, axes, legend_size=7)


def spectrum(networks: dict[str, Any], axes: Any = None) -> Figure:
    """Top eigenvalues (left, log scale) and the SLQ spectral density (right).

    On two given ``axes`` or a new figure's.
    """
    fig, axes = _axes(axes, 2, (9, 3.4))
    for name, net in networks.items():
        m = net["measures"]
        values = np.asarray(m.top_eigenvalues)
        axes[0].semilogy(
            np.arange(1, len(values) + 1),
            np.clip(values, 1e-12, None),
            "o-",
            color=_color(name),
            label=f"{name}: tr F = {m.fisher_trace:.3g}, d_eff = {m.effective_dimension:.1f}",
        )
        dens = m.spectral_density
        axes[1].plot(
            10.0 ** np.asarray(dens["log10_grid"]),
            dens["mass_per_decade"],
            color=_color(name),
            label=f"{name}: {100 * dens['fraction_near_zero']:.0f}% of the spectrum below "
            f"{dens['floor']:.1e}",
        )
    axes[0].set(
        xlabel="rank i",
        ylabel="eigenvalue $\\lambda_i$ of F",
        title="Top of the Fisher spectrum (Lanczos)",
    )
    axes[1].set(
        xlabel="$\\lambda$",
        ylabel="spectral mass per decade",
        xscale="log",
        title="Spectral density (SLQ)",
    )
    axes[1].set_ylim(bottom=0)
    return _finish(fig, axes)


def training_curves(networks: dict[str, Any]) -> Figure | None:
    """Loss, accuracy and the predictive action against its least action per epoch."""
    if not any(net.get("history") for net in networks.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for name, net in networks.items():
        hist = net.get("history") or []
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        color = _color(name)
        axes[0].plot(
            epochs, [h["train_loss"] for h in hist], "-", color=color, label=f"{name} train"
        )
        if "val_loss" in hist[0]:
            axes[0].plot(
                epochs, [h["val_loss"] for h in hist], "--", color=color, label=f"{name} test"
            )
        axes[1].plot(
            epochs, [h["train_acc"] for h in hist], "-", color=color, label=f"{name} train"
        )
        if "val_acc" in hist[0]:
            axes[1].plot(
                epochs, [h["val_acc"] for h in hist], "--", color=color, label=f"{name} test"
            )
        if "predictive_action" in hist[0]:
            axes[2].plot(
                epochs, [h["predictive_action"] for h in hist], "-", color=color, label=f"{name} A"
            )
            axes[2].plot(
                epochs, [h["least_action"] for h in hist], ":", color=color, label=f"{name} A_min"
            )
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    axes[2].set(xlabel="epoch", ylabel="action", title="Predictive action and its least action")
    return _finish(fig, axes, legend_size=7)


def trajectories(networks: dict[str, Any]) -> Figure | None:
    """Paths of test points through depth (2-D inputs), segments coloured by predictive speed."""
    nets = {n: v for n, v in networks.items() if v["measures"].trajectories is not None}
    if not nets:
        return None
    from matplotlib.collections import LineCollection

    fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 4.2), squeeze=False)
    # A robust colour scale: the 95th percentile, so a few fast points do not wash out the rest.
    vmax = (
        max(float(np.percentile(v["measures"].trajectories["speeds"], 95)) for v in nets.values())
        or 1.0
    )
    for ax, (name, net) in zip(axes[0], nets.items()):
        traj = net["measures"].trajectories
        points = np.asarray(traj["points"])  # [L+1, N, 2]
        speeds = np.asarray(traj["speeds"])  # [N, L]
        segments = (
            np.stack([points[:-1], points[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)
        )
        lines = LineCollection(segments, array=speeds.reshape(-1), cmap="viridis", linewidths=1.2)
        lines.set_clim(0, vmax)
        ax.add_collection(lines)
        labels = np.asarray(traj["labels"])
        ax.scatter(
            points[0, :, 0],
            points[0, :, 1],
            c=labels,
            cmap="coolwarm",
            s=10,
            marker="o",
            edgecolors="none",
            label="x_0 (after stem)",
        )
        ax.scatter(
            points[-1, :, 0],
            points[-1, :, 1],
            c=labels,
            cmap="coolwarm",
            s=18,
            marker="^",
            edgecolors="k",
            linewidths=0.3,
            label="x_L (into head)",
        )
        ax.autoscale()
        ax.set(
            title=f"{name}: paths through depth",
            xlabel="principal axis 1",
            ylabel="principal axis 2",
        )
        ax.legend(fontsize=7, loc="best")
        fig.colorbar(lines, ax=ax, label="predictive speed $d(p_l, p_{l+1})/h$", extend="max")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ the
# studies
def capacity(summary: dict[str, Any]) -> Figure:
    """Fitted fraction against N per λ (random and real labels), and action against bits stored."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    table = summary["table"]
    lambdas = sorted({row["lam"] for row in table})
    for kind, style in (("random", "o-"), ("real", "s--")):
        stars = [
            (lam, summary["n_star"][f"{kind}/{lam:g}"])
            for lam in lambdas
            if f"{kind}/{lam:g}" in summary["n_star"]
        ]
        if stars:
            axes[2].plot(
                [str(f"{lam:g}") for lam, _ in stars],
                [n for _, n in stars],
                style,
                label=f"{kind} labels",
            )
    axes[2].set(
        xlabel="λ (weight of the predictive action: a smaller λ is a larger budget)",
        ylabel="N*",
        title="Capacity against the action budget",
        ylim=(0, None),
    )
    cmap = plt.get_cmap("viridis")
    for k, lam in enumerate(lambdas):
        color = cmap(k / max(1, len(lambdas) - 1) * 0.85)
        for kind, style in (("random", "o-"), ("real", "s--")):
            rows = sorted(
                (r for r in table if r["lam"] == lam and r["kind"] == kind), key=lambda r: r["n"]
            )
            if not rows:
                continue
            n_star = summary["n_star"].get(f"{kind}/{lam:g}")
            axes[0].plot(
                [r["n"] for r in rows],
                [r["fitted_fraction"] for r in rows],
                style,
                color=color,
                label=f"{kind} labels, λ = {lam:g} (N* = {n_star})",
            )
            fitted = [r for r in rows if r["fitted_fraction"] >= 0.5]
            axes[1].plot(
                [r["bits"] for r in fitted],
                [r["predictive_action"] for r in fitted],
                style,
                color=color,
                label=f"{kind}, λ = {lam:g}: " + _slope_text(summary, f"{kind}/{lam:g}"),
            )
    axes[0].set(
        xlabel="N training points",
        ylabel="fraction of seeds fitting all N",
        xscale="log",
        title="Memorisation under an action budget",
        ylim=(-0.05, 1.05),
    )
    axes[1].set(
        xlabel="bits stored N·log₂C",
        ylabel="E_x A per point of the fitted network",
        title="Mean action per point against stored bits",
    )
    return _finish(fig, axes, legend_size=7)


def _slope_text(summary: dict[str, Any], key: str) -> str:
    """The legend's slope of E_x A against stored bits, or why there is none."""
    slope = summary["cost_per_bit"].get(key, {}).get("slope", float("nan"))
    if slope != slope:
        return "too few fitted sizes for a slope"
    return f"slope {slope:.2g} per bit"


def cover_anchor(anchor: dict[str, Any]) -> Figure:
    """The capacity study on a linear model against Cover's P(N, d)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = anchor["sizes"]
    ax.plot(sizes, anchor["cover_probability"], "k-", label="Cover: P(N, d)")
    ax.plot(
        sizes,
        anchor["separable_fraction"],
        "s",
        color="#55A868",
        label="separable (linear program)",
    )
    ax.plot(
        sizes,
        anchor["fitted_fraction"],
        "o",
        color="#DD8452",
        mfc="none",
        ms=9,
        label="fitted by training (N* ≈ "
        f"{anchor['n_star_fitted']['crossing'] or float('nan'):.1f})",
    )
    ax.axvline(anchor["two_d"], color="gray", ls=":", label=f"2d = {anchor['two_d']}")
    ax.axhline(0.5, color="gray", lw=0.5)
    ax.set(
        xlabel="N points",
        ylabel="fraction of random labellings",
        title=f"Capacity of a linear model, d = {anchor['d']}",
    )
    return _finish(fig, [ax])


def reinitialization(summary: dict[str, Any]) -> Figure:
    """Test error after resetting one layer (rows) to a checkpoint or a fresh draw (columns)."""
    error = np.asarray(summary["error"])
    fig, ax = plt.subplots(figsize=(1.2 * error.shape[1] + 3, 0.45 * error.shape[0] + 1.8))
    image = ax.imshow(error, cmap="magma_r", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(error):
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > 0.5 else "black",
        )
    columns = ["re-randomized" if c == "rnd" else f"τ = {c}" for c in summary["columns"]]
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(
        range(len(summary["layers"])),
        [f"{literal(n)} ({lab})" for n, lab in zip(summary["layers"], summary["labels"])],
        fontsize=8,
    )
    ax.set(
        title=f"Test error after resetting one layer (trained: {summary['trained_error']:.3f}, "
        f"chance: {summary['chance_error']:.2f})"
    )
    fig.colorbar(image, ax=ax, label="test error")
    fig.tight_layout()
    return fig


def weight_noise(summary: dict[str, Any]) -> Figure:
    """Measured E KL under weight noise against (σ²/2) tr F, per layer.

    And damage against tr F_ℓℓ.
    """
    noise = summary["noise"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    sigmas = np.asarray(noise["sigmas"])
    cmap = plt.get_cmap("viridis")
    for i, name in enumerate(noise["layers"]):
        color = "k" if name == "all" else cmap(i / max(1, len(noise["layers"]) - 1) * 0.9)
        axes[0].loglog(sigmas, noise["measured"][i], "o", color=color, ms=4)
        axes[0].loglog(
            sigmas,
            noise["predicted"][i],
            "-",
            color=color,
            lw=1,
            label=f"{literal(name)}: tr F = {noise['fisher_trace'][i]:.3g}, breaks at σ = "
            f"{noise['breakdown_sigma'][i] if noise['breakdown_sigma'][i] is not None else '—'}",
        )
    axes[0].set(
        xlabel="σ of the weight noise",
        ylabel="E KL(p_θ ‖ p_θ+δ)",
        title="Weight noise: measured (dots), (σ²/2) tr F (lines)",
    )
    column = summary["columns"].index("0")
    damage = np.asarray(summary["error"])[:, column] - summary["trained_error"]
    traces = noise["fisher_trace"][:-1]
    axes[1].scatter(traces, damage, color="#4C72B0")
    for name, x, y in zip(summary["layers"], traces, damage):
        axes[1].annotate(
            literal(name), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    tau = summary["kendall_pooled"]
    axes[1].set(
        xscale="log",
        xlabel="Fisher sensitivity tr F_ℓℓ",
        ylabel="damage: err(reset to τ = 0) − err",
        title=f"Sensitivity against damage: Kendall τ = {tau['tau']:.2f} (p = "
        f"{tau['p_value']:.2g})",
    )
    axes[1].plot([], [], "o", color="#4C72B0", label="one layer")
    return _finish(fig, axes, legend_size=6)


# ---------------------------------------------------------------------------------------------- the
# zoo
def zoo_scatter(points: dict[str, tuple[list[float], list[float]]]) -> Figure | None:
    """Each measure (one panel) against the generalization gap.

    One dot per model (None without points).
    """
    names = list(points)
    if not names:
        return None
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        measure, gap = points[name]
        ax.scatter(measure, gap, s=12, color="#4C72B0")
        ax.set(xlabel=literal(name), ylabel="gap (train − test acc.)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def zoo_cdf(board: list[dict[str, Any]]) -> Figure | None:
    """Empirical CDFs of the environment sign errors (Dziugaite et al.), one line per measure."""
    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.linspace(0.01, 1.0, 100)
    drawn = 0
    for entry in board:
        summary = entry.get("sign_error", {}).get("all", {})
        if summary.get("count"):
            ax.step(
                edges,
                summary["cdf"],
                where="post",
                label=f"{literal(entry['measure'])}: max {summary['max']:.2f}, mean "
                f"{summary['mean']:.2f}",
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(
        xlabel="sign error of an environment",
        ylabel="fraction of environments ≤",
        xlim=(0, 1),
        title="Robust sign error over environments",
    )
    return _finish(fig, [ax], legend_size=6)


# ----------------------------------------------------------------------------------------------
# disentanglement
def traversal(summary: dict[str, Any]) -> Figure:
    """Latent traversals (rows: latents; columns: z_j from −2 to 2) and the decoder metric |G|.

    Decoded images with no visible shape (brightest pixel below 0.1 or a spread of under 0.02,
    as a briefly trained smoke model gives) are not drawn: a panel of black squares reads as
    broken; the figure then says why it shows the metric alone.
    """
    images = np.asarray(summary["traversal"])  # [latents, steps, 4096]
    latents, steps = images.shape[:2]
    blank = images.size == 0 or float(images.max()) < 0.1 or float(images.std()) < 0.02
    if blank:
        fig, ax = plt.subplots(1, 1, figsize=(5.5, 4.2))
        axes = [None, ax]
        fig.suptitle(
            f"No traversal drawn: the decoder of {summary['traversal_model']} outputs blank "
            "images (too little training)",
            fontsize=8,
        )
    else:
        fig, axes = plt.subplots(
            1, 2, figsize=(12, 0.62 * latents + 1.2), gridspec_kw={"width_ratios": [steps, 5]}
        )
        _draw_traversal(axes[0], images, summary)
    metric = np.asarray(summary["metric_mean"])
    image = axes[1].imshow(metric, cmap="viridis")
    axes[1].set(title="|G(z)| = |Jᵀ Λ J|, mean over z", xlabel="latent", ylabel="latent")
    fig.colorbar(image, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    return fig


def _draw_traversal(ax: Any, images: np.ndarray, summary: dict[str, Any]) -> None:
    latents, steps = images.shape[:2]
    grid = (
        images.reshape(latents, steps, 64, 64)
        .transpose(0, 2, 1, 3)
        .reshape(latents * 64, steps * 64)
    )
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.set_yticks(
        np.arange(latents) * 64 + 32,
        [
            f"z{j} → factor {g}" if g >= 0 else f"z{j} (inactive)"
            for j, g in enumerate(summary["latent_groups"])
        ],
        fontsize=7,
    )
    ax.set_xticks([])
    ax.set_title(f"Latent traversals ({summary['traversal_model']})")


def lens_profile(language: dict[str, Any], axes: Any = None) -> Figure:
    """A language model's logit lens over depth: speed per step, agreement and settled share.

    Left: the RMS speed (L+1)·d_l of each step of the per-token predictive path (step 0 leaves
    the prior). Right: per state l, the share of tokens whose lens top-1 is the model's, and the
    share whose prediction has settled by l.
    """
    lens = language["lens"]
    fig, (left, right) = _axes(axes, 2, (9.5, 3.4))
    steps = np.arange(len(lens["speeds"]))
    left.bar(steps, lens["speeds"], color=_color("memspace"), label="speed (L+1)·d(l)")
    left.set_xticks(steps)
    left.set_xlabel("step l (0: from the prior)")
    left.set_ylabel("RMS speed")
    states = np.arange(len(lens["agreement"]))
    right.plot(states, lens["agreement"], marker="o", label="lens top-1 = model's")
    right.plot(states, lens["settled"], marker="s", label="settled by layer l")
    right.set_xticks(states)
    right.set_xlabel("state l (0: embeddings)")
    right.set_ylim(-0.02, 1.02)
    return _finish(fig, [left, right])


def lens_heatmap(language: dict[str, Any]) -> Figure:
    """Token × layer map of the predictive path's steps (L+1)·d_l, for the first sequence."""
    heat = language["heatmap"]
    steps = np.asarray(heat["steps"], dtype=float)
    tokens = [literal(t) for t in heat["tokens"]]
    height = max(2.5, 0.22 * len(tokens) + 1.0)
    fig, ax = plt.subplots(figsize=(6.5, min(height, 14.0)))
    image = ax.imshow(steps, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(steps.shape[1]))
    ax.set_xlabel("step l (0: from the prior)")
    ax.set_ylabel("token")
    if len(tokens) <= 64:
        ax.set_yticks(range(len(tokens)))
        ax.set_yticklabels(tokens, fontsize=7)
    fig.colorbar(image, ax=ax, label="(L+1)·d(l)")
    fig.tight_layout()
    return fig


_ARM_COLORS = {"wd=0": "#7F7F7F", "wd=0.1": "#4C72B0", "wd=1": "#55A868", "wd=1+action": "#DD8452"}
_MORE_COLORS = ["#8172B3", "#C44E52", "#937860", "#DA8BC3"]


def grokking_curves(summary: dict[str, Any]) -> Figure:
    """The grokking study on a shared log-step axis (x: step + 1), one thin line per run.

    Panels: train (dashed) and test (solid) accuracy; the effective dimension, the Fisher–Rao
    norm and tr F on the train pairs; the weight norm; the Fourier concentration of the
    embedding; the embedding's spectrum at the first and last checkpoint of the first run of
    the arm with the largest weight decay. The first step with test accuracy ≥ 0.5 of each run
    is marked by a dotted line in its arm's colour.
    """
    runs = summary["runs"]
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    colors = {
        arm: _ARM_COLORS.get(arm, _MORE_COLORS[i % len(_MORE_COLORS)]) for i, arm in enumerate(arms)
    }
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    axes = axes.ravel()
    panels = [
        ("test_accuracy", "accuracy (train dashed, test solid)", False),
        ("effective_dimension", "effective dimension (train)", True),
        ("fisher_rao_norm", "Fisher–Rao norm θᵀFθ (train)", True),
        ("fisher_trace", "tr F (train)", True),
        ("weight_norm", "weight norm ‖θ‖₂", False),
        (
            "fourier_concentration",
            f"Fourier concentration (top {summary['config']['fourier_k']})",
            False,
        ),
        ("arc_length", "Fisher arc length so far", False),
    ]
    labelled: set[str] = set()
    for run in runs:
        x = np.asarray(run["steps"]) + 1
        color = colors[run["arm"]]
        label = literal(run["arm"]) if run["arm"] not in labelled else None
        labelled.add(run["arm"])
        for ax, (key, title, log) in zip(axes, panels):
            values = np.asarray(run[key], dtype=float)
            if log:
                values = np.where(values > 0, values, np.nan)
            ax.plot(
                x,
                values,
                color=color,
                lw=1,
                alpha=0.8,
                label=label if key == panels[0][0] else None,
            )
            if key == "test_accuracy":
                ax.plot(x, run["train_accuracy"], color=color, lw=1, ls="--", alpha=0.8)
            grokked = run["events"]["effective_dimension"]["grokked"]
            if grokked is not None:
                ax.axvline(grokked + 1, color=color, ls=":", lw=0.8, alpha=0.6)
            ax.set(xscale="log", title=title, xlabel="step + 1")
            if log:
                ax.set_yscale("log")
    reference = max(runs, key=lambda r: (_arm_decay(summary, r["arm"]), -r["seed"]))
    ax = axes[-1]
    k = np.arange(len(reference["spectrum_first"]))
    ax.bar(k - 0.2, reference["spectrum_first"], width=0.4, label="first checkpoint", color="#999")
    ax.bar(k + 0.2, reference["spectrum_last"], width=0.4, label="last checkpoint", color="#C44E52")
    ax.set(
        title=literal(f"embedding spectrum, {reference['arm']} seed {reference['seed']}"),
        xlabel="frequency k",
        ylabel="share of ‖E‖²",
    )
    ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _arm_decay(summary: dict[str, Any], arm: str) -> float:
    return next((a["weight_decay"] for a in summary["config"]["arms"] if a["name"] == arm), 0.0)
