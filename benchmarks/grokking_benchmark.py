"""Grokking (#22): the cost of a training step, of a population of seeds, and of a checkpoint.

Two configurations of :mod:`memspace.studies.grokking`:

- ``anchor``: Nanda et al.'s one-layer transformer (d_model 128, 4 heads, d_mlp 512) on
  (a + b) mod 113 with 30 % of the pairs (3 830 training pairs) — the GPU study's;
- ``cpu``: the CPU study's residual MLP (width 128) on (a + b) mod 47 with 40 % of the pairs.

For each: the wall time of a full-batch AdamW step for one seed, per 1 000 steps; the same for a
population of 5 seeds trained as one (their parameters stacked, the forward ``vmap``-ed, AdamW on
the stacked tensors — AdamW is elementwise, so each member's update is its own); and the cost of
measuring one checkpoint (every measure of the study, :func:`checkpoint_measures`) in training
steps of one seed (the issue's bound: under 100, so dense checkpoints stay affordable).

    python benchmarks/grokking_benchmark.py [--device cuda] [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _measure import median_seconds, replace_section  # noqa: E402
from torch.func import functional_call, stack_module_state  # noqa: E402
from torch.nn import functional as nnf  # noqa: E402

from memspace.studies.grokking import (  # noqa: E402
    GROKKING_CONFIGS,
    build_modular_model,
    checkpoint_measures,
    prepare_grokking,
)

CONFIGS = {
    "anchor": dict(GROKKING_CONFIGS["anchor"], device="cpu"),  # trained on --device below
    "cpu": dict(GROKKING_CONFIGS["full"]),
}
SEEDS = 5


def _on(split, device):
    return tuple(t.to(device) for t in split.train), tuple(t.to(device) for t in split.test)


def measure(name: str, config: dict, device: str, rounds: int) -> dict:
    split = prepare_grokking(config)
    (X, y), _ = _on(split, device)
    model = build_modular_model(config, 0).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=1.0, betas=(0.9, 0.98)
    )

    def step() -> None:
        loss = nnf.cross_entropy(model(X), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    single = median_seconds(lambda: [step() for _ in range(10)], rounds, device) / 10

    members = [build_modular_model(config, s).to(device) for s in range(SEEDS)]
    params, buffers = stack_module_state(members)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(members[0]).to("meta")
    pop_opt = torch.optim.AdamW(
        params.values(), lr=config["lr"], weight_decay=1.0, betas=(0.9, 0.98)
    )

    def member_logits(p, b):
        return functional_call(base, (p, b), (X,))

    def population_step() -> None:
        logits = torch.vmap(member_logits)(params, buffers)  # [K, N, C]
        loss = nnf.cross_entropy(logits.flatten(0, 1), y.repeat(SEEDS), reduction="sum") / len(y)
        pop_opt.zero_grad(set_to_none=True)
        loss.backward()
        pop_opt.step()

    population = median_seconds(lambda: [population_step() for _ in range(10)], rounds, device) / 10

    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    checkpoint = median_seconds(
        lambda: checkpoint_measures(model, split, init, config, seed=0), max(1, rounds // 2), device
    )
    return dict(
        name=name,
        pairs=len(split.train[0]),
        parameters=sum(p.numel() for p in model.parameters()),
        step=single,
        population=population,
        checkpoint=checkpoint,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]  # other work on the machine inflates every time (not the ratios much)
    rows = [measure(name, cfg, args.device, args.rounds) for name, cfg in CONFIGS.items()]
    machine = (
        f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {args.threads} torch thread(s), torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
        + f", {os.cpu_count()} CPUs, load average {load:.1f} at the start"
    )
    lines = [
        "## Grokking: a step, a population of 5 seeds, a checkpoint (#22)",
        "",
        f"`benchmarks/grokking_benchmark.py` on {machine}. Full-batch AdamW on every training "
        "pair. *Population*: 5 seeds stacked and trained as one (vmap); its ratio is to 5 "
        "sequential seeds. *Checkpoint*: every measure of the grokking study (on 256 train and "
        "256 test pairs, on the same device), in steps of one seed (the bound: < 100).",
        "",
        "| configuration | training pairs | parameters | s / 1 000 steps, 1 seed | "
        "s / 1 000 steps, 5 seeds as one | ratio to 5 × 1 seed | checkpoint, in steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['pairs']} | {r['parameters']:,} | {1000 * r['step']:.1f} | "
            f"{1000 * r['population']:.1f} | {r['population'] / (SEEDS * r['step']):.2f} | "
            f"{r['checkpoint'] / r['step']:.0f} |"
        )
    print("\n".join(lines))
    replace_section(args.out, lines)


if __name__ == "__main__":
    main()
