"""Efficiency ↔ disentanglement: β-VAEs with and without least action on dSprites-structured data.

Per cell (β, λ, seed): a :class:`~memspace.disentanglement.vae.ConvVAE` trained on images
rendered from random factors (λ charges the kinetic action of the decoder's residual path);
its encoder means scored with MIG, SAP, DCI, modularity, BetaVAE and FactorVAE; the
block-diagonality of the decoder's pull-back metric G(z) with respect to the latents grouped by
the factor each is most informative about; a latent traversal. Summary: the table of models,
Kendall's τ between block-diagonality and MIG / DCI disentanglement over the models, and the
effect of λ on the scores (docs/theory.md §5.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._errors import MemspaceError
from .base import Study

__all__ = [
    "DISENTANGLEMENT_CONFIGS",
    "additivity_cell",
    "disentanglement_study",
    "summarise_additivity",
]

DISENTANGLEMENT_CONFIGS = {
    # quick: a smoke run (seconds per model; far too short to learn factors), for tests and the
    # demo; its DCI boosts 10 stages per factor (full: 100, as disentanglement_lib)
    "quick": dict(
        data="dsprites-like",
        betas=[1.0, 4.0],
        lams=[0.0, 1.0],
        seeds=[0],
        steps=20,
        batch_size=16,
        latents=10,
        width=32,
        depth=2,
        num_train=300,
        num_test=150,
        vae_score_points=40,
        vae_score_batch=16,
        metric_points=16,
        dci_trees=10,
        product=dict(
            sizes=[3, 4], dims=6, points=200, steps=60, width=16, depth=4, lr=1e-2, seeds=[0]
        ),
    ),
    "full": dict(
        data="dsprites-like",
        betas=[1.0, 4.0, 16.0],
        lams=[0.0, 1.0],
        seeds=[0],
        steps=1500,
        batch_size=64,
        latents=10,
        width=64,
        depth=4,
        num_train=5000,
        num_test=2000,
        vae_score_points=1000,
        vae_score_batch=32,
        metric_points=64,
        product=dict(
            sizes=[3, 4],
            dims=6,
            points=1000,
            steps=1500,
            width=32,
            depth=8,
            lr=3e-3,
            seeds=[0, 1, 2],
        ),
    ),
}


def _encode_means(model) -> Callable[[np.ndarray], np.ndarray]:
    def encode(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (
                model.encode(torch.from_numpy(np.asarray(images, dtype=np.float32)))[0]
                .double()
                .numpy()
            )

    return encode


def _traversal(model, dataset, rng, steps: int = 7) -> list[list[list[float]]]:
    """Decoded images as each latent moves over [−2, 2] around a point, [latents, steps, 64·64]."""
    image = dataset.render(dataset.sample_factors(1, rng))
    with torch.no_grad():
        mu = model.encode(torch.from_numpy(image).float())[0][0]
        rows = []
        for j in range(len(mu)):
            z = mu.repeat(steps, 1)
            z[:, j] = torch.linspace(-2, 2, steps)
            rows.append(torch.sigmoid(model.decode(z)).reshape(steps, -1).numpy().round(3).tolist())
    return rows


def evaluate_vae(model, dataset, config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every score of one trained VAE (module doc)."""
    from ..disentanglement import (
        beta_vae_score,
        dci,
        factor_vae_score,
        histogram_discretize,
        mig,
        modularity,
        mutual_info_matrix,
        sap,
    )
    from ..disentanglement.vae import block_diagonality, latent_groups, pullback_metric

    rng = np.random.RandomState(seed + 12345)
    encode = _encode_means(model)
    factors_train = dataset.sample_factors(config["num_train"], rng)
    factors_test = dataset.sample_factors(config["num_test"], rng)
    codes_train = np.concatenate(
        [encode(dataset.render(f)) for f in np.array_split(factors_train, 20)]
    )
    codes_test = np.concatenate(
        [encode(dataset.render(f)) for f in np.array_split(factors_test, 20)]
    )
    out: dict[str, Any] = {}
    out["mig"] = mig(codes_train, factors_train)["mig"]
    out["sap"] = sap(codes_train, factors_train, codes_test, factors_test)["sap"]
    scores = dci(
        codes_train,
        factors_train,
        codes_test,
        factors_test,
        seed=seed,
        trees=config.get("dci_trees", 100),
    )
    out.update(
        dci_disentanglement=scores["disentanglement"],
        dci_completeness=scores["completeness"],
        dci_informativeness=scores["informativeness_test"],
    )
    out["modularity"] = modularity(codes_train, factors_train)
    sizes = dict(
        batch_size=config["vae_score_batch"],
        num_train=config["vae_score_points"],
        num_eval=config["vae_score_points"] // 2,
        seed=seed,
    )
    out["beta_vae"] = beta_vae_score(dataset, encode, **sizes)["eval_accuracy"]
    out["factor_vae"] = factor_vae_score(
        dataset, encode, num_variance_estimate=config["num_train"], **sizes
    )["eval_accuracy"]
    mi = mutual_info_matrix(histogram_discretize(codes_train), factors_train)
    groups = latent_groups(mi)
    z = torch.from_numpy(codes_test[: config["metric_points"]]).float()
    G = pullback_metric(model.decode, z)
    structure = block_diagonality(G, groups)
    out.update(
        block_diagonality=structure["block_diagonality"],
        active_latents=structure["active"],
        latent_groups=groups,
        metric_mean=G.mean(0).abs().tolist(),
    )
    out["traversal"] = _traversal(model, dataset, rng)
    return out


def disentanglement_study(
    run,
    config: dict[str, Any],
    *,
    split=None,
    status: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Run (or resume) the disentanglement study in the run folder ``run``; return its summary.

    ``split``: the image set (a :class:`~memspace.disentanglement.DSpritesLike` or
    :class:`~memspace.disentanglement.DSpritesFile`); the generated one by default. The product-task
    cells (additivity of least action) run first: they take seconds; the VAEs take minutes each.
    """
    from ..disentanglement import DSpritesLike
    from ..disentanglement.vae import train_vae
    from ._cells import CellStore

    dataset = split if split is not None else DSpritesLike()
    store = CellStore(run)
    product = config["product"]
    cells = [
        (beta, lam, seed)
        for beta in config["betas"]
        for lam in config["lams"]
        for seed in config["seeds"]
    ]
    total = len(product["seeds"]) + len(cells)
    for done, seed in enumerate(product["seeds"]):
        progress(done, total)
        key = f"product/seed={seed}"
        if key not in store:
            status(
                f"product task, seed {seed}: joint and separate networks ({product['steps']} "
                "steps each)"
            )
            store.add(key, additivity_cell(product, seed))
    for done, (beta, lam, seed) in enumerate(cells, start=len(product["seeds"])):
        progress(done, total)
        key = f"beta={beta:g}/lam={lam:g}/seed={seed}"
        if key in store:
            continue
        status(f"VAE {key} ({config['steps']} steps)")
        trained = train_vae(
            dataset,
            beta=beta,
            lam=lam,
            steps=config["steps"],
            batch_size=config["batch_size"],
            latents=config["latents"],
            width=config["width"],
            depth=config["depth"],
            seed=seed,
        )
        status(f"scores of {key}")
        record = evaluate_vae(trained.model, dataset, config, seed)
        store.add(
            key,
            {
                "beta": beta,
                "lam": lam,
                "seed": seed,
                "train_seconds": trained.seconds,
                "reconstruction": float(np.mean(trained.reconstruction[-20:])),
                "kl": float(np.mean(trained.kl[-20:])),
                **record,
            },
        )
    progress(total, total)
    summary = summarise_disentanglement(
        [store[f"beta={b:g}/lam={lam:g}/seed={s}"] for b, lam, s in cells], config
    )
    summary["additivity"] = summarise_additivity(
        [store[f"product/seed={s}"] for s in product["seeds"]]
    )
    return summary


def additivity_cell(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Additivity of least action (docs/theory.md §5.4).

    Joint vs separate networks on one product task.

    See :mod:`memspace.disentanglement.additivity` for what is measured and why.

    ``config`` keys: ``sizes`` (C_a, C_b), ``dims``, ``points`` (train and test each), ``steps``,
        ``width``,
    ``depth``, ``lr``.
    """
    from ..disentanglement.additivity import (
        marginal_probabilities,
        path_action,
        product_distance,
        product_task,
    )
    from ..paths import ResidualMLP, fisher_rao_distance, predictive_path
    from ..train import evaluate
    from .capacity import memorise

    sizes = tuple(config["sizes"])
    task = product_task(2 * config["points"], sizes, dims=config["dims"], seed=seed)
    n = config["points"]
    X = torch.from_numpy(task["X"])
    out: dict[str, Any] = {"seed": seed}
    probabilities: dict[str, Tensor] = {}
    for name, classes in (("joint", sizes[0] * sizes[1]), ("a", sizes[0]), ("b", sizes[1])):
        labels = torch.from_numpy(task["pair" if name == "joint" else name])
        torch.manual_seed(seed)
        model = ResidualMLP(X.shape[1], config["width"], config["depth"], classes)
        memorise(model, X[:n], labels[:n], max_steps=config["steps"], lr=config["lr"], seed=seed)
        # the factorisation gap compares the blocks' paths from p_0 (stem anchor): the
        # marginals of a product prior would add the same prior step to both sides
        path = predictive_path(model, (X[n:], labels[n:]), points=True, anchor="stem")
        probabilities[name] = torch.from_numpy(path.points["probabilities"])
        out[name] = {
            "anchor": path.anchor,
            "action": path.action,
            "least_action": path.least_action,
            "ratio": path.ratio,
            "test_accuracy": evaluate(model, (X[n:], labels[n:]))[1],
        }
    marg_a, marg_b = marginal_probabilities(probabilities["joint"], sizes)
    logs = {k: v.clamp_min(1e-300).log() for k, v in (("a", marg_a), ("b", marg_b))}
    d_a = fisher_rao_distance(logs["a"][:, 0], logs["a"][:, -1])
    d_b = fisher_rao_distance(logs["b"][:, 0], logs["b"][:, -1])
    product = torch.einsum("nla,nlb->nlab", marg_a, marg_b).flatten(2)
    gap = fisher_rao_distance(
        probabilities["joint"].clamp_min(1e-300).log(), product.clamp_min(1e-300).log()
    )
    marginal_a, marginal_b = path_action(marg_a), path_action(marg_b)
    out.update(
        separate_least_action=out["a"]["least_action"] + out["b"]["least_action"],
        separate_action=out["a"]["action"] + out["b"]["action"],
        marginal_least_action=marginal_a["least_action"] + marginal_b["least_action"],
        marginal_action=marginal_a["action"] + marginal_b["action"],
        pythagorean_least_action=float(product_distance(d_a, d_b).pow(2).mean()),
        factorisation_gap=float(gap.mean()),
    )
    joint = out["joint"]
    out["least_action_ratio"] = joint["least_action"] / out["separate_least_action"]
    out["action_ratio"] = joint["action"] / out["separate_action"]
    out["marginal_action_ratio"] = joint["action"] / out["marginal_action"]
    return out


SCORES = (
    "mig",
    "sap",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "modularity",
    "beta_vae",
    "factor_vae",
    "block_diagonality",
)


def summarise_disentanglement(
    cells: list[dict[str, Any]], config: dict[str, Any]
) -> dict[str, Any]:
    """The model table, τ(block-diagonality, MIG / DCI-D) over models, and λ's effect per score."""
    from ..zoo.ranking import kendall_tau

    table = [
        {
            k: c[k]
            for k in (
                "beta",
                "lam",
                "seed",
                "reconstruction",
                "kl",
                "active_latents",
                "train_seconds",
                *SCORES,
            )
        }
        for c in cells
    ]
    valid = [c for c in cells if not math.isnan(c["block_diagonality"])]
    tracks = {
        score: (
            kendall_tau([c["block_diagonality"] for c in valid], [c[score] for c in valid])
            if len(valid) >= 2
            else math.nan
        )
        for score in ("mig", "dci_disentanglement")
    }
    lams = sorted({c["lam"] for c in cells})
    effect = {}
    if len(lams) >= 2:
        for score in SCORES:
            base = [c[score] for c in cells if c["lam"] == lams[0]]
            charged = [c[score] for c in cells if c["lam"] == lams[-1]]
            finite = [np.isfinite(v).any() for v in (base, charged)]
            effect[score] = (
                float(np.nanmean(charged) - np.nanmean(base)) if all(finite) else math.nan
            )
    showcase = cells[0]
    return {
        "table": table,
        "tau_block_diagonality": tracks,
        "lambda_effect": effect,
        "lams": lams,
        "traversal": showcase["traversal"],
        "traversal_model": f"β = {showcase['beta']:g}, λ = {showcase['lam']:g}",
        "metric_mean": showcase["metric_mean"],
        "latent_groups": showcase["latent_groups"],
        "config": config,
    }


ADDITIVITY_ROWS = (
    "least_action_ratio",
    "pythagorean_least_action",
    "action_ratio",
    "marginal_action_ratio",
    "factorisation_gap",
)


def summarise_additivity(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation and seed-bootstrap interval of each additivity number.

    And the per-network table. One seed has no spread (NaN) and no interval.
    """
    from ..evaluation import mean_ci, sample_std

    def spread(values: list[float]) -> dict[str, float]:
        interval = mean_ci(values)
        return {
            "mean": float(np.mean(values)),
            "std": sample_std(values),
            "low": interval.low,
            "high": interval.high,
            "n": len(values),
        }

    numbers = {
        key: spread([c[key] for c in cells])
        for key in (
            "least_action_ratio",
            "action_ratio",
            "marginal_action_ratio",
            "factorisation_gap",
            "separate_least_action",
            "pythagorean_least_action",
            "marginal_least_action",
        )
    }
    numbers["pythagorean_ratio"] = spread(
        [c["pythagorean_least_action"] / c["marginal_least_action"] for c in cells]
    )
    networks = {
        name: {
            key: spread([c[name][key] for c in cells])
            for key in ("action", "least_action", "ratio", "test_accuracy")
        }
        for name in ("joint", "a", "b")
    }
    return {"numbers": numbers, "networks": networks}


def prepare_disentanglement(config: dict[str, Any]):
    """The disentanglement study's dataset.

    Dsprites-like (generated) or a real dSprites ``.npz``.
    """
    from ..disentanglement import DSpritesFile, DSpritesLike

    if config["data"] == "dsprites-like":
        return DSpritesLike()
    if not str(config["data"]).endswith(".npz"):
        raise MemspaceError(
            f"the disentanglement study runs on dsprites-like (generated) or a dSprites .npz "
            f"file, not {config['data']!r}"
        )
    return DSpritesFile(config["data"])


STUDY = Study(
    name="disentanglement",
    figure="traversal",
    summary_keys=("table", "tau_block_diagonality", "lambda_effect", "config", "lams"),
    title="Efficiency ↔ disentanglement",
    summary="β-VAEs with and without least action, the standard scores, the decoder metric's "
    "block structure",
    configs=DISENTANGLEMENT_CONFIGS,
    prepare=prepare_disentanglement,
    run=disentanglement_study,
    demo_data=lambda data, shape: None,  # its own images
    data_help="dsprites-like (generated, the default) or the real dSprites .npz (imgs, "
    "latents_classes)",
)
