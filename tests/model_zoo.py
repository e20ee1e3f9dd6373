"""Models nobody here wrote: standard PyTorch layers in the layouts users have.

Each entry builds a small seeded model, its inputs and targets, and says how memspace
must be told about it (``sample_dim`` for a sequence-first input, ``output`` for a
model returning a tuple or a dict). The dense reference in :func:`reference_fisher`
shares no code with memspace: one reverse pass per output entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as nnf


class EncoderClassifier(nn.Module):
    """TransformerEncoderLayer blocks → mean over positions → linear head.

    ``batch_first=False`` takes inputs [T, N, d] (the sample is dimension 1).
    """

    def __init__(
        self,
        d: int = 8,
        heads: int = 2,
        layers: int = 1,
        classes: int = 3,
        batch_first: bool = True,
    ):
        super().__init__()
        self.batch_first = batch_first
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=batch_first
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, classes)

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(state).mean(dim=1 if self.batch_first else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.readout(x)


class TinyBert(nn.Module):
    """Token ids [N, T] → embedding + positions → encoder → logits at position 0.

    The embedding has padding_idx=0; the logits over the vocabulary come through the embedding
    matrix (a tied output layer).

    Returns a dict ``{"logits": [N, V], "hidden": [N, T, d]}`` like a Hugging Face model.
    """

    def __init__(self, vocab: int = 7, d: int = 8, length: int = 4, decoder_first: bool = False):
        super().__init__()
        if decoder_first:  # the output layer is registered first and owns the name
            self.decoder = nn.Linear(d, vocab, bias=False)
            self.embed = nn.Embedding(vocab, d, padding_idx=0)
            self.embed.weight = self.decoder.weight
        else:
            self.embed = nn.Embedding(vocab, d, padding_idx=0)
            self.decoder = nn.Linear(d, vocab, bias=False)
            self.decoder.weight = self.embed.weight
        self.position = nn.Parameter(0.3 * torch.randn(length, d))
        self.encoder = nn.TransformerEncoderLayer(
            d, 2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.encoder(self.embed(tokens) + self.position)
        return OrderedDict(logits=self.decoder(hidden[:, 0]) + self.bias, hidden=hidden)


class MaskedAttention(nn.Module):
    """Causal self-attention with a key padding mask read off the inputs, attention weights kept.

    Inputs [N, T, d]; a position whose first feature is below −1 is padding. The averaged attention
    weights are returned and used (need_weights=True), so both of torch's attention branches are
    covered across the zoo.
    """

    def __init__(self, d: int = 6, classes: int = 3):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        length = x.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        padding = x[..., 0] < -1
        padding[:, 0] = False  # every query keeps a key
        out, weights = self.attn(
            x, x, x, attn_mask=causal, key_padding_mask=padding, need_weights=True
        )
        return self.head(torch.tanh(out).mean(1) + weights.sum(1)[..., :1])


class CrossAttention(nn.Module):
    """Queries from the inputs, keys and values from a transform of them (cross-attention)."""

    def __init__(self, d: int = 6, classes: int = 3, kdim: int | None = None):
        super().__init__()
        self.memory = nn.Linear(d, kdim or d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        memory = torch.tanh(self.memory(x))
        out, _ = self.attn(x, memory, memory, need_weights=False)
        return self.head(out.mean(1))


class RecurrentClassifier(nn.Module):
    """LSTM or GRU over [N, T, d] → last hidden state → linear head."""

    def __init__(self, cell: str = "lstm", d: int = 3, hidden: int = 5, classes: int = 3):
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TiedLinears(nn.Module):
    """One weight used by two Linear modules (x ↦ W tanh(W x + b₁) + b₂ → head)."""

    def __init__(self, d: int = 4, classes: int = 3):
        super().__init__()
        self.first = nn.Linear(d, d)
        self.second = nn.Linear(d, d)
        self.second.weight = self.first.weight
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


class ReshapedRows(nn.Module):
    """A Linear applied to the rows of [N·T, d]: its input has no sample axis."""

    def __init__(self, d: int = 3, hidden: int = 4, classes: int = 3):
        super().__init__()
        self.inner = nn.Linear(d, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):  # x [N, T, d]
        n, t, d = x.shape
        rows = torch.tanh(self.inner(x.reshape(n * t, d)))
        return self.head(rows.reshape(n, t, -1).mean(1))


class TupleOutput(nn.Module):
    """Returns ``(logits, features)``."""

    def __init__(self, d: int = 4, classes: int = 3):
        super().__init__()
        self.body = nn.Linear(d, 6)
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        features = torch.tanh(self.body(x))
        return self.head(features), features


class TokenMLP(nn.Module):
    """A Linear on every position of [N, T, d] (weight sharing), mean-pooled.

    K-FAC's "expand" case, where curvlinops computes the same factors.
    """

    def __init__(self, d: int = 3, hidden: int = 5, classes: int = 3):
        super().__init__()
        self.inner = nn.Linear(d, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)).mean(1))


class SeparateProjections(nn.Module):
    """Attention with its own q, k, v and output Linear layers, as Hugging Face models write it.

    The key projection's bias has a zero gradient in exact arithmetic: a shift of every key score
    of a query by the same amount leaves the softmax unchanged.
    """

    def __init__(self, width: int = 6, classes: int = 3):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        weights = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return self.head(self.o(weights @ v).mean(1))


@dataclass
class ZooCase:
    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    options: dict[str, Any] = field(default_factory=dict)  # sample_dim, output

    def outputs(self, x: torch.Tensor | None = None) -> torch.Tensor:
        raw = self.model(self.inputs if x is None else x)
        select = self.options.get("output")
        if select is None:
            return raw
        if callable(select):
            return select(raw)
        return raw[select]


def _encoder(batch_first: bool, dtype):
    torch.manual_seed(10)
    model = EncoderClassifier(batch_first=batch_first)
    x = torch.randn(5, 3, 8)  # [N, T, d]
    if not batch_first:
        x = x.transpose(0, 1).contiguous()  # [T, N, d]
    return model, x, {"sample_dim": 0 if batch_first else 1}


def _bert(decoder_first: bool):
    torch.manual_seed(11)
    model = TinyBert(decoder_first=decoder_first)
    tokens = torch.randint(1, 7, (5, 4))
    tokens[:, -1] = 0  # padding at the end of every sequence
    tokens[1, 2] = 0
    return model, tokens, {"output": "logits"}


def _recurrent(cell: str):
    torch.manual_seed(12)
    return RecurrentClassifier(cell), torch.randn(4, 3, 3), {}


ZOO: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, dict]]] = {
    "encoder-batch-first": lambda: _encoder(True, None),
    "encoder-sequence-first": lambda: _encoder(False, None),
    "bert-tied": lambda: _bert(False),
    "bert-tied-decoder-first": lambda: _bert(True),
    "lstm": lambda: _recurrent("lstm"),
    "gru": lambda: _recurrent("gru"),
    "tied-linears": lambda: (torch.manual_seed(13), TiedLinears(), torch.randn(6, 4), {})[1:],
    "reshaped-rows": lambda: (torch.manual_seed(14), ReshapedRows(), torch.randn(5, 3, 3), {})[1:],
    "tuple-output": lambda: (
        torch.manual_seed(15),
        TupleOutput(),
        torch.randn(6, 4),
        {"output": 0},
    )[1:],
    "attention-masked": lambda: (
        torch.manual_seed(18),
        MaskedAttention(),
        torch.randn(5, 4, 6),
        {},
    )[1:],
    "cross-attention": lambda: (torch.manual_seed(19), CrossAttention(), torch.randn(5, 3, 6), {})[
        1:
    ],
    "cross-attention-kdim": lambda: (
        torch.manual_seed(20),
        CrossAttention(kdim=4),
        torch.randn(5, 3, 6),
        {},
    )[1:],
    "token-mlp": lambda: (torch.manual_seed(16), TokenMLP(), torch.randn(5, 3, 3), {})[1:],
    "separate-projections": lambda: (
        torch.manual_seed(17),
        SeparateProjections(),
        torch.randn(5, 4, 6),
        {},
    )[1:],
}


def make_zoo_case(name: str, dtype: torch.dtype = torch.float64) -> ZooCase:
    model, inputs, options = ZOO[name]()
    model = model.to(dtype).eval()
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    with torch.no_grad():
        case = ZooCase(name, model, inputs, torch.zeros(0), options)
        classes = case.outputs().shape[1]
    num = inputs.shape[options.get("sample_dim", 0)]
    case.targets = torch.randint(0, classes, (num,), generator=torch.Generator().manual_seed(1))
    return case


def reference_jacobian(case: ZooCase) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(J [N, C, P], outputs [N, C], parameter names) by one reverse pass per output entry."""
    named = dict(case.model.named_parameters())
    names = list(named)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        outputs = case.outputs()
    rows = []
    for n in range(outputs.shape[0]):
        cols = []
        for c in range(outputs.shape[1]):
            grads = torch.autograd.grad(
                outputs[n, c], [named[k] for k in names], retain_graph=True, allow_unused=True
            )
            cols.append(
                torch.cat(
                    [
                        (torch.zeros_like(named[k]) if g is None else g).reshape(-1)
                        for k, g in zip(names, grads)
                    ]
                )
            )
        rows.append(torch.stack(cols))
    return torch.stack(rows), outputs.detach(), names


def reference_fisher(case: ZooCase) -> torch.Tensor:
    """F = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n, dense [P, P] in the model's dtype."""
    jac, outputs, _ = reference_jacobian(case)
    p = nnf.softmax(outputs, dim=1)
    lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac) / outputs.shape[0]
