"""E5 — disentanglement within β (THEORY v3 §5, claim (vi)), pre-registered.

Is a β-VAE whose decoder metric is block-diagonal with respect to the data's factors also
disentangled by the standard scores, among models of the *same* β (across β, both rise with β
and a τ over all models restates β)? And does least action on the decoder make it more so?

Set-up: memspace's dSprites-structured images (generated: shape, scale, orientation, x, y;
64 × 64), memspace's ConvVAE (10 latents, a residual decoder of width 64 and 4 blocks), Adam
(10⁻³) for 3 000 steps of batch 64 with the KL weight raised linearly from 0 to β over the
first 1 000 (amended, below); β ∈ {1, 4}, λ ∈ {0, 1} (λ charges the kinetic action of the
decoder's residual path), seeds 0–4: 20 VAEs, every (β, λ) with the same five seeds (seed s:
the same initial weights and image stream), compared paired.

Amendment (2026-12-06, before any confirmatory cell but the first was kept). The first
recipe, 1 500 steps without a warm-up, collapsed the first cell completely (β = 1, λ = 0,
seed 0: training KL 0.006 nats, every latent below 0.001 nats, the mean image). The recipe was
chosen on a pilot (``experiments/e5_pilot.py``, seed 100, outside the experiment's seeds) by a
rule committed before the pilot ran: the cheapest variant under which both β = 1 and β = 4 keep
at least two latents at ≥ 0.1 nats and reconstruct below 300 nats per image. A 1 000-step KL
warm-up with 3 000 steps did at both (5 and 6 active latents; 92.9 and 94.1 nats); the pilot's
numbers are in ``experiments/e5/pilot.json``. The predictions, the scores and every decision
rule are unchanged. (Learned after the amendment, from the pilot's later variants: 3 000 steps
without a warm-up also left the mean image at β = 1 (82.6 nats, 5 active latents), so the
first recipe's collapse was at least partly too short a run; the warm-up stays, being the only
recipe the pilot tried at both β.) The collapsed first cell is kept, apart, in
``e5/cells-first-recipe.sqlite``; the confirmatory cells are all trained under the amended
recipe.

Per VAE, on images drawn afresh from the factors:

- **active latents by KL**: latent j is active when the mean over 1 000 test images of
  KL(q(z_j | x) ‖ N(0, 1)) is at least 0.1 nats (a closed form, so free of the plug-in bias that
  made every latent "active" under the old 0.05-nat MI rule);
- **collapsed**: fewer than two active latents, or all active latents most informative about one
  factor; collapsed models are excluded from every statistic and counted;
- **block-diagonality** 1 − ‖off-diagonal blocks‖_F / ‖G‖_F of the pull-back metric
  G(z) = J_dec(z)ᵀ Λ J_dec(z) on the active latents, grouped by the factor each is most
  informative about (argmax of the histogram MI, 20 bins), mean over 64 latent points;
- **the random-grouping null**: the same G with the group labels permuted among the active
  latents (group sizes kept), 200 draws; excess = block-diagonality − the null's mean;
- MIG, SAP, DCI (30 boosting stages), modularity, BetaVAE and FactorVAE scores.

The predictions below were written before the first cell ran (they are in the commit that added
this file); the verdicts are computed from the stored cells by :mod:`memspace.evaluation`.

    python experiments/e5_disentanglement.py run        # train and score what is missing
    python experiments/e5_disentanglement.py publish    # results.json and RESULTS.md
    python experiments/e5_disentanglement.py run --quick --store /tmp/e5.sqlite   # smoke run
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

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
from scipy import stats  # noqa: E402

from memspace.disentanglement import (  # noqa: E402
    DSpritesLike,
    beta_vae_score,
    dci,
    factor_vae_score,
    histogram_discretize,
    mig,
    modularity,
    mutual_info_matrix,
    sap,
)
from memspace.disentanglement.vae import (  # noqa: E402
    block_diagonality,
    pullback_metric,
    train_vae,
)
from memspace.evaluation import (  # noqa: E402
    Estimate,
    Prediction,
    clustered_bootstrap,
    decide_direction,
    mean_ci,
)
from memspace.zoo import ZooStore  # noqa: E402

NAME = "e5_disentanglement"
FOLDER = HERE / "e5"
CONFIG = dict(
    betas=[1.0, 4.0],
    lams=[0.0, 1.0],
    seeds=[0, 1, 2, 3, 4],
    steps=3000,
    warmup=1000,
    batch_size=64,
    latents=10,
    width=64,
    depth=4,
    num_train=3000,
    num_test=1000,
    score_points=500,
    score_batch=32,
    metric_points=64,
    dci_trees=30,
    kl_active=0.1,
    null_draws=200,
    resamples=2000,
)
QUICK = dict(
    CONFIG,
    seeds=[0, 1],
    steps=30,
    warmup=10,
    batch_size=16,
    width=16,
    depth=2,
    num_train=300,
    num_test=200,
    score_points=40,
    score_batch=8,
    metric_points=8,
    dci_trees=5,
    null_draws=20,
    resamples=200,
)
SCORES = (
    "mig",
    "sap",
    "dci_disentanglement",
    "modularity",
    "beta_vae",
    "factor_vae",
)

PREDICTIONS = {
    "null": Prediction(
        claim="(vi) the decoder metric is block-diagonal beyond chance",
        statement="Grouping the active latents by the factor each encodes makes G(z) more "
        "block-diagonal than a random grouping of the same sizes.",
        test="excess block-diagonality over the random-grouping null, mean over the non-collapsed "
        "models, bootstrap over seeds (each seed's models together), 95 % interval",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "within": Prediction(
        claim="(vi) block-diagonality ranks disentanglement within β",
        statement="Among models of one β, a more block-diagonal decoder metric goes with a higher "
        "MIG: Kendall τ_b(block-diagonality, MIG) over the models of each β, averaged over β, is "
        "positive.",
        test="mean over β of τ_b within β, bootstrap over seeds (each seed's models together), "
        "95 % interval",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "lam-bd": Prediction(
        claim="(vi) least action makes the decoder metric more block-diagonal",
        statement="λ = 1 on the decoder's kinetic action raises the excess block-diagonality "
        "against λ = 0, at the same β and seed.",
        test="paired difference (λ = 1 − λ = 0) over (β, seed) pairs where neither is collapsed, "
        "bootstrap over seeds, interval at 1 − 0.05/2 (Bonferroni over the two λ claims)",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
    "lam-mig": Prediction(
        claim="(vi) least action raises MIG",
        statement="λ = 1 raises MIG against λ = 0 at the same β and seed.",
        test="as above, for MIG",
        supported_if="the interval lies above 0",
        contradicted_if="the interval lies below 0",
    ),
}


def cell_id(beta: float, lam: float, seed: int) -> str:
    return f"beta={beta:g}/lam={lam:g}/seed={seed}"


def _codes(model, dataset, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoder means and log-variances [n, latents] of images rendered from ``factors``."""
    mus, log_vars = [], []
    with torch.no_grad():
        for chunk in np.array_split(factors, max(1, len(factors) // 100)):
            mu, log_var = model.encode(torch.from_numpy(dataset.render(chunk)).float())
            mus.append(mu.double().numpy())
            log_vars.append(log_var.double().numpy())
    return np.concatenate(mus), np.concatenate(log_vars)


def latent_kl(mu: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """Mean KL(q(z_j | x) ‖ N(0, 1)) per latent [latents]: ½ E[μ² + σ² − 1 − log σ²]."""
    return 0.5 * (mu**2 + np.exp(log_var) - 1.0 - log_var).mean(axis=0)


def grouping_null(G: torch.Tensor, groups: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Block-diagonality of G under ``draws`` random permutations of the active latents' labels."""
    rng = np.random.default_rng(seed)
    active = np.flatnonzero(groups >= 0)
    out = []
    for _ in range(draws):
        shuffled = groups.copy()
        shuffled[active] = rng.permutation(groups[active])
        out.append(block_diagonality(G, shuffled.tolist())["block_diagonality"])
    return np.asarray(out)


def score_vae(model, dataset, cfg: dict, seed: int) -> dict[str, float]:
    """Every measure of one trained VAE (module doc), as scalars."""
    rng = np.random.RandomState(seed + 12345)
    factors_train = dataset.sample_factors(cfg["num_train"], rng)
    factors_test = dataset.sample_factors(cfg["num_test"], rng)
    codes_train, _ = _codes(model, dataset, factors_train)
    codes_test, log_var_test = _codes(model, dataset, factors_test)
    out: dict[str, float] = {}
    kl = latent_kl(codes_test, log_var_test)
    mi = mutual_info_matrix(histogram_discretize(codes_train), factors_train)
    groups = np.where(kl >= cfg["kl_active"], mi.argmax(axis=1), -1)
    active = groups >= 0
    out["active_latents"] = float(active.sum())
    out["active_factors"] = float(len(set(groups[active].tolist())))
    out["collapsed"] = float(out["active_latents"] < 2 or out["active_factors"] < 2)
    for j in range(len(kl)):
        out[f"kl_{j}"] = float(kl[j])
        out[f"group_{j}"] = float(groups[j])
    out["mig"] = mig(codes_train, factors_train)["mig"]
    out["sap"] = sap(codes_train, factors_train, codes_test, factors_test)["sap"]
    scores = dci(
        codes_train, factors_train, codes_test, factors_test, seed=seed, trees=cfg["dci_trees"]
    )
    out["dci_disentanglement"] = scores["disentanglement"]
    out["modularity"] = modularity(codes_train, factors_train)

    def encode(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (
                model.encode(torch.from_numpy(np.asarray(images, np.float32)))[0].double().numpy()
            )

    sizes = dict(
        batch_size=cfg["score_batch"],
        num_train=cfg["score_points"],
        num_eval=cfg["score_points"] // 2,
        seed=seed,
    )
    out["beta_vae"] = beta_vae_score(dataset, encode, **sizes)["eval_accuracy"]
    out["factor_vae"] = factor_vae_score(
        dataset, encode, num_variance_estimate=cfg["num_train"], **sizes
    )["eval_accuracy"]
    if out["collapsed"]:
        out.update(block_diagonality=math.nan, null_mean=math.nan, excess=math.nan, null_p=math.nan)
        return out
    z = torch.from_numpy(codes_test[: cfg["metric_points"]]).float()
    G = pullback_metric(model.decode, z)
    bd = block_diagonality(G, groups.tolist())["block_diagonality"]
    null = grouping_null(G, groups, cfg["null_draws"], seed)
    out["block_diagonality"] = bd
    out["null_mean"] = float(null.mean())
    out["excess"] = bd - float(null.mean())
    out["null_p"] = float((1 + (null >= bd).sum()) / (1 + len(null)))
    return out


def run(cfg: dict, store_path: Path, progress: bool) -> None:
    """Train and score every VAE the store lacks, seed by seed (each (β, λ) gains seeds early)."""
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = ZooStore(store_path)
    torch.set_num_threads(1)
    dataset = DSpritesLike()
    provenance = dict(machine=machine(), commit=commit())
    print(f"E5: {provenance['machine']}; commit {provenance['commit']}", flush=True)
    try:
        for seed in cfg["seeds"]:
            for beta in cfg["betas"]:
                for lam in cfg["lams"]:
                    key = cell_id(beta, lam, seed)
                    if key in store.model_ids():
                        continue
                    start = time.perf_counter()
                    trained = train_vae(
                        dataset,
                        beta=beta,
                        lam=lam,
                        steps=cfg["steps"],
                        batch_size=cfg["batch_size"],
                        latents=cfg["latents"],
                        width=cfg["width"],
                        depth=cfg["depth"],
                        seed=seed,
                        warmup=cfg["warmup"],
                    )
                    measures = score_vae(trained.model, dataset, cfg, seed)
                    measures["reconstruction"] = float(np.mean(trained.reconstruction[-20:]))
                    measures["kl"] = float(np.mean(trained.kl[-20:]))
                    measures["train_seconds"] = trained.seconds
                    seconds = time.perf_counter() - start
                    store.add(
                        dict(
                            id=key,
                            hparams=dict(beta=beta, lam=lam, **provenance),
                            seed=seed,
                            train_acc=None,
                            test_acc=None,
                            train_ce=None,
                            gap=None,
                            epochs=cfg["steps"],
                            converged=not measures["collapsed"],
                            seconds=seconds,
                            init_file="none",
                            final_file="none",
                        ),
                        measures,
                    )
                    print(
                        f"E5: {key}: {int(measures['active_latents'])} active latents, MIG "
                        f"{measures['mig']:.3f}, block-diagonality "
                        f"{measures['block_diagonality']:.3f} (null "
                        f"{measures['null_mean']:.3f}) in {seconds:.0f} s",
                        flush=True,
                    )
    finally:
        store.close()
    checkpoint_wal(store_path)


# ---------------------------------------------------------------------------- analysis


def _tau(x, y) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def analyse(cells: list[dict], cfg: dict) -> dict:
    """Every statistic and verdict, from the stored cells alone."""
    expected = {
        cell_id(b, lam, s): (b, lam, s)
        for b in cfg["betas"]
        for lam in cfg["lams"]
        for s in cfg["seeds"]
    }
    rows = [c for c in cells if c["id"] in expected]
    kept = [r for r in rows if not r["measures"].get("collapsed", 1.0)]
    out: dict = dict(
        models=len(rows),
        expected=len(expected),
        collapsed=[r["id"] for r in rows if r["measures"].get("collapsed", 1.0)],
        verdicts=[],
    )
    arms = []
    for beta in cfg["betas"]:
        for lam in cfg["lams"]:
            group = [r for r in rows if r["hparams"]["beta"] == beta and r["hparams"]["lam"] == lam]
            ok = [r for r in group if not r["measures"]["collapsed"]]
            arm = dict(beta=beta, lam=lam, models=len(group), collapsed=len(group) - len(ok))
            for key in ("active_latents", "reconstruction", "kl"):
                values = [r["measures"][key] for r in group]
                arm[key] = mean_ci(values).as_dict() if values else None
            for key in (*SCORES, "block_diagonality", "null_mean", "excess"):
                values = [r["measures"][key] for r in ok]
                arm[key] = mean_ci(values).as_dict() if values else None
            arms.append(arm)
    out["arms"] = arms
    if len(kept) < 2:
        return out
    seeds = [r["seed"] for r in kept]
    excess = [r["measures"]["excess"] for r in kept]
    verdicts = [decide_direction(PREDICTIONS["null"], mean_ci(excess, seeds))]
    out["null_p_below_05"] = sum(r["measures"]["null_p"] < 0.05 for r in kept)

    def within(idx: np.ndarray, score: str = "mig", x: str = "block_diagonality") -> float:
        chosen = [kept[i] for i in idx]
        taus = []
        for beta in cfg["betas"]:
            g = [r for r in chosen if r["hparams"]["beta"] == beta]
            taus.append(_tau([r["measures"][x] for r in g], [r["measures"][score] for r in g]))
        taus = [t for t in taus if t == t]
        return float(np.mean(taus)) if taus else math.nan

    within_tau = {}
    for score in SCORES:
        for x in ("block_diagonality", "excess"):
            within_tau[f"{x}~{score}"] = clustered_bootstrap(
                lambda idx, score=score, x=x: within(idx, score, x),
                len(kept),
                seeds,
                resamples=cfg["resamples"],
            ).as_dict()
    out["within_beta_tau"] = within_tau
    verdicts.append(
        decide_direction(PREDICTIONS["within"], Estimate(**within_tau["block_diagonality~mig"]))
    )
    by_key = {(r["hparams"]["beta"], r["hparams"]["lam"], r["seed"]): r for r in kept}
    paired = {}
    for key, score in (("lam-bd", "excess"), ("lam-mig", "mig")):
        diffs, clusters = [], []
        for beta in cfg["betas"]:
            for seed in cfg["seeds"]:
                a, b = by_key.get((beta, 1.0, seed)), by_key.get((beta, 0.0, seed))
                if a and b:
                    diffs.append(a["measures"][score] - b["measures"][score])
                    clusters.append(seed)
        if len(set(clusters)) >= 2:
            estimate = mean_ci(diffs, clusters, level=1 - 0.05 / 2)
            paired[key] = dict(estimate.as_dict(), differences=diffs)
            verdicts.append(decide_direction(PREDICTIONS[key], estimate))
    out["paired"] = paired
    out["verdicts"] = [v.as_dict() for v in verdicts]
    return out


def section(results: dict) -> str:
    """The RESULTS.md section, written from ``results`` alone."""
    cfg, a = results["config"], results["analysis"]
    machines = sorted({c["hparams"].get("machine", "?") for c in results["cells"]})
    seconds = sum(c.get("seconds") or 0.0 for c in results["cells"])
    lines = [
        "## E5 — disentanglement within β (pre-registered)",
        "",
        f"Generated by `experiments/e5_disentanglement.py publish` from "
        f"`experiments/e5/results.json` ({a['models']} of {a['expected']} VAEs stored; "
        f"{seconds / 60:.0f} min of training and scoring summed; machine: {'; '.join(machines)}). "
        f"dSprites-structured images (generated), ConvVAE with {cfg['latents']} latents and a "
        f"residual decoder of width {cfg['width']} and {cfg['depth']} blocks, {cfg['steps']} "
        f"steps of batch {cfg['batch_size']} with a {cfg.get('warmup', 0)}-step KL warm-up "
        "(the recipe amended after the first recipe collapsed its first cell: see the "
        f"experiment's docstring and `e5/pilot.json`); β ∈ {cfg['betas']}, λ ∈ {cfg['lams']}, "
        f"seeds {cfg['seeds']}. Active latent: mean KL ≥ {cfg['kl_active']:g} nats; collapsed "
        "(fewer than two active latents, or one factor): excluded and counted. Intervals: 95 % "
        "percentile bootstrap over seeds.",
        "",
        *predictions_table(results["predictions"]),
    ]
    if a["models"] < a["expected"]:
        lines += [
            f"**Running — {a['models']} of {a['expected']} VAEs stored.** The verdicts are read "
            "when every cell is in (results.json holds the interim analysis); "
            f"`python experiments/{results['experiment']}.py run` resumes.",
        ]
        return "\n".join(lines) + "\n"
    lines += verdict_table(a["verdicts"]) if a["verdicts"] else ["No verdict can be read yet."]
    lines += [
        "",
        f"Collapsed and excluded: {len(a['collapsed'])} of {a['models']}"
        + (f" ({', '.join(a['collapsed'])})" if a["collapsed"] else "")
        + ".",
        "",
        "### Arms",
        "",
        "| β | λ | VAEs | collapsed | active latents | reconstruction | KL | MIG | DCI | "
        "FactorVAE | block-diag. | null | excess |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(e, spec="{:.3f}"):
        return "—" if not e else estimate_text(e, spec)

    for arm in a["arms"]:
        lines.append(
            f"| {arm['beta']:g} | {arm['lam']:g} | {arm['models']} | {arm['collapsed']} | "
            f"{cell(arm['active_latents'], '{:.1f}')} | {cell(arm['reconstruction'], '{:.1f}')} | "
            f"{cell(arm['kl'], '{:.1f}')} | {cell(arm['mig'])} | "
            f"{cell(arm['dci_disentanglement'])} | {cell(arm['factor_vae'])} | "
            f"{cell(arm['block_diagonality'])} | {cell(arm['null_mean'])} | "
            f"{cell(arm['excess'], '{:+.3f}')} |"
        )
    if a.get("within_beta_tau"):
        lines += [
            "",
            "### Within-β Kendall τ_b (mean over β), every score",
            "",
            "| score | τ(block-diagonality, score) | τ(excess, score) |",
            "|---|---|---|",
        ]
        for score in SCORES:
            lines.append(
                f"| {score} | {cell(a['within_beta_tau'][f'block_diagonality~{score}'], '{:+.2f}')}"
                f" | {cell(a['within_beta_tau'][f'excess~{score}'], '{:+.2f}')} |"
            )
    return "\n".join(lines) + "\n"


def publish(store_path: Path, cfg: dict, out: Path) -> Path:
    return publish_cells(sys.modules[__name__], store_path, cfg, out)


if __name__ == "__main__":
    main(sys.modules[__name__])
