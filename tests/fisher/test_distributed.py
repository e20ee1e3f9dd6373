"""Sums over batches reduce across processes: two gloo ranks on halves equal one process on all."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cases import make_case  # noqa: E402

from memspace.fisher import FisherOperator  # noqa: E402


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    case = make_case("residual")
    half = slice(0, 5) if rank == 0 else slice(5, None)
    F = FisherOperator(case.model, (case.inputs[half], case.targets[half]), batch_size=2, distributed=True)
    torch.manual_seed(0)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.save({"mv": F @ v, "diag": F.diag(), "quad": F.quad(v), "n": F.num_data}, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # The results are on disk. Leave without running C++ static destructors: one of gloo's
    # threads sometimes outlives them at interpreter exit and aborts the rank ("terminate
    # called without an active exception", about 1 run in 6 on this machine, before any change).
    os._exit(0)


def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    case = make_case("residual")
    F = FisherOperator(case.model, (case.inputs, case.targets))
    torch.manual_seed(0)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["n"] == 9
        torch.testing.assert_close(got["mv"], F @ v)
        torch.testing.assert_close(got["diag"], F.diag())
        torch.testing.assert_close(got["quad"], F.quad(v))
