"""``transformers``' Conv1D (GPT-2's linear layer, weight stored [I, O]) on the fast paths.

A Conv1D model and its twin with ``nn.Linear`` layers (the same maps, weights transposed) must
give the same Fisher in every structure once the weight layouts are matched; the diagonal must
also match a dense float64 reference.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from memspace import MemspaceWarning
from memspace.fisher import EKFAC, KFAC, FisherOperator
from memspace.fisher.reference import dense_fisher

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


class TokenMLP(nn.Module):
    """Tokens [N, T, 6] → two position-wise layers → mean over T → 3 logits."""

    def __init__(self, conv1d: bool):
        super().__init__()
        self.up = Conv1D(8, 6) if conv1d else nn.Linear(6, 8)
        self.down = Conv1D(5, 8) if conv1d else nn.Linear(8, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.down(torch.tanh(self.up(x))).tanh().mean(1))


def twins() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv, linear = TokenMLP(True).double().eval(), TokenMLP(False).double().eval()
    with torch.no_grad():
        for name in ("up", "down"):
            getattr(conv, name).weight.normal_(0, 0.5)
            getattr(conv, name).bias.normal_(0, 0.5)
            getattr(linear, name).weight.copy_(getattr(conv, name).weight.T)
            getattr(linear, name).bias.copy_(getattr(conv, name).bias)
        linear.head.load_state_dict(conv.head.state_dict())
    x = torch.randn(7, 4, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    return conv, linear, x, y


def as_conv_layout(flat: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A flat vector in the Linear twin's layout, rewritten in the Conv1D model's layout."""
    parts, start = [], 0
    for name, p in model.named_parameters():
        chunk = flat[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
        transposed = name.endswith("weight") and not name.startswith("head")
        parts.append((chunk.T if transposed else chunk).reshape(-1))
    return torch.cat(parts)


def permutation(model: nn.Module) -> torch.Tensor:
    """Index p such that conv_flat = linear_flat[p]."""
    size = sum(p.numel() for p in model.parameters())
    return as_conv_layout(torch.arange(size, dtype=torch.float64), model).long()


def test_conv1d_layers_take_the_fast_path():
    conv, _, x, y = twins()
    plan = FisherOperator(conv, (x, y)).plan()
    assert plan.tapped == {"up": "Conv1D", "down": "Conv1D", "head": "Linear"}
    assert plan.exact == {} and plan.jacobians == "not needed"


@pytest.mark.parametrize("memory", ["fast", "low"])
def test_conv1d_diagonal_matches_the_dense_reference(memory):
    conv, _, x, y = twins()
    reference = dense_fisher(conv, x, y).diagonal()
    for kind in ("true", "empirical"):
        F = FisherOperator(conv, (x, y), kind=kind, memory=memory)
        expected = reference if kind == "true" else dense_fisher(conv, x, y, kind=kind).diagonal()
        torch.testing.assert_close(F.diag(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("structure", [KFAC, EKFAC])
def test_conv1d_structures_equal_their_linear_twins(structure):
    conv, linear, x, y = twins()
    index = permutation(linear)
    approx_conv, approx_linear = structure(conv, (x, y)), structure(linear, (x, y))
    assert len(approx_conv.blocks) == 3 and not approx_conv.fallback_diag
    dense_linear = approx_linear.dense()
    torch.testing.assert_close(
        approx_conv.dense(), dense_linear[index][:, index], rtol=1e-10, atol=1e-14
    )
    torch.testing.assert_close(approx_conv.diag(), approx_linear.diag()[index], rtol=1e-10, atol=0)
    torch.testing.assert_close(approx_conv.trace(), approx_linear.trace(), rtol=1e-12, atol=0)
    v = torch.randn(index.numel(), dtype=torch.float64)
    product = (approx_linear @ v)[index]
    torch.testing.assert_close(approx_conv @ v[index], product, rtol=1e-10, atol=0)


def test_gpt2_kfac_has_a_block_per_conv1d_and_names_every_other_layer():
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8, num_labels=3,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2ForSequenceClassification(config).double().eval()
    x, y = torch.randint(1, 20, (4, 5)), torch.randint(0, 3, (4,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kfac = KFAC(model, (x, y), output="logits")
    blocks = {b.module_name for b in kfac.blocks}
    assert blocks == {
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
        "score",
    }
    plan = kfac.parts.collector.tap_plan()
    owners = {name.rpartition(".")[0] for name in plan.fallback}
    assert owners == set(plan.reasons)  # every layer without a block is named, with why
    # token embeddings and layer norms are tapped too, without a block; the position embedding
    # looks up positions [1, T] shared by every sample, so no axis of its input is the sample's
    assert plan.fallback == ["transformer.wpe.weight"]
    assert "no axis that indexes data points" in plan.reasons["transformer.wpe"]
    unblocked = [w for w in caught if issubclass(w.category, MemspaceWarning)]
    assert len(unblocked) == 1 and "transformer.wte.weight: elementwise" in str(
        unblocked[0].message
    )
    assert "transformer.ln_f.weight: elementwise" in str(unblocked[0].message)
    assert {"transformer.ln_f.weight", "transformer.wte.weight"} <= set(kfac.fallback_diag)
    assert unblocked[0].filename == __file__  # it points at the caller's line
    # the fast diagonal (Conv1D taps) against F's dense matrix from its exact products
    F = FisherOperator(model, (x, y), output="logits")
    torch.testing.assert_close(F.diag(), F.dense().diagonal(), rtol=1e-9, atol=1e-13)
