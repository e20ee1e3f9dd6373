"""Right or refused on models nobody here wrote (issue: any model).

Every quantity is checked in float64 against a dense true Fisher built by one reverse
pass per output entry (tests/model_zoo.py), and each layer's shortcut is asserted to be
taken or refused for the stated reason.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from memspace import MemspaceError, MemspaceWarning, fisher_rao_norm
from memspace.fisher import KFAC, FisherOperator
from memspace.fisher.reference import dense_fisher
from model_zoo import ZOO, make_zoo_case, reference_fisher

NAMES = sorted(ZOO)


@pytest.fixture(scope="module", params=NAMES)
def zoo(request):
    case = make_zoo_case(request.param)
    return case, reference_fisher(case)


def _operator(case, **kwargs):
    return FisherOperator(
        case.model, (case.inputs, case.targets), batch_size=3, **case.options, **kwargs
    )


def test_matvec_quad_and_symmetry(zoo):
    case, ref = zoo
    F = _operator(case)
    gen = torch.Generator().manual_seed(3)
    u, v = (torch.randn(F.shape[0], dtype=torch.float64, generator=gen) for _ in range(2))
    torch.testing.assert_close(F @ v, ref @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.quad(v), v @ ref @ v, rtol=1e-10, atol=1e-13)
    assert abs(u @ (F @ v) - v @ (F @ u)) <= 1e-12 * abs(u @ (F @ v)) + 1e-14


def test_low_memory_matvec_and_diagonal(zoo):
    """memory="low": the two-pass product and the probe-and-hook diagonal give the same F."""
    case, ref = zoo
    F = _operator(case, memory="low")
    v = torch.randn(F.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(F @ v, ref @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.diag(), ref.diagonal(), rtol=1e-10, atol=1e-13)
    # The low-memory check of the taps decides as the fast one does
    fast = _operator(case).tap_plan()
    assert F.tap_plan().reasons == fast.reasons and F.tap_plan().fallback == fast.fallback


def test_diag_trace_dense(zoo):
    case, ref = zoo
    F = _operator(case)
    torch.testing.assert_close(F.diag(), ref.diagonal(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.trace(), ref.trace(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(F.dense(), ref, rtol=1e-10, atol=1e-13)


def test_fisher_rao_norm(zoo):
    case, ref = zoo
    theta = torch.cat([p.detach().reshape(-1) for p in case.model.parameters()])
    value = fisher_rao_norm(case.model, (case.inputs, case.targets), **case.options)
    assert value == pytest.approx(float(theta @ ref @ theta), rel=1e-10)


EXPECTED_FALLBACKS = {
    # layer → why its tap is refused (every other Linear/Conv2d takes the shortcut)
    # attention's projections are tapped through their functional calls (see below)
    # tied weights (an embedding and its output layer, two Linears) are tapped as a group
    "cross-attention": {"attn": "used outside its own calls"},  # its split in-projection
    "reshaped-rows": {"inner": "no axis that indexes data points"},
}


ATTENTION = {  # case → its MultiheadAttention modules
    "encoder-batch-first": ["layers.0.self_attn"],
    "encoder-sequence-first": ["layers.0.self_attn"],
    "bert-tied": ["encoder.self_attn"],
    "bert-tied-decoder-first": ["encoder.self_attn"],
    "attention-masked": ["attn"],
}


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_projections_take_the_fast_path(name):
    """The packed in-projection and the out-projection, both called functionally by torch."""
    case = make_zoo_case(name)
    plan = _operator(case).plan()
    for attention in ATTENTION[name]:
        assert plan.tapped[attention] == "PackedInProjection"
        assert plan.tapped[f"{attention}.out_proj"] == "Linear"
    assert not any("attn" in layer for layer in plan.exact)


def test_cross_attention_keeps_its_out_projection_and_refuses_its_in_projection():
    """Split into three calls on slices of the weight, the in-projection fails the check."""
    plan = _operator(make_zoo_case("cross-attention")).plan()
    assert plan.tapped["attn.out_proj"] == "Linear"
    assert "used outside its own calls" in plan.exact["attn"]
    plan = _operator(make_zoo_case("cross-attention-kdim")).plan()  # separate q, k, v weights
    assert plan.tapped["attn.out_proj"] == "Linear"
    assert "no layer rule for MultiheadAttention" in plan.exact["attn"]


def test_a_key_bias_with_a_zero_gradient_keeps_its_layer_on_the_fast_path():
    """Its two round-offs agree with nothing; in float32 too (Hugging Face's attention layout)."""
    for dtype in (torch.float32, torch.float64):
        case = make_zoo_case("separate-projections", dtype)
        F = _operator(case)
        assert F.tap_plan().reasons == {} and F.tap_plan().fallback == []


def test_a_bias_used_outside_its_calls_is_still_refused():
    class BiasTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.fc(x) + self.fc.bias))

    torch.manual_seed(0)
    model = BiasTwice().double().eval()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    plan = FisherOperator(model, (x, y)).tap_plan()
    assert "used outside its own calls" in plan.reasons["fc"]


@pytest.mark.parametrize("name", NAMES)
def test_each_shortcut_is_taken_or_refused_for_its_reason(name):
    case = make_zoo_case(name)
    plan = _operator(case).tap_plan()
    expected = EXPECTED_FALLBACKS.get(name, {})
    refused = {layer: why for layer, why in plan.reasons.items() if "no layer rule" not in why}
    assert set(refused) == set(expected)
    for layer, why in expected.items():
        assert why in plan.reasons[layer]
    # every layer on the exact path is named, with why (no silent diagonal in K-FAC)
    owners = {name.rpartition(".")[0] or "<root>" for name in plan.fallback}
    assert owners == set(plan.reasons)


def test_sequence_first_equals_batch_first_everywhere():
    a, b = make_zoo_case("encoder-batch-first"), make_zoo_case("encoder-sequence-first")
    b.model.load_state_dict(a.model.state_dict())
    Fa, Fb = _operator(a), _operator(b)
    v = torch.randn(Fa.shape[0], dtype=torch.float64)
    torch.testing.assert_close(Fb @ v, Fa @ v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(Fb.diag(), Fa.diag(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        KFAC.from_operator(Fb).dense(), KFAC.from_operator(Fa).dense(), rtol=1e-12, atol=1e-14
    )


def test_kfac_of_weight_shared_linear_matches_curvlinops():
    curvlinops = pytest.importorskip("curvlinops")
    case = make_zoo_case("token-mlp")
    params = list(case.model.parameters())
    peer = curvlinops.KFACLinearOperator(
        case.model,
        nn.CrossEntropyLoss(),
        params,
        [(case.inputs, case.targets)],
        fisher_type="type-2",
        kfac_approx="expand",
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    ours = KFAC(case.model, (case.inputs, case.targets))
    eye = torch.eye(ours.space.numel, dtype=torch.float64)
    dense_peer = torch.stack([peer @ eye[:, j] for j in range(eye.shape[0])], dim=1)
    torch.testing.assert_close(ours.dense(), dense_peer, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["tied-linears", "reshaped-rows", "encoder-batch-first"])
def test_kfac_falls_back_to_the_exact_diagonal_block_never_a_zero(name):
    case = make_zoo_case(name)
    ref = reference_fisher(case)
    F = _operator(case)
    kfac = KFAC.from_operator(F)
    offsets = dict(zip(F.space.names, torch.tensor([0, *F.space.sizes]).cumsum(0).tolist()))
    for pname in F.tap_plan().fallback:
        start, size = offsets[pname], F.space.sizes[F.space.names.index(pname)]
        torch.testing.assert_close(
            kfac.fallback_diag[pname], ref.diagonal()[start : start + size], rtol=1e-10, atol=1e-13
        )


def test_ekfac_trace_is_the_exact_trace_on_every_model(zoo):
    """EKFAC's trace is tr F exactly.

    Its eigenvalues are F's diagonal in an orthonormal basis per tapped block and the exact
    diagonal elsewhere: a block built from a wrong tap, or a parameter dropped, breaks it.
    """
    case, ref = zoo
    ekfac = _operator(case).ekfac()
    torch.testing.assert_close(ekfac.trace(), ref.trace(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(ekfac.diag().sum(), ref.trace(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_float32_runs_and_agrees_with_float64(cell):
    c32, c64 = make_zoo_case(cell, torch.float32), make_zoo_case(cell)
    F32, F64 = _operator(c32), _operator(c64)
    v = torch.randn(F32.shape[0], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((F32 @ v).double(), F64 @ v.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(F32.diag().double(), F64.diag(), rtol=1e-5, atol=1e-7)
    assert F32.eigh(2)[0][0] == pytest.approx(float(F64.eigh(2)[0][0]), rel=1e-5)
    assert F32.jacobian_fallback is not None  # the recurrent layers took the per-sample loop


@pytest.mark.parametrize("name", ["lstm", "encoder-batch-first", "token-mlp"])
def test_the_public_plan_names_every_layer_and_the_jacobian_path(name):
    """``F.plan()``: each selected layer once, fast or exact with why, and how Jacobians run."""
    case = make_zoo_case(name)
    F = _operator(case)
    plan = F.plan()
    assert not set(plan.tapped) & set(plan.exact)
    owners = {n.rpartition(".")[0] or "<root>" for n, _ in case.model.named_parameters()}
    assert set(plan.tapped) | set(plan.exact) == owners
    if not plan.exact:
        assert plan.jacobians == "not needed"
    elif name == "lstm":  # no batching rule for recurrent kernels: the loop, with the error
        assert plan.jacobians.startswith("a loop over samples") and F.jacobian_fallback
        assert F.jacobian_fallback in plan.jacobians
    else:
        assert plan.jacobians.startswith("vmap") and F.jacobian_fallback is None
    assert all(line in str(plan) for line in plan.exact)


def test_default_kernels_are_restored_after_a_pass():
    case = make_zoo_case("encoder-batch-first")
    before = torch.backends.mha.get_fastpath_enabled(), torch._C._get_mkldnn_enabled()
    _operator(case).quad(
        torch.ones(sum(p.numel() for p in case.model.parameters()), dtype=torch.float64)
    )
    assert (torch.backends.mha.get_fastpath_enabled(), torch._C._get_mkldnn_enabled()) == before


def test_padding_rows_get_no_fisher_from_the_lookup():
    case = make_zoo_case("bert-tied")
    case.model.decoder.weight = nn.Parameter(case.model.decoder.weight.detach().clone())  # untie
    ref = reference_fisher(case)
    F = _operator(case)
    names = [n for n, _ in case.model.named_parameters()]
    offset = sum(
        p.numel()
        for n, p in case.model.named_parameters()
        if names.index(n) < names.index("embed.weight")
    )
    # Padding_idx = 0: the first row
    pad_row = slice(offset, offset + case.model.embed.weight.shape[1])
    assert float(F.diag()[pad_row].abs().max()) == 0.0
    assert float(ref.diagonal()[pad_row].abs().max()) == 0.0
    v = torch.zeros(F.shape[0], dtype=torch.float64)
    v[pad_row] = 1.0
    assert float((F @ v).abs().max()) == 0.0 and float(F.quad(v)) == 0.0


def test_outputs_that_are_not_tensors_need_a_selector():
    case = make_zoo_case("tuple-output")
    with pytest.raises(MemspaceError, match="returned a tuple of 2 values.*pass output="):
        FisherOperator(case.model, (case.inputs, case.targets)).diag()
    bert = make_zoo_case("bert-tied")
    with pytest.raises(MemspaceError, match="keys logits, hidden"):
        FisherOperator(bert.model, (bert.inputs, bert.targets)) @ torch.zeros(
            sum(p.numel() for p in bert.model.parameters()), dtype=torch.float64
        )
    with pytest.raises(MemspaceError, match="'scores'"):
        FisherOperator(bert.model, (bert.inputs, bert.targets), output="scores").trace()
    by_callable = FisherOperator(
        bert.model, (bert.inputs, bert.targets), output=lambda out: out["logits"]
    )
    torch.testing.assert_close(by_callable.diag(), _operator(bert).diag())


def test_a_sequence_first_model_without_sample_dim_is_refused_not_wrong():
    case = make_zoo_case("encoder-sequence-first")  # [T=3, N=5, d]; targets for 5 samples
    with pytest.raises(MemspaceError, match="3 samples .axis 0. but y has 5|sample_dim"):
        FisherOperator(case.model, (case.inputs, case.targets)).diag()


def test_layer_norms_take_their_fast_elementwise_path_or_say_why_not():
    """A LayerNorm's per-sample gradients are elementwise (∇w = Σ_t g ⊙ x̂): tapped, no block."""

    class Norms(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 6)
            self.norm = nn.LayerNorm(6)
            self.unbiased = nn.LayerNorm(6, bias=False)
            self.plane = nn.LayerNorm((3, 6))  # normalises over two axes: no rule
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.plane(self.unbiased(torch.tanh(self.norm(self.inner(x)))))
            return self.head(h.mean(1))

    torch.manual_seed(0)
    model = Norms().double().eval()
    with torch.no_grad():
        for norm in (model.norm, model.unbiased, model.plane):
            norm.weight.normal_(1, 0.3)
        model.norm.bias.normal_(0, 0.3)
    x, y = torch.randn(7, 3, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    F = FisherOperator(model, (x, y))
    plan = F.plan()
    assert plan.tapped["norm"] == plan.tapped["unbiased"] == "LayerNorm"
    assert "normalises over 2 axes" in plan.exact["plane"]
    reference = dense_fisher(model, x, y)
    torch.testing.assert_close(F.diag(), reference.diagonal(), rtol=1e-10, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemspaceWarning)
        kfac = F.kfac()
    start = 0
    for name, p in model.named_parameters():  # K-FAC keeps the norms' exact diagonal
        if "norm" in name or "unbiased" in name:
            torch.testing.assert_close(
                kfac.fallback_diag[name],
                reference.diagonal()[start : start + p.numel()],
                rtol=1e-10,
                atol=1e-14,
            )
        start += p.numel()


def test_embeddings_sum_their_sparse_per_sample_gradients_exactly():
    """Repeated tokens add within a sample before squaring; padding rows get nothing."""

    class Bag(nn.Module):
        def __init__(self, **options):
            super().__init__()
            self.embed = nn.Embedding(9, 4, padding_idx=0, **options)
            self.head = nn.Linear(4, 3)

        def forward(self, tokens):
            return self.head(torch.tanh(self.embed(tokens)).sum(1))

    torch.manual_seed(0)
    model = Bag().double().eval()
    tokens = torch.tensor([[1, 1, 2, 0], [3, 0, 0, 0], [4, 5, 4, 4], [8, 7, 1, 2]])
    y = torch.randint(0, 3, (4,))
    F = FisherOperator(model, (tokens, y))
    assert F.plan().tapped["embed"] == "Embedding"
    reference = dense_fisher(model, tokens, y)
    torch.testing.assert_close(F.diag(), reference.diagonal(), rtol=1e-10, atol=1e-14)
    assert float(F.diag()[:4].abs().max()) == 0.0  # the padding row
    refused = FisherOperator(Bag(max_norm=1.0).double().eval(), (tokens, y)).plan()
    assert "max_norm renormalises" in refused.exact["embed"]
