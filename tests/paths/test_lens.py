"""The logit lens as a predictive path, per token, through the Hugging Face adapters.

Checked against a loop written here over ``output_hidden_states`` with the family's final norm and
unembedding, and against the closed form of idle blocks (A/A_min = L+1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from memspace import MemspaceError
from memspace._errors import ModelError
from memspace.paths import fisher_rao_distance, lens_adapter, lens_path, unigram_prior

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH = 11, 6


def gpt2(layers: int = 3) -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=layers, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=8,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double().eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, LENGTH, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hand_lens(model: nn.Module, data: dict, prior: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per kept token, from ``output_hidden_states`` (GPT-2: the last one is after ln_f)."""
    with torch.no_grad():
        out = model(**data, output_hidden_states=True)
        states = out.hidden_states
        logits = [model.lm_head(model.transformer.ln_f(h)) for h in states[:-1]] + [out.logits]
    depth = len(states) - 1
    keep = data["attention_mask"].bool()
    logps = [prior.log().expand(int(keep.sum()), -1)]
    logps += [z[keep].double().log_softmax(-1) for z in logits]
    distances = torch.stack([fisher_rao_distance(a, b) for a, b in zip(logps[:-1], logps[1:])], 1)
    tops = torch.stack([lp.argmax(-1) for lp in logps[1:]], 1)
    agree = tops == tops[:, -1:]
    settle = torch.tensor(
        [min(l for l in range(depth + 1) if bool(row[l:].all())) for row in agree]
    )
    return {"distances": distances, "agree": agree, "settle": settle, "depth": depth}


@pytest.mark.parametrize("prior", ["uniform", "unigram"])
def test_gpt2_lens_equals_a_loop_over_output_hidden_states(prior):
    model, data = gpt2(), batch()
    given = (
        torch.full((VOCAB,), 1 / VOCAB, dtype=torch.float64)
        if prior == "uniform"
        else unigram_prior(data, VOCAB)
    )
    path = lens_path(model, data, prior=prior if prior == "uniform" else given, points=True)
    hand = hand_lens(model, data, given)
    depth = hand["depth"]
    np.testing.assert_allclose(path.points["distances"], hand["distances"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(path.points["settle"], hand["settle"])
    assert path.num_tokens == int(data["attention_mask"].sum()) and path.depth == depth
    d = hand["distances"]
    assert path.length == pytest.approx(float(d.sum(1).mean()), rel=1e-12)
    assert path.action == pytest.approx(float((depth + 1) * d.pow(2).sum(1).mean()), rel=1e-12)
    endpoint = fisher_rao_distance(given.log().expand(d.shape[0], -1), _final(model, data))
    assert path.least_action == pytest.approx(float(endpoint.pow(2).mean()), rel=1e-10)
    np.testing.assert_allclose(path.agreement, hand["agree"].double().mean(0), rtol=1e-12)
    assert path.ratio >= 1.0


def _final(model: nn.Module, data: dict) -> torch.Tensor:
    with torch.no_grad():
        logits = model(**data).logits
    return logits[data["attention_mask"].bool()].double().log_softmax(-1)


def test_idle_blocks_have_the_closed_form_of_a_standing_path():
    """Blocks that add nothing: p_0 = … = p_L, so C = d(π, p_L) and A/A_min = L+1 exactly."""
    model = gpt2(layers=4)
    with torch.no_grad():
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
    path = lens_path(model, batch())
    assert path.ratio == pytest.approx(5.0, rel=1e-10)
    assert path.length == pytest.approx(path.endpoint_distance, rel=1e-10)
    np.testing.assert_allclose(path.speeds[1:], 0.0, atol=1e-12)
    assert path.settle_layer == 0.0 and np.all(path.agreement == 1.0)


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=12, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double().eval()


def _bert(classifier: bool) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=12, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertForMaskedLM
    return cls(config).double().eval()


@pytest.mark.parametrize("family", ["llama", "bert-mlm"])
def test_other_families_are_found_and_read_at_their_final_state(family):
    model = _llama() if family == "llama" else _bert(False)
    adapter = lens_adapter(model)
    assert adapter.family == family and len(adapter.block_names) == 2
    data = batch()
    with torch.no_grad():
        logits = model(**data).logits
    path = lens_path(model, data)
    # the path's last state is the model's own prediction: agreement 1 and d(π, p_L) as computed
    assert path.agreement[-1] == 1.0 and path.num_tokens == int(data["attention_mask"].sum())
    final = logits[data["attention_mask"].bool()].double().log_softmax(-1)
    uniform = torch.full_like(final, -float(np.log(VOCAB)))
    expected = fisher_rao_distance(uniform, final).pow(2).mean()
    assert path.least_action == pytest.approx(float(expected), rel=1e-6)  # Llama: float32 norms


def test_models_without_a_known_read_out_are_refused_with_what_to_pass():
    with pytest.raises(ModelError, match="block_names= .* and head="):
        lens_path(nn.Sequential(nn.Linear(3, 3)), {"input_ids": torch.zeros(2, 3)})
    with pytest.raises(MemspaceError, match="predictive_path"):
        lens_path(_bert(True), batch())
    with pytest.raises(MemspaceError, match="prior must be positive"):
        lens_path(gpt2(), batch(), prior=torch.ones(3))


def test_a_sequence_classifier_takes_the_predictive_path_through_its_adapter():
    from memspace.paths import predictive_path

    model = _bert(True)
    adapter = lens_adapter(model)
    assert adapter.family == "bert-classifier" and not adapter.per_token
    data, labels = batch(), torch.tensor([0, 1, 2, 0])
    path = predictive_path(
        model, [(data, labels)], block_names=adapter.block_names, head=adapter.head, output="logits"
    )
    with torch.no_grad():
        final = model(**data).logits.double().log_softmax(-1)
    uniform = torch.full_like(final, -float(np.log(3)))
    expected = fisher_rao_distance(uniform, final).pow(2).mean()
    assert path.least_action == pytest.approx(float(expected), rel=1e-10)
    assert path.depth == 2 and path.lens_accuracy is not None


def test_a_causal_lm_trained_here_settles_before_its_last_layer():
    """Next token = this token + 1 (mod V): a rule one block can hold, learned in seconds.

    Its prediction settles before the last layer, and from the layer where a token settles its lens
    agrees with the model: the share of settled tokens never exceeds the lens's agreement, and both
    reach 1 at the last state.
    """
    model = gpt2(layers=3)
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        start = torch.randint(0, VOCAB, (32, 1))
        ids = (start + torch.arange(LENGTH)) % VOCAB
        loss = model(input_ids=ids, labels=ids).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    ids = (torch.arange(VOCAB)[:, None] + torch.arange(LENGTH)) % VOCAB
    with torch.no_grad():
        predicted = model(input_ids=ids).logits.argmax(-1)
    assert float((predicted[:, :-1] == ids[:, 1:]).double().mean()) == 1.0  # it learned the rule
    path = lens_path(model, {"input_ids": ids})
    assert path.settle_layer < path.depth - 0.5
    assert np.all(path.settled <= path.agreement + 1e-12)
    assert path.settled[-1] == path.agreement[-1] == 1.0


def test_gpt_neox_is_found_and_read_through_its_final_norm_and_unembedding():
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=12, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(config).double().eval()
    adapter = lens_adapter(model)
    assert adapter.family == "gpt_neox" and adapter.block_names == [
        "gpt_neox.layers.0",
        "gpt_neox.layers.1",
    ]
    data = batch()
    outputs = []
    hook = model.gpt_neox.layers[-1].register_forward_hook(lambda m, a, out: outputs.append(out))
    with torch.no_grad():
        logits = model(**data).logits
    hook.remove()
    # the adapter's read-out of the last block's output is the model's own logits
    last = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    torch.testing.assert_close(adapter.head(last), logits, rtol=1e-10, atol=1e-12)
    path = lens_path(model, data)
    assert path.agreement[-1] == 1.0 and path.depth == 2
