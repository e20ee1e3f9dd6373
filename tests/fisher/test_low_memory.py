"""memory="low" computes the same products and diagonals as the fast path, on every test case and kind."""

from __future__ import annotations

import pytest
import torch
from cases import CASE_FACTORIES, make_case

from memspace.fisher import FisherOperator


@pytest.mark.parametrize("kind", ["true", "mc", "empirical"])
@pytest.mark.parametrize("name", sorted(CASE_FACTORIES))
def test_low_memory_equals_the_fast_path(name, kind):
    case = make_case(name)
    options = dict(kind=kind, likelihood=case.likelihood, batch_size=4, mc_samples=2)
    fast = FisherOperator(case.model, (case.inputs, case.targets), **options)
    low = FisherOperator(case.model, (case.inputs, case.targets), memory="low", **options)
    v = torch.randn(fast.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(low @ v, fast @ v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(low.diag(), fast.diag(), rtol=1e-12, atol=1e-14)


def test_an_unknown_memory_mode_is_refused():
    case = make_case("mlp")
    with pytest.raises(ValueError, match="memory must be 'fast' or 'low'"):
        FisherOperator(case.model, (case.inputs, case.targets), memory="tiny")
