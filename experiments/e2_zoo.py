"""E2 — a fair, powered zoo (THEORY v3 §4 claim (iii) and §5 claim (v)), pre-registered.

Does a complexity measure rank the generalization gap across a zoo of networks? The digits zoo
(v2) could not say: one seed per configuration, 539 test points, the label-noise models dropped
and the dataset-size adjustment given to the literature's measures only. Here, on Fashion-MNIST:

- 2⁶ = 64 configurations of memspace's residual MLP (width 16/32, L = 4/8, weight decay 0 or
  5·10⁻⁴, λ = 0 or 0.1 on the prior-anchored predictive action, 0 or 20 % of the training labels
  replaced by random ones, 1 000 or 2 000 training images), each with 3 seeds (seed s draws the
  training subset, the noisy labels, the initial weights and the batch order): 192 networks;
- every network is trained with Adam (lr 3·10⁻³, batch 64) until its training accuracy on the
  labels it was given reaches 99 % or 60 epochs pass; *every* network is kept and ranked (the
  stopping rule is recorded per network, and the ranking over the converged ones alone is
  shown beside it);
- the gap is train accuracy − test accuracy on the full 10 000-image test set;
- every measure is size-adjusted alike (primary: the reference's rule for all, ``LOG_*`` ↦
  ½(value − log m), others ↦ √(value/m)) or not at all (secondary); the reference's own
  convention (the literature adjusted, memspace raw) is shown to say what it did;
- signed τ, Ψ, Ψ without the train-size axis, ψ per hyperparameter, PGDL's conditional mutual
  information (count-weighted: three seeds make the grid non-unique) and Dziugaite et al.'s
  robust sign error (n = 10 000, ESS ≥ 12), with 95 % bootstrap intervals: Ψ's resample its
  granulation groups (each group with all its models and seeds), the others resample
  configurations (each with its three seeds); a permutation null for the best of all measures.

The predictions below were written before the first cell ran (they are in the commit that added
this file); the verdicts are computed from the stored cells by :mod:`memspace.evaluation`.

    python experiments/e2_zoo.py run        # train and measure what is missing (resumable)
    python experiments/e2_zoo.py publish    # results.json and RESULTS.md from the cells
    python experiments/e2_zoo.py run --quick --store /tmp/e2/cells.sqlite   # smoke run
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

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
    verdict_table,
)

from memspace.evaluation import (  # noqa: E402
    Estimate,
    Prediction,
    Verdict,
    best_of_permutation,
    clustered_bootstrap,
    decide_direction,
)
from memspace.zoo import ZooStore, expand, load_grid  # noqa: E402
from memspace.zoo.ranking import (  # noqa: E402
    granulated_kendall,
    granulated_taus,
    kendall_tau,
    pgdl_cmi,
    robust_sign_error,
)
from memspace.zoo.runner import (  # noqa: E402
    DIAGNOSTICS,
    adjusted_measures,
    architecture_groups,
    psi_without,
    train_group_and_measure,
)

NAME = "e2_zoo"
FOLDER = HERE / "e2"
CONFIG = dict(
    grid=dict(
        data="fashion-mnist",
        stop=dict(target_acc=0.99, max_epochs=60),
        seeds=[0, 1, 2],
        grid=dict(
            width=[16, 32],
            depth=[4, 8],
            lr=[3e-3],
            batch_size=[64],
            weight_decay=[0.0, 5e-4],
            lam=[0.0, 0.1],
            label_noise=[0.0, 0.2],
            train_size=[1000, 2000],
        ),
    ),
    n_test=10000,
    min_ess=12.0,
    resamples=1000,
    slow_resamples=200,
    permutations=999,
    primary="all",
    level=0.95,
)
QUICK = dict(
    CONFIG,
    grid=dict(
        data="digits",
        stop=dict(target_acc=0.99, max_epochs=4),
        seeds=[0, 1],
        grid=dict(
            width=[8],
            depth=[2],
            lr=[1e-2],
            batch_size=[64],
            lam=[0.0, 0.1],
            label_noise=[0.0, 0.2],
            train_size=[300, 600],
        ),
    ),
    n_test=539,
    min_ess=1.0,
    resamples=50,
    slow_resamples=10,
    permutations=49,
)
ADJUSTMENTS = ("all", "none", "reference")
CLAIMED = {
    "action": "predictive_action",
    "ratio": "action_ratio",
    "sensitivity": "fisher_trace",
    "control": "PACBAYES_MAG_FLATNESS",
}
FAMILY_LEVEL = 1 - 0.05 / len(CLAIMED)  # Bonferroni over the four direction claims
PREDICTIONS = {
    "action": Prediction(
        claim="(iii) the predictive action ranks the gap",
        statement="Across the zoo, networks with a larger predictive action A (prior anchor, "
        "size-adjusted as every measure) have a larger generalization gap: Ψ > 0.",
        test="signed Ψ (Jiang et al.) over all 192 networks, bootstrap over granulation groups, "
        f"interval at {FAMILY_LEVEL:.4g} (Bonferroni over 4 claims)",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "ratio": Prediction(
        claim="(iii) A/A_min ranks the gap",
        statement="Networks further from least action (a larger A/A_min, prior anchor) have a "
        "larger gap: Ψ > 0.",
        test="as above, for action_ratio",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "sensitivity": Prediction(
        claim="(v) Fisher sensitivity ranks the gap",
        statement="Networks whose predictions are more sensitive to weight noise (a larger "
        "tr F = 2 E KL / σ² at small σ) have a larger gap: Ψ > 0.",
        test="as above, for fisher_trace",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "control": Prediction(
        claim="positive control: magnitude-aware PAC-Bayes flatness ranks the gap",
        statement="The literature's best family (Jiang et al.; Dziugaite et al.) works here: "
        "PACBAYES_MAG_FLATNESS has Ψ > 0. If it fails, this zoo cannot rank any measure.",
        test="as above, for PACBAYES_MAG_FLATNESS",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "best": Prediction(
        claim="the best measure beats chance",
        statement="The measure with the largest signed Ψ ranks the gap better than the best of "
        "as many measures would on a shuffled gap.",
        test="permutation null of the best signed Ψ (gap permuted over the networks, every "
        "measure recomputed), p = (1 + #{null ≥ best}) / (1 + permutations)",
        supported_if="p < 0.05",
        contradicted_if="never (a permutation test cannot show that no measure ranks the gap)",
    ),
}


def run_folder(store_path: Path) -> Path:
    """Where the networks' weights go: git-ignored beside the cells (only the cells are kept)."""
    if store_path == FOLDER / "cells.sqlite":
        return HERE.parent / ".cache" / "experiments" / "e2-weights"
    return store_path.parent / "weights"


def run(cfg: dict, store_path: Path, progress: bool) -> None:
    """Train and measure every network the store lacks, a population per architecture group.

    Each group (up to 16 networks of one width and depth) is stored when it finishes, one
    transaction per network; a killed run loses at most the group in progress.
    """
    grid = load_grid(cfg["grid"])
    store_path.parent.mkdir(parents=True, exist_ok=True)
    weights = run_folder(store_path)
    weights.mkdir(parents=True, exist_ok=True)
    store = ZooStore(store_path)
    try:
        models = expand(grid)
        done = store.model_ids()
        pending = [m for m in models if m["id"] not in done]
        print(
            f"E2: {len(models)} networks, {len(done)} stored, {len(pending)} to train; "
            f"{machine()}; commit {commit()}",
            flush=True,
        )
        for group in architecture_groups(pending, workers=1):
            start = time.perf_counter()
            for row, values in train_group_and_measure(
                group, grid["data"], grid["stop"], str(weights)
            ):
                row["hparams"] = dict(row["hparams"], machine=machine())
                store.add(row, values)
            hp = group[0]["hparams"]
            print(
                f"E2: {len(group)} networks of width {hp['width']}, L = {hp['depth']} stored "
                f"({time.perf_counter() - start:.0f} s; {len(store.model_ids())} of "
                f"{len(models)})",
                flush=True,
            )
    finally:
        store.close()
    checkpoint_wal(store_path)


# ---------------------------------------------------------------------------- analysis


def _varied(rows: list[dict], grid: dict) -> list[str]:
    return [n for n in grid["grid"] if len({json.dumps(r["hparams"][n]) for r in rows}) > 1]


def _matrix(rows: list[dict], adjustment: str) -> dict[str, np.ndarray]:
    """{measure: values over the rows} for the measures finite on every row."""
    values = [
        adjusted_measures(r["measures"], r["hparams"]["train_size"], adjustment) for r in rows
    ]
    names = sorted(set().union(*(v.keys() for v in values)) - DIAGNOSTICS - {"machine"})
    out = {}
    for name in names:
        column = np.array([v.get(name, math.nan) for v in values], dtype=float)
        if np.isfinite(column).all() and np.ptp(column) > 0:
            out[name] = column
    return out


class _Zoo:
    """The rows of one analysis: gaps, hyperparameters, configuration clusters."""

    def __init__(self, rows: list[dict], varied: list[str], n_test: int, min_ess: float):
        self.gap = np.array([r["gap"] for r in rows], dtype=float)
        self.hparams = {n: [r["hparams"][n] for r in rows] for n in varied}
        self.configs = [json.dumps([r["hparams"][n] for n in varied]) for r in rows]
        self.seeds = [r["seed"] for r in rows]
        self.n_test, self.min_ess = n_test, min_ess

    def hp(self, idx: np.ndarray) -> dict[str, list]:
        return {n: [v[i] for i in idx] for n, v in self.hparams.items()}

    def psi(self, mu: np.ndarray, idx: np.ndarray, gap: np.ndarray | None = None):
        gap = self.gap if gap is None else gap
        return granulated_kendall(mu[idx], gap[idx], self.hp(idx))

    def cmi(self, mu: np.ndarray, idx: np.ndarray) -> float:
        if len(set(self.configs[i] for i in idx)) < 2:
            return math.nan
        return pgdl_cmi(mu[idx], self.gap[idx], self.hp(idx), faithful=False)[0]

    def sign_error(self, mu: np.ndarray, idx: np.ndarray) -> dict:
        robust = robust_sign_error(
            mu[idx],
            self.gap[idx],
            self.hp(idx),
            seeds=[self.seeds[i] for i in idx],
            n_test=self.n_test,
            min_ess=self.min_ess,
        )
        return dict(robust.summary["all"], environments=len(robust.environments))


def _interval(zoo: _Zoo, statistic, resamples: int, level: float, seed: int) -> dict:
    return clustered_bootstrap(
        statistic, len(zoo.gap), zoo.configs, resamples=resamples, level=level, seed=seed
    ).as_dict()


def psi_interval(
    groups: dict[str, np.ndarray],
    resamples: int,
    level: float,
    seed: int,
    without: str | None = None,
) -> dict:
    """Ψ with a percentile bootstrap over its granulation groups.

    ``groups``: :func:`~memspace.zoo.ranking.granulated_taus`. Each draw resamples every
    hyperparameter's groups with replacement (a group keeps all its models and seeds, so no
    model enters a group twice), ψ_i* is the mean τ of the drawn groups and Ψ* the mean of the
    ψ_i* (leaving out ``without``). The point value is Ψ exactly.
    """
    used = {k: t for k, t in groups.items() if k != without and len(t)}
    if not used:
        return Estimate(math.nan, math.nan, math.nan, level, 0, 0, "no group").as_dict()
    value = float(np.mean([t.mean() for t in used.values()]))
    rng = np.random.default_rng(seed)
    draws = np.mean(
        [t[rng.integers(0, len(t), (resamples, len(t)))].mean(axis=1) for t in used.values()],
        axis=0,
    )
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    count = sum(len(t) for t in used.values())
    return Estimate(
        value,
        float(low),
        float(high),
        level,
        count,
        count,
        "percentile bootstrap over granulation groups",
    ).as_dict()


def _measure_table(zoo: _Zoo, matrix: dict[str, np.ndarray], cfg: dict, slow: set[str]) -> dict:
    """Every measure's statistics, with bootstrap intervals.

    τ and Ψ get intervals for every measure; CMI and the sign error only for the measures in
    ``slow`` (the claimed ones and the leaders: each resample runs the full scorer).
    """
    table = {}
    everything = np.arange(len(zoo.gap))
    for k, (name, mu) in enumerate(matrix.items()):
        psi, by, _ = zoo.psi(mu, everything)
        entry = dict(
            tau=kendall_tau(mu, zoo.gap),
            psi=psi,
            psi_by_hparam=by,
            psi_without_train_size=psi_without(by, "train_size"),
            cmi=zoo.cmi(mu, everything),
            sign_error=zoo.sign_error(mu, everything),
        )
        seed = 1000 + k

        def tau_of(idx, mu=mu):
            return kendall_tau(mu[idx], zoo.gap[idx])

        entry["tau_ci"] = _interval(zoo, tau_of, cfg["resamples"], cfg["level"], seed)
        groups = granulated_taus(mu, zoo.gap, zoo.hparams)
        entry["psi_ci"] = psi_interval(groups, cfg["resamples"], cfg["level"], seed)
        entry["psi_wo_ci"] = psi_interval(
            groups, cfg["resamples"], cfg["level"], seed, without="train_size"
        )
        entry["psi_family_ci"] = (
            psi_interval(groups, cfg["resamples"], FAMILY_LEVEL, seed)
            if name in CLAIMED.values()
            else None
        )
        if name in slow:

            def cmi_of(idx, mu=mu):
                return zoo.cmi(mu, idx)

            def sign_of(idx, mu=mu):
                return zoo.sign_error(mu, idx)["mean"]

            entry["cmi_ci"] = _interval(zoo, cmi_of, cfg["slow_resamples"], cfg["level"], seed)
            entry["sign_error_ci"] = _interval(
                zoo, sign_of, cfg["slow_resamples"], cfg["level"], seed
            )
        table[name] = entry
    return table


def _leaders(zoo: _Zoo, matrix: dict[str, np.ndarray], count: int = 3) -> list[str]:
    everything = np.arange(len(zoo.gap))
    psi = {name: zoo.psi(mu, everything)[0] for name, mu in matrix.items()}
    return sorted(psi, key=lambda n: -psi[n] if not math.isnan(psi[n]) else math.inf)[:count]


def analyse(cells: list[dict], cfg: dict) -> dict:
    """Every statistic and verdict, from the stored cells alone."""
    grid = load_grid(cfg["grid"])
    expected = {m["id"] for m in expand(grid)}
    rows = sorted((c for c in cells if c["id"] in expected), key=lambda c: c["id"])
    out: dict = dict(networks=len(rows), expected=len(expected), verdicts=[])
    if len(rows) < 3:
        return out
    varied = _varied(rows, grid)
    zoo = _Zoo(rows, varied, cfg["n_test"], cfg["min_ess"])
    out["varied"] = varied
    out["training"] = _training_summary(rows)
    tables = {}
    for adjustment in ADJUSTMENTS:
        matrix = _matrix(rows, adjustment)
        if adjustment == "reference":  # shown for what it did: point values only
            everything = np.arange(len(rows))
            tables[adjustment] = {
                name: dict(
                    tau=kendall_tau(mu, zoo.gap),
                    psi=zoo.psi(mu, everything)[0],
                    psi_by_hparam=zoo.psi(mu, everything)[1],
                )
                for name, mu in matrix.items()
            }
            continue
        slow = set(CLAIMED.values()) | set(_leaders(zoo, matrix))
        tables[adjustment] = _measure_table(zoo, matrix, cfg, slow)
    out["measures"] = tables
    primary = _matrix(rows, cfg["primary"])
    names = list(primary)
    everything = np.arange(len(rows))
    best, best_psi, p = best_of_permutation(
        np.stack([primary[n] for n in names]),
        zoo.gap,
        statistic=lambda mu, gap: zoo.psi(mu, everything, gap)[0],
        permutations=cfg["permutations"],
        seed=0,
    )
    out["best"] = dict(measure=names[best], psi=best_psi, p=p, measures=len(names))
    converged = [r for r in rows if r["converged"]]
    out["converged_only"] = _converged_only(converged, grid, cfg)
    out["verdicts"] = [v.as_dict() for v in _verdicts(tables[cfg["primary"]], out["best"])]
    return out


def _training_summary(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["hparams"]["label_noise"], r["hparams"]["lam"]), []).append(r)
    return [
        dict(
            label_noise=noise,
            lam=lam,
            networks=len(g),
            converged=sum(r["converged"] for r in g),
            epochs=float(np.mean([r["epochs"] for r in g])),
            train_acc=float(np.mean([r["train_acc"] for r in g])),
            test_acc=float(np.mean([r["test_acc"] for r in g])),
            gap=float(np.mean([r["gap"] for r in g])),
        )
        for (noise, lam), g in sorted(groups.items())
    ]


def _converged_only(rows: list[dict], grid: dict, cfg: dict) -> dict:
    """Ψ of the claimed measures over the networks that met the stopping rule (as Fantastic)."""
    if len(rows) < 3:
        return dict(networks=len(rows))
    zoo = _Zoo(rows, _varied(rows, grid), cfg["n_test"], cfg["min_ess"])
    matrix = _matrix(rows, cfg["primary"])
    everything = np.arange(len(rows))
    return dict(
        networks=len(rows),
        psi={n: zoo.psi(matrix[n], everything)[0] for n in CLAIMED.values() if n in matrix},
    )


def _verdicts(table: dict, best: dict) -> list[Verdict]:
    verdicts = []
    for key, name in CLAIMED.items():
        entry = table.get(name)
        if entry is None:
            continue
        verdicts.append(decide_direction(PREDICTIONS[key], Estimate(**entry["psi_family_ci"])))
    p = best["p"]
    verdicts.append(
        Verdict(
            PREDICTIONS["best"].claim,
            "supported" if p < 0.05 else "not established",
            PREDICTIONS["best"].test,
            best["measures"],
            best["psi"],
            math.nan,
            math.nan,
            p,
            f"best: {best['measure']} of {best['measures']} measures",
        )
    )
    return verdicts


# ---------------------------------------------------------------------------- the section


def _fmt(value, spec="{:+.3f}") -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and value != value)
        else spec.format(value)
    )


def _ci(entry: dict | None, spec: str = "{:+.2f}") -> str:
    return "—" if not entry else estimate_text(entry, spec)


def _ci_or(entry: dict | None, value: float, spec: str) -> str:
    """The interval where one was computed, else the point value."""
    return estimate_text(entry, spec) if entry else _fmt(value, spec)


def section(results: dict) -> str:
    """The RESULTS.md section, written from ``results`` alone."""
    cfg, a = results["config"], results["analysis"]
    grid = cfg["grid"]
    machines = sorted({c["hparams"].get("machine", "?") for c in results["cells"]})
    seconds = sum(c.get("seconds") or 0.0 for c in results["cells"])
    lines = [
        "## E2 — a fair, powered zoo (pre-registered)",
        "",
        f"Generated by `experiments/e2_zoo.py publish` from `experiments/e2/results.json` "
        f"({a['networks']} of {a['expected']} networks stored; {seconds / 60:.0f} min of "
        f"training and measuring summed; machine: {'; '.join(machines)}). {grid['data']}: "
        + ", ".join(f"{k} {v}" for k, v in grid["grid"].items())
        + f"; seeds {grid['seeds']}; stop at train accuracy {grid['stop']['target_acc']} or "
        f"{grid['stop']['max_epochs']} epochs, every network kept. Gap = train − test accuracy "
        f"on {cfg['n_test']} test images. Intervals: {round(100 * cfg['level'])} % percentile "
        "bootstrap, over granulation groups for Ψ (a group keeps all its models and seeds), over "
        "configurations (each with its seeds) for τ, CMI and the sign error.",
        "",
        *predictions_table(results["predictions"]),
    ]
    if a["networks"] < a["expected"]:
        lines += [
            f"**Running — {a['networks']} of {a['expected']} networks stored.** The verdicts are "
            "read when every cell is in (results.json holds the interim analysis); "
            f"`python experiments/{results['experiment']}.py run` resumes.",
        ]
        return "\n".join(lines) + "\n"
    lines += verdict_table(a["verdicts"]) if a["verdicts"] else ["No cell has been stored yet."]
    if "measures" not in a:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "### Training (every network kept)",
        "",
        "| label noise | λ | networks | met the target | epochs | train acc | test acc | gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in a["training"]:
        lines.append(
            f"| {t['label_noise']} | {t['lam']} | {t['networks']} | {t['converged']} | "
            f"{t['epochs']:.1f} | {t['train_acc']:.3f} | {t['test_acc']:.3f} | {t['gap']:.3f} |"
        )
    for adjustment, title in (
        ("all", "every measure size-adjusted alike (primary)"),
        ("none", "no measure size-adjusted"),
    ):
        table = a["measures"][adjustment]
        order = sorted(
            table,
            key=lambda n: -table[n]["psi"] if table[n]["psi"] == table[n]["psi"] else math.inf,
        )
        lines += [
            "",
            f"### Leaderboard, {title}: sorted by signed Ψ",
            "",
            "| rank | measure | ours | τ | Ψ | Ψ without train size | "
            + " | ".join(f"ψ {v}" for v in a["varied"])
            + " | CMI | sign error: mean | max | environments |",
            "|---" * (10 + len(a["varied"])) + "|",
        ]
        for rank, name in enumerate(order, 1):
            e = table[name]
            se = e["sign_error"]
            lines.append(
                f"| {rank} | {name} | {'' if name.isupper() else '✓'} | {_ci(e['tau_ci'])} | "
                f"{_ci(e['psi_ci'])} | {_ci(e['psi_wo_ci'])} | "
                + " | ".join(_fmt(e["psi_by_hparam"].get(v), "{:+.2f}") for v in a["varied"])
                + f" | {_ci_or(e.get('cmi_ci'), e['cmi'], '{:.4f}')}"
                f" | {_ci_or(e.get('sign_error_ci'), se['mean'], '{:.3f}')}"
                f" | {_fmt(se['max'], '{:.3f}')} | {se['environments']} |"
            )
    reference, fair = a["measures"]["reference"], a["measures"]["all"]
    lines += [
        "",
        "### What the reference's convention did (the literature adjusted, memspace's raw)",
        "",
        "| measure | ψ train size, reference | ψ train size, all adjusted | Ψ reference | Ψ all "
        "adjusted |",
        "|---|---|---|---|---|",
    ]
    for name in CLAIMED.values():
        if name in reference and name in fair:
            lines.append(
                f"| {name} | {_fmt(reference[name]['psi_by_hparam'].get('train_size'))} | "
                f"{_fmt(fair[name]['psi_by_hparam'].get('train_size'))} | "
                f"{_fmt(reference[name]['psi'])} | {_fmt(fair[name]['psi'])} |"
            )
    best, conv = a["best"], a["converged_only"]
    lines += [
        "",
        f"- Best of {best['measures']} measures by signed Ψ: **{best['measure']}** "
        f"(Ψ = {best['psi']:+.3f}); permutation p = {best['p']:.3g}.",
        f"- Over the {conv['networks']} networks that met the stopping rule alone (as Fantastic "
        "ranks): " + ", ".join(f"{n} Ψ = {v:+.3f}" for n, v in conv.get("psi", {}).items()) + ".",
        "- CMI and the sign error have intervals (200 resamples) for the claimed measures and the "
        "three leaders; the other rows give the point value.",
    ]
    seeds = len(cfg["grid"]["seeds"])
    if seeds**2 < cfg["min_ess"]:
        lines.append(
            f"- **The robust sign error keeps no environment, by design error.** An environment "
            f"(two configurations that differ in one hyperparameter) holds at most {seeds} × "
            f"{seeds} = {seeds**2} pairs of runs, and its effective sample size W²/ΣW² cannot "
            f"exceed the number of pairs, so the pre-registered ESS ≥ {cfg['min_ess']:g} "
            "(Dziugaite et al.'s) can never be met with these seeds. It decides none of E2's "
            f"claims; measuring it needs at least {math.ceil(math.sqrt(cfg['min_ess']))} seeds "
            "per configuration."
        )
    return "\n".join(lines) + "\n"


def publish(store_path: Path, cfg: dict, out: Path) -> Path:
    fields = ("id", "seed", "hparams", "measures", "train_acc", "test_acc", "train_ce", "gap")
    return publish_cells(
        sys.modules[__name__],
        store_path,
        cfg,
        out,
        fields=(*fields, "epochs", "converged", "seconds"),
    )


if __name__ == "__main__":
    main(sys.modules[__name__])
