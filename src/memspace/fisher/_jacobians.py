"""Exact per-sample Jacobians J_n = ∂f(x_n)/∂θ [D, p]: the stated fallback of every fast path.

``torch.func.vmap(jacrev(...))`` over the sample axis; where a layer has no batching rule
(recurrent layers) a loop over samples with one backward per output entry, chosen once and
said (:attr:`PerSampleJacobians.vmap_failure`). Batches are cut into chunks whose Jacobians
[n, D, p] stay near 256 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from ._pass import DataPass

__all__ = ["PerSampleJacobians"]

_CHUNK_BYTES = 256 * 1024**2


class PerSampleJacobians:
    """Per-sample Jacobians of a :class:`DataPass`'s model, and the exact sums built from them.

    Attributes:
        vmap_failure: None while ``vmap`` works for this model; otherwise the error that sent it to
            the per-sample loop (``"RuntimeError: ..."``), kept for the rest of its life.
    """

    def __init__(self, data_pass: DataPass):
        self.data_pass = data_pass
        self.vmap_failure: str | None = None
        self.ran = False

    def path(self, names: Sequence[str], x: Tensor) -> str:
        """How the Jacobians of ``names`` are computed: ``"vmap"`` or the per-sample loop and why.

        Tried on the first sample of the batch ``x`` if no Jacobian has been computed yet.
        """
        if not self.ran and names:
            self.jacobians(names, self.data_pass.call.take(x, slice(0, 1)))
        if self.vmap_failure is None:
            return "vmap (torch.func.vmap of jacrev over the samples)"
        return f"a loop over samples, one backward per output ({self.vmap_failure})"

    def jacobians(self, names: Sequence[str], x: Tensor) -> dict[str, Tensor]:
        """J_n for the named parameters on a batch x: dict of [N, D, p]."""
        dp = self.data_pass
        leaves, others = dp.parameters()
        fixed = {**others, **{n: t.detach() for n, t in leaves.items() if n not in names}}
        wanted = {n: leaves[n].detach() for n in names}
        dim = dp.call.sample_dim
        self.ran = True
        if self.vmap_failure is None:

            def single(params: dict[str, Tensor], xn: Tensor) -> Tensor:
                return dp.forward({**fixed, **params}, xn.unsqueeze(dim)).squeeze(0)

            try:
                jac = vmap(jacrev(single), in_dims=(None, dim))(wanted, x)
                return {n: jac[n].flatten(2) for n in names}
            except (RuntimeError, NotImplementedError) as error:
                self.vmap_failure = (
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                )
        return self._looped(fixed, wanted, x)

    def _looped(
        self, fixed: dict[str, Tensor], wanted: dict[str, Tensor], x: Tensor
    ) -> dict[str, Tensor]:
        """J_n sample by sample: one forward per sample, one backward per output entry."""
        dp = self.data_pass
        names = list(wanted)
        rows: dict[str, list[Tensor]] = {n: [] for n in names}
        for n in range(dp.call.num_samples(x)):
            params = {k: t.detach().requires_grad_(True) for k, t in wanted.items()}
            out = dp.forward({**fixed, **params}, dp.call.take(x, slice(n, n + 1)))[0]
            per_entry: dict[str, list[Tensor]] = {k: [] for k in names}
            for d in range(out.shape[0]):
                grads = torch.autograd.grad(
                    out[d],
                    [params[k] for k in names],
                    retain_graph=d < out.shape[0] - 1,
                    allow_unused=True,
                )
                for k, g in zip(names, grads):
                    per_entry[k].append(
                        (torch.zeros_like(params[k]) if g is None else g).reshape(-1)
                    )
            for k in names:
                rows[k].append(torch.stack(per_entry[k]))
        return {k: torch.stack(rows[k]) for k in names}

    def sample_chunks(
        self, x: Tensor, dim_out: int, names: Sequence[str]
    ) -> Iterator[tuple[slice, Tensor]]:
        """Slices of a batch small enough that their Jacobians [n, D, p] stay near 256 MiB."""
        dp = self.data_pass
        itemsize = torch.empty((), dtype=dp.dtype).element_size()
        width = sum(dp.space.sizes[dp.space.names.index(n)] for n in names)
        rows = max(1, int(_CHUNK_BYTES // max(1, dim_out * width * itemsize)))
        num = dp.call.num_samples(x)
        for start in range(0, num, rows):
            chunk = slice(start, min(num, start + rows))
            yield chunk, dp.call.take(x, chunk)

    def diag_sums(self, names: Sequence[str], x: Tensor, factors: Tensor) -> dict[str, Tensor]:
        """Σ_n Σ_k (s_kᵀ J_n)² for the named parameters on a batch x, each [p].

        ``factors``: the batch's output-Fisher columns [K, N, D].
        """
        if not names:
            return {}
        sums: dict[str, Tensor] = {}
        for chunk, xs in self.sample_chunks(x, factors.shape[2], names):
            jac = self.jacobians(names, xs)
            for name in names:
                sq = (
                    torch.einsum("knd,ndp->knp", factors[:, chunk], jac[name])
                    .pow(2)
                    .sum(dim=(0, 1))
                )
                sums[name] = sq if name not in sums else sums[name] + sq
        return sums

    def gram_sum(self, x: Tensor, factors: Tensor) -> Tensor:
        """Σ_n Σ_k (s_kᵀ J_n)ᵀ (s_kᵀ J_n) over every selected parameter on a batch x, [P, P]."""
        dp = self.data_pass
        names = dp.space.names
        total = torch.zeros(dp.space.numel, dp.space.numel, dtype=dp.dtype, device=dp.device)
        for chunk, xs in self.sample_chunks(x, factors.shape[2], names):
            jac = self.jacobians(names, xs)
            flat = torch.cat([jac[n] for n in names], dim=2)  # [n, D, P]
            proj = torch.einsum("knd,ndp->knp", factors[:, chunk], flat).flatten(0, 1)
            total += proj.T @ proj
        return total
