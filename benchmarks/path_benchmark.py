"""Cost of the predictive path and the block sensitivity against depth, as multiples of a gradient.

The predictive path needs one forward with hooks on the blocks plus L+1 read-out
evaluations (target: ≤ 1.3× a gradient, flat in L). The block sensitivity needs one
forward and one backward of the C output-Fisher columns (batched); its deletion KL adds L
forwards (shown separately). The naive reference for the predictive path runs the
read-out after re-running the network block by block from the input for every l (O(L²)).

Model: ResidualMLP(64 → width 64, L blocks, 10 classes), batch 256 (digits-sized).
Appends its table to benchmarks/RESULTS.md (run after fisher_benchmark.py).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from memspace.paths import ResidualMLP, block_sensitivity, predictive_path  # noqa: E402
from memspace.paths.predictive import fisher_rao_distance  # noqa: E402


def naive_predictive_action(model: ResidualMLP, x: torch.Tensor) -> float:
    """A by recomputing the stream from the input for every state (the O(L²) reference)."""
    with torch.no_grad():
        logs = []
        for layer in range(model.depth + 1):
            state = model.stem(x)
            for block in model.blocks[:layer]:
                state = block(state)
            logs.append(model.head(state).log_softmax(1))
        d = torch.stack([fisher_rao_distance(a, b) for a, b in zip(logs[:-1], logs[1:])], 1)
        return float((model.depth * d.pow(2).sum(1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    rows = []
    for depth in args.depths:
        model = ResidualMLP(64, 64, depth, 10).eval()
        params = list(model.parameters())

        def gradient():
            return torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)

        tasks = {
            "gradient": gradient,
            "predictive path": lambda: predictive_path(model, (x, y)),
            "naive predictive (O(L²))": lambda: naive_predictive_action(model, x),
            "block sensitivity": lambda: block_sensitivity(model, (x, y), deletion=False),
            "+ deletion KL of every block": lambda: block_sensitivity(model, (x, y)),
        }
        exact = predictive_path(model, (x, y)).action
        assert abs(naive_predictive_action(model, x) / exact - 1) < 1e-4
        times = {k: [] for k in tasks}
        for fn in tasks.values():
            fn()
        for _ in range(args.rounds):
            for key, fn in tasks.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((depth, med))
        print(f"L={depth}: " + ", ".join(f"{k} ×{v / med['gradient']:.2f}" for k, v in med.items()))
    keys = list(rows[0][1])
    lines = [
        "",
        "## Path measures against depth",
        "",
        "ResidualMLP 64→64, 10 classes, batch 256; times as multiples of a gradient of the same",
        f"model in the same run (`benchmarks/path_benchmark.py`, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}). The naive reference "
        "agrees to 1e-4.",
        "",
        "| L | " + " | ".join(keys[1:]) + " | gradient (ms) |",
        "|---|" + "---|" * len(keys),
    ]
    for depth, med in rows:
        lines.append(
            f"| {depth} | "
            + " | ".join(f"×{med[k] / med['gradient']:.2f}" for k in keys[1:])
            + f" | {med['gradient'] * 1e3:.2f} |"
        )
    text = args.out.read_text() if args.out.exists() else "# Benchmark results\n"
    for marker in ("\n## Path profile cost against depth", "\n## Path measures against depth"):
        if marker in text:
            text = text[: text.index(marker)]
    args.out.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
