"""E5's recipe pilot: which training recipe keeps the β-VAE out of posterior collapse?

E5's first confirmatory cell (β = 1, λ = 0, seed 0, 1 500 steps of Adam at 10⁻³, no KL
warm-up) collapsed completely: training KL 0.006 nats, every latent below 0.001 nats, the
reconstruction at the mean image (576 nats). Before E5 goes on, its recipe is amended on this
pilot, which uses a seed outside the experiment's (100), so no confirmatory cell is trained
twice or chosen on. Each variant is trained once and stored as it finishes; what is recorded:

- the reconstruction and KL of the training batches, averaged over windows of 100 steps
  (the trajectory: does the model leave the mean-image plateau, and when?);
- per latent, the mean KL(q(z_j | x) ‖ N(0, 1)) over 1 000 freshly rendered images, and how
  many latents reach E5's 0.1-nat activity threshold;
- the training time on this machine.

The rule the amendment follows, fixed before the pilot's first variant ran: the cheapest
variant (fewest steps) under which both β = 1 and β = 4 end with at least two active latents
and a reconstruction below 300 nats per image is E5's recipe.

    python experiments/e5_pilot.py run      # trains what experiments/e5/pilot.json lacks
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _preregistered import commit, machine, write_results  # noqa: E402
from e5_disentanglement import _codes, latent_kl  # noqa: E402

from memspace.disentanglement import DSpritesLike  # noqa: E402
from memspace.disentanglement.vae import train_vae  # noqa: E402

PILOT = HERE / "e5" / "pilot.json"
SEED = 100
VARIANTS = {
    "beta=1, warm-up 1000, 3000 steps": dict(beta=1.0, lam=0.0, warmup=1000, steps=3000),
    "beta=4, warm-up 1000, 3000 steps": dict(beta=4.0, lam=0.0, warmup=1000, steps=3000),
    "beta=1, no warm-up, 3000 steps": dict(beta=1.0, lam=0.0, warmup=0, steps=3000),
    "beta=4, lam=1, warm-up 1000, 3000 steps": dict(beta=4.0, lam=1.0, warmup=1000, steps=3000),
}
FIXED = dict(batch_size=64, lr=1e-3, latents=10, width=64, depth=4)
RULE = (
    "the cheapest variant under which both β = 1 and β = 4 end with ≥ 2 latents at ≥ 0.1 nats "
    "and a reconstruction below 300 nats per image"
)


def windows(values: list[float], size: int = 100) -> list[float]:
    """Means of consecutive windows of ``size`` steps."""
    return [float(np.mean(values[i : i + size])) for i in range(0, len(values), size)]


def main() -> None:
    torch.set_num_threads(1)
    dataset = DSpritesLike()
    done = __import__("json").loads(PILOT.read_text()) if PILOT.exists() else {}
    done.setdefault("variants", {})
    done.update(rule=RULE, seed=SEED, fixed=FIXED)
    for name, variant in VARIANTS.items():
        if name in done["variants"]:
            continue
        trained = train_vae(dataset, seed=SEED, **FIXED, **variant)
        rng = np.random.RandomState(SEED + 12345)
        mu, log_var = _codes(trained.model, dataset, dataset.sample_factors(1000, rng))
        kl = latent_kl(mu, log_var)
        done["variants"][name] = dict(
            config=dict(FIXED, **variant),
            reconstruction_per_100=windows(trained.reconstruction),
            kl_per_100=windows(trained.kl),
            final_reconstruction=float(np.mean(trained.reconstruction[-100:])),
            final_kl=float(np.mean(trained.kl[-100:])),
            latent_kl=kl.tolist(),
            active_latents=int((kl >= 0.1).sum()),
            train_seconds=trained.seconds,
            machine=machine(),
            commit=commit(),
            finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        )
        write_results(PILOT, done)
        print(
            f"pilot: {name}: reconstruction {done['variants'][name]['final_reconstruction']:.1f}, "
            f"KL {done['variants'][name]['final_kl']:.2f}, "
            f"{done['variants'][name]['active_latents']} active, {trained.seconds:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:] != ["run"]:
        sys.exit("usage: python experiments/e5_pilot.py run")
    main()
