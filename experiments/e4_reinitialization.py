"""E4 — layer re-initialisation on a residual CNN (THEORY v3 §5, claim (v)), pre-registered.

Zhang, Bengio & Singer ("Are all layers created equal?", arXiv 1902.01996; JMLR 2022) reset one
trained layer at a time to its value at a checkpoint τ (τ = 0: its initialisation) or to a fresh
draw from the initialisation distribution ("re-randomisation"), keep every other layer trained,
and read the test error. A layer is *critical* when that reset is not negligible, *robust* when
it is; in residual networks they find few critical layers (the stem among them) and residual
blocks robust. This experiment repeats that on Fashion-MNIST with memspace's residual CNN,
judges each layer by their criterion with a seed-bootstrap interval, puts memspace's own
thresholds beside it, and asks claim (v)'s question: does a block's Fisher sensitivity tr F_ℓℓ
rank the damage of resetting it, *within* the blocks (the stem and read-out are boundary maps,
docs/theory.md §3.3), seed by seed?

Set-up: 12 000 training images (E1's draw), the full 10 000-image test set, both average-pooled
to 14 × 14 (a fixed down-sampling stem; the CPU this runs on cannot afford 28 × 28 convolutions
for 5 seeds × 10 layers × 5 resets on 10 000 images); ResidualCNN with 16 channels and L = 8
blocks; 10 epochs of Adam; seeds 0–4 trained as one population (each exactly as ``fit`` trains
it alone). Per seed and layer: the test error and NLL after each reset (τ = 0, 1, 2 and the mean
of two re-randomisations), tr F_ℓℓ on 1 000 training images, the second-order prediction
½ δᵀ F δ of the reset's KL (δ = θ_0 − θ_T on that layer) and the measured KL.

The predictions below were written before the first cell ran (they are in the commit that added
this file); the verdicts are computed from the stored cells by :mod:`memspace.evaluation`.

    python experiments/e4_reinitialization.py run        # train and measure what is missing
    python experiments/e4_reinitialization.py publish    # results.json and RESULTS.md
    python experiments/e4_reinitialization.py run --quick --store /tmp/e4.sqlite   # smoke run
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _preregistered import (  # noqa: E402
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
from scipy import stats  # noqa: E402

from memspace import FisherOperator  # noqa: E402
from memspace.evaluation import (  # noqa: E402
    Prediction,
    Verdict,
    decide_direction,
    mean_ci,
    sample_std,
)
from memspace.paths.models import ResidualCNN  # noqa: E402
from memspace.population import Member, Population, train_population  # noqa: E402
from memspace.studies.robustness import (  # noqa: E402
    classify_layers,
    layer_units,
    reinitialization,
    training_checkpoints,
)
from memspace.train import snapshot  # noqa: E402
from memspace.zoo import ZooStore  # noqa: E402

NAME = "e4_reinitialization"
FOLDER = HERE / "e4"
CONFIG = dict(
    data="fashion-mnist",
    train_size=12000,
    test_size=10000,
    probe_size=1000,
    pool=2,
    channels=16,
    depth=8,
    epochs=10,
    lr=2e-3,
    batch_size=128,
    seeds=[0, 1, 2, 3, 4],
    taus=[0, 1, 2],
    draws=2,
)
QUICK = dict(
    CONFIG,
    train_size=400,
    test_size=300,
    probe_size=64,
    pool=4,
    channels=4,
    depth=3,
    epochs=2,
    seeds=[0, 1],
    taus=[0, 1],
)
NEGLIGIBLE_POINTS = 1.0  # Zhang–Bengio–Singer's "negligible", fixed here before the run
COLUMNS = ("rnd", "0", "1", "2")

PREDICTIONS = {
    "stem": Prediction(
        claim="(v) the stem is critical",
        statement="Resetting the stem to its initialisation raises the test error by more than "
        f"{NEGLIGIBLE_POINTS:g} point (Zhang–Bengio–Singer: not negligible).",
        test="Δ error (points) of the stem reset to τ = 0, mean over seeds, seed-bootstrap 95 % "
        "interval",
        supported_if=f"the interval lies above {NEGLIGIBLE_POINTS:g} point",
        contradicted_if=f"the interval lies below {NEGLIGIBLE_POINTS:g} point",
    ),
    "blocks-init": Prediction(
        claim="(v) residual blocks are re-initialisation robust",
        statement="Resetting any one residual block to its initialisation costs a negligible "
        f"test error (below {NEGLIGIBLE_POINTS:g} point).",
        test="per seed the largest Δ error (points) over the blocks at τ = 0, mean over seeds, "
        "seed-bootstrap 95 % interval",
        supported_if=f"the interval lies below {NEGLIGIBLE_POINTS:g} point",
        contradicted_if=f"the interval lies above {NEGLIGIBLE_POINTS:g} point",
    ),
    "blocks-rnd": Prediction(
        claim="(v) residual blocks are re-randomisation robust",
        statement="Replacing any one block by a fresh draw from the initialisation distribution "
        f"costs a negligible test error too (below {NEGLIGIBLE_POINTS:g} point).",
        test="as above, for the mean of two re-randomisations",
        supported_if=f"the interval lies below {NEGLIGIBLE_POINTS:g} point",
        contradicted_if=f"the interval lies above {NEGLIGIBLE_POINTS:g} point",
    ),
    "rank": Prediction(
        claim="(v) Fisher sensitivity ranks the damage within blocks",
        statement="Across the L blocks of one network, tr F_ℓℓ ranks the increase of test NLL "
        "from resetting the block to τ = 0 (positive Kendall τ).",
        test="per seed Kendall τ_b over the blocks, mean over seeds, seed-bootstrap 95 % interval",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "quadratic": Prediction(
        claim="(v) ½ δᵀFδ ranks the reset's KL within blocks",
        statement="The Fisher's second-order prediction of a block reset's KL ranks the measured "
        "KL (on the Fisher's probe images) across the blocks.",
        test="per seed Kendall τ_b over the blocks, mean over seeds, seed-bootstrap 95 % interval",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
}


def load(cfg: dict):
    """E1's training draw and the test set (:func:`training_draw`), average-pooled by ``pool``."""
    (X, y), (Xt, yt), classes = training_draw(cfg)
    pool = cfg["pool"]
    return (F.avg_pool2d(X, pool), y), (F.avg_pool2d(Xt, pool), yt), classes


def factory_for(cfg: dict, classes: int, size: int):
    return lambda: ResidualCNN(1, cfg["channels"], cfg["depth"], classes, image_size=size)


def _mean_kl(model, state_a, state_b, X) -> float:
    """E_x KL(p_a ‖ p_b) on X."""
    with torch.no_grad():
        model.load_state_dict(state_a)
        log_a = torch.log_softmax(model(X).double(), -1)
        model.load_state_dict(state_b)
        log_b = torch.log_softmax(model(X).double(), -1)
    return float((log_a.exp() * (log_a - log_b)).sum(-1).mean())


def measure_seed(model, factory, folder: Path, cfg: dict, train, test, seed: int) -> list[dict]:
    """Every layer's resets, tr F_ℓℓ and reset KL for one trained network (one row per layer)."""
    checkpoints = training_checkpoints(factory, folder, cfg["taus"])
    final = snapshot(model)
    reinit = reinitialization(
        factory,
        final,
        checkpoints,
        test,
        rerandomize_seeds=[20_000 + 7 * seed + i for i in range(cfg["draws"])],
    )
    X = train[0][: cfg["probe_size"]]
    model.load_state_dict(final)
    model.eval()
    fisher = FisherOperator(model, (X, train[1][: cfg["probe_size"]]))
    diag = fisher.space.to_dict(fisher.diag())
    params = dict(model.named_parameters())
    units = layer_units(model)
    rows = []
    scratch = factory()
    trained_nll, _ = _nll_and_accuracy(scratch, final, test)
    train_nll, train_acc = _nll_and_accuracy(scratch, final, train)
    for i, (layer, keys) in enumerate(units.items()):
        owned = [k for k in keys if k in params]
        delta = {k: torch.zeros_like(v) for k, v in params.items()}
        for k in owned:
            delta[k] = (checkpoints["0"][k] - final[k]).to(params[k].dtype)
        reset = dict(final)
        reset.update({k: checkpoints["0"][k] for k in keys})
        measures = {
            "trace": float(sum(float(diag[k].sum()) for k in owned)),
            "quadratic_kl": 0.5 * float(fisher.quad(delta)),
            "reset_kl": _mean_kl(scratch, final, reset, X),
            "distance_l2": float(reinit.distance_l2[i]),
            "trained_error": reinit.trained_error,
            "trained_nll": trained_nll,
            "train_nll": train_nll,
            "train_acc": train_acc,
        }
        for j, column in enumerate(reinit.columns):
            measures[f"error_{column}"] = float(reinit.error[i, j])
            measures[f"nll_{column}"] = float(reinit.loss[i, j])
        rows.append(dict(layer=layer, index=i, measures=measures))
    return rows


def _nll_and_accuracy(model, state, data) -> tuple[float, float]:
    with torch.no_grad():
        model.load_state_dict(state)
        model.eval()
        logits = torch.cat([model(data[0][i : i + 2000]) for i in range(0, len(data[0]), 2000)])
        return float(F.cross_entropy(logits, data[1])), float(
            (logits.argmax(1) == data[1]).mean(dtype=torch.float64)
        )


def run(cfg: dict, store_path: Path, progress: bool) -> None:
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = ZooStore(store_path)
    try:
        train, test, classes = load(cfg)
        size = train[0].shape[-1]
        factory = factory_for(cfg, classes, size)
        print(
            f"E4: {len(train[0])} training and {len(test[0])} test images at {size}×{size}; "
            f"{machine()}",
            flush=True,
        )
        seeds = cfg["seeds"]
        start = time.perf_counter()
        trained = train_population(
            Population.from_seeds(factory, seeds),
            train,
            [Member(seed=s, epochs=cfg["epochs"], lr=cfg["lr"]) for s in seeds],
            batch_size=cfg["batch_size"],
            checkpoint_dir=store_path.parent / "runs",
            member_names=[f"seed-{s}" for s in seeds],
            progress=progress,
            probe_size=256,
        )
        train_seconds = (time.perf_counter() - start) / len(seeds)
        print(f"E4: trained {len(seeds)} seeds ({train_seconds:.0f} s each)", flush=True)
        provenance = dict(machine=machine(), commit=commit())
        done = store.model_ids()
        for k, seed in enumerate(seeds):
            names = list(layer_units(factory()))
            if {f"s{seed}-{n}" for n in names} <= done:
                continue
            start = time.perf_counter()
            rows = measure_seed(
                trained.member(k).model, factory, trained.folders[k], cfg, train, test, seed
            )
            seconds = time.perf_counter() - start
            for r in rows:
                m = r["measures"]
                store.add(
                    dict(
                        id=f"s{seed}-{r['layer']}",
                        hparams=dict(layer=r["layer"], index=r["index"], **provenance),
                        seed=seed,
                        train_acc=m["train_acc"],
                        test_acc=1.0 - m["trained_error"],
                        train_ce=m["train_nll"],
                        gap=m["train_acc"] - (1.0 - m["trained_error"]),
                        epochs=cfg["epochs"],
                        converged=True,
                        seconds=train_seconds + seconds / len(rows),
                        init_file="none",
                        final_file="none",
                    ),
                    m,
                )
            print(f"E4: seed {seed} measured in {seconds:.0f} s", flush=True)
    finally:
        store.close()
    checkpoint_wal(store_path)


# ---------------------------------------------------------------------------- analysis


def _by_seed(cells: list[dict]) -> dict[int, list[dict]]:
    """Each seed's layer rows, in layer order."""
    out: dict[int, list[dict]] = {}
    for c in sorted(cells, key=lambda c: (c["seed"], c["hparams"]["index"])):
        out.setdefault(c["seed"], []).append(c)
    return out


def _is_block(layer: str) -> bool:
    return layer.startswith("blocks.")


def analyse(cells: list[dict], cfg: dict) -> dict:
    """Every statistic and verdict, from the stored cells alone."""
    seeds = _by_seed(cells)
    complete = {s: rows for s, rows in seeds.items() if len(rows) == cfg["depth"] + 2}
    verdicts: list[Verdict] = []
    layers_table = []
    if not complete:
        return dict(layers=[], verdicts=[], seeds=[])
    layers = [c["hparams"]["layer"] for c in next(iter(complete.values()))]
    columns = [c for c in COLUMNS if f"error_{c}" in complete[min(complete)][0]["measures"]]
    chance = 1.0 - 1.0 / 10
    for i, layer in enumerate(layers):
        entry = dict(layer=layer)
        for column in columns:
            damage = [
                100
                * (rows[i]["measures"][f"error_{column}"] - rows[i]["measures"]["trained_error"])
                for rows in complete.values()
            ]
            estimate = mean_ci(damage)
            label = (
                "robust"
                if estimate.high < NEGLIGIBLE_POINTS
                else "critical"
                if estimate.low > NEGLIGIBLE_POINTS
                else "undecided"
            )
            entry[f"damage_{column}"] = dict(
                estimate.as_dict(), std=sample_std(damage), zbs_label=label
            )
            nll = [
                rows[i]["measures"][f"nll_{column}"] - rows[i]["measures"]["trained_nll"]
                for rows in complete.values()
            ]
            entry[f"nll_increase_{column}"] = mean_ci(nll).as_dict()
        for key in ("trace", "quadratic_kl", "reset_kl", "distance_l2"):
            entry[key] = mean_ci([rows[i]["measures"][key] for rows in complete.values()]).as_dict()
        layers_table.append(entry)
    trained_error = float(
        np.mean([rows[0]["measures"]["trained_error"] for rows in complete.values()])
    )
    ours = classify_layers(
        [
            float(np.mean([rows[i]["measures"]["error_0"] for rows in complete.values()]))
            for i in range(len(layers))
        ],
        trained_error,
        chance,
    )
    for entry, label in zip(layers_table, ours):
        entry["memspace_label"] = label
    # the verdicts
    stem = layers.index("stem")
    stem_damage = [
        100 * (rows[stem]["measures"]["error_0"] - rows[stem]["measures"]["trained_error"])
        for rows in complete.values()
    ]
    verdicts.append(
        decide_direction(PREDICTIONS["stem"], mean_ci(stem_damage), threshold=NEGLIGIBLE_POINTS)
    )
    for key, column in (("blocks-init", "0"), ("blocks-rnd", "rnd")):
        worst = [
            max(
                100 * (r["measures"][f"error_{column}"] - r["measures"]["trained_error"])
                for r in rows
                if _is_block(r["hparams"]["layer"])
            )
            for rows in complete.values()
        ]
        verdicts.append(
            decide_direction(
                PREDICTIONS[key], mean_ci(worst), threshold=NEGLIGIBLE_POINTS, predicted="below"
            )
        )
    rank_taus = {}
    for key, (x_key, y_of) in {
        "rank": ("trace", lambda m: m["nll_0"] - m["trained_nll"]),
        "rank (error)": ("trace", lambda m: m["error_0"] - m["trained_error"]),
        "quadratic": ("quadratic_kl", lambda m: m["reset_kl"]),
    }.items():
        taus = []
        for rows in complete.values():
            blocks = [r["measures"] for r in rows if _is_block(r["hparams"]["layer"])]
            x = [m[x_key] for m in blocks]
            y = [y_of(m) for m in blocks]
            if np.ptp(x) > 0 and np.ptp(y) > 0:
                taus.append(float(stats.kendalltau(x, y).statistic))
        rank_taus[key] = dict(mean_ci(taus).as_dict(), per_seed=taus) if taus else None
        if key in PREDICTIONS and taus:
            verdicts.append(decide_direction(PREDICTIONS[key], mean_ci(taus)))
    return dict(
        seeds=sorted(complete),
        layers=layers_table,
        columns=columns,
        trained_error=trained_error,
        chance_error=chance,
        within_block_tau=rank_taus,
        verdicts=[v.as_dict() for v in verdicts],
    )


def section(results: dict) -> str:
    """The RESULTS.md section, written from ``results`` alone."""
    cfg, a = results["config"], results["analysis"]
    machines = sorted({c["hparams"].get("machine", "?") for c in results["cells"]})
    size = 28 // cfg["pool"]
    lines = [
        "## E4 — layer re-initialisation on a residual CNN (pre-registered)",
        "",
        f"Generated by `experiments/e4_reinitialization.py publish` from "
        f"`experiments/e4/results.json` ({len(a['seeds'])} of {len(cfg['seeds'])} seeds "
        f"complete; machine: {'; '.join(machines)}). Fashion-MNIST, {cfg['train_size']} training "
        f"and {cfg['test_size']} test images average-pooled to {size} × {size}; ResidualCNN with "
        f"{cfg['channels']} channels and L = {cfg['depth']} blocks, {cfg['epochs']} epochs of "
        f"Adam (lr {cfg['lr']}, batch {cfg['batch_size']}). Damage Δ = test error after the reset "
        "− trained test error, in points; intervals are 95 % seed-bootstrap percentile intervals. "
        f"Zhang–Bengio–Singer's label: robust when Δ's interval lies below {NEGLIGIBLE_POINTS:g} "
        "point (negligible), critical when above, undecided otherwise; memspace's thresholds "
        "(robust Δ ≤ 1 point, critical within 10 points of chance, else intermediate) beside it.",
        "",
        *predictions_table(results["predictions"]),
    ]
    if len(a["seeds"]) < len(cfg["seeds"]):
        lines += [
            f"**Provisional — {len(a['seeds'])} of {len(cfg['seeds'])} seeds stored.**",
            "",
        ]
    lines += verdict_table(a["verdicts"]) if a["verdicts"] else ["No cell has been stored yet."]
    if a["layers"]:
        columns = a["columns"]
        lines += [
            "",
            f"### The heat map (trained test error {100 * a['trained_error']:.2f} %; chance "
            f"{100 * a['chance_error']:.0f} %)",
            "",
            "| layer | "
            + " | ".join(
                f"Δ reset to {'a fresh draw' if c == 'rnd' else f'τ = {c}'}" for c in columns
            )
            + " | label (ZBS) | label (memspace) | tr F_ℓℓ | ½ δᵀFδ | reset KL "
            "| ‖θ_T − θ_0‖/‖θ_0‖ |",
            "|" + "---|" * (len(columns) + 7),
        ]
        for e in a["layers"]:
            cells = [estimate_text(e[f"damage_{c}"], "{:+.2f}") for c in columns]
            lines.append(
                f"| {e['layer']} | "
                + " | ".join(cells)
                + f" | {e['damage_0']['zbs_label']} | {e['memspace_label']} "
                f"| {e['trace']['value']:.3g} | {e['quadratic_kl']['value']:.3g} "
                f"| {e['reset_kl']['value']:.3g} | {e['distance_l2']['value']:.3f} |"
            )
        taus = a["within_block_tau"]
        lines += ["", "Within-block Kendall τ (mean of per-seed τ over the L blocks):"]
        for key, t in taus.items():
            if t:
                lines.append(
                    f"- {key}: {estimate_text(t, '{:+.2f}')}; per seed "
                    + ", ".join(f"{v:+.2f}" for v in t["per_seed"])
                )
    return "\n".join(lines) + "\n"


def publish(store_path: Path, cfg: dict, out: Path) -> Path:
    return publish_cells(
        sys.modules[__name__],
        store_path,
        cfg,
        out,
        fields=("id", "seed", "hparams", "measures"),
        negligible_points=NEGLIGIBLE_POINTS,
    )


if __name__ == "__main__":
    main(sys.modules[__name__])
