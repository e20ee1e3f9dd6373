"""Fisher products on a transformer encoder: memspace beside curvlinops, as multiples of a gradient.

A 2-layer ``nn.TransformerEncoder`` (d_model 64, 4 heads, feed-forward 128, batch-first,
sequence 16, batch 64, mean-pooled into a 10-class linear read-out). memspace runs every pass
with math attention and no fused MHA path (``derivative_kernels``); its layer taps cover
attention's packed in-projection and out-projection through their ``F.linear`` calls, so only
the layer norms take the exact per-sample path (``F.plan()``). The exact diagonal is set beside
its (C − 1)-column cost on an MLP of about the same parameter count (1024-64-10 on the flattened
inputs). The two libraries' true-Fisher (GGN) products are checked to agree before anything is
timed; curvlinops' K-FAC covers the Linear modules it can hook (attention's projections are not
called as modules), memspace's K-FAC every linear map.
curvlinops needs memspace's ``derivative_kernels`` around its product: on a default encoder in
eval mode PyTorch takes the fused ``_transformer_encoder_layer_fwd``, which has no forward-mode
derivative, and curvlinops' GGN product stops with NotImplementedError.

    python benchmarks/transformer_benchmark.py   # prints; rewrites its section of RESULTS.md
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
    high_water,
    median_seconds,
    replace_section,
    reset_high_water,
)

from memspace import MemspaceWarning  # noqa: E402
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


def mlp_twin() -> nn.Module:
    """An MLP of about the encoder's parameter count on the flattened inputs (1024-64-10)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16 * 64, 64), nn.Tanh(), nn.Linear(64, 10)).eval()


def tasks(model, x, y) -> dict[str, callable]:
    import curvlinops

    from memspace.fisher import KFAC

    params = list(model.parameters())
    F = FisherOperator(model, (x, y), batch_size=len(x))
    mc = FisherOperator(model, (x, y), batch_size=len(x), kind="mc")
    ggn = curvlinops.GGNLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False
    )
    v = torch.randn(F.shape[0])
    mlp = mlp_twin()
    mlp_params = list(mlp.parameters())
    mlp_exact = FisherOperator(mlp, (x, y), batch_size=len(x))
    hooked = [  # the Linear modules curvlinops can hook (attention calls its projections itself)
        p
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not name.endswith("out_proj")
        for p in m.parameters()
    ]

    def gradient():
        return torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)

    def mlp_gradient():
        return torch.autograd.grad(nn.functional.cross_entropy(mlp(x), y), mlp_params)

    def curvlinops_product():
        with derivative_kernels(
            model
        ):  # without it curvlinops fails: the fused encoder has no forward AD
            return ggn @ v

    def curvlinops_kfac():
        with derivative_kernels(model):
            op = curvlinops.KFACLinearOperator(
                model,
                nn.CrossEntropyLoss(),
                hooked,
                [(x, y)],
                fisher_type="mc",
                check_deterministic=False,
                separate_weight_and_bias=False,
            )
            op.compute_kronecker_factors()
        return op

    return {
        "gradient": gradient,
        "memspace F@v": lambda: F @ v,
        "curvlinops GGN@v": curvlinops_product,
        "memspace diag, MC (1 sample)": mc.diag,
        "memspace diag, exact": F.diag,
        "memspace K-FAC factors (MC), every linear map": lambda: KFAC(
            model, (x, y), batch_size=len(x), kind="mc"
        ),
        "curvlinops K-FAC factors (MC), hooked Linear modules": curvlinops_kfac,
        "MLP 1024-64-10: gradient": mlp_gradient,
        "MLP 1024-64-10: diag, exact (C − 1 columns)": mlp_exact.diag,
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


def child(name: str) -> None:
    """Peak resident-memory growth of one operation, set-up included, in a fresh process (bytes).

    ru_maxrss survives fork+exec (a child starts at its parent's peak), so the high-water mark
    is reset through /proc/self/clear_refs and read from /proc/self/status (VmHWM).
    """
    import curvlinops  # noqa: F401  (imported before the baseline, like everything else)

    reset_high_water()
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
    warnings.simplefilter("ignore", MemspaceWarning)  # K-FAC: the layer norms have no block
    run = tasks(model, x, y)
    seconds = {name: median_seconds(fn, args.rounds) for name, fn in run.items()}
    memory = {}
    for name in run:
        memory[name] = child_memory([sys.executable, __file__, "--child", name], name)
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
        base = seconds["MLP 1024-64-10: gradient"] if name.startswith("MLP") else base_t
        lines.append(f"| {name} | ×{seconds[name] / base:.2f} | {ratio_m} |")
    mc_ratio = seconds["memspace diag, MC (1 sample)"] / base_t
    exact_ratio = seconds["memspace diag, exact"] / base_t
    mlp_ratio = (
        seconds["MLP 1024-64-10: diag, exact (C − 1 columns)"] / seconds["MLP 1024-64-10: gradient"]
    )
    kfac = seconds["memspace K-FAC factors (MC), every linear map"]
    theirs = seconds["curvlinops K-FAC factors (MC), hooked Linear modules"]
    lines += [
        "",
        "MLP rows are multiples of the MLP's own gradient. Targets of #24: MC diagonal "
        f"×{mc_ratio:.2f} a gradient (target ≤ 3: {'met' if mc_ratio <= 3 else 'missed'}); exact "
        f"diagonal ×{exact_ratio:.2f}, against ×{mlp_ratio:.2f} for the MLP's C − 1 columns, "
        "a ratio "
        f"of {exact_ratio / mlp_ratio:.2f} (target ≤ 2: "
        f"{'met' if exact_ratio <= 2 * mlp_ratio else 'missed'}); K-FAC {kfac / theirs:.2f}× "
        "curvlinops' time (which covers fewer layers).",
        f"\nGradient: {base_t * 1e3:.2f} ms. Ratios within one run only; ±10 % run to run on "
        "these machines.",
    ]
    print("\n".join(lines))
    replace_section(args.out, lines)


if __name__ == "__main__":
    main()
