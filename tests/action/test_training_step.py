"""One training step for every loop.

Data loss + λ·action, and a non-finite loss refused before any update.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memspace import ActionTerm, MemspaceError, ResidualMLP
from memspace.paths import predictive_path
from memspace.studies import memorise
from memspace.train import optimizer_step, penalised_loss, snapshot


def _net_and_batch():
    torch.manual_seed(0)
    model = ResidualMLP(4, 6, 3, 3).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def test_the_penalised_loss_is_the_data_loss_plus_lambda_times_the_action():
    model, x, y = _net_and_batch()
    term = ActionTerm("predictive", model)
    total, loss, action = penalised_loss(
        lambda: model(x), lambda logits: nn.functional.cross_entropy(logits, y), term, 0.25
    )
    expected_loss = nn.functional.cross_entropy(model(x), y)
    expected_action = predictive_path(model, (x, y)).action  # the action as the path measures it
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-12)
    assert float(action) == pytest.approx(expected_action, rel=1e-10)
    assert float(total) == pytest.approx(float(expected_loss) + 0.25 * expected_action, rel=1e-10)
    plain, plain_loss, zero = penalised_loss(
        lambda: model(x), lambda logits: nn.functional.cross_entropy(logits, y), None, 0.25
    )
    assert (
        float(plain) == float(plain_loss) == pytest.approx(float(expected_loss), rel=1e-12)
        and float(zero) == 0.0
    )


def test_a_non_finite_loss_is_refused_before_the_update():
    model, x, y = _net_and_batch()
    before = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(MemspaceError, match="the loss became nan at step 7"):
        optimizer_step(optimizer, model(x).sum() * float("nan"), "at step 7")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_loop_checks_the_loss_memorise_too():
    """Memorise once trained on through NaN losses (only fit checked).

    Now it stops with the reason.
    """
    model, x, y = _net_and_batch()
    with pytest.raises(MemspaceError, match="the loss became"):
        memorise(model, x * 1e308, y, max_steps=3)
