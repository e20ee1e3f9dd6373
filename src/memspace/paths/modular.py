"""Networks for modular arithmetic read as residual paths, and the Fourier structure they learn.

The grokking anchors (Power et al. 2022; Nanda et al. 2023, "Progress measures for grokking via
mechanistic interpretability") train on the token sequences [a, b, =] of
:func:`memspace.data.modular_arithmetic` and read the answer a ∘ b mod p at the last position.
Both models here are :class:`~memspace.paths.models.ResidualPathModel` s (stem, residual blocks,
head), so the predictive path, block sensitivity and the Fisher engine apply unchanged:

- :class:`ModularTransformer`: Nanda et al.'s one-layer transformer, configurable (token and
  position embeddings as the stem; per layer an attention and an MLP sublayer, each a residual
  block x ↦ x + f(x); no LayerNorm; the unembedding of the last position as the head). With
  p = 113, d_model 128, 4 heads, d_mlp 512 and one layer it is the anchor's model.
- :class:`ModularMLP`: an MLP on one-hot pairs (one-hot(a) ⊕ one-hot(b) → width as the stem,
  L residual blocks, a linear head).

The generalising solution of modular addition stores the numbers as a few frequencies of Z_p:
the embedding of x is spanned by cos(2πkx/p) and sin(2πkx/p) for a handful of key frequencies
k (Nanda et al.). :func:`fourier_spectrum` splits an embedding's squared norm over the
frequencies (exactly, by Parseval) and :func:`fourier_concentration` is the share of its top k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from .._errors import MemspaceError
from .models import ResidualPathModel, _activation, mlp_blocks

__all__ = [
    "FourierSpectrum",
    "ModularMLP",
    "ModularTransformer",
    "Sublayer",
    "embedding_matrix",
    "fourier_concentration",
    "fourier_spectrum",
]


class Sublayer(nn.Module):
    """x ↦ x + f(x): a transformer's residual update, one block of the path."""

    def __init__(self, update: nn.Module):
        super().__init__()
        self.update = update

    def forward(self, x: Tensor) -> Tensor:
        """The stream after the update [N, T, d]."""
        return x + self.update(x)


class TokenEmbedding(nn.Module):
    """Token ids [N, T] → W_E[ids] + W_pos [N, T, d] (the transformer's stem)."""

    def __init__(self, vocab: int, positions: int, d_model: int):
        super().__init__()
        self.token = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(positions, d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        """The residual stream's first state [N, T, d]."""
        return self.token(tokens) + self.position[: tokens.shape[1]]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention without biases or LayerNorm (Nanda et al.'s)."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise MemspaceError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads = heads
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.output = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """The attention update [N, T, d] (softmax(q kᵀ/√d_head) with a causal mask)."""
        n, t, d = x.shape

        def split(y: Tensor) -> Tensor:
            return y.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)
        return self.output((weights @ v).transpose(1, 2).reshape(n, t, d))


class FeedForward(nn.Module):
    """W_out σ(W_in x + b_in) + b_out, applied at every position."""

    def __init__(self, d_model: int, d_mlp: int, activation: str = "relu"):
        super().__init__()
        self.up = nn.Linear(d_model, d_mlp)
        self.act = _activation(activation)
        self.down = nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """The MLP update [N, T, d]."""
        return self.down(self.act(self.up(x)))


class LastPosition(nn.Module):
    """The head: the unembedding of the stream's last position, [N, T, d] → logits [N, C]."""

    def __init__(self, d_model: int, classes: int):
        super().__init__()
        self.unembed = nn.Linear(d_model, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [N, C] read at the ``=`` token."""
        return self.unembed(x[:, -1])


class ModularTransformer(ResidualPathModel):
    """Nanda et al.'s grokking transformer, as a path of 2·layers residual blocks.

    Inputs are token ids [N, 3] ([a, b, =], vocabulary p + 1); outputs logits [N, p]. Weights
    are drawn as in the anchor: every matrix N(0, 1/d_model) entrywise (the unembedding
    N(0, 1/p)), biases zero.

    Args:
        p: the modulus (p classes, p + 1 tokens).
        d_model: the residual stream's width (128 in the anchor).
        heads: attention heads (4).
        d_mlp: the MLP's hidden width (512).
        layers: transformer layers (1); each gives an attention and an MLP block.
        activation: the MLP's nonlinearity (``relu`` in the anchor).
    """

    def __init__(
        self,
        p: int,
        d_model: int = 128,
        heads: int = 4,
        d_mlp: int = 512,
        layers: int = 1,
        activation: str = "relu",
    ):
        super().__init__()
        if layers < 1:
            raise MemspaceError(f"layers must be at least 1, got {layers}")
        self.p = p
        self.stem = TokenEmbedding(p + 1, 3, d_model)
        blocks = []
        for _ in range(layers):
            blocks += [
                Sublayer(CausalSelfAttention(d_model, heads)),
                Sublayer(FeedForward(d_model, d_mlp, activation)),
            ]
        self.blocks = nn.ModuleList(blocks)
        self.head = LastPosition(d_model, p)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                else:
                    std = 1 / math.sqrt(p if name.startswith("head") else d_model)
                    param.normal_(0.0, std)


class OneHotPair(nn.Module):
    """Token ids [N, 3] ([a, b, =]) → W [one-hot(a); one-hot(b)] + c [N, width]."""

    def __init__(self, p: int, width: int):
        super().__init__()
        self.p = p
        self.linear = nn.Linear(2 * p, width)

    def forward(self, tokens: Tensor) -> Tensor:
        """The residual stream's first state [N, width]."""
        pair = nnf.one_hot(tokens[:, :2], self.p).flatten(1).to(self.linear.weight.dtype)
        return self.linear(pair)


class ModularMLP(ResidualPathModel):
    """A residual MLP on one-hot pairs: one-hot(a) ⊕ one-hot(b) → L blocks → logits [N, p].

    Args:
        p: the modulus.
        width: the residual stream's width.
        depth: the number of blocks L (h = 1/L).
        hidden: the velocities' hidden width (default ``width``).
        activation: ``relu`` (default), ``tanh``, ``gelu`` or ``softplus``.
    """

    def __init__(
        self,
        p: int,
        width: int = 128,
        depth: int = 2,
        *,
        hidden: int | None = None,
        activation: str = "relu",
    ):
        super().__init__()
        if depth < 1:
            raise MemspaceError(f"depth must be at least 1, got {depth}")
        self.p = p
        self.stem = OneHotPair(p, width)
        self.blocks = mlp_blocks(width, depth, hidden or width, activation)
        self.head = nn.Linear(width, p)


def embedding_matrix(model: nn.Module) -> np.ndarray:
    """The numbers' embedding [p, d] of a modular model: row x is how the model stores x.

    :class:`ModularTransformer`: the token embedding of 0 … p − 1 (the ``=`` token left out).
    :class:`ModularMLP`: the stem's columns for a and for b side by side, [p, 2·width].

    Raises:
        MemspaceError: for another model.
    """
    if isinstance(model, ModularTransformer):
        weight = model.stem.token.weight[: model.p]
    elif isinstance(model, ModularMLP):
        w = model.stem.linear.weight  # [width, 2p]
        weight = torch.cat([w[:, : model.p].T, w[:, model.p :].T], 1)
    else:
        raise MemspaceError(
            f"{type(model).__name__} is not a modular model: pass its embedding [p, d] to "
            "fourier_spectrum yourself"
        )
    return weight.detach().double().cpu().numpy()


@dataclass(frozen=True)
class FourierSpectrum:
    """An embedding's squared norm per frequency of Z_p.

    Attributes:
        energy: [p // 2 + 1], the squared norm of the embedding's projection on frequency k
            (k = 0 the constant; cos and sin together otherwise); it sums to ‖E‖²_F.
        total: ‖E‖²_F.
    """

    energy: np.ndarray
    total: float

    def key_frequencies(self, k: int) -> list[int]:
        """The k non-constant frequencies of largest energy, largest first."""
        order = np.argsort(-self.energy[1:], kind="stable") + 1
        return [int(f) for f in order[:k]]

    def concentration(self, k: int) -> float:
        """The share of ‖E‖² in the top k non-constant frequencies."""
        if self.total == 0:
            return math.nan
        return float(self.energy[self.key_frequencies(k)].sum() / self.total)


def fourier_spectrum(embedding: np.ndarray | Tensor) -> FourierSpectrum:
    """The energy of an embedding E [p, d] (row x stores the number x) per frequency of Z_p.

    In the orthonormal real Fourier basis of Z_p (1/√p; √(2/p) cos(2πkx/p), √(2/p) sin(2πkx/p)
    for 0 < k < p/2; cos(πx)/√p for even p), by Parseval: energy_0 = |F_0|²/p, energy_k =
    2|F_k|²/p for 0 < k < p/2, energy_{p/2} = |F_{p/2}|²/p, with F = Σ_x E_x e^{−2πikx/p}
    summed over the d columns.
    """
    E = np.asarray(embedding.detach().cpu() if isinstance(embedding, Tensor) else embedding)
    if E.ndim != 2 or E.shape[0] < 2:
        raise MemspaceError(f"an embedding must be [p, d] with p ≥ 2, got {E.shape}")
    p = E.shape[0]
    power = (np.abs(np.fft.rfft(E.astype(np.float64), axis=0)) ** 2).sum(1)
    weights = np.full(len(power), 2.0 / p)
    weights[0] = 1.0 / p
    if p % 2 == 0:
        weights[-1] = 1.0 / p
    return FourierSpectrum(power * weights, float((E.astype(np.float64) ** 2).sum()))


def fourier_concentration(embedding: np.ndarray | Tensor | nn.Module, k: int = 5) -> float:
    """The share of an embedding's squared norm in its top k frequencies (module doc).

    1 for an embedding spanned by k frequencies (the generalising solution's form); about
    2k/p for a random one. A model (:class:`ModularTransformer`, :class:`ModularMLP`) is read
    through :func:`embedding_matrix`.
    """
    if isinstance(embedding, nn.Module):
        embedding = embedding_matrix(embedding)
    if k < 1:
        raise MemspaceError(f"k must be at least 1, got {k}")
    return fourier_spectrum(embedding).concentration(k)
