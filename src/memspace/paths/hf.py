"""Where a Hugging Face model keeps its residual stream: blocks, final norm and read-out.

The logit lens (nostalgebraist 2020) reads every state of a transformer's residual stream with the
model's own read-out, the final norm followed by the unembedding. memspace reads it as the
predictive path (docs/theory.md §3.1): for that it needs the residual blocks, in order, and the
read-out, which each family names differently. One small adapter per family says so:

=================  ==============================  ==========================================
family             residual blocks                 read-out of a state h
=================  ==============================  ==========================================
GPT-2              ``transformer.h.{i}``           ``lm_head(transformer.ln_f(h))``
GPT-NeoX, Pythia   ``gpt_neox.layers.{i}``         ``lm_head(gpt_neox.final_layer_norm(h))``
Llama, Mistral,    ``model.layers.{i}``            ``lm_head(model.norm(h))``
Qwen2, Gemma …
BERT-style MLM     ``<base>.encoder.layer.{i}``    ``cls(h)`` (transform, norm, decoder)
BERT-style         ``<base>.encoder.layer.{i}``    ``classifier(pooler(h))`` (per sequence)
classifier
=================  ==============================  ==========================================

Any other model: give ``block_names`` and ``head`` yourself (the read-out maps a state
[N, T, d] to logits [N, T, V], or [N, C] for a sequence classifier). Nothing here imports
``transformers``: a family is recognised by the modules the model has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from .._errors import ModelError

__all__ = ["LensAdapter", "lens_adapter"]


@dataclass(frozen=True)
class LensAdapter:
    """A model's residual blocks and read-out, for the predictive path and the logit lens.

    Attributes:
        family: the family recognised (``"gpt2"``, ``"gpt_neox"``, ``"llama"``, ``"bert-mlm"``,
            ``"bert-classifier"``).
        block_names: the residual blocks' module names, in order.
        head: the read-out of a state of the stream [N, T, d]: logits [N, T, V] (per token), or
            [N, C] for a sequence classifier.
        per_token: whether the read-out gives a distribution per position.
    """

    family: str
    block_names: list[str]
    head: Callable[[Tensor], Tensor]
    per_token: bool = True


def _blocks(model: nn.Module, prefix: str) -> list[str]:
    modules = dict(model.named_modules())
    blocks = modules.get(prefix)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ModelError(f"{type(model).__name__}: no residual blocks at {prefix!r}")
    return [f"{prefix}.{i}" for i in range(len(blocks))]


def _compose(*stages: nn.Module) -> Callable[[Tensor], Tensor]:
    def head(state: Tensor) -> Tensor:
        for stage in stages:
            state = stage(state)
        return state

    return head


def lens_adapter(model: nn.Module) -> LensAdapter:
    """The :class:`LensAdapter` of a Hugging Face model of a known family (module doc).

    Raises:
        ModelError: a model of no known family, or one without a read-out (a bare ``GPT2Model``
            has no unembedding): pass ``block_names`` and ``head`` instead.
    """
    modules = dict(model.named_modules())

    def has(*names: str) -> bool:
        return all(name in modules for name in names)

    if has("transformer.h", "transformer.ln_f", "lm_head"):
        return LensAdapter(
            "gpt2",
            _blocks(model, "transformer.h"),
            _compose(modules["transformer.ln_f"], modules["lm_head"]),
        )
    for out in ("embed_out", "lm_head"):  # transformers 4 named it embed_out, 5 lm_head
        if has("gpt_neox.layers", "gpt_neox.final_layer_norm", out):
            return LensAdapter(
                "gpt_neox",
                _blocks(model, "gpt_neox.layers"),
                _compose(modules["gpt_neox.final_layer_norm"], modules[out]),
            )
    if has("model.layers", "model.norm", "lm_head"):
        return LensAdapter(
            "llama",
            _blocks(model, "model.layers"),
            _compose(modules["model.norm"], modules["lm_head"]),
        )
    for base in ("bert", "roberta", "electra", ""):
        encoder = f"{base}.encoder.layer" if base else "encoder.layer"
        if encoder not in modules:
            continue
        if "cls" in modules:  # BertForMaskedLM: transform, norm and decoder
            return LensAdapter("bert-mlm", _blocks(model, encoder), modules["cls"])
        pooler = f"{base}.pooler" if base else "pooler"
        if pooler in modules and modules[pooler] is not None and "classifier" in modules:
            return LensAdapter(
                "bert-classifier",
                _blocks(model, encoder),
                _compose(modules[pooler], modules["classifier"]),
                per_token=False,
            )
    raise ModelError(
        f"{type(model).__name__} is of no family memspace knows (GPT-2, GPT-NeoX, Llama-style, "
        "BERT-style) or has no read-out: pass block_names= (its residual blocks, in order) and "
        "head= (final norm and unembedding of a state)"
    )
