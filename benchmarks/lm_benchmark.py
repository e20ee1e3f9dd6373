"""A GPT-2-small-sized language model: the Fisher over positions and the logit lens.

As multiples of a gradient, with peak memory.

GPT-2 small's configuration (12 layers, d 768, 12 heads, vocabulary 50 257; 124 M parameters)
with random weights, a batch of 4 sequences of T = 128 tokens, float32, Hugging Face's eager
attention. Operations, each timed in this process (median of --rounds) and its peak memory measured
in a fresh process (VmHWM growth, set-up included):

- gradient: one forward+backward of the mean next-token cross-entropy (the unit);
- F@v over every (sequence, position) pair (``positions="all"``, the true Fisher, Λ applied
  analytically per position): fast and memory="low";
- the MC diagonal, one sampled label per position (per-sequence columns);
- the logit lens over all 12 layers (``lens_path``), against a forward+backward.

curvlinops' GGN@v over every position (its model given the dict batch, its loss the mean
cross-entropy) is timed beside memspace's F@v in the same run.

Targets of issue #23: F@v ≤ 2.5× a gradient; memory="low" F@v at ≤ 1.5× a gradient's peak
memory; MC diagonal ≤ 3×; the lens ≤ 1.5× a forward+backward.

    python benchmarks/lm_benchmark.py            # prints; rewrites its section of RESULTS.md
    python benchmarks/lm_benchmark.py --quick    # 2 layers, T 16: a smoke run, no RESULTS
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from _measure import (  # noqa: E402
    child_memory,
    cuda_peak,
    high_water,
    median_seconds,
    replace_section,
    reset_high_water,
)

from memspace import MemspaceWarning  # noqa: E402
from memspace.fisher import FisherOperator  # noqa: E402
from memspace.paths import lens_path  # noqa: E402

CURVLINOPS = "curvlinops GGN@v (every position)"


def setup(quick: bool, device: str = "cpu"):
    import transformers

    transformers.utils.logging.set_verbosity_error()
    layers, length = (2, 16) if quick else (12, 128)
    config = transformers.GPT2Config(n_layer=layers, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(
        0, config.vocab_size, (4, length), generator=torch.Generator().manual_seed(1)
    ).to(device)
    return model.to(device), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def tasks(model, batch) -> dict[str, callable]:
    params = [p for p in model.parameters() if p.requires_grad]
    options = {"positions": "all", "output": "logits", "batch_size": 4}
    F = FisherOperator(model, batch, **options)
    low = FisherOperator(model, batch, memory="low", **options)
    mc = FisherOperator(model, batch, kind="mc", **options)
    v = torch.randn(F.shape[0], generator=torch.Generator().manual_seed(2)).to(F.device)
    ids = batch["input_ids"]

    def gradient():
        loss = model(**batch, labels=ids).loss
        return torch.autograd.grad(loss, params)

    return {
        "gradient": gradient,
        "memspace F@v": lambda: F @ v,
        "memspace F@v, memory=low": lambda: low @ v,
        "memspace diag, MC (1 label per position)": mc.diag,
        "memspace logit lens, every layer": lambda: lens_path(model, batch, batch_size=4),
        **_curvlinops(model, batch, params, v),
    }


class _FlatLogits(nn.Module):
    """The LM as curvlinops takes a model: a dict batch in, logits [N·T, V] for its loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(**batch).logits.flatten(0, 1)


def _curvlinops(model, batch, params, v) -> dict[str, callable]:
    """The GGN@v of curvlinops (the true Fisher of the softmax cross-entropy) over every position.

    Its model sees a dict batch and returns every position's logits, its loss the mean
    cross-entropy over positions; the vector is memspace's, split per parameter. Absent when
    curvlinops is not installed (said on stderr).
    """
    try:
        from curvlinops import GGNLinearOperator
    except ImportError as error:
        print(f"curvlinops not run: {error}", file=sys.stderr)
        return {}
    labels = batch["input_ids"].flatten()
    ggn = GGNLinearOperator(
        _FlatLogits(model),
        nn.CrossEntropyLoss(),
        params,
        [(batch, labels)],
        batch_size_fn=lambda b: b["input_ids"].shape[0],
        check_deterministic=False,
        progressbar=False,
    )
    pieces = list(torch.split(v, [p.numel() for p in params]))
    vector = [piece.reshape(p.shape) for piece, p in zip(pieces, params)]
    return {"curvlinops GGN@v (every position)": lambda: ggn @ vector}


def child(name: str, quick: bool) -> None:
    """Peak resident-memory growth of one operation, set-up included, in a fresh process (bytes)."""
    import transformers  # noqa: F401  (imported before the baseline)

    reset_high_water()
    before = high_water()
    model, batch = setup(quick)
    tasks(model, batch)[name]()
    print(high_water() - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda: on CUDA, memory is the allocator's peak"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", MemspaceWarning)
    torch.set_num_threads(2)
    if args.child:
        child(args.child, args.quick)
        return
    model, batch = setup(args.quick, args.device)
    run = tasks(model, batch)
    plan = FisherOperator(model, batch, positions="all", output="logits").plan()
    seconds = {name: median_seconds(fn, args.rounds, args.device) for name, fn in run.items()}
    memory = {}
    for name in run:
        if args.device != "cpu":
            memory[name] = cuda_peak(run[name], args.device)
            continue
        command = [sys.executable, __file__, "--child", name, *(["--quick"] if args.quick else [])]
        memory[name] = child_memory(command, name)
    base_t, base_m = seconds["gradient"], memory["gradient"]
    params = sum(p.numel() for p in model.parameters())
    layers, length = model.config.n_layer, batch["input_ids"].shape[1]
    lines = [
        "",
        "## GPT-2-small-sized language model: the Fisher over positions and the logit lens",
        "",
        f"`benchmarks/lm_benchmark.py{' --quick' if args.quick else ''}`, "
        + (
            f"{platform.machine()}, 2 threads"
            if args.device == "cpu"
            else torch.cuda.get_device_name(args.device)
        )
        + f", torch {torch.__version__}; GPT-2 configuration with {layers} layers "
        f"({params / 1e6:.1f} M parameters, random weights), batch 4 × T {length}, float32, eager "
        f"attention. Layer taps: {len(plan.tapped)} layers fast, exact: "
        f"{', '.join(plan.exact) or 'none'}. Median of {args.rounds} runs; memory: "
        + (
            "peak resident growth in a fresh process, set-up included, glibc returning "
            "freed memory at once."
            if args.device == "cpu"
            else "the CUDA allocator's peak above what was allocated before the operation."
        ),
        "",
        "| operation | time (× gradient) | peak memory (× gradient) |",
        "|---|---|---|",
    ]
    for name in run:
        ratio_m = f"×{memory[name] / base_m:.2f}" if memory[name] and base_m else "—"
        lines.append(f"| {name} | ×{seconds[name] / base_t:.2f} | {ratio_m} |")

    def verdict(value: float | None, target: float) -> str:
        if value is None:
            return "not measured"
        return f"×{value:.2f} (target ≤ {target}: {'met' if value <= target else 'missed'})"

    low_m = memory["memspace F@v, memory=low"]
    lines += [
        "",
        "Targets of #23: F@v "
        + verdict(seconds["memspace F@v"] / base_t, 2.5)
        + "; memory=low F@v peak memory "
        + verdict(low_m / base_m if low_m and base_m else None, 1.5)
        + "; MC diagonal "
        + verdict(seconds["memspace diag, MC (1 label per position)"] / base_t, 3)
        + (
            f"; curvlinops' GGN@v ×{seconds[CURVLINOPS] / base_t:.2f} in the same run"
            if CURVLINOPS in seconds
            else ""
        )
        + "; logit lens "
        + verdict(seconds["memspace logit lens, every layer"] / base_t, 1.5)
        + " a forward+backward.",
        f"\nGradient: {base_t:.2f} s"
        + (f", {base_m / 2**20:.0f} MiB" if base_m else "")
        + ". Ratios within one run only.",
    ]
    print("\n".join(lines))
    if not args.quick:
        replace_section(args.out, lines)


if __name__ == "__main__":
    main()
