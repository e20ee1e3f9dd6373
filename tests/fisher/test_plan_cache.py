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
    assert not plan.cached and "fc1" in plan.reasons and "shared" in plan.reasons["fc1"]


def test_a_replaced_forward_is_checked_again_and_its_functional_use_caught():
    model, data = _model(), _data()
    assert FisherOperator(model, data).tap_plan().reasons == {}

    def forward(self, x):  # fc1's weight also used outside fc1's own calls
        hidden = torch.tanh(self.fc1(x)) + 0.1 * nnf.linear(x, self.fc1.weight)
        return self.fc2(hidden)

    model.forward = types.MethodType(forward, model)
    plan = FisherOperator(model, data).tap_plan()
    assert not plan.cached and "used outside its own calls" in plan.reasons["fc1"]


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
