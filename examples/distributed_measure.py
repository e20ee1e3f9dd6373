"""Every memspace quantity with the data sharded across processes.

    torchrun --nproc-per-node 2 examples/distributed_measure.py            # CPU ranks (gloo)
    torchrun --nproc-per-node 4 examples/distributed_measure.py --float64  # compare with
    --processes 1

Each rank takes its share of the digits training set, streams it, and every sum and count is
all-reduced (memspace.distributed): each rank prints — and rank 0 reports — the numbers one process
would compute on all the data. A rank that fails stops the others with its message; one that dies is
reported after --timeout seconds. On one machine torchrun's store listens on MASTER_ADDR; set
MASTER_ADDR=127.0.0.1 and GLOO_SOCKET_IFNAME=lo to keep everything on the loopback interface. Give
each process its own cores (torchrun sets OMP_NUM_THREADS=1 for several processes): threads of
several processes fighting over the same cores make every product many times slower.
"""

from __future__ import annotations

import argparse

import torch

from memspace import (
    FisherOperator,
    ResidualMLP,
    block_sensitivity,
    fisher_rao_norm,
    predictive_path,
)
from memspace.data import load_dataset
from memspace.distributed import init_process_group, shard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        help="a .safetensors state of ResidualMLP(64, 32, 8, 10) (default: seeded init)",
    )
    parser.add_argument(
        "--float64", action="store_true", help="measure in float64 (equal to one process to 1e-12)"
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    rank, world = init_process_group("env://", backend="gloo", timeout_s=args.timeout)
    torch.manual_seed(0)
    model = ResidualMLP(64, 32, 8, 10)
    if args.weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.weights))
    dtype = torch.float64 if args.float64 else torch.float32
    model = model.to(dtype).eval()
    X, y = load_dataset("digits", seed=0).train
    X, y = shard((X.to(dtype), y), rank, world)
    F = FisherOperator(model, (X, y), distributed=True, batch_size=128)
    numbers = {
        "points": F.num_data,
        "trace": float(F.trace()),
        "top eigenvalues": [round(float(v), 6) for v in F.eigh(3, tol=1e-4)[0]],
        "K-FAC trace": float(F.kfac().trace()),
        "Fisher–Rao norm": fisher_rao_norm(model, (X, y), distributed=True),
        "A/A_min": predictive_path(model, (X, y), distributed=True).ratio,
        "block sensitivity": [
            round(float(s), 5)
            for s in block_sensitivity(model, (X, y), distributed=True).sensitivity
        ],
    }
    print(f"rank {rank}/{world}: {numbers}", flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
