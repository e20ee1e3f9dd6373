"""The logit lens as a predictive path: per token, from the prior through every layer.

A language model predicts a distribution p_{n,t} over the vocabulary at every position. Reading the
residual stream's state x_l with the model's own read-out (final norm, unembedding), the logit
lens, gives p_{l,n,t} for l = 0..L (x_0 the embeddings, x_L the last block's output, p_L the
model's prediction). Anchored at the prior π (docs/theory.md §3.1a), each token's predictive path
visits π, p_0, …, p_L in L+1 steps of length 1/(L+1); on the Fisher–Rao sphere of the simplex
(:func:`memspace.paths.fisher_rao_distance`)

    length C = Σ_l d_l,   action A = (L+1) Σ_l d_l²,   least action A_min = d(π, p_L)²,

with d_0 = d(π, p_0) and d_l = d(p_{l−1}, p_l). A ≥ C² ≥ A_min, with equality for a great-circle
arc at constant speed, so A/A_min ≥ 1 is an exact distance from least action; a model whose blocks
do nothing has A/A_min = L+1. Per token memspace also reports where its prediction settles: the
first layer from which the lens's top-1 token equals the model's at every later layer.

Streamed over batches and, within a batch, over layers: one layer's distributions over the kept
positions [M, V] at a time, beside the previous layer's and the final ones, so memory is bounded in
T·V whatever the depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import DataError, MemspaceError
from .._model_call import ModelCall, call_with, derivative_kernels
from .._params import check_eval_mode
from .._stream import as_batch_stream
from .adapter import ResidualPath
from .hf import lens_adapter

__all__ = ["LensPath", "lens_path", "unigram_prior"]


@dataclass
class LensPath:
    """The per-token predictive path of a language model, averaged over the tokens that count.

    Attributes:
        length: mean Fisher–Rao length E C.
        action: mean action E A = E (L+1) Σ_l d_l².
        least_action: E d(π, p_L)², the exact least action of paths with these end points.
        endpoint_distance: E d(π, p_L).
        speeds: root-mean-square speed (L+1)·d_l per step l = 0..L (step 0 leaves the prior).
        agreement: per state l = 0..L, the share of tokens whose lens top-1 is the model's.
        settle_layer: the mean layer at which a token's prediction settles.
        settled: per layer l, the share of tokens settled at l or before.
        num_tokens: the number of (sequence, position) pairs averaged over.
        depth: L, the number of residual blocks.
        points: with ``points=True``, per token: ``distances`` [M, L+1], ``settle`` [M],
            ``sequence`` and ``position`` [M] (for heat maps); else None.
    """

    length: float
    action: float
    least_action: float
    endpoint_distance: float
    speeds: np.ndarray
    agreement: np.ndarray
    settle_layer: float
    settled: np.ndarray
    num_tokens: int
    depth: int
    points: dict[str, np.ndarray] | None = None

    @property
    def ratio(self) -> float:
        """A / A_min ≥ 1: 1 at least action, L+1 for idle blocks."""
        return self.action / self.least_action if self.least_action > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Every summary as plain numbers and lists (JSON-ready; points left out)."""
        return {
            "length": self.length,
            "action": self.action,
            "least_action": self.least_action,
            "ratio": self.ratio,
            "endpoint_distance": self.endpoint_distance,
            "speeds": self.speeds.tolist(),
            "agreement": self.agreement.tolist(),
            "settle_layer": self.settle_layer,
            "settled": self.settled.tolist(),
            "num_tokens": self.num_tokens,
            "depth": self.depth,
        }

    def __repr__(self) -> str:
        return (
            f"LensPath(L={self.depth}, tokens={self.num_tokens}, length={self.length:.3f}, "
            f"A/A_min={self.ratio:.3f}, settles at layer {self.settle_layer:.2f})"
        )


def unigram_prior(data: Any, vocab_size: int, *, key: str = "input_ids") -> Tensor:
    """The tokens' marginal over a data source, [V] float64, for ``prior=``.

    Counts ``key`` of mapping batches (or the inputs themselves) where the attention mask is 1;
    tokens that never occur get 1/(2·count) before renormalising, so the prior stays positive.
    """
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    stream = as_batch_stream(data, device=torch.device("cpu"), dtype=torch.float64)
    for x, _ in stream:
        ids = x[key] if isinstance(x, dict) else x
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        kept = ids if mask is None else ids[mask.bool()]
        counts += torch.bincount(kept.reshape(-1).long(), minlength=vocab_size)[:vocab_size]
    total = float(counts.sum())
    counts[counts == 0] = 1 / (2 * max(total, 1.0))
    return counts / counts.sum()


def lens_path(
    model: nn.Module,
    data: Any,
    *,
    block_names: Sequence[str] | None = None,
    head: Callable[[Tensor], Tensor] | None = None,
    prior: str | Tensor = "uniform",
    batch_size: int = 8,
    points: bool = False,
) -> LensPath:
    """The logit lens of a language model as a predictive path, per token (module doc).

    Args:
        model: a Hugging Face causal or masked LM of a family :func:`memspace.paths.hf.lens_adapter`
            knows, or any model with ``block_names`` and ``head``.
        data: batches of model inputs (mappings with ``input_ids`` and ``attention_mask``, or
            ``(x, y)`` pairs); positions whose attention mask is 0 are left out. Labels are not
            read.
        block_names: the residual blocks, in order (default: the family's).
        head: the read-out of a state [N, T, d] → logits [N, T, V] (default: the family's final
            norm and unembedding).
        prior: ``"uniform"`` (1/V), or the prior itself [V] (:func:`unigram_prior`).
        batch_size: rows per batch for an ``(X, y)`` pair or a mapping of tensors.
        points: keep per-token arrays (memory O(tokens · L)).

    Raises:
        ModelError: a model of no known family without ``block_names`` and ``head``.
        MemspaceError: a read-out that does not give [N, T, V], a prior of the wrong size.
        DataError: NaN/Inf read-outs, or no position that counts.
    """
    check_eval_mode(model)
    if block_names is None or head is None:
        adapter = lens_adapter(model)
        if not adapter.per_token:
            raise MemspaceError(
                f"{type(model).__name__} predicts per sequence ({adapter.family}): use "
                "memspace.paths.predictive_path with its block_names and head"
            )
        block_names = adapter.block_names if block_names is None else block_names
        head = adapter.head if head is None else head
    path = ResidualPath(model, block_names)
    depth = path.depth
    first = next(model.parameters())
    stream = as_batch_stream(data, device=first.device, dtype=first.dtype, batch_size=batch_size)
    call = ModelCall()
    sums = dict.fromkeys(("length", "action", "endpoint", "endpoint2", "settle"), 0.0)
    speed2 = torch.zeros(depth + 1, dtype=torch.float64)
    agree = torch.zeros(depth + 1, dtype=torch.float64)
    settled = torch.zeros(depth + 1, dtype=torch.float64)
    count = sequences = 0
    kept: dict[str, list[np.ndarray]] = {}
    for index, (x, _) in enumerate(stream):
        num = call.num_samples(x)
        args, kwargs = call_with(x)
        with torch.no_grad(), derivative_kernels(model), path.capture() as record:
            model(*args, **kwargs)
        states = path.states(record)
        with torch.no_grad():
            batch = _token_path(states, head, _positions(x, states[0]), prior, depth, index)
        distances, settle, agreement, endpoint = batch
        tokens = distances.shape[0]
        length = distances.sum(1)
        sums["length"] += float(length.sum())
        sums["action"] += float((depth + 1) * distances.pow(2).sum())
        sums["endpoint"] += float(endpoint.sum())
        sums["endpoint2"] += float(endpoint.pow(2).sum())
        sums["settle"] += float(settle.double().sum())
        speed2 += ((depth + 1) * distances).pow(2).sum(0).cpu()
        agree += agreement.double().sum(0).cpu()
        settled += torch.bincount(settle.cpu(), minlength=depth + 1).double().cumsum(0)
        if points:
            sequence, position = _positions(x, states[0]).cpu().nonzero(as_tuple=True)
            values = {
                "distances": distances,
                "settle": settle,
                "sequence": sequence + sequences,
                "position": position,
            }
            for key, value in values.items():
                kept.setdefault(key, []).append(value.detach().cpu().numpy())
        count += tokens
        sequences += num
    if count == 0:
        raise DataError("no position counts: every attention mask is 0")
    return LensPath(
        length=sums["length"] / count,
        action=sums["action"] / count,
        least_action=sums["endpoint2"] / count,
        endpoint_distance=sums["endpoint"] / count,
        speeds=(speed2 / count).sqrt().numpy(),
        agreement=(agree / count).numpy(),
        settle_layer=sums["settle"] / count,
        settled=(settled / count).numpy(),
        num_tokens=count,
        depth=depth,
        points={k: np.concatenate(v) for k, v in kept.items()} if points else None,
    )


def _positions(x: Any, state: Tensor) -> Tensor:
    """The positions that count [N, T]: the attention mask where the inputs have one."""
    num, length = state.shape[:2]
    mask = x.get("attention_mask") if isinstance(x, dict) else None
    if mask is None:
        return torch.ones(num, length, dtype=torch.bool, device=state.device)
    if tuple(mask.shape) != (num, length):
        raise DataError(
            f"the attention_mask has shape {tuple(mask.shape)}; the stream is [N, T] = "
            f"[{num}, {length}]"
        )
    return mask.bool()


def _token_path(
    states: list[Tensor],
    head: Callable[[Tensor], Tensor],
    mask: Tensor,
    prior: str | Tensor,
    depth: int,
    index: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One batch's tokens: distances, settle layers, agreement and endpoint distances.

    Per kept token: distances [M, L+1] (the first from the prior), the settle layer [M], the
    agreement [M, L+1] of each state's top-1 with the model's, and d(π, p_L) [M], in float64.
    """

    def lens(l: int) -> tuple[Tensor, Tensor]:
        """(√p [M, V] of state l's read-out over the kept positions, its top-1 [M])."""
        logits = head(states[l])
        if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != mask.shape:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise MemspaceError(
                f"batch {index}: the read-out maps state x_{l} {tuple(states[l].shape)} to "
                f"{shape}; it must give logits [N, T, V] over the same positions"
            )
        rows = logits.flatten(0, 1) if every else logits[mask]
        top = rows.argmax(-1)
        normaliser = torch.logsumexp(rows, -1, keepdim=True)  # NaN/Inf anywhere reach it
        if not bool(torch.isfinite(normaliser).all()):
            raise DataError(f"batch {index}: the read-out gives NaN/Inf logits at state x_{l}")
        return rows.sub(normaliser).mul_(0.5).exp_(), top  # √p, in as few passes as it takes

    def distance(a: Tensor, b: Tensor) -> Tensor:
        """d(p, q) = 4·arcsin(‖√p − √q‖/2) in float64, from √p and √q (the model's dtype)."""
        chord = torch.linalg.vector_norm(a - b, dim=-1).double()
        return 4 * torch.asin(chord.div(2).clamp(0.0, 1.0))

    every = bool(mask.all())

    final, top = lens(depth)
    vocab = final.shape[1]
    if isinstance(prior, str):
        if prior != "uniform":
            raise MemspaceError(f"unknown prior {prior!r}; use 'uniform' or give the prior [V]")
        previous = final.new_full((1, vocab), vocab**-0.5)
    else:
        prior = torch.as_tensor(prior, dtype=torch.float64, device=final.device)
        if prior.shape != (vocab,) or not bool((prior > 0).all()):
            raise MemspaceError(
                f"the prior must be positive of shape [{vocab}], got {tuple(prior.shape)}"
            )
        previous = (prior / prior.sum()).sqrt().to(final.dtype)[None]
    endpoint = distance(previous, final)
    distances, agreement = [], []
    for l in range(depth + 1):
        current, current_top = (final, top) if l == depth else lens(l)
        distances.append(distance(previous, current))
        agreement.append(current_top == top)
        previous = current
    agree = torch.stack(agreement, 1)
    still = torch.ones_like(top, dtype=torch.bool)
    settle = torch.full_like(top, depth)
    for l in range(depth, -1, -1):
        still &= agree[:, l]
        settle[still] = l
    return torch.stack(distances, 1), settle, agree, endpoint
