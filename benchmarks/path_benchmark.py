"""Cost of the path profile against depth: memspace's reverse mode vs a naive per-block JVP.

memspace reads every block's Fisher speed from one forward plus one backward per
output-Fisher column (C exact, 1 Monte-Carlo), so its cost relative to a gradient stays
flat in L. The naive reference runs, for every block l, a forward-mode product of the
remaining network from x_l (``torch.func.jvp``) — O(L²) block evaluations.

Model: ResidualMLP(64 → width 64, L blocks, 10 classes), batch 256 (digits-sized).
Appends its table to benchmarks/RESULTS.md (run after fisher_benchmark.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import jvp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from memspace.paths import ResidualMLP, path_profile  # noqa: E402


def naive_fisher_speeds(model: ResidualMLP, x: torch.Tensor) -> torch.Tensor:
    """s_l² by one JVP of the remaining network per block (the reference, O(L²))."""
    with torch.no_grad():
        states = model.stream(x)
        probs = model(x).softmax(1)
        speeds = []
        for layer in range(model.depth):
            v = (states[layer + 1] - states[layer]) / model.step
            _, jv = jvp(lambda s: model.forward_from(layer, s), (states[layer],), (v,))
            centred = jv - (probs * jv).sum(1, keepdim=True)
            speeds.append((probs * centred**2).sum(1).mean())
    return torch.stack(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64])
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
            "memspace exact (C=10 columns)": lambda: path_profile(model, (x, y)),
            "memspace MC (1 sample)": lambda: path_profile(model, (x, y), kind="mc"),
            "naive per-block JVP": lambda: naive_fisher_speeds(model, x),
        }
        exact = torch.as_tensor(path_profile(model, (x, y)).fisher_speeds ** 2, dtype=torch.float32)
        torch.testing.assert_close(naive_fisher_speeds(model, x), exact, rtol=1e-3, atol=1e-6)
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
    lines = ["", "## Path profile cost against depth", "",
             "ResidualMLP 64→64, 10 classes, batch 256; times as multiples of a gradient of the same",
             "model in the same run (`benchmarks/path_benchmark.py`). Both methods agree to 1e-3.", "",
             "| L | " + " | ".join(keys[1:]) + " | gradient (ms) |", "|---|" + "---|" * len(keys)]
    for depth, med in rows:
        lines.append(f"| {depth} | " + " | ".join(f"×{med[k] / med['gradient']:.2f}" for k in keys[1:])
                     + f" | {med['gradient'] * 1e3:.2f} |")
    text = args.out.read_text() if args.out.exists() else "# Benchmark results\n"
    marker = "\n## Path profile cost against depth"
    if marker in text:
        text = text[: text.index(marker)]
    args.out.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
