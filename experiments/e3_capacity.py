"""E3 — capacity without censoring (THEORY v3 §5, claim (iv)), pre-registered.

How many random (x, y) pairs a residual MLP stores, and what the predictive action costs it.
Inputs are Fashion-MNIST images (E1's training draw, flattened to 784 numbers), labels drawn
uniformly over the 10 classes (N·log₂10 bits that no input predicts). A cell (group, N, seed)
trains one network with Adam until it classifies all N points or 30 000 steps pass
(``memorise``: mini-batches of 256, checked every 10 steps). The trajectory does not depend on
the budget, so the same run says whether the fit came within 3 000 steps: both budgets of the
issue from one run, exactly. N doubles from 100 until every seed of a group fails within the
large budget (capped at the 12 000 images). Groups: the residual MLP (width 32, L = 4) at
λ = 0 and at λ = 1 (the prior-anchored predictive action on the training batch), and a
depth-0 network (stem and read-out alone, the same width: a rank-32 linear map) as the control.
Refinement (added on 2026-12-07, after the doubling grid's cells were read and published):
within each group's bracket — the largest N every seed fitted and the smallest N no seed
fitted, per budget, on the doubling grid alone — the sizes at quarter doublings are trained too
(:func:`refinement_sizes`, a fixed rule of the grid's cells), so that N* is resolved to a
quarter doubling rather than a doubling; the estimator and the predictions are unchanged, and
the table keeps the grid-only N* beside the refined one.
N* is where a logistic fit of "fitted" against log₂ N crosses ½, over every cell of the group
(:func:`memspace.evaluation.logistic_threshold`), with a seed-bootstrap interval; a group whose
cells all fit is censored and said so. The same seed gives every group the same points and
labels, so the groups are compared paired.

The predictions below were written before the first cell ran (they are in the commit that added
this file); the verdicts are computed from the stored cells by :mod:`memspace.evaluation`.

    python experiments/e3_capacity.py run        # train what is missing (resumable)
    python experiments/e3_capacity.py publish    # results.json and RESULTS.md from the cells
    python experiments/e3_capacity.py run --quick --store /tmp/e3.sqlite   # smoke run
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _preregistered import (  # noqa: E402
    cells_of,
    checkpoint_wal,
    commit,
    estimate_text,
    machine,
    main,
    predictions_table,
    publish_cells,
    training_draw,
    verdict_table,
)

from memspace import ResidualMLP, predictive_path  # noqa: E402
from memspace.evaluation import (  # noqa: E402
    Prediction,
    clustered_bootstrap,
    decide_direction,
    logistic_threshold,
    mean_ci,
)
from memspace.studies.capacity import cell_data, memorise_population  # noqa: E402
from memspace.zoo import ZooStore  # noqa: E402

NAME = "e3_capacity"
FOLDER = HERE / "e3"
CONFIG = dict(
    data="fashion-mnist",
    train_size=12000,
    test_size=1,
    first_size=100,
    width=32,
    depth=4,
    lambdas=[0.0, 1.0],
    budgets=[3000, 30000],
    lr=3e-3,
    batch_size=256,
    check_every=10,
    seeds=[0, 1, 2, 3, 4],
    path_points=512,
)
QUICK = dict(
    CONFIG,
    train_size=400,
    first_size=25,
    width=8,
    depth=2,
    budgets=[60, 300],
    seeds=[0, 1],
    path_points=64,
)
GROUPS = ("residual λ=0", "residual λ=1", "depth-0")
REFINE_STEPS = 4  # a bracket [a, b] gets the sizes a·(b/a)^(k/4), k = 1, 2, 3

PREDICTIONS = {
    "depth": Prediction(
        claim="(iv) the residual blocks add capacity",
        statement="The residual MLP at λ = 0 stores more random labels than its depth-0 control "
        "within 30 000 steps.",
        test="log₂ N*(residual, λ = 0) − log₂ N*(depth-0), logistic N* over every cell, seeds "
        "resampled together (paired), 95 % bootstrap interval",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "action": Prediction(
        claim="(iv) an action budget costs capacity",
        statement="Training with the predictive action at λ = 1 lowers N* against λ = 0 "
        "(30 000 steps).",
        test="log₂ N*(λ = 1) − log₂ N*(λ = 0), as above",
        supported_if="the interval lies below 0",
        contradicted_if="the interval lies above 0",
    ),
    "budget": Prediction(
        claim="(iv) a failure at 3 000 steps is capacity, not optimisation",
        statement="Ten times the step budget (30 000 against 3 000) raises N* of the residual "
        "MLP at λ = 0 by less than one doubling.",
        test="log₂ N*(30 000 steps) − log₂ N*(3 000 steps), as above",
        supported_if="the interval lies below 1",
        contradicted_if="the interval lies above 1",
    ),
    "cost": Prediction(
        claim="(iv) storing costs action",
        statement="Among the fitted λ = 0 networks, the total predictive action N·Ā (prior "
        "anchor, on the memorised points) grows with the bits stored N·log₂10.",
        test="per seed the least-squares slope of N·Ā (nats) against N·log₂10 (bits) over its "
        "fitted sizes, mean over seeds, seed-bootstrap 95 % interval",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
}


def cell_id(group: str, n: int, seed: int) -> str:
    return f"{group.replace(' ', '').replace('λ=', 'lam')}-N{n}-s{seed}"


def sizes(cfg: dict) -> list[int]:
    """N = first_size · 2^k up to the training draw, the draw itself last."""
    out, n = [], cfg["first_size"]
    while n < cfg["train_size"]:
        out.append(n)
        n *= 2
    return out + [cfg["train_size"]]


def refinement_sizes(cells: list[dict], cfg: dict) -> dict[str, list[int]]:
    """Per group, the sizes inside its doubling-grid brackets (every budget) at quarter steps.

    Read from the grid's cells alone (sizes of :func:`sizes`), so that the refinement's own
    cells never move it: for each budget the bracket (largest N every seed fitted, smallest N
    no seed fitted) gets a·(b/a)^(k/4), k = 1..3, rounded; a group whose bracket is incomplete
    gets none.
    """
    grid = set(sizes(cfg))
    out = {}
    for group in GROUPS:
        rows = [c for c in cells if c["hparams"]["group"] == group and c["hparams"]["n"] in grid]
        wanted: set[int] = set()
        for budget in cfg["budgets"]:
            low, high = _bracket(rows, group, budget)
            if math.isfinite(low) and math.isfinite(high) and high > low:
                wanted |= {
                    round(low * (high / low) ** (k / REFINE_STEPS)) for k in range(1, REFINE_STEPS)
                }
        out[group] = sorted(wanted - grid)
    return out


def build(group: str, dim: int, cfg: dict, classes: int) -> nn.Module:
    if group == "depth-0":
        return nn.Sequential(nn.Linear(dim, cfg["width"]), nn.Linear(cfg["width"], classes))
    return ResidualMLP(dim, cfg["width"], cfg["depth"], classes)


def train_stage(store, X, classes, group: str, n: int, cfg: dict) -> None:
    """Every missing seed of one (group, N), trained as one population."""
    seeds = [s for s in cfg["seeds"] if cell_id(group, n, s) not in store.model_ids()]
    if not seeds:
        return
    lam = 1.0 if group == "residual λ=1" else 0.0
    data, models = [], []
    for seed in seeds:
        data.append(cell_data((X, None), classes, "random", n, seed))  # the study's cells
        torch.manual_seed(seed)
        models.append(build(group, X.shape[1], cfg, classes))
    start = time.perf_counter()
    results = memorise_population(
        models,
        data,
        actions=["predictive" if lam else None] * len(seeds),
        lams=[lam] * len(seeds),
        seeds=seeds,
        max_steps=max(cfg["budgets"]),
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        check_every=cfg["check_every"],
    )
    seconds = (time.perf_counter() - start) / len(seeds)
    provenance = dict(machine=machine(), commit=commit())
    for seed, model, (Xc, yc), result in zip(seeds, models, data, results):
        measures = {
            "n": float(n),
            "steps": float(result.steps),
            "train_acc": result.train_acc,
            "diverged": float(result.diverged is not None),
        }
        for budget in cfg["budgets"]:
            measures[f"fitted_{budget}"] = float(result.fitted and result.steps <= budget)
        if result.fitted and group != "depth-0":
            probe = (Xc[: cfg["path_points"]], yc[: cfg["path_points"]])
            path = predictive_path(model, probe)
            measures.update(action=path.action, ratio=path.ratio)
        store.add(
            dict(
                id=cell_id(group, n, seed),
                hparams=dict(group=group, n=n, lam=lam, **provenance),
                seed=seed,
                train_acc=result.train_acc,
                test_acc=float("nan"),  # stored as NULL: memorisation has no test set
                train_ce=float("nan"),
                gap=float("nan"),
                epochs=result.steps,
                converged=bool(result.fitted),
                seconds=seconds,
                init_file="none",
                final_file="none",
            ),
            measures,
        )


def run(cfg: dict, store_path: Path, progress: bool) -> None:
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = ZooStore(store_path)
    try:
        (X, _), _, classes = training_draw(cfg)
        X = X.flatten(1)
        print(f"E3: random labels on up to {len(X)} images; {machine()}", flush=True)
        active = list(GROUPS)  # N rises for every group together, so each has cells early
        for n in sizes(cfg):
            for group in list(active):
                start = time.perf_counter()
                train_stage(store, X, classes, group, n, cfg)
                fitted = [
                    m.get(f"fitted_{max(cfg['budgets'])}", 0.0)
                    for i, m in store.measures().items()
                    if i in {cell_id(group, n, s) for s in cfg["seeds"]}
                ]
                print(
                    f"E3: {group}, N = {n}: {int(sum(fitted))} of {len(fitted)} fitted "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
                if not any(fitted):  # every seed failed: the doubling of this group ends
                    active.remove(group)
        # the grid is complete: its brackets decide the refinement
        for group, extra in refinement_sizes(cells_of(store), cfg).items():
            for n in extra:
                start = time.perf_counter()
                train_stage(store, X, classes, group, n, cfg)
                print(
                    f"E3: refinement, {group}, N = {n} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    finally:
        store.close()
    checkpoint_wal(store_path)


# ---------------------------------------------------------------------------- analysis


def _log2_n_star(rows: list[dict], budget: int) -> float:
    fit = logistic_threshold(
        [r["measures"]["n"] for r in rows], [r["measures"][f"fitted_{budget}"] > 0 for r in rows]
    )
    return fit["log2_n_star"]


def _bracket(cells, group: str, budget: int) -> tuple[float, float]:
    """(largest N every seed fitted, smallest N no seed fitted): where the grid puts N*."""
    rows = [c["measures"] for c in cells if c["hparams"]["group"] == group]
    sizes = sorted({m["n"] for m in rows})
    every = [n for n in sizes if all(m[f"fitted_{budget}"] for m in rows if m["n"] == n)]
    none = [n for n in sizes if not any(m[f"fitted_{budget}"] for m in rows if m["n"] == n)]
    return (max(every) if every else math.nan, min(none) if none else math.nan)


def _resolution(cells, a: tuple[str, int], b: tuple[str, int]) -> str:
    """The range of log₂ N*(a) − log₂ N*(b) that the grid brackets allow (the grid's resolution)."""
    (a_low, a_high), (b_low, b_high) = _bracket(cells, *a), _bracket(cells, *b)
    low, high = math.log2(a_low) - math.log2(b_high), math.log2(a_high) - math.log2(b_low)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "grid brackets incomplete"
    return f"the grid brackets allow a difference in [{low:.2f}, {high:.2f}]"


def _with_resolution(verdict, cells, a, b):
    """The verdict with the grid's resolution in its note (the interval cannot show it)."""
    return dataclasses.replace(verdict, note=f"{verdict.note}; {_resolution(cells, a, b)}")


def _paired_difference(cells, a: tuple[str, int], b: tuple[str, int]):
    """log₂ N*(a) − log₂ N*(b), resampling seeds together (a and b share each seed's data)."""
    rows = [c for c in cells if c["hparams"]["group"] in (a[0], b[0])]
    seeds = [c["seed"] for c in rows]

    def statistic(idx: np.ndarray) -> float:
        picked = [rows[i] for i in idx]
        left = [r for r in picked if r["hparams"]["group"] == a[0]]
        right = [r for r in picked if r["hparams"]["group"] == b[0]]
        if not left or not right:
            return float("nan")
        return _log2_n_star(left, a[1]) - _log2_n_star(right, b[1])

    return clustered_bootstrap(statistic, len(rows), seeds)


def analyse(cells: list[dict], cfg: dict) -> dict:
    """Every statistic and verdict, from the stored cells alone."""
    groups = {}
    for group in GROUPS:
        rows = [c for c in cells if c["hparams"]["group"] == group]
        if not rows:
            continue
        entry = dict(group=group, sizes=sorted({int(r["measures"]["n"]) for r in rows}))
        for budget in cfg["budgets"]:
            fit = logistic_threshold(
                [r["measures"]["n"] for r in rows],
                [r["measures"][f"fitted_{budget}"] > 0 for r in rows],
            )
            seeds = [r["seed"] for r in rows]
            interval = clustered_bootstrap(
                lambda idx, budget=budget, rows=rows: _log2_n_star([rows[i] for i in idx], budget),
                len(rows),
                seeds,
            )
            fractions = {
                n: float(
                    np.mean(
                        [r["measures"][f"fitted_{budget}"] for r in rows if r["measures"]["n"] == n]
                    )
                )
                for n in entry["sizes"]
            }
            grid = [r for r in rows if r["hparams"]["n"] in set(sizes(cfg))]
            grid_fit = logistic_threshold(
                [r["measures"]["n"] for r in grid],
                [r["measures"][f"fitted_{budget}"] > 0 for r in grid],
            )
            entry[f"budget_{budget}"] = dict(
                fit=fit,
                grid_fit=grid_fit,
                log2_interval=interval.as_dict(),
                fitted_fraction=fractions,
            )
        groups[group] = entry
    big, small = max(cfg["budgets"]), min(cfg["budgets"])
    verdicts = []
    if {"residual λ=0", "depth-0"} <= set(groups):
        verdicts.append(
            _with_resolution(
                decide_direction(
                    PREDICTIONS["depth"],
                    _paired_difference(cells, ("residual λ=0", big), ("depth-0", big)),
                ),
                cells,
                ("residual λ=0", big),
                ("depth-0", big),
            )
        )
    if {"residual λ=0", "residual λ=1"} <= set(groups):
        verdicts.append(
            _with_resolution(
                decide_direction(
                    PREDICTIONS["action"],
                    _paired_difference(cells, ("residual λ=1", big), ("residual λ=0", big)),
                    predicted="below",
                ),
                cells,
                ("residual λ=1", big),
                ("residual λ=0", big),
            )
        )
    slopes = []
    if "residual λ=0" in groups:
        verdicts.append(
            _with_resolution(
                decide_direction(
                    PREDICTIONS["budget"],
                    _paired_difference(cells, ("residual λ=0", big), ("residual λ=0", small)),
                    threshold=1.0,
                    predicted="below",
                ),
                cells,
                ("residual λ=0", big),
                ("residual λ=0", small),
            )
        )
        for seed in cfg["seeds"]:
            fitted = [
                c["measures"]
                for c in cells
                if c["hparams"]["group"] == "residual λ=0"
                and c["seed"] == seed
                and "action" in c["measures"]
            ]
            if len({m["n"] for m in fitted}) >= 2:
                bits = [m["n"] * math.log2(10) for m in fitted]
                total = [m["n"] * m["action"] for m in fitted]
                slopes.append(float(np.polyfit(bits, total, 1)[0]))
        if slopes:
            verdicts.append(decide_direction(PREDICTIONS["cost"], mean_ci(slopes)))
    return dict(
        groups=groups,
        action_slope_per_seed=slopes,
        verdicts=[v.as_dict() for v in verdicts],
    )


def section(results: dict) -> str:
    """The RESULTS.md section, written from ``results`` alone."""
    cfg, a = results["config"], results["analysis"]
    machines = sorted({c["hparams"].get("machine", "?") for c in results["cells"]})
    seconds = sum(c["seconds"] for c in results["cells"])
    lines = [
        "## E3 — capacity without censoring (pre-registered)",
        "",
        f"Generated by `experiments/e3_capacity.py publish` from `experiments/e3/results.json` "
        f"({len(results['cells'])} cells, {seconds / 60:.0f} min of training summed; machine: "
        f"{'; '.join(machines)}). Random labels over 10 classes on Fashion-MNIST images; residual "
        f"MLP width {cfg['width']}, L = {cfg['depth']}; Adam (lr {cfg['lr']}, batch "
        f"{cfg['batch_size']}) until every point is fitted or {max(cfg['budgets'])} steps; N "
        f"doubles from {cfg['first_size']} until every seed of a group fails; seeds "
        f"{cfg['seeds']}. Then (added after the grid run was read, a fixed rule of its cells) "
        "the sizes at quarter doublings inside each group's brackets. N* is the logistic "
        "crossing of ½ (log₂ N) over every cell; intervals are 95 % seed-bootstrap percentile "
        "intervals. Where every seed switches between the same two sizes the interval has no "
        "width, and N* is known only to within those sizes: each verdict's note gives the range "
        "of the difference the sizes allow.",
        "",
        *predictions_table(results["predictions"]),
    ]
    done = list(a["groups"])
    if set(done) != set(GROUPS):
        lines += [
            f"**Provisional — groups stored: {', '.join(done) or 'none'} of {', '.join(GROUPS)}.**",
            "",
        ]
    lines += verdict_table(a["verdicts"]) if a["verdicts"] else ["No cell has been stored yet."]
    lines += ["", "### N* per group and step budget", ""]
    lines += [
        "| group | budget | N* | log₂ N* | N*, doubling grid only | fitted fraction by N |",
        "|---|---|---|---|---|---|",
    ]
    for group, e in a["groups"].items():
        for budget in cfg["budgets"]:
            b = e[f"budget_{budget}"]
            fit = b["fit"]
            if fit["censored"]:
                n_star = (
                    f"≥ {fit['n_star']:.0f} (censored)"
                    if fit["censored"] == "above"
                    else f"< {fit['n_star']:.0f} (censored)"
                    if fit["censored"] == "below"
                    else "no decline with N"
                )
                log2 = "—"
            else:
                n_star = f"{fit['n_star']:.0f}"
                log2 = estimate_text(dict(b["log2_interval"], value=fit["log2_n_star"]), "{:.2f}")
            fractions = ", ".join(f"{n}: {f:.1f}" for n, f in b["fitted_fraction"].items())
            grid = b.get("grid_fit") or fit
            grid_text = "censored" if grid["censored"] else f"{grid['n_star']:.0f}"
            lines.append(f"| {group} | {budget} | {n_star} | {log2} | {grid_text} | {fractions} |")
    if a["action_slope_per_seed"]:
        lines += [
            "",
            "Total predictive action N·Ā of the fitted λ = 0 networks per bit stored "
            "(least-squares slope, nats per bit), per seed: "
            + ", ".join(f"{s:.3g}" for s in a["action_slope_per_seed"])
            + ".",
        ]
    return "\n".join(lines) + "\n"


def publish(store_path: Path, cfg: dict, out: Path) -> Path:
    return publish_cells(sys.modules[__name__], store_path, cfg, out)


if __name__ == "__main__":
    main(sys.modules[__name__])
