"""Exact per-sample Jacobian products s_kᵀ J_n: the stated fallback of every fast path.

J_n = ∂f(x_n)/∂θ is [D, p] (D = T·V for sequence outputs), but no structure needs it whole: the
diagonal, K-FAC's fallback and the dense Fisher need its projections onto the output-Fisher
columns, s_knᵀ J_n [p] for k < K, one vector-Jacobian product each. So the cost is K backward
passes per sample (K = 1 for an empirical or one-label Monte-Carlo Fisher, whatever the
vocabulary), never D. ``torch.func.vmap`` of ``vjp`` over the samples and the columns; where a
layer has no batching rule (recurrent layers) a loop over samples with one backward per column,
chosen once and said (:attr:`PerSampleJacobians.vmap_failure`). Batches are cut into chunks whose
projections [K, n, p] stay near 256 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp, vmap

from .._backprop import grad_along
from .._model_call import map_inputs
from ._pass import DataPass

__all__ = ["PerSampleJacobians"]

_CHUNK_BYTES = 256 * 1024**2


class PerSampleJacobians:
    """Per-sample Jacobian products of a :class:`DataPass`'s model, and the exact sums from them.

    Attributes:
        vmap_failure: None while ``vmap`` works for this model; otherwise the error that sent it to
            the per-sample loop (``"RuntimeError: ..."``), kept for the rest of its life.
        ran: whether a product has been computed (so :attr:`vmap_failure` is known).
    """

    def __init__(self, data_pass: DataPass):
        self.data_pass = data_pass
        self.vmap_failure: str | None = None
        self.ran = False

    def path(self, names: Sequence[str], x: Any) -> str:
        """How the products for ``names`` are computed: ``"vmap"`` or the per-sample loop and why.

        Tried on the first sample of the batch ``x`` if no product has been computed yet.
        """
        if not self.ran and names:
            dp = self.data_pass
            first = dp.call.take(x, slice(0, 1))
            with torch.no_grad():
                outputs = dp.forward(dict(dp.model.named_parameters()), first)
            self.projections(names, first, torch.ones_like(outputs).unsqueeze(0))
        if self.vmap_failure is None:
            return "vmap (torch.func.vmap of vjp over the samples)"
        return f"a loop over samples, one backward per column ({self.vmap_failure})"

    def projections(self, names: Sequence[str], x: Any, factors: Tensor) -> dict[str, Tensor]:
        """s_knᵀ J_n for the named parameters on a batch x: dict of [K, N, p].

        ``factors``: output-Fisher columns [K, N, ...] shaped like the outputs.
        """
        dp = self.data_pass
        leaves, others = dp.parameters()
        fixed = {**others, **{n: t.detach() for n, t in leaves.items() if n not in names}}
        wanted = {n: leaves[n].detach() for n in names}
        self.ran = True
        if self.vmap_failure is None:

            def single(params: dict[str, Tensor], xn: Any) -> Tensor:
                return dp.forward({**fixed, **params}, dp.call.single(xn)).squeeze(0)

            def project(xn: Any, columns: Tensor) -> dict[str, Tensor]:
                _, pull = vjp(lambda params: single(params, xn), wanted)
                return vmap(pull)(columns)[0]

            dims = map_inputs(x, lambda t: dp.call.sample_dim)
            if not isinstance(dims, int):
                dims = _none_for_constants(x, dims)
            try:
                proj = vmap(project, in_dims=(dims, 1))(x, factors)  # [N, K, *shape]
                return {n: proj[n].flatten(2).transpose(0, 1) for n in names}
            except (RuntimeError, NotImplementedError) as error:
                self.vmap_failure = (
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                )
        return self._looped(fixed, wanted, x, factors)

    def _looped(
        self, fixed: dict[str, Tensor], wanted: dict[str, Tensor], x: Any, factors: Tensor
    ) -> dict[str, Tensor]:
        """s_knᵀ J_n sample by sample: one forward per sample, one backward per column."""
        dp = self.data_pass
        names = list(wanted)
        rows: dict[str, list[Tensor]] = {n: [] for n in names}
        columns = factors.shape[0]
        for n in range(dp.call.num_samples(x)):
            params = {k: t.detach().requires_grad_(True) for k, t in wanted.items()}
            out = dp.forward({**fixed, **params}, dp.call.take(x, slice(n, n + 1)))[0]
            per_column: dict[str, list[Tensor]] = {k: [] for k in names}
            for k in range(columns):
                grads = grad_along(
                    out,
                    [params[name] for name in names],
                    factors[k, n],
                    retain_graph=k < columns - 1,
                    allow_unused=True,
                )
                for name, g in zip(names, grads):
                    per_column[name].append(
                        (torch.zeros_like(params[name]) if g is None else g).reshape(-1)
                    )
            for name in names:
                rows[name].append(torch.stack(per_column[name]))
        return {name: torch.stack(rows[name], dim=1) for name in names}

    def sample_chunks(
        self, x: Any, columns: int, names: Sequence[str]
    ) -> Iterator[tuple[slice, Any]]:
        """Slices of a batch small enough that their projections [K, n, p] stay near 256 MiB."""
        dp = self.data_pass
        itemsize = torch.empty((), dtype=dp.dtype).element_size()
        width = sum(dp.space.sizes[dp.space.names.index(n)] for n in names)
        rows = max(1, int(_CHUNK_BYTES // max(1, columns * width * itemsize)))
        num = dp.call.num_samples(x)
        for start in range(0, num, rows):
            chunk = slice(start, min(num, start + rows))
            yield chunk, dp.call.take(x, chunk)

    def diag_sums(self, names: Sequence[str], x: Any, factors: Tensor) -> dict[str, Tensor]:
        """Σ_n Σ_k (s_kᵀ J_n)² for the named parameters on a batch x, each [p].

        ``factors``: the batch's output-Fisher columns [K, N, ...].
        """
        if not names:
            return {}
        sums: dict[str, Tensor] = {}
        for chunk, xs in self.sample_chunks(x, factors.shape[0], names):
            proj = self.projections(names, xs, factors[:, chunk])
            for name in names:
                sq = proj[name].square().sum(dim=(0, 1))
                sums[name] = sq if name not in sums else sums[name] + sq
        return sums

    def gram_sum(self, x: Any, factors: Tensor) -> Tensor:
        """Σ_n Σ_k (s_kᵀ J_n)ᵀ (s_kᵀ J_n) over every selected parameter on a batch x, [P, P]."""
        dp = self.data_pass
        names = dp.space.names
        total = torch.zeros(dp.space.numel, dp.space.numel, dtype=dp.dtype, device=dp.device)
        for chunk, xs in self.sample_chunks(x, factors.shape[0], names):
            proj = self.projections(names, xs, factors[:, chunk])
            flat = torch.cat([proj[n] for n in names], dim=2).flatten(0, 1)  # [K·n, P]
            total += flat.T @ flat
        return total


def _none_for_constants(x: Any, dims: Any) -> Any:
    """``vmap``'s in_dims for the inputs ``x``: the sample axis for tensors, None otherwise."""
    if isinstance(x, Mapping):
        return {k: dims[k] if isinstance(v, Tensor) else None for k, v in x.items()}
    return tuple(d if isinstance(v, Tensor) else None for v, d in zip(x, dims))
