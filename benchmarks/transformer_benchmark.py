"""Fisher products on a transformer encoder: memspace beside curvlinops, as multiples of a gradient.

A 2-layer ``nn.TransformerEncoder`` (d_model 64, 4 heads, feed-forward 128, batch-first,
sequence 16, batch 64, mean-pooled into a 10-class linear read-out). memspace runs every pass
with math attention and no fused MHA path (``derivative_kernels``); its diagonal's layer taps
refuse attention's ``out_proj`` and take the exact per-sample path for it (``F.tap_plan()``).
The two libraries' true-Fisher (GGN) products are checked to agree before anything is timed.
curvlinops needs memspace's ``derivative_kernels`` around its product: on a default encoder in
eval mode PyTorch takes the fused ``_transformer_encoder_layer_fwd``, which has no forward-mode
derivative, and curvlinops' GGN product stops with NotImplementedError.

    python benchmarks/transformer_benchmark.py            # prints, and appends to RESULTS.md
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from memspace._model_call import derivative_kernels  # noqa: E402
from memspace.fisher import FisherOperator  # noqa: E402


class EncoderClassifier(nn.Module):
    def __init__(self, d_model: int = 64, heads: int = 4, layers: int = 2, classes: int = 10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=128, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def setup():
    torch.manual_seed(0)
    model = EncoderClassifier().eval()
    x, y = torch.randn(64, 16, 64), torch.randint(0, 10, (64,))
    return model, x, y


def tasks(model, x, y) -> dict[str, callable]:
    import curvlinops

    params = list(model.parameters())
    F = FisherOperator(model, (x, y), batch_size=len(x))
    mc = FisherOperator(model, (x, y), batch_size=len(x), kind="mc")
    ggn = curvlinops.GGNLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False
    )
    v = torch.randn(F.shape[0])

    def gradient():
        return torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)

    def curvlinops_product():
        with derivative_kernels(
            model
        ):  # without it curvlinops fails: the fused encoder has no forward AD
            return ggn @ v

    return {
        "gradient": gradient,
        "memspace F@v": lambda: F @ v,
        "curvlinops GGN@v": curvlinops_product,
        "memspace diag, MC (1 sample)": mc.diag,
        "memspace diag, exact": F.diag,
    }


def check_agreement(model, x, y) -> float:
    """Relative difference of memspace's F@v and curvlinops' GGN@v (both the true Fisher of CE)."""
    import curvlinops

    F = FisherOperator(model, (x, y), batch_size=len(x))
    ggn = curvlinops.GGNLinearOperator(
        model, nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)], check_deterministic=False
    )
    v = torch.randn(F.shape[0], generator=torch.Generator().manual_seed(1))
    ours = F @ v
    with derivative_kernels(model):
        theirs = ggn @ v
    return float((ours - theirs).norm() / theirs.norm())


def median_seconds(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child(name: str) -> None:
    """Peak resident-memory growth of one operation, set-up included, in a fresh process (bytes).

    ru_maxrss survives fork+exec (a child starts at its parent's peak), so the high-water mark
    is reset through /proc/self/clear_refs and read from /proc/self/status (VmHWM).
    """
    import curvlinops  # noqa: F401  (imported before the baseline, like everything else)

    def high_water() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    Path("/proc/self/clear_refs").write_text("5")
    before = high_water()
    model, x, y = setup()
    run = tasks(model, x, y)[name]
    run()
    print(high_water() - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--child")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    torch.set_num_threads(2)
    model, x, y = setup()
    agreement = check_agreement(model, x, y)
    if agreement > 1e-4:
        raise SystemExit(f"memspace and curvlinops disagree: relative difference {agreement:.2e}")
    plan = FisherOperator(model, (x, y), batch_size=len(x)).tap_plan()
    run = tasks(model, x, y)
    seconds = {name: median_seconds(fn, args.rounds) for name, fn in run.items()}
    memory = {}
    for name in run:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name], capture_output=True, text=True
        )
        memory[name] = (
            int(out.stdout.strip().splitlines()[-1])
            if out.returncode == 0 and out.stdout.strip()
            else None
        )
        if memory[name] is None:
            print(f"memory of {name!r} not measured: {out.stderr.strip()[-300:]}", file=sys.stderr)
    base_t, base_m = seconds["gradient"], memory["gradient"]
    lines = [
        "",
        "## Transformer encoder: memspace beside curvlinops",
        "",
        "2-layer `nn.TransformerEncoder` (d 64, 4 heads, FF 128, batch-first), sequence 16, "
        "batch 64, "
        f"10 classes; `benchmarks/transformer_benchmark.py`, {platform.machine()}, 2 threads, "
        "torch "
        f"{torch.__version__}. memspace F@v and curvlinops GGN@v agree to {agreement:.1e} "
        "(relative). "
        "curvlinops runs inside memspace's `derivative_kernels`: on the default encoder in eval "
        "mode its GGN "
        "product raises NotImplementedError (the fused encoder-layer kernel has no forward-mode "
        "rule). "
        f"Layer taps: {len(plan.taps)} taps, {len(plan.fallback)} parameters on the exact "
        "per-sample path "
        f"({', '.join(sorted(set(plan.reasons)))[:160] or 'none'}).",
        "",
        "| operation | time (× gradient) | peak memory growth, set-up included (× gradient) |",
        "|---|---|---|",
    ]
    for name in run:
        ratio_m = f"×{memory[name] / base_m:.2f}" if memory[name] and base_m else "—"
        lines.append(f"| {name} | ×{seconds[name] / base_t:.2f} | {ratio_m} |")
    lines.append(
        f"\nGradient: {base_t * 1e3:.2f} ms. Ratios within one run only; ±10 % run to run on "
        "these machines."
    )
    print("\n".join(lines))
    with args.out.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
