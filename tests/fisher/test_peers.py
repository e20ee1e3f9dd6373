"""Differential tests against peer libraries computing the same quantity.

curvlinops (GGN matvec, K-FAC), BackPACK (exact GGN diagonal), NNGeometry (true
Fisher diagonal and K-FAC trace). Skipped where a peer is not installed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cases import make_case
from memspace.fisher import KFAC, FisherOperator


def _identity_columns(op, dim):
    eye = torch.eye(dim, dtype=torch.float64)
    return torch.stack([op @ eye[:, j] for j in range(dim)], dim=1)


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_curvlinops_ggn_matvec(name):
    curvlinops = pytest.importorskip("curvlinops")
    case = make_case(name)
    params = [p for p in case.model.parameters()]
    ggn = curvlinops.GGNLinearOperator(
        case.model, nn.CrossEntropyLoss(), params, [(case.inputs, case.targets)]
    )
    F = FisherOperator(case.model, (case.inputs, case.targets), batch_size=3)
    v = torch.randn(F.shape[0], dtype=torch.float64)
    torch.testing.assert_close(F @ v, ggn @ v, rtol=1e-10, atol=1e-12)


def test_curvlinops_ggn_regression():
    curvlinops = pytest.importorskip("curvlinops")
    case = make_case("regression")
    params = list(case.model.parameters())
    ggn = curvlinops.GGNLinearOperator(
        case.model, nn.MSELoss(reduction="sum"), params, [(case.inputs, case.targets)]
    )
    F = FisherOperator(case.model, (case.inputs, case.targets), likelihood="regression")
    v = torch.randn(F.shape[0], dtype=torch.float64)
    # MSE(sum) = Σ‖f − y‖² has Hessian 2I in output space: GGN = 2 N F
    torch.testing.assert_close(F @ v, (ggn @ v) / (2 * case.inputs.shape[0]))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_curvlinops_kfac_type2(name):
    curvlinops = pytest.importorskip("curvlinops")
    case = make_case(name)
    params = list(case.model.parameters())
    peer = curvlinops.KFACLinearOperator(
        case.model,
        nn.CrossEntropyLoss(),
        params,
        [(case.inputs[:4], case.targets[:4]), (case.inputs[4:], case.targets[4:])],
        fisher_type="type-2",
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    ours = KFAC(case.model, (case.inputs, case.targets), batch_size=4)
    torch.testing.assert_close(
        ours.dense(), _identity_columns(peer, ours.space.numel), rtol=1e-9, atol=1e-12
    )


def test_backpack_diag_ggn_exact():
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import DiagGGNExact

    case = make_case("mlp")
    model = backpack.extend(case.model)
    loss_fn = backpack.extend(nn.CrossEntropyLoss())
    loss = loss_fn(model(case.inputs), case.targets)
    with backpack.backpack(DiagGGNExact()):
        loss.backward()
    peer = torch.cat([p.diag_ggn_exact.flatten() for p in model.parameters()])
    ours = FisherOperator(model, (case.inputs, case.targets)).diag()
    torch.testing.assert_close(ours, peer, rtol=1e-10, atol=1e-13)


def test_nngeometry_diag_and_kfac():
    pytest.importorskip("nngeometry")
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag, PMatKFAC

    case = make_case("mlp", torch.float32)  # NNGeometry's true Fisher runs in float32 only
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(case.inputs, case.targets), batch_size=4
    )
    peer_diag = FIM(case.model, loader, PMatDiag, variant="classif_logits").get_diag()
    F = FisherOperator(case.model, loader)
    torch.testing.assert_close(F.diag(), peer_diag, rtol=1e-4, atol=1e-7)
    peer_kfac = FIM(case.model, loader, PMatKFAC, variant="classif_logits")
    torch.testing.assert_close(
        KFAC(case.model, loader).trace(), peer_kfac.trace(), rtol=1e-4, atol=1e-7
    )
