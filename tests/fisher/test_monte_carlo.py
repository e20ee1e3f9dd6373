"""The Monte-Carlo Fisher converges to the true Fisher (fixed seeds, stated tolerance)."""

from __future__ import annotations

import torch

from cases import make_case
from memspace.fisher import KFAC, FisherOperator


def _relative_error(a, b):
    return (torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b)).item()


def test_mc_converges_to_true_as_samples_grow():
    case = make_case("residual")
    data = (case.inputs, case.targets)
    true = FisherOperator(case.model, data).dense()
    errors = {
        m: _relative_error(
            FisherOperator(case.model, data, kind="mc", mc_samples=m, seed=3).dense(), true
        )
        for m in (1, 16, 1024)
    }
    # error ~ 1/sqrt(M): 32x more samples -> ~5.7x smaller; allow slack
    assert errors[16] < errors[1] / 2.5
    assert errors[1024] < errors[16] / 4
    assert errors[1024] < 0.05


def test_mc_is_unbiased_over_seeds():
    case = make_case("mlp")
    data = (case.inputs, case.targets)
    true_diag = FisherOperator(case.model, data).diag()
    mean = torch.stack(
        [FisherOperator(case.model, data, kind="mc", seed=s).diag() for s in range(400)]
    ).mean(0)
    assert (mean - true_diag).norm() / true_diag.norm() < 0.05


def test_mc_kfac_converges_to_true_kfac():
    case = make_case("cnn")
    data = (case.inputs, case.targets)
    true = KFAC(case.model, data)
    mc = KFAC(case.model, data, kind="mc", mc_samples=2000, seed=1)
    assert len(true.blocks) >= 2 and [b.module_name for b in mc.blocks] == [
        b.module_name for b in true.blocks
    ]
    for block_true, block_mc in zip(true.blocks, mc.blocks):
        assert _relative_error(block_mc.grad_factor, block_true.grad_factor) < 0.05
        torch.testing.assert_close(block_mc.input_factor, block_true.input_factor)
