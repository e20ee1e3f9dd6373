"""memory="low" computes the same products and diagonals as the fast path.

On every test case and kind.
"""

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
    torch.testing.assert_close(low.kfac().dense(), fast.kfac().dense(), rtol=1e-12, atol=1e-14)


def test_an_unknown_memory_mode_is_refused():
    case = make_case("mlp")
    with pytest.raises(ValueError, match="memory must be 'fast' or 'low'"):
        FisherOperator(case.model, (case.inputs, case.targets), memory="tiny")


@pytest.mark.parametrize("name", ["cnn", "mlp", "layernorm"])
def test_per_sample_squares_in_chunks_equal_the_whole_batch(name, monkeypatch):
    """Wide layers form per-sample gradients a few samples at a time; the sums do not change."""
    from memspace.fisher import _taps

    case = make_case(name)
    whole = FisherOperator(case.model, (case.inputs, case.targets), batch_size=8).diag()
    original = _taps.per_sample_square_sums
    # One sample per chunk
    monkeypatch.setattr(
        "memspace.fisher._statistics.per_sample_square_sums",
        lambda tap, grads: original(tap, grads, max_elements=1),
    )
    for memory in ("fast", "low"):
        chunked = FisherOperator(
            case.model, (case.inputs, case.targets), batch_size=8, memory=memory
        ).diag()
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
