"""Dense float64 reference Fisher, deliberately naive, for tests (ships with the package).

Builds the full Jacobian J [N, D, P] of the outputs of the *whole data set* with
``torch.func.jacrev`` and the output Fisher Λ̂_n [D, D] as explicit matrices, then
F = (1/N) Σ_n J_nᵀ Λ̂_n J_n. Shares no code path with the streaming operator apart
from the Monte-Carlo label sampler (so that ``kind="mc"`` refers to the same labels).
Only for small models and data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from .likelihood import FisherKind, Likelihood, output_sqrt_factors

__all__ = ["dense_fisher", "dense_sequence_fisher", "full_jacobian", "output_fisher_matrices"]


def full_jacobian(model: nn.Module, inputs: Tensor, names: Sequence[str] | None = None) -> Tensor:
    """∂f(X)/∂θ for all inputs at once, [N, D, P] (P in ``named_parameters`` order)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params) if names is None else list(names)

    def outputs(selected: dict[str, Tensor]) -> Tensor:
        return functional_call(model, {**params, **selected}, (inputs,))

    jac = jacrev(outputs)({n: params[n] for n in names})
    num, dim = jac[names[0]].shape[:2]
    return torch.cat([jac[n].reshape(num, dim, -1) for n in names], dim=2)


def output_fisher_matrices(
    outputs: Tensor,
    targets: Tensor,
    likelihood: str,
    kind: str,
    *,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Λ̂_n as explicit matrices [N, D, D].

    True classification: diag(p) − p pᵀ written out; true regression: I; MC and
    empirical: Σ_k s_k s_kᵀ from the sampled or data labels.
    """
    likelihood, kind = Likelihood(likelihood), FisherKind(kind)
    num, dim = outputs.shape
    if kind is FisherKind.TRUE:
        if likelihood is Likelihood.REGRESSION:
            return torch.eye(dim, dtype=outputs.dtype).expand(num, dim, dim)
        p = outputs.softmax(dim=1)
        return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    s = output_sqrt_factors(
        outputs, targets, likelihood, kind, mc_samples=mc_samples, generator=generator
    )
    return torch.einsum("knd,kne->nde", s, s)


def dense_fisher(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    likelihood: str = "classification",
    kind: str = "true",
    names: Sequence[str] | None = None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """F = (1/N) Σ_n J_nᵀ Λ̂_n J_n, dense [P, P], everything at once (docs/theory.md §1)."""
    jac = full_jacobian(model, inputs, names)
    with torch.no_grad():
        outputs = model(inputs)
    lam = output_fisher_matrices(
        outputs, targets, likelihood, kind, mc_samples=mc_samples, generator=generator
    )
    return torch.einsum("ndp,nde,neq->pq", jac, lam, jac) / inputs.shape[0]


def dense_sequence_fisher(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    mask: Tensor,
    *,
    likelihood: str = "classification",
    output: str | None = None,
    factors: Tensor | None = None,
) -> Tensor:
    """The Fisher of sequence outputs [N, T, V], per position, dense [P, P].

    F = (1/Σ m) Σ_n Σ_t m_nt J_ntᵀ Λ(f_nt) J_nt with J_nt = ∂f_nt/∂θ [V, P], every Jacobian
    formed whole (``jacrev`` of the model on keyword ``inputs``). With ``factors`` [K, N, T, V]
    the output Fisher of sample n is Σ_k s_kn s_knᵀ over all its positions at once instead (the
    sampled per-sequence columns of :func:`memspace.fisher.likelihood.sequence_sqrt_factors`).
    """
    params = {n: p.detach() for n, p in model.named_parameters()}

    def outputs(selected: dict[str, Tensor]) -> Tensor:
        raw = functional_call(model, selected, (), dict(inputs))
        return raw if output is None else getattr(raw, output)

    jac = jacrev(outputs)(params)
    num, length, dim = jac[next(iter(params))].shape[:3]
    flat = torch.cat([jac[n].reshape(num, length, dim, -1) for n in params], dim=3)
    weight = mask.to(flat.dtype)
    with torch.no_grad():
        logits = outputs(params)
    if factors is not None:
        proj = torch.einsum("kntv,ntvp->knp", factors, flat)
        return torch.einsum("knp,knq->pq", proj, proj) / weight.sum()
    if Likelihood(likelihood) is Likelihood.REGRESSION:
        lam = torch.eye(dim, dtype=flat.dtype).expand(num, length, dim, dim)
    else:
        p = logits.softmax(dim=2)
        lam = torch.diag_embed(p) - p.unsqueeze(3) * p.unsqueeze(2)
    return torch.einsum("nt,ntvp,ntvw,ntwq->pq", weight, flat, lam, flat) / weight.sum()
