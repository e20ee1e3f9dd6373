"""Every quantity (EKFAC too) over data sharded across two gloo ranks equals one process on all.

Two CPU processes, a file rendezvous and GLOO_SOCKET_IFNAME=lo (nothing listens beyond this
machine), float64, shards of unequal size (6 and 5 points, batches of 2). Each rank must return
the one-process value to 1e-12 and the same bits as the other rank; a rank that fails stops the
other with its message; a rank that dies is reported after the group's timeout, not a hang.
"""

from __future__ import annotations

import json
import os
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from memspace import (
    FisherOperator,
    ResidualMLP,
    block_sensitivity,
    fisher_rao_norm,
    predictive_path,
)
from memspace.distributed import Collective, DistributedError, init_process_group, shard


def problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ResidualMLP(4, 5, 3, 3).double().eval()
    X = torch.randn(11, 4, dtype=torch.float64)
    return model, X, torch.randint(0, 3, (11,))


class TokenModel(torch.nn.Module):
    """Token ids [N, T] → logits [N, T, 6] (an embedding, a causal running mean, a head)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 3)
        self.head = torch.nn.Linear(3, 6)

    def forward(self, ids):
        h = torch.tanh(self.embed(ids)).cumsum(1) / torch.arange(1, ids.shape[1] + 1)[:, None]
        return self.head(h)


def sequence_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """11 sequences of 5 tokens; labels −100 at a few positions (those do not count)."""
    torch.manual_seed(1)
    ids = torch.randint(0, 6, (11, 5))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    labels[::3, 1] = -100
    return TokenModel().double().eval(), ids, labels


def sequence_quantities(model, ids, labels, distributed: bool) -> dict[str, torch.Tensor]:
    """The Fisher over (sequence, position) pairs: products, diagonal and the position count."""
    F = FisherOperator(model, (ids, labels), positions="all", batch_size=2, distributed=distributed)
    v = torch.randn(F.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return {"seq_mv": F @ v, "seq_diag": F.diag(), "seq_n": torch.tensor(float(F.num_data))}


def quantities(model, X, y, distributed: bool) -> dict[str, torch.Tensor]:
    """Every memspace quantity the issue lists, as float64 tensors."""
    F = FisherOperator(model, (X, y), batch_size=2, distributed=distributed)
    v = torch.randn(F.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mc = FisherOperator(
        model, (X, y), kind="mc", mc_samples=2, batch_size=2, distributed=distributed
    )
    kfac = F.kfac()
    ekfac = F.ekfac()
    density = F.spectral_density(num_probes=2, steps=6)
    path = predictive_path(model, (X, y), batch_size=2, distributed=distributed)
    blocks = block_sensitivity(model, (X, y), batch_size=2, distributed=distributed)
    return {
        "mv": F @ v,
        "quad": F.quad(v),
        "diag": F.diag(),
        "dense": F.dense(),
        "mc_diag": mc.diag(),
        "n": torch.tensor(float(F.num_data)),
        "kfac_inputs": torch.cat([b.input_factor.flatten() for b in kfac.blocks]),
        "kfac_grads": torch.cat([b.grad_factor.flatten() for b in kfac.blocks]),
        "kfac_mv": kfac @ v,
        "ekfac_eigenvalues": ekfac.eigenvalues(),
        "ekfac_inverse": ekfac.inverse_mv(v, 0.1),
        "trace": F.trace(),
        "hutchpp": F.trace("hutchpp", num_matvecs=9),
        "top3": F.eigh(3)[0],
        "slq_nodes": torch.as_tensor(density.nodes),
        "slq_weights": torch.as_tensor(density.weights),
        "effective_dimension": F.effective_dimension(0.1, method="slq", num_probes=2, steps=6),
        "fisher_rao_norm": torch.tensor(
            fisher_rao_norm(model, (X, y), distributed=distributed, batch_size=2)
        ),
        "path": torch.tensor(
            [
                path.length,
                path.action,
                path.least_action,
                path.endpoint_distance,
                path.mean_squared_length,
                *path.speeds,
                *path.lens_accuracy,
            ],
            dtype=torch.float64,
        ),
        "sensitivity": torch.tensor(
            [
                *blocks.sensitivity,
                *blocks.deletion_kl,
                *blocks.metric_trace,
                *blocks.euclidean_speeds,
                blocks.num_data,
            ],
            dtype=torch.float64,
        ),
    }


def _worker(rank: int, world: int, root: str, mode: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    outcome: dict = {}
    try:
        init_process_group(
            f"file://{root}/rendezvous",
            rank=rank,
            world_size=world,
            backend="gloo",
            timeout_s=20 if mode == "dies" else 60,
        )
        model, X, y = problem()
        X, y = shard((X, y), rank, world)
        if mode == "equal":
            seq_model, ids, labels = sequence_problem()
            ids, labels = shard((ids, labels), rank, world)
            values = {
                **quantities(model, X, y, distributed=True),
                **sequence_quantities(seq_model, ids, labels, distributed=True),
            }
            torch.save(values, f"{root}/rank{rank}.pt")
        elif mode == "fails":
            if rank == 1:
                X = X.clone()
                X[3, 0] = float("nan")  # the second batch of rank 1
            predictive_path(model, (X, y), batch_size=2, distributed=True)
        elif (
            mode == "mismatch"
        ):  # rank 1 measures the head only: its sums would not pair with rank 0's
            FisherOperator(
                model,
                (X, y),
                batch_size=2,
                distributed=True,
                params=["head.weight", "head.bias"] if rank == 1 else None,
            ).diag()
        elif mode == "dies":
            if rank == 1:
                os._exit(0)  # gone without a word, before its first reduction
            FisherOperator(model, (X, y), batch_size=2, distributed=True).diag()
    except Exception as error:  # recorded for the parent to check
        outcome = {
            "type": type(error).__name__,
            "message": str(error),
            "trace": traceback.format_exc(),
        }
    with open(f"{root}/outcome{rank}.json", "w") as handle:
        json.dump(outcome, handle)
    # Leave without C++ static destructors: a gloo thread sometimes outlives them at exit and
    # aborts.
    os._exit(0)


def _run(tmp_path, mode: str) -> list[dict]:
    mp.spawn(_worker, args=(2, str(tmp_path), mode), nprocs=2, join=True)
    files = [tmp_path / f"outcome{rank}.json" for rank in range(2)]
    return [json.loads(f.read_text()) if f.exists() else None for f in files]


def test_two_ranks_equal_one_process_for_every_quantity(tmp_path):
    outcomes = _run(tmp_path, "equal")
    assert outcomes == [{}, {}], outcomes
    model, X, y = problem()
    seq_model, ids, labels = sequence_problem()
    alone = {
        **quantities(model, X, y, distributed=False),
        **sequence_quantities(seq_model, ids, labels, distributed=False),
    }
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert float(ranks[0]["n"]) == 11
    assert float(ranks[0]["seq_n"]) == int((labels != -100).sum())  # positions over both ranks
    for name, value in alone.items():
        for rank in ranks:
            assert torch.equal(rank[name], ranks[0][name]), f"{name}: the ranks differ"
        if (
            name == "mc_diag"
        ):  # each rank draws its own Monte-Carlo labels: same estimator, other draws
            continue
        torch.testing.assert_close(
            ranks[0][name], value, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )
    # Monte-Carlo: the same expectation; with 2 draws per point both are within noise of the true
    # diagonal
    assert torch.allclose(ranks[0]["mc_diag"].sum(), alone["trace"], rtol=0.5)


def test_a_failing_rank_stops_every_rank_with_its_message(tmp_path):
    outcomes = _run(tmp_path, "fails")
    assert outcomes[1]["type"] == "DataError" and "NaN" in outcomes[1]["message"]
    assert outcomes[0]["type"] == "DistributedError", outcomes[0]
    assert "rank 1 failed during the predictive path" in outcomes[0]["message"]
    assert "NaN" in outcomes[0]["message"]


def test_ranks_with_different_parameters_are_refused_not_summed(tmp_path):
    outcomes = _run(tmp_path, "mismatch")
    for rank, outcome in enumerate(outcomes):
        assert outcome["type"] == "MemspaceError", outcome
        assert (
            f"rank {rank}: the ranks disagree on the parameters or the layer taps"
            in outcome["message"]
        )


def test_a_rank_that_dies_is_reported_after_the_timeout_not_a_hang(tmp_path):
    started = time.time()
    outcomes = _run(tmp_path, "dies")
    assert outcomes[1] is None and time.time() - started < 60
    assert outcomes[0]["type"] == "DistributedError", outcomes[0]
    assert "lost contact with the other ranks during the Fisher operator" in outcomes[0]["message"]


def test_without_a_process_group_distributed_changes_nothing():
    collective = Collective(True)
    assert not collective.active
    t = torch.ones(3)
    assert collective.reduce(t) is t
    with collective.guard():
        pass


def test_shards_cover_the_data_once_and_an_empty_shard_is_refused():
    X = torch.arange(11)
    parts = [shard((X,), rank, 3)[0] for rank in range(3)]
    assert torch.equal(torch.cat(parts), X) and [len(p) for p in parts] == [3, 4, 4]
    with pytest.raises(Exception, match="2 data points cannot be shared among 3 processes"):
        shard((X[:2],), 0, 3)


def test_env_rendezvous_without_torchrun_variables_is_refused(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Exception, match="torchrun"):
        init_process_group("env://")
    assert issubclass(DistributedError, Exception)
