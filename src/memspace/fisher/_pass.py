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

import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._errors import ArgumentTypeError, DataError, MemspaceError, MemspaceWarning
from .._model_call import Inputs, ModelCall, OutputSelector, call_with, derivative_kernels
from .._params import ParameterSpace, check_eval_mode
from .._stream import BatchStream, as_batch_stream
from ..distributed import Collective
from .likelihood import (
    FisherKind,
    Likelihood,
    apply_output_fisher,
    check_outputs,
    exact_column_count,
    output_fisher_quad_terms,
    output_sqrt_factors,
    sequence_sqrt_factors,
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
        positions: str | Callable[[Inputs], Tensor] | None = None,
        exact_columns: int = 1024,
    ):
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.kind = FisherKind.parse(kind)
        self.likelihood = Likelihood.parse(likelihood)
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise MemspaceError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        check_eval_mode(model)
        self.model = model
        self.call = ModelCall(sample_dim, output, positions)
        if not isinstance(exact_columns, int) or exact_columns < 0:
            raise MemspaceError(
                f"exact_columns must be a non-negative integer, got {exact_columns!r}"
            )
        self.exact_columns = exact_columns
        self._sampled_note = False
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

    def forward(self, params: Mapping[str, Tensor], x: Inputs, *, check: bool = True) -> Any:
        """Outputs of the model at ``params`` (selected by ``output``, shape checked).

        [N, D]; [N, T, V] with ``positions="all"``; the last attended position's [N, V] with
        ``positions="last"``. With ``check=False`` whatever the model returns.
        """
        args, kwargs = call_with(x)
        with derivative_kernels(self.model):
            raw = functional_call(self.model, dict(params), args, kwargs)
        if not check:
            return raw
        out = self.call.outputs(raw, self.call.num_samples(x))
        if self.call.positions == "last":
            index = self.last_positions(x, out.shape[1])
            out = out.gather(1, index[:, None, None].expand(-1, 1, out.shape[2])).squeeze(1)
        return out

    # ------------------------------------------------------ sequence positions
    def attention_mask(self, x: Inputs, num: int, length: int) -> Tensor | None:
        """The inputs' ``attention_mask`` [N, T], or None when they have none.

        Raises:
            DataError: a mask whose shape is not the outputs' [N, T].
        """
        mask = self.call.sequence_mask(x.get("attention_mask") if isinstance(x, Mapping) else None)
        if mask is None:
            return None
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (num, length):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise DataError(
                f"the attention_mask has shape {shape}, but the sequence outputs have "
                f"[N, T] = [{num}, {length}]: it cannot say which positions count"
            )
        return mask

    def user_position_mask(self, x: Inputs, num: int, length: int) -> Tensor:
        """The caller's ``positions`` mask of a batch, checked: bool [N, T].

        Raises:
            DataError: a mask that is not a tensor of the outputs' [N, T] with 0/1 entries.
        """
        mask = self.call.sequence_mask(self.call.position_mask(x))
        where = "the positions callable returned"
        if not isinstance(mask, Tensor):
            raise DataError(f"{where} a {type(mask).__name__}, not a mask tensor [N, T]")
        if tuple(mask.shape) != (num, length):
            raise DataError(
                f"{where} a mask of shape {tuple(mask.shape)}, but the sequence outputs have "
                f"[N, T] = [{num}, {length}]"
            )
        if mask.dtype != torch.bool:
            if mask.is_floating_point() and not torch.isfinite(mask).all():
                raise DataError(f"{where} a mask with NaN or Inf entries")
            if ((mask != 0) & (mask != 1)).any():
                raise DataError(f"{where} a mask with entries other than 0 and 1")
        return mask.to(device=self.device).ne(0)

    def last_positions(self, x: Inputs, length: int) -> Tensor:
        """Per sequence, its last attended position [N] (T − 1 without an attention mask)."""
        num = self.call.num_samples(x)
        mask = self.attention_mask(x, num, length)
        if mask is None:
            return torch.full((num,), length - 1, dtype=torch.long, device=self.device)
        steps = torch.arange(1, length + 1, device=mask.device)
        return (mask.ne(0) * steps).argmax(dim=1)

    def position_targets(
        self, x: Inputs, y: Tensor | None, outputs: Tensor
    ) -> tuple[Tensor | None, Tensor]:
        """(labels [N, T] with dropped positions set to 0, or None; mask [N, T]) of a batch.

        A position counts where the attention mask (if the inputs have one) is 1 and the label
        (if given) is not −100. Labels are aligned with the logits' positions (a causal LM's
        Hugging Face ``labels`` shifted by one: y[:, t] = labels[:, t + 1]).

        Raises:
            DataError: labels that are not [N, T] for outputs [N, T, V].
        """
        num, length = outputs.shape[:2]
        mask = torch.ones(num, length, dtype=torch.bool, device=outputs.device)
        attention = self.attention_mask(x, num, length)
        if attention is not None:
            mask &= attention.ne(0)
        if self.call.position_mask is not None:
            mask &= self.user_position_mask(x, num, length)
        if y is None:
            return None, mask
        if self.likelihood is Likelihood.CLASSIFICATION:
            if tuple(y.shape) != (num, length):
                raise DataError(
                    f"labels of shape {tuple(y.shape)} for sequence outputs "
                    f"{tuple(outputs.shape)}: positions='all' needs labels [N, T] = "
                    f"[{num}, {length}] aligned with the logits' positions (-100 where ignored)"
                )
            mask &= y.ne(-100)
            return torch.where(mask, y, torch.zeros_like(y)), mask
        if tuple(y.shape) != tuple(outputs.shape):
            raise DataError(
                f"regression targets of shape {tuple(y.shape)} for sequence outputs "
                f"{tuple(outputs.shape)}: they must have the outputs' shape"
            )
        return y, mask

    def units(self, x: Inputs, y: Tensor | None, outputs: Tensor) -> int:
        """The data points of a batch: N, or the positions that count (``positions="all"``)."""
        if self.call.positions != "all":
            return self.call.num_samples(x)
        return int(self.position_targets(x, y, outputs)[1].sum())

    def targets(self, x: Inputs, y: Tensor | None, length: int | None = None) -> Tensor | None:
        """The targets of the outputs :meth:`forward` returns (``"last"``: the last position's)."""
        if y is None or self.call.positions != "last" or y.dim() < 2:
            return y
        index = self.last_positions(x, y.shape[1])
        return y.gather(1, index[:, None]).squeeze(1)

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
    def generator(self, index: int, sampled: bool = False) -> torch.Generator | None:
        """The generator of batch ``index``'s Monte-Carlo labels.

        None unless ``kind="mc"`` or ``sampled`` (the true Fisher's sampled sequence columns).
        """
        if self.kind is not FisherKind.MC and not sampled:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + index)
        return gen

    def _labels_needed(self, y: Tensor | None, index: int) -> None:
        if y is None and self.kind is FisherKind.EMPIRICAL:
            raise DataError(
                f"batch {index} has no labels: the empirical Fisher needs them (the true and "
                "Monte-Carlo Fisher do not)"
            )

    def factors(self, outputs: Tensor, y: Tensor | None, index: int, x: Inputs = None) -> Tensor:
        """Output-Fisher columns s [K, N, ...] of batch ``index`` (Λ̂_n = Σ_k s_kn s_knᵀ).

        [K, N, D] for outputs [N, D]; [K, N, T, V] for sequence outputs
        (:func:`.likelihood.sequence_sqrt_factors`: exact columns for the true Fisher while the
        batch needs at most ``exact_columns`` of them, sampled ones beyond, said once by a
        :class:`~memspace.MemspaceWarning`).
        """
        self._labels_needed(y, index)
        if self.call.positions == "all":
            labels, mask = self.position_targets(x, y, outputs)
            needed = outputs.shape[1] * exact_column_count(outputs.shape[2], self.likelihood)
            exact = needed <= self.exact_columns
            if self.kind is FisherKind.TRUE and not exact:
                self._note_sampled(outputs.shape, needed)
            check_outputs(
                outputs.reshape(-1, outputs.shape[2]),
                None if labels is None else labels.reshape(-1, *labels.shape[2:]),
                self.likelihood,
                f"batch {index}",
            )
            return sequence_sqrt_factors(
                outputs,
                labels,
                mask,
                self.likelihood,
                self.kind,
                mc_samples=self.mc_samples,
                generator=self.generator(index, sampled=not exact),
                exact_columns=exact,
            )
        y = self.targets(x, y)
        check_outputs(outputs, y, self.likelihood, f"batch {index}")
        return output_sqrt_factors(
            outputs,
            y,
            self.likelihood,
            self.kind,
            mc_samples=self.mc_samples,
            generator=self.generator(index),
        )

    def _note_sampled(self, shape: torch.Size, needed: int) -> None:
        """Say once that the true Fisher's columns are sampled for this model's outputs."""
        if self._sampled_note:
            return
        self._sampled_note = True
        warnings.warn(
            f"sequence outputs {tuple(shape)} need {needed} exact columns of the true output "
            f"Fisher per batch (T·(V − 1) for a classifier), over exact_columns="
            f"{self.exact_columns}: the diagonal, K-FAC, EKFAC and dense use {self.mc_samples} "
            "sampled label(s) per position instead (unbiased; F @ v and quad stay exact). Raise "
            "exact_columns for the exact columns, at that many backward passes per batch",
            MemspaceWarning,
            stacklevel=2,
        )

    def _true_rows(self, rule, outputs: Tensor, y: Tensor | None, index: int, u: Tensor, x: Inputs):
        """``rule(outputs, u, likelihood)`` per sample of the true Fisher, the outputs' shape.

        With ``positions="all"`` it is applied per position and the positions that do not count
        (attention mask, labels −100, the position mask) are zeroed.
        """
        if self.call.positions == "all":
            _, mask = self.position_targets(x, y, outputs)
            rows = rule(
                outputs.detach().reshape(-1, outputs.shape[2]),
                u.reshape(-1, outputs.shape[2]),
                self.likelihood,
            )
            return rows.reshape(outputs.shape) * mask.unsqueeze(2).to(u.dtype)
        check_outputs(outputs, self.targets(x, y), self.likelihood, f"batch {index}")
        return rule(outputs.detach(), u, self.likelihood)

    def apply_output_fisher(
        self, outputs: Tensor, y: Tensor | None, index: int, u: Tensor, x: Inputs = None
    ) -> Tensor:
        """Λ̂ u per sample, the shape of the outputs ([N, D] or [N, T, V])."""
        self._labels_needed(y, index)
        if self.kind is FisherKind.TRUE:
            return self._true_rows(apply_output_fisher, outputs, y, index, u, x)
        s = self.factors(outputs, y, index, x)
        coefficients = (s * u.unsqueeze(0)).flatten(2).sum(2)  # [K, N]
        return torch.einsum("kn...,kn->n...", s, coefficients)

    def output_fisher_quad(
        self, outputs: Tensor, y: Tensor | None, index: int, u: Tensor, x: Inputs = None
    ) -> Tensor:
        """uᵀ Λ̂ u summed over the batch's samples (and counted positions), a scalar.

        The true Fisher's is a sum of non-negative terms (:func:`output_fisher_quad_terms`), so a
        confident network's quadratic form keeps its sign and its digits; the sampled kinds'
        are Σ_k (s_kᵀu)², non-negative already.
        """
        self._labels_needed(y, index)
        if self.kind is FisherKind.TRUE:
            return self._true_rows(output_fisher_quad_terms, outputs, y, index, u, x).sum()
        s = self.factors(outputs, y, index, x)
        return ((s * u.unsqueeze(0)).flatten(2).sum(2) ** 2).sum()

    def random_column_mix(self, factors: Tensor) -> Tensor:
        """One seeded random combination r [N, ...] of the output-Fisher columns [K, N, ...]."""
        gen = torch.Generator(device=factors.device).manual_seed(self.seed + 7919)
        coeffs = torch.randn(
            factors.shape[0], generator=gen, dtype=factors.dtype, device=factors.device
        )
        return torch.einsum("k,k...->...", coeffs, factors)

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
                if self.call.positions == "all":
                    params = dict(self.model.named_parameters())
                    with torch.no_grad():
                        local = sum(self.units(x, y, self.forward(params, x)) for x, y in self.data)
                else:
                    local = sum(self.call.num_samples(x) for x, _ in self.data)
                self.count(local)
        return self.num_data

    def known_scale(self) -> float | None:
        """1/N when N is known before the pass and no reduction across processes follows."""
        if self.data.size is None or self.distributed or self.call.positions == "all":
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
            raise DataError(
                "no data points: every batch was empty"
                + (
                    " or had every position masked or labelled -100"
                    if self.call.positions == "all"
                    else ""
                )
            )
        return total.div_(float(self.num_data))
