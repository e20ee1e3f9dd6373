"""Sequence outputs [N, T, V] and dict batches: the Fisher over (sequence, position) pairs.

F = (1/#positions) Σ_{n,t} J_ntᵀ Λ(p_nt) J_nt, positions masked by the attention mask and labels
−100, checked in float64 against a dense reference that forms every per-position Jacobian
(:func:`memspace.fisher.reference.dense_sequence_fisher`), on a small causal language model
written here and on Hugging Face's GPT-2 built from a config.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from memspace import DataError, MemspaceWarning
from memspace.fisher import EKFAC, KFAC, FisherOperator
from memspace.fisher.likelihood import FisherKind, Likelihood, sequence_sqrt_factors
from memspace.fisher.reference import dense_fisher, dense_sequence_fisher

VOCAB, LENGTH, WIDTH = 7, 5, 8


class TinyCausalLM(nn.Module):
    """input_ids [N, T] (and an attention mask) → logits [N, T, V], causal self-attention."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.norm = nn.LayerNorm(WIDTH)
        self.mlp = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        causal = torch.ones(h.shape[1], h.shape[1], dtype=torch.bool).triu(1)
        padding = None if attention_mask is None else attention_mask == 0
        a, _ = self.attn(h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=False)
        h = self.norm(h + a)
        return self.head(h + torch.tanh(self.mlp(h)))


def lm_batch(num: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded token batches: sequence n has LENGTH − (n % 3) real tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (num, LENGTH), generator=gen)
    lengths = LENGTH - torch.arange(num) % 3
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def tiny_lm() -> nn.Module:
    torch.manual_seed(0)
    return TinyCausalLM().double().eval()


def test_dict_batches_reach_the_model_as_keywords_and_labels_are_optional():
    model, batch = tiny_lm(), lm_batch()
    F = FisherOperator(model, batch, positions="all", batch_size=3)
    reference = dense_sequence_fisher(model, batch, batch["attention_mask"])
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, reference @ v, rtol=1e-10, atol=1e-13)
    assert F.num_data == int(batch["attention_mask"].sum())  # positions, not sequences
    with pytest.raises(DataError, match="empirical Fisher needs them"):
        FisherOperator(model, batch, positions="all", kind="empirical").diag()


@pytest.mark.parametrize("memory", ["fast", "low"])
def test_every_quantity_matches_the_per_position_reference(memory):
    model, batch = tiny_lm(), lm_batch()
    labels = batch["input_ids"].roll(-1, 1)
    labels[:, -1] = -100
    labels[0, 1] = -100  # an ignored label drops its position too
    mask = batch["attention_mask"].bool() & labels.ne(-100)
    loader = [({**batch}, labels)]  # an (inputs, labels) pair whose inputs are a dict
    F = FisherOperator(model, loader, positions="all", memory=memory)
    reference = dense_sequence_fisher(model, batch, mask)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, reference @ v, rtol=1e-10, atol=1e-13)
    assert float(F.quad(v)) == pytest.approx(float(v @ reference @ v), rel=1e-10)
    torch.testing.assert_close(F.diag(), reference.diagonal(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.dense(), reference, rtol=1e-10, atol=1e-13)
    ekfac = EKFAC.from_operator(F)  # exact eigenvalue trace on every tapped block
    torch.testing.assert_close(ekfac.trace(), reference.trace(), rtol=1e-10, atol=1e-13)


def test_sampled_columns_are_the_per_sequence_estimate_and_unbiased():
    model, batch = tiny_lm(), lm_batch()
    mask = batch["attention_mask"]
    F = FisherOperator(model, batch, positions="all", kind="mc", mc_samples=3, seed=5)
    with torch.no_grad():
        logits = model(**batch)
    columns = sequence_sqrt_factors(
        logits, None, mask, Likelihood.CLASSIFICATION, FisherKind.MC, mc_samples=3,
        generator=F.data_pass.generator(0),
    )  # fmt: skip
    reference = dense_sequence_fisher(model, batch, mask, factors=columns)
    torch.testing.assert_close(F.diag(), reference.diagonal(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.dense(), reference, rtol=1e-10, atol=1e-13)
    # unbiased: many labels per position approach the true Fisher (cross-position terms vanish)
    true = dense_sequence_fisher(model, batch, mask)
    many = FisherOperator(model, batch, positions="all", kind="mc", mc_samples=4000).diag()
    assert float((many - true.diagonal()).norm() / true.diagonal().norm()) < 0.05
    few = FisherOperator(model, batch, positions="all", kind="mc", mc_samples=1).diag()
    assert float((few - true.diagonal()).norm() / true.diagonal().norm()) > 0.05


def test_large_vocabularies_sample_the_true_columns_and_say_so():
    model, batch = tiny_lm(), lm_batch()
    needed = (VOCAB - 1) * LENGTH  # Λ's rank per position, over the positions
    at_the_limit = FisherOperator(model, batch, positions="all", exact_columns=needed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemspaceWarning)  # exact: nothing to say
        at_the_limit.diag()
    F = FisherOperator(model, batch, positions="all", exact_columns=needed - 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampled = F.diag()
    notes = [w for w in caught if issubclass(w.category, MemspaceWarning)]
    assert len(notes) == 1 and "exact_columns" in str(notes[0].message)
    exact = FisherOperator(model, batch, positions="all").diag()
    assert not torch.allclose(sampled, exact)
    v = torch.randn(F.shape[0], dtype=torch.float64)  # products stay exact
    torch.testing.assert_close(
        F @ v, FisherOperator(model, batch, positions="all") @ v, rtol=1e-12, atol=0
    )


def test_the_last_position_is_the_fisher_of_the_last_attended_logits():
    model, batch = tiny_lm(), lm_batch()
    last = batch["attention_mask"].sum(1) - 1

    class LastLogits(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(input_ids=x[:, 0], attention_mask=x[:, 1])
            return logits[torch.arange(x.shape[0]), last]

    stacked = torch.stack([batch["input_ids"], batch["attention_mask"]], 1)
    wrapped = LastLogits(model)
    reference = dense_fisher(wrapped, stacked, torch.zeros(4, dtype=torch.long))
    F = FisherOperator(model, batch, positions="last")
    torch.testing.assert_close(F.diag(), reference.diagonal(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.dense(), reference, rtol=1e-10, atol=1e-13)


def test_sequence_outputs_without_positions_are_refused_with_the_option_named():
    model, batch = tiny_lm(), lm_batch()
    with pytest.raises(DataError, match="positions='all'"):
        FisherOperator(model, batch).diag()
    with pytest.raises(DataError, match=r"labels \[N, T\]"):
        FisherOperator(model, [(batch, torch.zeros(4, dtype=torch.long))], positions="all").diag()
    with pytest.raises(DataError, match=r"attention_mask has shape \(4, 4\)"):
        cut = {**batch, "attention_mask": batch["attention_mask"][:, :4]}

        def wrapped(input_ids, attention_mask):  # a model that takes it, but not its length
            return model(input_ids)

        module = nn.Module()
        module.inner, module.forward = model, wrapped
        FisherOperator(module, cut, positions="all").diag()
    with pytest.raises(DataError, match="no data points"):  # every label ignored
        ignored = torch.full((4, LENGTH), -100)
        FisherOperator(model, [(batch, ignored)], positions="all").diag()
    with pytest.raises(DataError, match="disagree on the number of samples"):
        bad = {**batch, "attention_mask": batch["attention_mask"][:3]}
        FisherOperator(model, [(bad, None)], positions="all").diag()


def test_a_tokenizers_batch_encoding_and_a_collated_loader_are_data():
    transformers = pytest.importorskip("transformers")
    model, batch = tiny_lm(), lm_batch()
    encoding = transformers.BatchEncoding(batch)
    rows = [{k: v[n] for k, v in batch.items()} for n in range(4)]
    loader = torch.utils.data.DataLoader(rows, batch_size=3)  # default_collate: dicts
    reference = FisherOperator(model, batch, positions="all").diag()
    for data in (encoding, loader):
        F = FisherOperator(model, data, positions="all")
        torch.testing.assert_close(F.diag(), reference, rtol=1e-12, atol=1e-15)


def test_gpt2_language_model_fisher_per_position():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=VOCAB, n_positions=LENGTH,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    batch = lm_batch()
    F = FisherOperator(model, batch, positions="all", output="logits")
    reference = dense_sequence_fisher(model, batch, batch["attention_mask"], output="logits")
    torch.testing.assert_close(F.diag(), reference.diagonal(), rtol=1e-9, atol=1e-13)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, reference @ v, rtol=1e-9, atol=1e-13)
    plan = F.plan()
    assert set(plan.tapped) >= {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemspaceWarning)  # embeddings and norms: no block
        kfac = KFAC.from_operator(F)
    assert {b.module_name for b in kfac.blocks} >= {"transformer.h.0.attn.c_attn"}


def test_the_fisher_rao_norm_and_spectrum_count_positions():
    from memspace import fisher_rao_norm

    model, batch = tiny_lm(), lm_batch()
    reference = dense_sequence_fisher(model, batch, batch["attention_mask"])
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    value = fisher_rao_norm(model, batch, positions="all")
    assert value == pytest.approx(float(theta @ reference @ theta), rel=1e-10)
    top = FisherOperator(model, batch, positions="all").eigh(2)[0]
    torch.testing.assert_close(top, torch.linalg.eigvalsh(reference).flip(0)[:2], rtol=1e-8, atol=0)


def _hf_model(family: str, attention: str):
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    if family == "llama":  # grouped-query attention, rotary positions
        config = transformers.LlamaConfig(
            **common, num_key_value_heads=1, intermediate_size=12, max_position_embeddings=16,
            attn_implementation=attention,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config)
    config = transformers.BertConfig(
        **common, intermediate_size=12, max_position_embeddings=16, attn_implementation=attention
    )
    return transformers.BertForMaskedLM(config)


@pytest.mark.parametrize(
    "family, attention", [("llama", "eager"), ("llama", "sdpa"), ("bert", "eager")]
)
def test_hugging_face_families_per_position(family, attention):
    model = _hf_model(family, attention).double().eval()
    batch = lm_batch()
    labels = torch.full((4, LENGTH), -100)
    labels[:, 1:4] = batch["input_ids"][:, 1:4]  # a masked-LM's few labelled positions
    mask = batch["attention_mask"].bool() & labels.ne(-100)
    F = FisherOperator(model, [(batch, labels)], positions="all", output="logits")
    reference = dense_sequence_fisher(model, batch, mask, output="logits")
    # Llama's RMSNorm and rotary tables compute in float32 inside a float64 model: its
    # round-off is float32's, whatever the order of the sums
    rtol, atol = (1e-5, 1e-9) if family == "llama" else (1e-9, 1e-13)
    torch.testing.assert_close(F.diag(), reference.diagonal(), rtol=rtol, atol=atol)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, reference @ v, rtol=rtol, atol=atol)
    if family == "llama":  # an error of the method would be O(1), far above float32's
        error = (F.diag() - reference.diagonal()).abs().max() / reference.diagonal().abs().max()
        assert float(error) < 1e-5


def test_dict_batches_equal_a_wrapped_module_bit_for_bit():
    """The mapping reaches the model as keywords: the same numbers as a wrapper taking a tensor."""
    model, batch = tiny_lm(), lm_batch()
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])  # the wrapper sees no mask

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(input_ids=x[:, 0], attention_mask=x[:, 1])

    stacked = torch.stack([batch["input_ids"], batch["attention_mask"]], 1)
    labels = batch["input_ids"].roll(-1, 1)
    ours = FisherOperator(model, [(batch, labels)], positions="all", kind="empirical")
    theirs = FisherOperator(Wrapped(model), [(stacked, labels)], positions="all", kind="empirical")
    assert ours.num_data == theirs.num_data == LENGTH * 4
    v = torch.randn(ours.shape[0], dtype=torch.float64)
    torch.testing.assert_close(ours @ v, theirs @ v, rtol=0, atol=0)
    torch.testing.assert_close(ours.diag(), theirs.diag(), rtol=0, atol=0)


@pytest.mark.parametrize("memory", ["fast", "low"])
def test_a_position_mask_callable_keeps_only_its_positions(memory):
    """positions=callable: the Fisher over the positions it keeps (and the attention mask keeps).

    Keeping the even positions equals labelling the odd ones −100, and equals the per-position
    reference over exactly those positions.
    """
    model, batch = tiny_lm(), lm_batch()
    labels = batch["input_ids"].roll(-1, 1)
    even = (torch.arange(LENGTH) % 2 == 0).expand(len(labels), LENGTH)

    def keep_even(inputs):
        assert set(inputs) == {"input_ids", "attention_mask"}  # the model's inputs, no labels
        return even.long()  # 0/1 integers count as a mask as well as booleans

    F = FisherOperator(model, [(batch, labels)], positions=keep_even, memory=memory)
    ignored = torch.where(even, labels, torch.full_like(labels, -100))
    G = FisherOperator(model, [(batch, ignored)], positions="all", memory=memory)
    mask = batch["attention_mask"].bool() & even
    reference = dense_sequence_fisher(model, batch, mask)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    assert F.num_data == G.num_data == int(mask.sum())
    torch.testing.assert_close(F @ v, reference @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.diag(), G.diag(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(F.quad(v), v @ reference @ v, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "mask, word",
    [
        (lambda x: torch.ones(LENGTH, dtype=torch.bool), "shape"),
        (lambda x: [[1] * LENGTH] * 4, "not a mask tensor"),
        (lambda x: torch.full((4, LENGTH), 2), "other than 0 and 1"),
        (lambda x: torch.full((4, LENGTH), float("nan")), "NaN"),
    ],
)
def test_a_bad_position_mask_is_one_clear_error(mask, word):
    model, batch = tiny_lm(), lm_batch()
    with pytest.raises(DataError, match=word):
        FisherOperator(model, batch, positions=mask).diag()


class SequenceFirst(nn.Module):
    """The tiny LM sequence-first: ids and mask [T, N] in, logits [T, N, V] out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids.T, attention_mask.T).transpose(0, 1)


@pytest.mark.parametrize("memory", ["fast", "low"])
def test_sequence_first_outputs_with_sample_dim_1_equal_the_batch_first_model(memory):
    """sample_dim=1: logits [T, N, V], masks [T, N], labels [N, T] — the same Fisher.

    N ≠ T and N = T: a layout mistaken for its transposition would change the numbers (or fail).
    """
    for num in (4, LENGTH):
        model, batch = tiny_lm(), lm_batch(num)
        labels = batch["input_ids"].roll(-1, 1)
        labels[:, -1] = -100
        first = {k: v.T.contiguous() for k, v in batch.items()}
        keep = lambda x: x["input_ids"] % 3 != 0  # noqa: E731  (the inputs' layout: [T, N] there)
        F = FisherOperator(model, [(batch, labels)], positions=keep, memory=memory)
        G = FisherOperator(
            SequenceFirst(model),
            [(first, labels)],
            positions=keep,
            sample_dim=1,
            memory=memory,
        )
        v = torch.randn(F.shape[0], dtype=torch.float64)
        assert F.num_data == G.num_data
        torch.testing.assert_close(G @ v, F @ v, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(G.diag(), F.diag(), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(G.quad(v), F.quad(v), rtol=1e-10, atol=1e-13)
    batch_first_out = SequenceFirst(model)
    batch_first_out.forward = lambda input_ids, attention_mask: model(input_ids.T, attention_mask.T)
    first = {k: v.T.contiguous() for k, v in lm_batch(4).items()}
    with pytest.raises(DataError, match=r"sequence-first outputs \[T, N, V\]"):
        FisherOperator(batch_first_out, first, positions="all", sample_dim=1).diag()
