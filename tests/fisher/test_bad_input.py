"""Bad input gets a clear ValueError/TypeError that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cases import make_case
from memspace import DataError
from memspace.fisher import FisherOperator


@pytest.fixture
def case():
    return make_case("mlp")


def test_nan_and_inf_name_the_batch(case):
    X = case.inputs.clone()
    X[9, 2] = float("nan")
    with pytest.raises(DataError, match=r"batch 2 \(inputs\) contains 1 NaN/Inf"):
        FisherOperator(case.model, (X, case.targets), batch_size=4)  # tensors: checked up front
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, case.targets), batch_size=4
    )
    F = FisherOperator(case.model, loader)  # loaders: checked as each batch streams by
    with pytest.raises(DataError, match=r"batch 2 \(inputs\) contains 1 NaN/Inf"):
        F.diag()
    Y = torch.randn(11, 2, dtype=torch.float64)
    Y[0, 0] = float("inf")
    model = nn.Linear(4, 2).double()
    with pytest.raises(DataError, match=r"batch 0 \(targets\)"):
        FisherOperator(model, [(case.inputs, Y)], likelihood="regression").mv(
            torch.zeros(10, dtype=torch.float64)
        )


def test_finiteness_by_sum_is_exact_for_overflow_and_cancelling_infinities(case):
    """The sum test's only shortcut is 'finite sum ⇒ finite entries'; overflow takes the mask."""
    from memspace._stream import all_finite

    big = torch.full((4,), 1e308, dtype=torch.float64)  # finite entries, an infinite sum
    assert all_finite(big)
    FisherOperator(nn.Linear(4, 2).double(), (big.view(1, 4), torch.zeros(1).long()))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.ones(3, 5)
        x[1, 2] = bad
        assert not all_finite(x)
    cancelling = torch.tensor([float("inf"), -float("inf"), 1.0])
    assert not all_finite(cancelling)
    assert all_finite(torch.empty(0)) and all_finite(torch.arange(3))


def test_empty_sources(case):
    with pytest.raises(DataError, match="empty"):
        FisherOperator(case.model, (case.inputs[:0], case.targets[:0]))
    with pytest.raises(DataError, match="empty"):
        FisherOperator(case.model, []).diag()
    empty_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(case.inputs[:0], case.targets[:0])
    )
    with pytest.raises(DataError, match="empty"):
        FisherOperator(case.model, empty_loader).quad(torch.zeros(51, dtype=torch.float64))


def test_wrong_vector_shapes(case):
    F = FisherOperator(case.model, (case.inputs, case.targets))
    with pytest.raises(ValueError, match=r"shape \(50,\); expected a flat vector of 51"):
        F @ torch.zeros(50, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"v\['0.weight'\] has shape \(4, 6\); expected \(6, 4\)"):
        F.mv({n: torch.zeros(p.shape[::-1]) for n, p in case.model.named_parameters()})
    with pytest.raises(ValueError, match="missing"):
        F.mv({"0.weight": torch.zeros(6, 4)})
    with pytest.raises(TypeError, match="tensor or a dict"):
        F.mv([1.0, 2.0])


def test_targets_out_of_range_and_wrong_type(case):
    y = case.targets.clone()
    y[3] = 7
    with pytest.raises(DataError, match=r"labels span \[0, 7\] but the model has 3 classes"):
        FisherOperator(case.model, (case.inputs, y)).diag()
    with pytest.raises(DataError, match="integer class indices"):
        FisherOperator(case.model, (case.inputs, case.targets.double())).diag()
    with pytest.raises(DataError, match=r"regression targets have shape \(11,\)"):
        FisherOperator(
            case.model, (case.inputs, case.targets.double()), likelihood="regression"
        ).diag()


def test_unsupported_options(case):
    data = (case.inputs, case.targets)
    with pytest.raises(ValueError, match="unsupported likelihood 'poisson'"):
        FisherOperator(case.model, data, likelihood="poisson")
    with pytest.raises(ValueError, match="unsupported Fisher kind 'hessian'"):
        FisherOperator(case.model, data, kind="hessian")
    with pytest.raises(ValueError, match="mc_samples"):
        FisherOperator(case.model, data, kind="mc", mc_samples=0)
    with pytest.raises(ValueError, match="unknown parameter name 'nope'"):
        FisherOperator(case.model, data, params=["nope"])
    with pytest.raises(TypeError, match="nn.Module"):
        FisherOperator(lambda x: x, data)
    with pytest.raises(ValueError, match="unknown trace method"):
        FisherOperator(case.model, data).trace(method="magic")


def test_batchnorm_in_training_mode_asks_for_eval():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    X, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    with pytest.raises(
        ValueError, match=r"layer 1 \(BatchNorm1d\) is in training mode.*model.eval\(\)"
    ):
        FisherOperator(model, (X, y))
    F = FisherOperator(model.eval(), (X, y))  # in eval mode BatchNorm is an affine map
    assert torch.isfinite(F.diag()).all()


def test_bad_data_containers(case):
    with pytest.raises(DataError, match="one-shot iterator"):
        FisherOperator(case.model, iter([(case.inputs, case.targets)]))
    with pytest.raises(DataError, match="single tensor"):
        FisherOperator(case.model, case.inputs)
    with pytest.raises(DataError, match="X has 11 samples .axis 0. but y has 10"):
        FisherOperator(case.model, (case.inputs, case.targets[:10]))
    with pytest.raises(DataError, match=r"batch 0 is a str"):
        FisherOperator(case.model, ["xy"]).diag()
    with pytest.raises(DataError, match=r"model output has shape \(11, 3, 1\)"):
        FisherOperator(
            nn.Sequential(case.model, nn.Unflatten(1, (3, 1))), (case.inputs, case.targets)
        ).diag()
