"""Convolutional β-VAEs with a residual decoder, and the block structure of the decoder's metric.

The decoder maps a latent z to Bernoulli pixel logits through a residual path (a
:class:`~memspace.ResidualMLP` stem → blocks → head) followed by transposed convolutions, so
the kinetic action of that path can be charged during training (λ·A_kin, docs/theory.md §4).

The pull-back metric of the decoder at z is G(z) = J(z)ᵀ Λ(z) J(z), J the Jacobian of the pixel
logits in z and Λ = diag(p(1 − p)) the Fisher of the Bernoulli pixels. Its *block-diagonality*
with respect to latent groups (each active latent assigned to the factor it is most informative
about) is 1 − ‖off-diagonal blocks‖_F / ‖G‖_F, averaged over z: 1 when moving in one group's
latents changes the image in directions the metric sees as orthogonal to every other group's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import MemspaceError
from ..paths import ResidualMLP

__all__ = [
    "ConvVAE",
    "VAETraining",
    "block_diagonality",
    "latent_groups",
    "pullback_metric",
    "elbo_objective",
    "kl_weight",
    "train_vae",
    "train_vae_population",
]


class ConvVAE(nn.Module):
    """A β-VAE for 64×64 binary images: conv encoder → (μ, log σ²); residual decoder → pixel logits.

    Args:
        latents: latent dimensions (10 in the study).
        width: the width of the decoder's residual stream.
        depth: the decoder's number of blocks.
    """

    def __init__(self, latents: int = 10, width: int = 64, depth: int = 4):
        super().__init__()
        self.latents = latents
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 256),
            nn.ReLU(),
            nn.Linear(256, 2 * latents),
        )
        self.path = ResidualMLP(latents, width, depth, 256)
        self.upsample = nn.Sequential(
            nn.ReLU(),
            nn.Linear(256, 64 * 4 * 4),
            nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),
            nn.ConvTranspose2d(64, 64, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) [N, latents] of q(z | x) for images x [N, 1, 64, 64]."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli pixel logits [N, 1, 64, 64]."""
        return self.upsample(self.path(z))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(pixel logits, μ, log σ²) of images [N, 1, 64, 64]; z is μ in eval mode."""
        mu, log_var = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        return self.decode(z), mu, log_var


@dataclass
class VAETraining:
    """What :func:`train_vae` returns: the model (eval mode) and per-step reconstruction and KL."""

    model: ConvVAE
    reconstruction: list[float]
    kl: list[float]
    seconds: float


def kl_weight(beta: float, step: int, warmup: int) -> float:
    """The KL term's weight at training step ``step`` (0-based) under a linear warm-up.

    β_t = β · min(1, (t + 1) / warmup), and β throughout when ``warmup`` is 0: KL annealing
    (Bowman et al. 2016, "Generating sentences from a continuous space"; Sønderby et al. 2016),
    which lets the encoder carry information before the KL term can close the posterior.
    """
    if warmup <= 0:
        return float(beta)
    return float(beta) * min(1.0, (step + 1) / warmup)


def _check_schedule(steps: int, warmup: int, pairs) -> None:
    if steps < 1 or warmup < 0 or any(beta < 0 or lam < 0 for beta, lam in pairs):
        raise MemspaceError("steps must be ≥ 1, warmup ≥ 0 and beta, lam ≥ 0")


def train_vae(
    dataset,
    *,
    beta: float = 1.0,
    lam: float = 0.0,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    latents: int = 10,
    width: int = 64,
    depth: int = 4,
    seed: int = 0,
    warmup: int = 0,
) -> VAETraining:
    """Train a :class:`ConvVAE` on images rendered on the fly from ``dataset``'s random factors.

    Loss per image: Σ_pixels BCE + β_t·KL(q(z|x) ‖ N(0, I)) + λ·A_kin, A_kin = h Σ_l ‖v_l‖² the
    kinetic action of the decoder's residual path (docs/theory.md §3.3), β_t = β after a linear
    KL warm-up of ``warmup`` steps (:func:`kl_weight`; 0: none).
    """
    from ..action import ActionTerm
    from ..train import optimizer_step

    _check_schedule(steps, warmup, [(beta, lam)])
    torch.manual_seed(seed)
    model = ConvVAE(latents, width, depth)
    term = ActionTerm("kinetic", model.path) if lam > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.RandomState(seed)
    recon, kls = [], []
    started = time.time()
    model.train()
    for step in range(steps):
        x = torch.from_numpy(dataset.render(dataset.sample_factors(batch_size, rng)))
        x = x.to(next(model.parameters()).dtype)
        noise = torch.randn((batch_size, latents), dtype=x.dtype)  # drawn as randn_like(μ)
        weight = torch.tensor(kl_weight(beta, step, warmup))
        total, _, _, reconstruction, kl = elbo_objective(model, term, (x, noise, weight), lam, None)
        optimizer_step(
            optimizer, total, f"training the β-VAE (β = {beta}, λ = {lam}) at step {len(recon) + 1}"
        )
        recon.append(float(reconstruction.detach()))
        kls.append(float(kl.detach()))
    model.eval()
    return VAETraining(model, recon, kls, time.time() - started)


def elbo_objective(model, term, batch, lam, probes):
    """The β-VAE's loss for a population (:mod:`memspace.population`), as :func:`train_vae`'s.

    ``batch`` is ``(x [B, 1, 64, 64], ε [B, latents], β [])``: the images, the
    reparametrisation noise and the member's β. Returns (total, ELBO term, A_kin,
    reconstruction, KL).
    """
    x, noise, beta = batch
    mu, log_var = model.encode(x)
    z = mu + noise * (0.5 * log_var).exp()
    if term is None:
        logits = model.decode(z)
    else:
        with term.capture(transformed=True) as record:
            logits = model.decode(z)
    reconstruction = (
        nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    )
    kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum(1).mean()
    loss = reconstruction + beta * kl
    penalty = loss.new_zeros(()) if term is None else term(record, logits, check_finite=False)
    total = loss if term is None else loss + lam * penalty
    return total, loss, penalty, reconstruction, kl


def train_vae_population(
    dataset,
    cells: Sequence[tuple[float, float, int]],
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    latents: int = 10,
    width: int = 64,
    depth: int = 4,
    warmup: int = 0,
) -> list[VAETraining]:
    """:func:`train_vae` for several (β, λ, seed) cells at once, as one population.

    Member k is the VAE ``train_vae(dataset, beta=β_k, lam=λ_k, seed=s_k, ...)`` trains
    alone: its initial weights from the seed, its images rendered from a
    ``RandomState(seed)``, its reparametrisation noise from the generator state that
    follows its initialisation (the global one ``train_vae`` draws from), its KL weight on
    the same warm-up.

    Raises:
        MemspaceError: for steps < 1, warmup < 0, β or λ < 0, or a member whose loss
            diverges (naming it).
    """
    from ..population import Member, Population, PopulationTrainer

    _check_schedule(steps, warmup, [(beta, lam) for beta, lam, _ in cells])
    models, noises, renders = [], [], []
    for _, _, seed in cells:
        torch.manual_seed(seed)
        models.append(ConvVAE(latents, width, depth))
        noise = torch.Generator()
        noise.set_state(torch.get_rng_state())
        noises.append(noise)
        renders.append(np.random.RandomState(seed))
    blocks = [f"path.blocks.{l}" for l in range(depth)]
    population = Population(models, block_names=blocks)
    members = [
        Member(seed=seed, action="kinetic" if lam > 0 else None, lam=lam, lr=lr)
        for _, lam, seed in cells
    ]
    trainer = PopulationTrainer(population, members, objective=elbo_objective)
    recon = [[] for _ in cells]
    kls = [[] for _ in cells]
    started = time.time()
    for step in range(steps):
        batches = {}
        for k, (beta, _, _) in enumerate(cells):
            x = torch.from_numpy(dataset.render(dataset.sample_factors(batch_size, renders[k])))
            x = x.to(population.flat.dtype)
            noise = torch.randn((batch_size, latents), generator=noises[k], dtype=x.dtype)
            batches[k] = ((x, noise, torch.tensor(kl_weight(beta, step, warmup))), None)
        for k, values in trainer.step(batches).items():
            if not np.isfinite(values[0]):
                beta, lam, seed = cells[k]
                raise MemspaceError(
                    f"the loss became {values[0]} training the β-VAE (β = {beta}, λ = {lam}, "
                    f"seed {seed}) at step {step + 1}; lower the learning rate or λ"
                )
            recon[k].append(values[3])
            kls[k].append(values[4])
    seconds = (time.time() - started) / len(cells)
    return [
        VAETraining(population.member(k).eval(), recon[k], kls[k], seconds)
        for k in range(len(cells))
    ]


def pullback_metric(decode, z: Tensor) -> Tensor:
    """G(z) = Jᵀ diag(p(1 − p)) J for Bernoulli pixel logits.

    Per latent point [M, latents, latents].

    J by forward mode (one JVP per latent: the latents are few, the pixels many), a chunk of
    points at a time, so memory stays at a few decoder passes.
    """
    from torch.func import jacfwd, vmap

    def single(point: Tensor) -> Tensor:
        return decode(point[None]).reshape(-1)

    with torch.no_grad():
        p = torch.sigmoid(decode(z).reshape(len(z), -1))
    out = []
    for start in range(0, len(z), 8):
        with torch.no_grad():
            jac = vmap(jacfwd(single))(z[start : start + 8])  # [m, pixels, latents]
        weights = p[start : start + 8] * (1 - p[start : start + 8])
        out.append(torch.einsum("mpi,mp,mpj->mij", jac, weights, jac))
    return torch.cat(out)


def latent_groups(mutual_info: np.ndarray, threshold: float = 0.05) -> list[int]:
    """The factor each latent is most informative about (−1: MI below ``threshold`` nats)."""
    mutual_info = np.asarray(mutual_info)
    groups = mutual_info.argmax(1)
    groups[mutual_info.max(1) < threshold] = -1
    return groups.tolist()


def block_diagonality(metrics: Tensor, groups: Sequence[int]) -> dict[str, Any]:
    """1 − ‖off-diagonal blocks‖_F / ‖G‖_F over the active latents.

    Averaged over points (module doc).
    """
    groups = np.asarray(groups)
    active = np.nonzero(groups >= 0)[0]
    if len(active) < 2 or len(set(groups[active].tolist())) < 2:
        return {"block_diagonality": float("nan"), "active": int(len(active)), "per_point": []}
    G = metrics[:, active][:, :, active].double()
    same = torch.from_numpy(groups[active][:, None] == groups[active][None, :])
    off = G.masked_fill(same, 0.0)
    norms = G.flatten(1).norm(dim=1)
    per_point = 1 - off.flatten(1).norm(dim=1) / norms.clamp_min(1e-300)
    return {
        "block_diagonality": float(per_point.mean()),
        "active": int(len(active)),
        "per_point": per_point.tolist(),
    }
