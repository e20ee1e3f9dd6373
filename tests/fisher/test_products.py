"""F @ v, vᵀFv and dense F against the naive float64 torch.func reference."""

from __future__ import annotations

import pytest
import torch

from cases import make_case
from memspace.fisher import FisherOperator
from memspace.fisher.reference import dense_fisher

CASES = ["mlp", "cnn", "residual", "regression", "layernorm"]
KINDS = ["true", "mc", "empirical"]


def _reference(case, kind, F):
    """Dense reference with the same Monte-Carlo labels (one generator per batch)."""
    if kind != "mc":
        return dense_fisher(
            case.model, case.inputs, case.targets, likelihood=case.likelihood, kind=kind
        )
    total = 0
    for index, start in enumerate(range(0, case.inputs.shape[0], 4)):
        x, y = case.inputs[start : start + 4], case.targets[start : start + 4]
        total = total + x.shape[0] * dense_fisher(
            case.model,
            x,
            y,
            likelihood=case.likelihood,
            kind="mc",
            mc_samples=F.mc_samples,
            generator=F.data_pass.generator(index),
        )
    return total / case.inputs.shape[0]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_matvec_quad_dense_match_reference(name, kind):
    case = make_case(name)
    F = FisherOperator(
        case.model,
        (case.inputs, case.targets),
        kind=kind,
        likelihood=case.likelihood,
        batch_size=4,
        mc_samples=3,
        seed=1,
    )
    ref = _reference(case, kind, F)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, ref @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(F.quad(v), v @ ref @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(F.dense(), ref, rtol=1e-10, atol=1e-12)
    assert F.num_data == case.inputs.shape[0]


def test_batching_does_not_change_the_result():
    case = make_case("residual")
    v = torch.randn(sum(p.numel() for p in case.model.parameters()), dtype=torch.float64)
    data = (case.inputs, case.targets)
    one = FisherOperator(case.model, data, batch_size=100) @ v
    many = FisherOperator(case.model, data, batch_size=2) @ v
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=3)
    torch.testing.assert_close(one, many)
    torch.testing.assert_close(one, FisherOperator(case.model, loader) @ v)


def test_dict_input_gives_dict_output():
    case = make_case("mlp")
    F = FisherOperator(case.model, (case.inputs, case.targets))
    v = {n: torch.randn_like(p) for n, p in case.model.named_parameters()}
    out = F @ v
    assert set(out) == set(v)
    flat = torch.cat([v[n].flatten() for n in out])
    torch.testing.assert_close(torch.cat([t.flatten() for t in out.values()]), F @ flat)


def test_parameter_subset_is_the_principal_submatrix():
    case = make_case("residual")
    full = FisherOperator(case.model, (case.inputs, case.targets)).dense()
    names = [n for n, _ in case.model.named_parameters()]
    sizes = [p.numel() for p in case.model.parameters()]
    F = FisherOperator(
        case.model, (case.inputs, case.targets), params=[case.model.head, "stem.bias"]
    )
    assert F.space.names == ["stem.bias", "head.weight", "head.bias"]
    offsets = torch.tensor([0] + sizes).cumsum(0)
    index = torch.cat(
        [torch.arange(offsets[names.index(n)], offsets[names.index(n) + 1]) for n in F.space.names]
    )
    torch.testing.assert_close(F.dense(), full[index][:, index])
    torch.testing.assert_close(F.diag(), full.diagonal()[index])


def test_float32_agrees_with_float64():
    case64 = make_case("cnn")
    case32 = make_case("cnn", torch.float32)
    v = torch.randn(sum(p.numel() for p in case64.model.parameters()), dtype=torch.float64)
    F64 = FisherOperator(case64.model, (case64.inputs, case64.targets))
    F32 = FisherOperator(case32.model, (case32.inputs, case32.targets))
    out32 = F32 @ v.float()
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), F64 @ v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(F32.diag().double(), F64.diag(), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    case = make_case("residual")
    v = torch.randn(sum(p.numel() for p in case.model.parameters()), dtype=torch.float64)
    cpu = FisherOperator(case.model, (case.inputs, case.targets))
    cpu_mv, cpu_diag = cpu @ v, cpu.diag()
    gpu = FisherOperator(case.model.cuda(), (case.inputs, case.targets))
    torch.testing.assert_close((gpu @ v.cuda()).cpu(), cpu_mv)
    torch.testing.assert_close(gpu.diag().cpu(), cpu_diag)


def test_first_layer_fast_path_leaves_the_model_untouched():
    case = make_case("cnn")
    F = FisherOperator(case.model, (case.inputs, case.targets))
    F @ torch.randn(F.shape[0], dtype=torch.float64)
    F.quad(torch.randn(F.shape[0], dtype=torch.float64))
    assert all("forward" not in vars(module) for module in case.model.modules())


def test_frozen_first_layer_and_input_gradients():
    """Unselected first layer: its input then has no tangent but the fast path must not fire."""
    case = make_case("residual")
    case.inputs.requires_grad_(True)
    F = FisherOperator(
        case.model, (case.inputs, case.targets), params=[case.model.blocks, case.model.head]
    )
    full = dense_fisher(case.model, case.inputs.detach(), case.targets, names=F.space.names)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, full @ v)
