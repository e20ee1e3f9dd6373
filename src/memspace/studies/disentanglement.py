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

__all__ = ["DISENTANGLEMENT_CONFIGS", "disentanglement_study"]

DISENTANGLEMENT_CONFIGS = {
    # quick: a smoke run (seconds per model; far too short to learn factors), for tests and the demo
    "quick": dict(data="dsprites-like", betas=[1.0, 4.0], lams=[0.0, 1.0], seeds=[0], steps=20, batch_size=16,
                  latents=10, width=32, depth=2, num_train=300, num_test=150, vae_score_points=40,
                  vae_score_batch=16, metric_points=16),
    "full": dict(data="dsprites-like", betas=[1.0, 4.0, 16.0], lams=[0.0, 1.0], seeds=[0, 1], steps=3000,
                 batch_size=64, latents=10, width=64, depth=4, num_train=5000, num_test=2000,
                 vae_score_points=1000, vae_score_batch=32, metric_points=64),
}


def _encode_means(model) -> Callable[[np.ndarray], np.ndarray]:
    def encode(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.encode(torch.from_numpy(np.asarray(images, dtype=np.float32)))[0].double().numpy()
    return encode


def _traversal(model, dataset, rng, steps: int = 7) -> list[list[list[float]]]:
    """Decoded images as each latent moves over [−2, 2] around one encoded point [latents, steps, 64·64]."""
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
    from ..disentanglement import (beta_vae_score, dci, factor_vae_score, histogram_discretize, mig, modularity,
                                   mutual_info_matrix, sap)
    from ..disentanglement.vae import block_diagonality, latent_groups, pullback_metric

    rng = np.random.RandomState(seed + 12345)
    encode = _encode_means(model)
    factors_train = dataset.sample_factors(config["num_train"], rng)
    factors_test = dataset.sample_factors(config["num_test"], rng)
    codes_train = np.concatenate([encode(dataset.render(f)) for f in np.array_split(factors_train, 20)])
    codes_test = np.concatenate([encode(dataset.render(f)) for f in np.array_split(factors_test, 20)])
    out: dict[str, Any] = {}
    out["mig"] = mig(codes_train, factors_train)["mig"]
    out["sap"] = sap(codes_train, factors_train, codes_test, factors_test)["sap"]
    scores = dci(codes_train, factors_train, codes_test, factors_test, seed=seed)
    out.update(dci_disentanglement=scores["disentanglement"], dci_completeness=scores["completeness"],
               dci_informativeness=scores["informativeness_test"])
    out["modularity"] = modularity(codes_train, factors_train)
    sizes = dict(batch_size=config["vae_score_batch"], num_train=config["vae_score_points"],
                 num_eval=config["vae_score_points"] // 2, seed=seed)
    out["beta_vae"] = beta_vae_score(dataset, encode, **sizes)["eval_accuracy"]
    out["factor_vae"] = factor_vae_score(dataset, encode, num_variance_estimate=config["num_train"], **sizes)[
        "eval_accuracy"]
    mi = mutual_info_matrix(histogram_discretize(codes_train), factors_train)
    groups = latent_groups(mi)
    z = torch.from_numpy(codes_test[: config["metric_points"]]).float()
    G = pullback_metric(model.decode, z)
    structure = block_diagonality(G, groups)
    out.update(block_diagonality=structure["block_diagonality"], active_latents=structure["active"],
               latent_groups=groups, metric_mean=G.mean(0).abs().tolist())
    out["traversal"] = _traversal(model, dataset, rng)
    return out


def disentanglement_study(run, config: dict[str, Any], *, split=None, status: Callable[[str], None] = lambda m: None,
                          progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, Any]:
    """Run (or resume) the disentanglement study in the run folder ``run``; return its summary."""
    from ..disentanglement import DSpritesLike
    from ..disentanglement.vae import train_vae
    from ._cells import CellStore

    dataset = DSpritesLike()
    store = CellStore(run)
    cells = [(beta, lam, seed) for beta in config["betas"] for lam in config["lams"] for seed in config["seeds"]]
    for done, (beta, lam, seed) in enumerate(cells):
        progress(done, len(cells))
        key = f"beta={beta:g}/lam={lam:g}/seed={seed}"
        if key in store:
            continue
        status(f"VAE {key} ({config['steps']} steps)")
        trained = train_vae(dataset, beta=beta, lam=lam, steps=config["steps"], batch_size=config["batch_size"],
                            latents=config["latents"], width=config["width"], depth=config["depth"], seed=seed)
        status(f"scores of {key}")
        record = evaluate_vae(trained.model, dataset, config, seed)
        store.add(key, {"beta": beta, "lam": lam, "seed": seed, "train_seconds": trained.seconds,
                        "reconstruction": float(np.mean(trained.reconstruction[-20:])),
                        "kl": float(np.mean(trained.kl[-20:])), **record})
    progress(len(cells), len(cells))
    return summarise_disentanglement([store[f"beta={b:g}/lam={lam:g}/seed={s}"] for b, lam, s in cells], config)


SCORES = ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness", "modularity", "beta_vae",
          "factor_vae", "block_diagonality")


def summarise_disentanglement(cells: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """The model table, τ(block-diagonality, MIG / DCI-D) over models, and λ's effect per score."""
    from ..evaluation import kendall_tau

    table = [{k: c[k] for k in ("beta", "lam", "seed", "reconstruction", "kl", "active_latents", *SCORES)}
             for c in cells]
    valid = [c for c in cells if not math.isnan(c["block_diagonality"])]
    tracks = {score: (kendall_tau([c["block_diagonality"] for c in valid], [c[score] for c in valid])
                      if len(valid) >= 2 else math.nan) for score in ("mig", "dci_disentanglement")}
    lams = sorted({c["lam"] for c in cells})
    effect = {}
    if len(lams) >= 2:
        for score in SCORES:
            base = [c[score] for c in cells if c["lam"] == lams[0]]
            charged = [c[score] for c in cells if c["lam"] == lams[-1]]
            effect[score] = float(np.nanmean(charged) - np.nanmean(base))
    showcase = cells[0]
    return {"table": table, "tau_block_diagonality": tracks, "lambda_effect": effect, "lams": lams,
            "traversal": showcase["traversal"], "traversal_model": f"β = {showcase['beta']:g}, λ = {showcase['lam']:g}",
            "metric_mean": showcase["metric_mean"], "latent_groups": showcase["latent_groups"], "config": config}
