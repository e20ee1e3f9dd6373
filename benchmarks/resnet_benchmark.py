"""A ResNet-18-sized network.

Memspace beside curvlinops, as multiples of a gradient, with peak memory.

ResNet-18 for 32×32 inputs (3×3 stem, no max-pool, stages of 64-128-256-512 channels with two
basic blocks each, BatchNorm in eval mode, 10 classes; 11.2 M parameters), batch 128, float32.
Operations, each timed in this process (median of --rounds) and its peak memory measured in a
fresh process (VmHWM growth, set-up included):

- gradient: one forward+backward of the mean cross-entropy (the unit);
- F@v: memspace's true-Fisher product, fast (forward-mode + backward) and memory="low" (a
  graph-free J·v forward, then a forward+backward), beside curvlinops' GGN product;
- MC diagonal (1 sampled label): memspace fast and memory="low";
- K-FAC factors, MC (1 sample): memspace fast and memory="low" beside curvlinops'
KFACLinearOperator.

The diagonal and K-FAC cover the convolution and linear weights (curvlinops' K-FAC supports only
those; BatchNorm's 9.6 k parameters would take memspace's exact per-sample path). The products cover
every parameter. The two libraries' products are checked to agree before anything is timed.

    python benchmarks/resnet_benchmark.py             # full size: prints, rewrites its section
    python benchmarks/resnet_benchmark.py --quick     # batch 8, width 8: a smoke run, no RESULTS
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
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

from memspace.fisher import KFAC, FisherOperator  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, inp: int, out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """He et al. 2016's ResNet-18 in its CIFAR form (11.2 M parameters at width 64)."""

    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers, inp = [], width
        for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for block in range(2):
                layers.append(BasicBlock(inp, out, 2 if stage > 0 and block == 0 else 1))
                inp = out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(inp, classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


def setup(quick: bool, batch: int | None = None, device: str = "cpu"):
    torch.manual_seed(0)
    model = ResNet18(8 if quick else 64).eval()
    with torch.no_grad():  # BatchNorm statistics of a trained-looking network, not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    batch = batch or (8 if quick else 128)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return model.to(device), x.to(device), y.to(device)


def weights(model) -> list[str]:
    return [
        name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def tasks(model, x, y, have_curvlinops: bool) -> dict[str, callable]:
    params = list(model.parameters())
    layers = [model.get_submodule(name) for name in weights(model)]
    layer_params = [p for m in layers for p in m.parameters()]
    data = (x, y)
    F = FisherOperator(model, data, batch_size=len(x))
    F_low = FisherOperator(model, data, batch_size=len(x), memory="low")
    mc = FisherOperator(model, data, batch_size=len(x), kind="mc", params=layers)
    mc_low = FisherOperator(model, data, batch_size=len(x), kind="mc", params=layers, memory="low")
    v = torch.randn(F.shape[0]).to(x.device)
    run = {
        "gradient": lambda: torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params),
        "memspace F@v": lambda: F @ v,
        "memspace F@v, memory=low": lambda: F_low @ v,
        "memspace MC diagonal": mc.diag,
        "memspace MC diagonal, memory=low": mc_low.diag,
        "memspace K-FAC factors (MC)": lambda: KFAC(
            model, data, batch_size=len(x), kind="mc", params=layers
        ),
        "memspace K-FAC factors (MC), memory=low": lambda: KFAC(
            model, data, batch_size=len(x), kind="mc", params=layers, memory="low"
        ),
    }
    if have_curvlinops:
        import curvlinops

        ggn = curvlinops.GGNLinearOperator(
            model, nn.CrossEntropyLoss(), params, [data], check_deterministic=False
        )
        run["curvlinops GGN@v"] = lambda: ggn @ v

        def curvlinops_kfac():
            op = curvlinops.KFACLinearOperator(
                model,
                nn.CrossEntropyLoss(),
                layer_params,
                [data],
                fisher_type="mc",
                check_deterministic=False,
                separate_weight_and_bias=False,
            )
            op.compute_kronecker_factors()
            return op

        run["curvlinops K-FAC factors (MC)"] = curvlinops_kfac
    return run


def check_agreement(model, x, y) -> float:
    import curvlinops

    F = FisherOperator(model, (x, y), batch_size=len(x))
    ggn = curvlinops.GGNLinearOperator(
        model, nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)], check_deterministic=False
    )
    v = torch.randn(F.shape[0], generator=torch.Generator().manual_seed(1)).to(x.device)
    ours, theirs = F @ v, ggn @ v
    low = FisherOperator(model, (x, y), batch_size=len(x), memory="low") @ v
    return max(
        float((ours - theirs).norm() / theirs.norm()), float((low - theirs).norm() / theirs.norm())
    )


def child(name: str, quick: bool, batch: int | None) -> None:
    """Peak resident-memory growth of one operation, set-up included, in a fresh process (bytes)."""
    have = _have_curvlinops()
    reset_high_water()
    before = high_water()
    model, x, y = setup(quick, batch)
    tasks(model, x, y, have)[name]()
    print(high_water() - before)


def _have_curvlinops() -> bool:
    try:
        import curvlinops  # noqa: F401  (present or not)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child")
    parser.add_argument(
        "--batch", type=int, help="batch size (default 128; curvlinops' GPU anchor used 512)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda: on CUDA, memory is the allocator's peak"
    )
    parser.add_argument(
        "--device-label", default=None, help="a label for the machine (default: platform)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.quick, args.batch)
        return
    if args.device == "cpu":
        torch.set_num_threads(2)
    else:  # float32 means float32: no TF32 in convolutions or matrix products (for both libraries)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model, x, y = setup(args.quick, args.batch, args.device)
    have = _have_curvlinops()
    agreement = check_agreement(model, x, y) if have else float("nan")
    if have and agreement > 1e-4:
        raise SystemExit(f"memspace and curvlinops disagree: relative difference {agreement:.2e}")
    run = tasks(model, x, y, have)
    seconds = {}
    for name, fn in run.items():
        seconds[name] = median_seconds(fn, args.rounds, args.device)
        print(f"{name}: {seconds[name]:.3f} s", flush=True)
    memory = {}
    for name in run:
        if args.device != "cpu":
            memory[name] = cuda_peak(run[name], args.device)
            continue
        command = (
            [sys.executable, __file__, "--child", name]
            + (["--quick"] if args.quick else [])
            + (["--batch", str(args.batch)] if args.batch else [])
        )
        memory[name] = child_memory(command, name)
    base_t, base_m = seconds["gradient"], memory["gradient"]
    params = sum(p.numel() for p in model.parameters())
    label = args.device_label or (
        f"{platform.machine()}, 2 threads"
        if args.device == "cpu"
        else torch.cuda.get_device_name(args.device)
    )
    lines = [
        "",
        f"## ResNet-18 (32×32, 10 classes, batch {len(x)}, float32): memspace beside curvlinops",
        "",
        f"`benchmarks/resnet_benchmark.py{' --quick' if args.quick else ''}`, {label}, torch "
        f"{torch.__version__}; "
        f"{params / 1e6:.2f} M parameters, BatchNorm in eval mode. memspace's products (fast and "
        "memory=low) "
        f"and curvlinops' GGN product agree to {agreement:.1e} (relative). Diagonal and K-FAC: the "
        f"{len(weights(model))} convolution and linear weights. Median of {args.rounds} runs; "
        "memory: "
        + (
            "peak resident growth in a fresh process, set-up included, glibc returning "
            "freed memory at once."
            if args.device == "cpu"
            else "the CUDA allocator's peak above what was allocated before the operation."
        ),
        "",
        "| operation | time (× gradient) | peak memory (× gradient) | peak memory |",
        "|---|---|---|---|",
    ]
    for name in run:
        ratio_m = f"×{memory[name] / base_m:.2f}" if memory[name] and base_m else "—"
        absolute = f"{memory[name] / 2**20:.0f} MiB" if memory[name] else "—"
        lines.append(f"| {name} | ×{seconds[name] / base_t:.2f} | {ratio_m} | {absolute} |")
    lines.append(
        f"\nGradient: {base_t:.2f} s, {base_m / 2**20:.0f} MiB. Ratios within one run only."
    )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "memory": memory,
                    "agreement": agreement,
                    "label": label,
                    "batch": len(x),
                    "parameters": params,
                },
                indent=1,
            )
        )
    if not args.quick:  # replaces this script's section of RESULTS.md, keeps every other
        replace_section(args.out, lines)


if __name__ == "__main__":
    main()
