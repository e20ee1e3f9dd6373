"""The data pass every Fisher structure holds.

What is streamed, how the model is called, and how sums become means.

F = (1/N) Σ_n J_nᵀ Λ̂_n J_n needs, whatever structure approximates it, the same pieces:

- the stream of batches (x, y) on the model's device and dtype (:mod:`memspace._stream`);
- the model call x ↦ f(x) [N, D] at given parameters, with kernels that have every
  derivative rule (:mod:`memspace._model_call`);
- the parameter space θ (:class:`memspace._params.ParameterSpace`);
- the output Fisher Λ̂ of the chosen kind, as an operator or as columns Λ̂ = Σ_k s_k s_kᵀ
  (:mod:`.likelihood`), with the Monte-Carlo labels fixed by the seed and the batch index;
- the reduction: plain sums over batches with a sample count, all-reduced over
  ``torch.distributed`` when sharded (:mod:`memspace.distributed`), then divided by N.

:class:`DataPass` holds them, so that :class:`~memspace.fisher.FisherOperator`, K-FAC and EKFAC
share one definition of each and never reach into one another.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._errors import ArgumentTypeError, MemspaceError
from .._model_call import ModelCall, OutputSelector, derivative_kernels
from .._params import ParameterSpace, check_eval_mode
from .._stream import BatchStream, as_batch_stream
from ..distributed import Collective
from .likelihood import (
    FisherKind,
    Likelihood,
    apply_output_fisher,
    check_outputs,
    output_sqrt_factors,
)

__all__ = ["DataPass", "Vector"]

Vector = Tensor | Mapping[str, Tensor]
"""A parameter-space vector: flat [P], or a dict of tensors shaped like the parameters."""


class DataPass:
    """The model, its parameter space, the data stream, the output Fisher and the reduction.

    Its arguments are :class:`~memspace.fisher.FisherOperator`'s (``model``, ``data``, ``kind``,
    ``likelihood``, ``mc_samples``, ``seed``, ``params``, ``batch_size``, ``distributed``,
    ``sample_dim``, ``output``), with the same meaning.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``.
        MemspaceError: an unknown kind or likelihood, ``mc_samples`` < 1, a model in training
            mode with BatchNorm or dropout, no parameters selected, or data that cannot be streamed.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        kind: str | FisherKind = "true",
        likelihood: str | Likelihood = "classification",
        mc_samples: int = 1,
        seed: int = 0,
        params: Any = None,
        batch_size: int = 256,
        distributed: bool = False,
        sample_dim: int = 0,
        output: OutputSelector = None,
    ):
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.kind = FisherKind.parse(kind)
        self.likelihood = Likelihood.parse(likelihood)
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise MemspaceError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        check_eval_mode(model)
        self.model = model
        self.call = ModelCall(sample_dim, output)
        self.space = ParameterSpace(model, params)
        first = next(iter(self.space.tensors().values()))
        self.device, self.dtype = first.device, first.dtype
        self.data: BatchStream = as_batch_stream(
            data, device=self.device, dtype=self.dtype, batch_size=batch_size, sample_dim=sample_dim
        )
        self.mc_samples = mc_samples
        self.seed = seed
        self.distributed = distributed
        self.collective = Collective(distributed, "the Fisher operator")
        self.num_data: int | None = None
        """N once a pass has counted it (or :meth:`count` did)."""

    # ------------------------------------------------------------ the model
    def parameters(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(selected parameters as fresh leaves requiring grad, every other parameter detached)."""
        selected = set(self.space.names)
        leaves, others = {}, {}
        for name, p in self.model.named_parameters():
            if name in selected:
                leaves[name] = p.detach().requires_grad_(True)
            else:
                others[name] = p.detach()
        return leaves, others

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, check: bool = True) -> Any:
        """Outputs [N, D] of the model at ``params`` (selected by ``output``, shape checked).

        With ``check=False`` whatever the model returns.
        """
        with derivative_kernels(self.model):
            raw = functional_call(self.model, dict(params), (x,))
        if not check:
            return raw
        return self.call.outputs(raw, self.call.num_samples(x))

    def module_name(self, module: nn.Module) -> str:
        """The qualified name of ``module`` in the model (``<root>`` for the model itself)."""
        return next(
            (n or "<root>" for n, m in self.model.named_modules() if m is module), "<unknown>"
        )

    def to_device(self, v: Vector, what: str) -> dict[str, Tensor]:
        """``v`` split per parameter, on the model's device and dtype (shapes checked)."""
        parts = self.space.to_dict(v, what)
        return {n: t.to(self.device, self.dtype) for n, t in parts.items()}

    def zeros(self) -> Tensor:
        """A flat zero vector [P] on the model's device and dtype."""
        return torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)

    # ---------------------------------------------------- the output Fisher
    def generator(self, index: int) -> torch.Generator | None:
        """The generator of batch ``index``'s Monte-Carlo labels (None unless ``kind="mc"``)."""
        if self.kind is not FisherKind.MC:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + index)
        return gen

    def factors(self, outputs: Tensor, y: Tensor, index: int) -> Tensor:
        """Output-Fisher columns s [K, N, D] of batch ``index`` (Λ̂_n = Σ_k s_kn s_knᵀ)."""
        check_outputs(outputs, y, self.likelihood, f"batch {index}")
        return output_sqrt_factors(
            outputs,
            y,
            self.likelihood,
            self.kind,
            mc_samples=self.mc_samples,
            generator=self.generator(index),
        )

    def apply_output_fisher(self, outputs: Tensor, y: Tensor, index: int, u: Tensor) -> Tensor:
        """Λ̂ u per sample, [N, D]."""
        check_outputs(outputs, y, self.likelihood, f"batch {index}")
        if self.kind is FisherKind.TRUE:
            return apply_output_fisher(outputs.detach(), u, self.likelihood)
        s = self.factors(outputs, y, index)
        return torch.einsum("knd,kn->nd", s, torch.einsum("knd,nd->kn", s, u))

    def random_column_mix(self, factors: Tensor) -> Tensor:
        """One seeded random combination r [N, D] of the output-Fisher columns [K, N, D]."""
        gen = torch.Generator(device=factors.device).manual_seed(self.seed + 7919)
        coeffs = torch.randn(
            factors.shape[0], generator=gen, dtype=factors.dtype, device=factors.device
        )
        return torch.einsum("k,knd->nd", coeffs, factors)

    # ------------------------------------------------------- the reduction
    def guard(self) -> AbstractContextManager:
        """Status-checked collectives: a rank that fails stops every rank with its message."""
        return self.collective.guard()

    def reduce(self, tensor: Tensor) -> Tensor:
        """Sum over the ranks when distributed (status-checked, :mod:`memspace.distributed`)."""
        return self.collective.reduce(tensor)

    def count(self, local: int) -> int:
        """The number of data points over every rank from this rank's ``local`` count.

        Recorded as N.
        """
        self.num_data = int(self.reduce(torch.tensor(float(local), dtype=torch.float64)).item())
        return self.num_data

    def total_count(self) -> int:
        """N, by one pass over the data if no pass has counted it yet."""
        if self.num_data is None:
            with self.guard():
                self.count(sum(self.call.num_samples(x) for x, _ in self.data))
        return self.num_data

    def known_scale(self) -> float | None:
        """1/N when N is known before the pass and no reduction across processes follows."""
        if self.data.size is None or self.distributed:
            return None
        return 1.0 / self.data.size

    def finish(self, total: Tensor, local: int, scale: float | None = None) -> Tensor:
        """The mean: a reduced sum divided by the reduced sample count (N recorded).

        With ``scale`` (1/N already folded in during the pass) only N is recorded.

        Raises:
            MemspaceError: when every batch was empty.
        """
        if scale is not None:
            self.num_data = local
            return total
        total = self.reduce(total)
        if self.count(local) == 0:
            raise MemspaceError("no data points: every batch was empty")
        return total.div_(float(self.num_data))
