"""E1 — least action where depth matters (THEORY v3 §4, claims (i) and (ii)), pre-registered.

Residual MLPs on Fashion-MNIST (12 000 training images, the full 10 000-image test set) at
L ∈ {8, 32}, trained plain (λ = 0) and with the predictive action or its excess under both
anchors over a dose range of λ, five seeds per arm, every arm of a seed from the same
initial weights and data order (paired). Controls: a depth-0 network (stem and read-out
only, i.e. a rank-limited linear model) per seed, and logistic regression.

The predictions below were written before the first cell ran (they are in the commit that
added this file, and copied into ``results.json`` with the commit each cell ran at). The
verdicts are computed from the stored cells by :mod:`memspace.evaluation`, never typed.

    python experiments/e1_least_action.py run        # train what is missing (resumable)
    python experiments/e1_least_action.py publish    # results.json and RESULTS.md from the cells
    python experiments/e1_least_action.py run --quick --store /tmp/e1.sqlite   # smoke run

Long: run it in the background (``nohup … > experiments/e1/run.log &``); every network is
committed to ``experiments/e1/cells.sqlite`` as its cell ends, and a cell killed midway
resumes from its population checkpoint (``experiments/e1/runs/``, not committed).
"""

from __future__ import annotations

import dataclasses
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
    classification_metrics,
    decide_direction,
    decide_noninferiority,
    holm,
    mean_ci,
    paired_comparison,
    sample_std,
)
from memspace.paths.predictive import label_prior  # noqa: E402
from memspace.population import Member, Population, train_population  # noqa: E402
from memspace.train import fit  # noqa: E402
from memspace.zoo import ZooStore  # noqa: E402

NAME = "e1_least_action"
FOLDER = HERE / "e1"
CONFIG = dict(
    data="fashion-mnist",
    train_size=12000,
    test_size=10000,
    probe_size=2000,
    width=64,
    depths=[8, 32],
    epochs=12,
    lr=2e-3,
    batch_size=128,
    seeds=[0, 1, 2, 3, 4],
    actions=["predictive", "predictive-excess"],
    anchors=["prior", "stem"],
    lambdas=[0.03, 0.1, 0.3],
)
QUICK = dict(
    CONFIG,
    train_size=600,
    test_size=300,
    probe_size=200,
    width=16,
    depths=[4],
    epochs=2,
    seeds=[0, 1],
    lambdas=[0.1],
)
MARGIN_POINTS = 0.5  # non-inferiority margin, in accuracy points
NEAR_LEAST_ACTION = 1.5  # (i): "near" = A/A_min below 1.5 (within 50 % of least action)
PRIMARY_LAMBDA = 0.1  # the dose (ii) is decided at
LOGISTIC_MAX_ITER = 2000  # lbfgs to convergence (300 stopped short on these 784 features)

PREDICTIONS = {
    "validity": Prediction(
        claim="depth matters here",
        statement="Plain residual MLPs beat logistic regression by more than 1 point of test "
        "accuracy, so the data can test what depth does.",
        test="plain − logistic regression, test accuracy in points, mean over seeds, "
        "seed-bootstrap 95 % interval, per depth",
        supported_if="the interval lies above 1 point",
        contradicted_if="the interval lies below 1 point",
    ),
    "i": Prediction(
        claim="(i) plain training ends near least action",
        statement="Under the prior anchor, plain training ends with A/A_min (test points) "
        f"below {NEAR_LEAST_ACTION}.",
        test="A/A_min of the plain nets, mean over seeds, seed-bootstrap 95 % interval, per depth",
        supported_if=f"the interval lies below {NEAR_LEAST_ACTION}",
        contradicted_if=f"the interval lies above {NEAR_LEAST_ACTION}",
    ),
    "ii": Prediction(
        claim="(ii) the regulariser does not hurt",
        statement=f"The predictive action and its excess (prior anchor, λ = {PRIMARY_LAMBDA}) "
        f"lower test accuracy by less than {MARGIN_POINTS} points against λ = 0.",
        test=f"paired by seed, one-sided t-test at margin {MARGIN_POINTS} points, "
        "Holm-adjusted over the (term, depth) comparisons, α = 0.05",
        supported_if="the adjusted p < 0.05",
        contradicted_if=f"the difference's interval lies below −{MARGIN_POINTS} points",
    ),
    "ii+": Prediction(
        claim="(ii) the regulariser helps",
        statement=f"The same arms raise test accuracy against λ = 0 (λ = {PRIMARY_LAMBDA}).",
        test="paired difference in points, seed-bootstrap interval at 1 − 0.05/4 "
        "(Bonferroni over the four comparisons)",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "idle-stem": Prediction(
        claim="the stem anchor rewards idle depth",
        statement="Trained with the stem-anchored predictive action (λ = 0.1), the stem's "
        "step carries a larger share of the prior-anchored path than in the plain net.",
        test="paired difference of the stem's share of E C (prior anchor, test points), "
        "seed-bootstrap 95 % interval",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "idle-prior": Prediction(
        claim="the prior anchor does not",
        statement="Trained with the prior-anchored predictive action (λ = 0.1), the stem's "
        "share is smaller than in the plain net: the blocks carry the prediction.",
        test="as above",
        supported_if="the interval lies below 0",
        contradicted_if="the interval lies above 0",
    ),
}


def arms(cfg: dict) -> list[dict]:
    """Every arm of a seed: plain, then each (action, anchor, λ)."""
    out = [dict(arm="plain", action=None, anchor="prior", lam=0.0)]
    for action in cfg["actions"]:
        for anchor in cfg["anchors"]:
            for lam in cfg["lambdas"]:
                out.append(
                    dict(arm=f"{action}@{anchor}", action=action, anchor=anchor, lam=float(lam))
                )
    return out


def model_id(depth: int, arm: dict, seed: int) -> str:
    lam = "" if arm["action"] is None else f"-{arm['lam']:g}"
    return f"L{depth}-{arm['arm']}{lam}-s{seed}"


def load(cfg: dict):
    """The training draw and the test set (:func:`training_draw`), inputs flattened."""
    (X, y), (Xt, yt), classes = training_draw(cfg)
    return (X.flatten(1), y), (Xt.flatten(1), yt), classes


def logits_of(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(X[i : i + 2048]) for i in range(0, len(X), 2048)])


def measure(model: nn.Module, train, test, cfg: dict, path_model: bool) -> dict[str, float]:
    """Accuracy, NLL and ECE on the test set; the path under both anchors on the probe."""
    model.eval()
    out = {
        f"test_{k}": v
        for k, v in classification_metrics(logits_of(model, test[0]), test[1]).items()
    }
    train_metrics = classification_metrics(logits_of(model, train[0]), train[1])
    out.update(train_acc=train_metrics["accuracy"], train_nll=train_metrics["nll"])
    out["gap"] = out["train_acc"] - out["test_accuracy"]
    if path_model:
        probe = (test[0][: cfg["probe_size"]], test[1][: cfg["probe_size"]])
        for anchor in ("prior", "stem"):
            path = predictive_path(model, probe, anchor=anchor)
            out.update(
                {
                    f"ratio_{anchor}": path.ratio,
                    f"unevenness_{anchor}": path.unevenness,
                    f"detour_factor_{anchor}": path.detour_factor,
                    f"action_{anchor}": path.action,
                    f"least_action_{anchor}": path.least_action,
                }
            )
            if anchor == "prior":
                out["stem_share"] = path.stem_share
                out["lens_accuracy_stem"] = float(path.lens_accuracy[0])
    return out


def row(id_: str, hparams: dict, seed: int, metrics: dict, epochs: int, seconds: float) -> dict:
    return dict(
        id=id_,
        hparams=hparams,
        seed=seed,
        train_acc=metrics["train_acc"],
        test_acc=metrics["test_accuracy"],
        train_ce=metrics["train_nll"],
        gap=metrics["gap"],
        epochs=epochs,
        converged=True,
        seconds=seconds,
        init_file="none",
        final_file="none",
    )


def train_cell(store, train, test, classes, depth, seed, cfg, runs: Path, progress: bool):
    """One (depth, seed): every arm as one population from the same initial weights."""
    cell_arms = arms(cfg)
    members = [
        Member(
            seed=seed,
            action=a["action"],
            lam=a["lam"],
            anchor=a["anchor"],
            lr=cfg["lr"],
            epochs=cfg["epochs"],
        )
        for a in cell_arms
    ]
    factory = lambda: ResidualMLP(train[0].shape[1], cfg["width"], depth, classes)  # noqa: E731
    population = Population.from_seeds(factory, [seed] * len(members))
    start = time.perf_counter()
    trained = train_population(
        population,
        train,
        members,
        batch_size=cfg["batch_size"],
        checkpoint_dir=runs / f"L{depth}-s{seed}",
        member_names=[model_id(depth, a, seed) for a in cell_arms],
        progress=progress,
        probe_size=256,
    )
    seconds = (time.perf_counter() - start) / len(members)
    provenance = dict(machine=machine(), commit=commit())  # once per cell, not per network
    for k, a in enumerate(cell_arms):
        metrics = measure(trained.member(k).model, train, test, cfg, path_model=True)
        hparams = dict(a, depth=depth, kind="residual", **provenance)
        store.add(
            row(model_id(depth, a, seed), hparams, seed, metrics, cfg["epochs"], seconds), metrics
        )


def train_controls(store, train, test, classes, cfg, done: set[str], depth0=None):
    """The controls: a depth-0 network per seed, and logistic regression.

    The depth-0 network (``depth0()``; by default a linear stem and read-out of E1's width) is
    trained as the others are; logistic regression is scikit-learn's (L2, C = 1) on the inputs
    flattened.
    """
    for seed in cfg["seeds"]:
        id_ = f"L0-linear-s{seed}"
        if id_ in done:
            continue
        torch.manual_seed(seed)
        model = (
            depth0()
            if depth0 is not None
            else nn.Sequential(
                nn.Linear(train[0].shape[1], cfg["width"]), nn.Linear(cfg["width"], classes)
            )
        )
        start = time.perf_counter()
        fit(
            model,
            train,
            epochs=cfg["epochs"],
            lr=cfg["lr"],
            batch_size=cfg["batch_size"],
            seed=seed,
            progress=False,
        )
        metrics = measure(model, train, test, cfg, path_model=False)
        hparams = dict(arm="depth-0", depth=0, machine=machine(), commit=commit(), kind="control")
        store.add(
            row(id_, hparams, seed, metrics, cfg["epochs"], time.perf_counter() - start), metrics
        )
    stored = {m["id"]: m for m in store.models()}.get("logistic")
    if stored is None or stored["hparams"].get("max_iter") != LOGISTIC_MAX_ITER:
        from sklearn.linear_model import LogisticRegression

        start = time.perf_counter()
        flat, flat_test = train[0].flatten(1).numpy(), test[0].flatten(1).numpy()
        clf = LogisticRegression(C=1.0, max_iter=LOGISTIC_MAX_ITER)
        clf.fit(flat, train[1].numpy())
        logits = torch.from_numpy(clf.decision_function(flat_test))
        metrics = {f"test_{k}": v for k, v in classification_metrics(logits, test[1]).items()}
        train_logits = torch.from_numpy(clf.decision_function(flat))
        tm = classification_metrics(train_logits, train[1])
        metrics.update(train_acc=tm["accuracy"], train_nll=tm["nll"])
        metrics["gap"] = metrics["train_acc"] - metrics["test_accuracy"]
        iterations = int(np.max(clf.n_iter_))
        hparams = dict(
            arm="logistic",
            depth=0,
            machine=machine(),
            commit=commit(),
            kind="control",
            max_iter=LOGISTIC_MAX_ITER,
            iterations=iterations,
        )
        entry = row("logistic", hparams, 0, metrics, 0, time.perf_counter() - start)
        entry["converged"] = iterations < LOGISTIC_MAX_ITER
        store.add(entry, metrics)


def run(cfg: dict, store_path: Path, progress: bool) -> None:
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = ZooStore(store_path)
    try:
        train, test, classes = load(cfg)
        prior = label_prior(train[1], classes)
        print(
            f"E1: {len(train[0])} training images (label marginal max {float(prior.max()):.3f}), "
            f"{len(test[0])} test images; {machine()}",
            flush=True,
        )
        train_controls(store, train, test, classes, cfg, store.model_ids())
        for depth in cfg["depths"]:
            for seed in cfg["seeds"]:
                wanted = {model_id(depth, a, seed) for a in arms(cfg)}
                if wanted <= store.model_ids():
                    continue
                print(f"E1: training L = {depth}, seed {seed} ({len(wanted)} networks)", flush=True)
                start = time.perf_counter()
                train_cell(
                    store,
                    train,
                    test,
                    classes,
                    depth,
                    seed,
                    cfg,
                    store_path.parent / "runs",
                    progress,
                )
                print(
                    f"E1: L = {depth}, seed {seed} done in {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    finally:
        store.close()
    checkpoint_wal(store_path)


# ---------------------------------------------------------------------------- analysis


def _by_seed(cells, depth, arm, lam=None) -> dict[int, dict]:
    out = {}
    for c in cells:
        h = c["hparams"]
        if h.get("depth") == depth and h.get("arm") == arm and (lam is None or h.get("lam") == lam):
            out[c["seed"]] = c["measures"]
    return out


def _paired(a: dict[int, dict], b: dict[int, dict], key: str, scale: float = 1.0, **options):
    seeds = sorted(set(a) & set(b))
    x = [scale * a[s][key] for s in seeds]
    y = [scale * b[s][key] for s in seeds]
    return (
        seeds,
        x,
        y,
        paired_comparison(x, y, margin=MARGIN_POINTS if scale == 100 else None, **options),
    )


SUMMARY_KEYS = (
    "test_accuracy",
    "test_nll",
    "test_ece",
    "gap",
    "ratio_prior",
    "unevenness_prior",
    "detour_factor_prior",
    "stem_share",
    "lens_accuracy_stem",
    "ratio_stem",
)


def analyse(cells: list[dict], cfg: dict, predictions: dict | None = None) -> dict:
    """Every statistic and verdict, from the stored cells alone.

    ``predictions`` replaces :data:`PREDICTIONS` (the residual-CNN arm states its own).
    """
    PREDICTIONS = predictions or globals()["PREDICTIONS"]  # noqa: N806
    depths = sorted(
        {c["hparams"]["depth"] for c in cells if c["hparams"].get("kind") == "residual"}
    )
    summaries, comparisons, slopes, verdicts = [], [], [], []
    logistic = next((c["measures"] for c in cells if c["id"] == "logistic"), None)
    depth0 = _by_seed(cells, 0, "depth-0")
    for depth in depths:
        plain = _by_seed(cells, depth, "plain")
        arm_keys = sorted(
            {
                (c["hparams"]["arm"], c["hparams"]["lam"])
                for c in cells
                if c["hparams"].get("depth") == depth
            }
        )
        for arm, lam in arm_keys:
            group = _by_seed(cells, depth, arm, lam)
            entry = dict(depth=depth, arm=arm, lam=lam, seeds=sorted(group))
            for key in SUMMARY_KEYS:
                values = [m[key] for m in group.values() if key in m and m[key] == m[key]]
                if values:
                    entry[key] = dict(
                        mean_ci(values).as_dict(), std=sample_std(values), n=len(values)
                    )
            summaries.append(entry)
            if arm == "plain":
                continue
            for key, scale in (
                ("test_accuracy", 100),
                ("test_nll", 1),
                ("test_ece", 1),
                ("stem_share", 1),
            ):
                seeds, _, _, comp = _paired(group, plain, key, scale)
                comparisons.append(
                    dict(depth=depth, arm=arm, lam=lam, measure=key, seeds=seeds, **comp.as_dict())
                )
        # dose-response: per seed, the slope of Δ accuracy (points) against log10 λ
        for arm in sorted({a for a, lam in arm_keys if a != "plain"}):
            lams = sorted(lam for a, lam in arm_keys if a == arm)
            if len(lams) < 2:
                continue
            per_seed = []
            for seed in sorted(plain):
                ys = [
                    100
                    * (
                        _by_seed(cells, depth, arm, lam).get(seed, {}).get("test_accuracy", np.nan)
                        - plain[seed]["test_accuracy"]
                    )
                    for lam in lams
                ]
                if np.isfinite(ys).all():
                    per_seed.append(float(np.polyfit(np.log10(lams), ys, 1)[0]))
            if per_seed:
                slopes.append(
                    dict(depth=depth, arm=arm, lambdas=lams, **mean_ci(per_seed).as_dict())
                )
        # the verdicts of this depth
        if logistic is not None and plain:
            diff = [100 * (m["test_accuracy"] - logistic["test_accuracy"]) for m in plain.values()]
            verdicts.append(
                dataclasses.replace(
                    decide_direction(PREDICTIONS["validity"], mean_ci(diff), threshold=1.0),
                    claim=f"depth matters here, L = {depth}",
                )
            )
        ratios = [m["ratio_prior"] for m in plain.values() if "ratio_prior" in m]
        if ratios:
            verdicts.append(
                dataclasses.replace(
                    decide_direction(
                        PREDICTIONS["i"],
                        mean_ci(ratios),
                        threshold=NEAR_LEAST_ACTION,
                        predicted="below",
                    ),
                    claim=f"(i) near least action, L = {depth}",
                )
            )
        for key, arm, predicted in (
            ("idle-stem", "predictive@stem", "above"),
            ("idle-prior", "predictive@prior", "below"),
        ):
            group = _by_seed(cells, depth, arm, PRIMARY_LAMBDA)
            if group and plain:
                _, _, _, comp = _paired(group, plain, "stem_share")
                verdicts.append(
                    dataclasses.replace(
                        decide_direction(PREDICTIONS[key], comp.difference, predicted=predicted),
                        claim=f"{PREDICTIONS[key].claim}, L = {depth}",
                    )
                )
    # (ii): non-inferiority, Holm over the (term, depth) family; superiority at 1 − 0.05/m
    family = []
    for depth in depths:
        plain = _by_seed(cells, depth, "plain")
        for action in cfg["actions"]:
            group = _by_seed(cells, depth, f"{action}@prior", PRIMARY_LAMBDA)
            if group and plain:
                family.append((depth, action, group, plain))
    compared = [_paired(g, p, "test_accuracy", 100)[3] for _, _, g, p in family]
    adjusted = holm([comp.noninferiority_p for comp in compared])
    for (depth, action, group, plain), comp, p_adj in zip(family, compared, adjusted):
        held = dataclasses.replace(comp, noninferiority_p=float(p_adj))
        verdicts.append(
            dataclasses.replace(
                decide_noninferiority(PREDICTIONS["ii"], held),
                claim=f"(ii) does not hurt: {action}@prior, L = {depth}",
            )
        )
        strict = _paired(group, plain, "test_accuracy", 100, level=1 - 0.05 / len(family))[3]
        verdicts.append(
            dataclasses.replace(
                decide_direction(PREDICTIONS["ii+"], strict.difference),
                claim=f"(ii) helps: {action}@prior, L = {depth}",
            )
        )
    logistic_cell = next((c for c in cells if c["id"] == "logistic"), None)
    controls = {
        "logistic": logistic,
        "logistic_fit": None
        if logistic_cell is None
        else dict(
            converged=logistic_cell["converged"],
            iterations=logistic_cell["hparams"].get("iterations"),
            max_iter=logistic_cell["hparams"].get("max_iter"),
        ),
        "depth-0": {
            k: dict(mean_ci([m[k] for m in depth0.values()]).as_dict(), n=len(depth0))
            for k in ("test_accuracy", "test_nll", "test_ece", "gap")
        }
        if len(depth0)
        else None,
    }
    return dict(
        summaries=summaries,
        comparisons=comparisons,
        slopes=slopes,
        controls=controls,
        verdicts=[v.as_dict() for v in verdicts],
    )


def section(results: dict) -> str:
    """The RESULTS.md section, written from ``results`` alone."""
    cfg = results["config"]
    seconds = sum(c["seconds"] for c in results["cells"])
    machines = sorted({c["hparams"].get("machine", "?") for c in results["cells"]})
    header = [
        "## E1 — least action where depth matters (pre-registered)",
        "",
        f"Generated by `experiments/e1_least_action.py publish` from `experiments/e1/results.json` "
        f"({len(results['cells'])} networks, {seconds / 60:.0f} min of training and measuring per "
        f"network summed; machine: {'; '.join(machines)}). Fashion-MNIST, {cfg['train_size']} "
        f"training and {cfg['test_size']} test images; residual MLPs of width {cfg['width']}, "
        f"{cfg['epochs']} epochs of Adam (lr {cfg['lr']}, batch {cfg['batch_size']}); seeds "
        f"{cfg['seeds']}, every arm of a seed from the same initial weights and data order. "
        f"Paths on the first {cfg['probe_size']} test images. Intervals are 95 % seed-bootstrap "
        "percentile intervals; ± is the sample standard deviation (ddof = 1).",
        "",
    ]
    return section_body(results, header)


def section_body(results: dict, header: list[str]) -> str:
    """``header``, then the predictions, verdicts, arms, dose–response and controls."""
    cfg, a = results["config"], results["analysis"]
    lines = [*header, *predictions_table(results["predictions"])]
    stored = {
        depth: sorted(
            {
                s
                for e in a["summaries"]
                if e["depth"] == depth and e["arm"] == "plain"
                for s in e["seeds"]
            }
        )
        for depth in cfg["depths"]
    }
    missing = [
        f"L = {d}: {len(seeds)} of {len(cfg['seeds'])} seeds"
        for d, seeds in stored.items()
        if len(seeds) < len(cfg["seeds"])
    ]
    if missing:
        lines += [
            "**Provisional — the run is not complete** ("
            + "; ".join(missing)
            + "). Every verdict below is recomputed from the cells when the run resumes; "
            "with fewer seeds than pre-registered, none is final.",
            "",
        ]
    lines += verdict_table(a["verdicts"]) if a["verdicts"] else ["No cell has been stored yet."]
    lines += ["", "### Arms", ""]
    header = (
        "| L | arm | λ | n | test acc | NLL | ECE | gap | A/A_min (prior) | uneven × detour | "
        "stem's share | lens acc at stem | A/A_min (stem) |"
    )
    lines += [header, "|" + "---|" * 13]
    for s in a["summaries"]:

        def cell(key, fmt="{:.3f}"):
            return estimate_text(s[key], fmt) if key in s else "—"

        fac = (
            f"{s['unevenness_prior']['value']:.2f} × {s['detour_factor_prior']['value']:.2f}"
            if "unevenness_prior" in s
            else "—"
        )
        values = [
            str(s["depth"]),
            s["arm"],
            f"{s['lam']:g}",
            str(len(s["seeds"])),
            cell("test_accuracy"),
            cell("test_nll"),
            cell("test_ece"),
            cell("gap"),
            cell("ratio_prior", "{:.2f}"),
            fac,
            cell("stem_share", "{:.2f}"),
            cell("lens_accuracy_stem"),
            cell("ratio_stem", "{:.2f}"),
        ]
        lines.append("| " + " | ".join(values) + " |")
    if a["slopes"]:
        lines += [
            "",
            "### Dose–response (Δ test accuracy in points per decade of λ, paired by seed)",
            "",
            "| L | arm | λ | slope |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {s['depth']} | {s['arm']} | {s['lambdas']} | {estimate_text(s, '{:+.2f}')} |"
            for s in a["slopes"]
        ]
    c = a["controls"]
    if c.get("logistic"):
        lines += [
            "",
            f"Controls: logistic regression test accuracy {c['logistic']['test_accuracy']:.3f} "
            f"(NLL {c['logistic']['test_nll']:.3f}; L-BFGS "
            + (
                "converged"
                if (c.get("logistic_fit") or {}).get("converged")
                else "stopped at its iteration limit: a lower bound"
            )
            + f", {(c.get('logistic_fit') or {}).get('iterations')} iterations); depth-0 network "
            + (estimate_text(c["depth-0"]["test_accuracy"]) if c.get("depth-0") else "—")
            + ".",
        ]
    return "\n".join(lines) + "\n"


def publish(store_path: Path, cfg: dict, out: Path, module=None) -> Path:
    """results.json from the cells; ``module`` (default this one) names and analyses them."""
    return publish_cells(
        module or sys.modules[__name__],
        store_path,
        cfg,
        out,
        fields=("converged", "id", "seed", "hparams", "seconds", "measures"),
        margin_points=MARGIN_POINTS,
    )


if __name__ == "__main__":
    main(sys.modules[__name__])
