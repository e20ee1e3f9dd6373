"""The plan of the layer taps is checked once per model and input layout, then reused.

Anything it depends on (a parameter re-tied, a forward replaced, another input layout, the memory
mode) makes the next operator check again, and the cache never keeps a model alive.
"""

from __future__ import annotations

import gc
import types
import weakref

import torch
from torch import nn
from torch.nn import functional as nnf

from memspace.fisher import FisherOperator, clear_plan_cache


class TwoLayers(nn.Module):
    def __init__(self, width: int = 6):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _data(shape=(16, 6)):
    torch.manual_seed(1)
    return torch.randn(*shape, dtype=torch.float64), torch.randint(0, 3, shape[:1])


def _model():
    torch.manual_seed(0)
    return TwoLayers().double().eval()


def test_a_second_operator_reuses_the_plan_and_gives_the_same_diagonal():
    model, data = _model(), _data()
    first = FisherOperator(model, data, kind="mc")
    diag = first.diag()
    assert not first.tap_plan().cached
    second = FisherOperator(model, data, kind="mc")
    torch.testing.assert_close(second.diag(), diag, rtol=0, atol=0)
    assert second.tap_plan().cached and len(second.tap_plan().taps) == 2
    clear_plan_cache()
    third = FisherOperator(model, data, kind="mc")
    torch.testing.assert_close(third.diag(), diag, rtol=0, atol=0)
    assert not third.tap_plan().cached


def test_retying_a_parameter_makes_the_next_operator_check_again():
    model = _model()
    model.fc2 = nn.Linear(6, 6).double()  # same shapes as fc1, so the weight can be tied
    data = _data()
    assert FisherOperator(model, data).tap_plan().reasons == {}
    model.fc2.weight = model.fc1.weight
    plan = FisherOperator(model, data).tap_plan()
    assert not plan.cached  # checked anew: now the two layers are one tied group
    assert [tap.group for tap in plan.taps] == ["fc1.weight", "fc1.weight"]
    assert [tap.weight_name for tap in plan.taps] == ["fc1.weight", "fc1.weight"]


def test_a_replaced_forward_is_checked_again_and_its_functional_use_caught():
    model, data = _model(), _data()
    assert FisherOperator(model, data).tap_plan().reasons == {}

    def forward(self, x):  # fc1's weight also used outside fc1's own calls
        hidden = torch.tanh(self.fc1(x)) + 0.1 * nnf.linear(x, self.fc1.weight)
        return self.fc2(hidden)

    model.forward = types.MethodType(forward, model)
    plan = FisherOperator(model, data).tap_plan()
    assert not plan.cached and "used outside its own calls" in plan.reasons["fc1"]


def test_a_hook_added_after_the_plan_is_checked_again_and_the_numbers_stay_right():
    """A forward hook that rescales fc1's output changes what fc1's weight gradient is."""
    from memspace.fisher.reference import dense_fisher

    model, data = _model(), _data()
    assert FisherOperator(model, data).tap_plan().reasons == {}
    handle = model.fc1.register_forward_hook(lambda module, args, output: 2 * output)
    F = FisherOperator(model, data)
    assert not F.tap_plan().cached
    torch.testing.assert_close(F.diag(), dense_fisher(model, *data).diagonal())
    handle.remove()
    assert FisherOperator(model, data).tap_plan().cached  # as before the hook: the first plan
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: out)
    try:
        assert not FisherOperator(model, data).tap_plan().cached  # a global hook too
    finally:
        handle.remove()


def test_another_input_layout_or_memory_mode_is_checked_again():
    model = _model()
    FisherOperator(model, _data()).tap_plan()
    sequences = _data((16, 5, 6))  # the same Linear layers on [N, T, D]
    assert not FisherOperator(model, sequences, output=lambda out: out[:, 0]).tap_plan().cached
    low = FisherOperator(model, _data(), memory="low")
    assert not low.tap_plan().cached
    assert FisherOperator(model, _data(), memory="low").tap_plan().cached


def test_the_cache_does_not_keep_a_model_alive():
    model = _model()
    FisherOperator(model, _data()).diag()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


class _BatchSizes:
    """The batch size of every forward of a model, from one hook kept on it throughout.

    (A hook added or removed is part of what a cached plan depends on: one hook for the whole
    test keeps the model the same between its operators.)
    """

    def __init__(self, model):
        self.seen: list[int] = []
        model.register_forward_hook(lambda mod, args, out: self.seen.append(args[0].shape[0]))

    def during(self, run) -> list[int]:
        self.seen.clear()
        run()
        return list(self.seen)


def test_a_first_operator_runs_one_full_batch_forward_and_checks_on_a_slice():
    """The taps' check costs a forward and backward on CHECK_SAMPLES samples, not the batch."""
    from memspace.fisher import CHECK_SAMPLES

    model, data = _model(), _data((64, 6))
    sizes = _BatchSizes(model)
    for memory in ("fast", "low"):
        clear_plan_cache()
        op = FisherOperator(model, data, kind="mc", memory=memory)
        seen = sizes.during(op.diag)
        # the sample-axis probe (2 and 3 copies of one sample), the check, then one real pass
        assert seen == [2, 3, CHECK_SAMPLES, 64], (memory, seen)
        assert not op.tap_plan().cached
        cached = FisherOperator(model, data, kind="mc", memory=memory)
        assert sizes.during(cached.diag) == [64]
        torch.testing.assert_close(cached.diag(), op.diag(), rtol=0, atol=0)


def test_a_use_outside_the_layer_is_caught_on_the_slice_whatever_the_batch():
    """A weight used functionally is refused from a check that sees only the first samples."""

    class Reused(TwoLayers):
        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x))) + nnf.linear(x, self.fc1.weight)[:, :3]

    torch.manual_seed(0)
    model = Reused().double().eval()
    for n in (3, 200):
        clear_plan_cache()
        plan = FisherOperator(model, _data((n, 6))).tap_plan()
        assert "fc1" in plan.reasons and "outside" in plan.reasons["fc1"], plan
        assert [t.weight_name for t in plan.taps] == ["fc2.weight"]
