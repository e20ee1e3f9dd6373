"""Closed forms and identities of docs/theory.md §1 that any Fisher must satisfy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cases import make_case
from memspace.fisher import FisherOperator
from memspace.fisher.likelihood import categorical_sqrt_factors


class SoftmaxLogistic(nn.Module):
    """Logistic regression written as a 2-class softmax with logits [0, xᵀw]."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dtype=torch.float64))

    def forward(self, x):
        z = x @ self.w
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_logistic_regression_closed_form():
    torch.manual_seed(0)
    X = torch.randn(50, 4, dtype=torch.float64)
    model = SoftmaxLogistic(4)
    y = torch.randint(0, 2, (50,))
    p = torch.sigmoid(X @ model.w.detach())
    expected = X.T @ torch.diag(p * (1 - p)) @ X / 50
    F = FisherOperator(model, (X, y), batch_size=16)
    torch.testing.assert_close(F.dense(), expected)
    torch.testing.assert_close(F.diag(), expected.diagonal())
    torch.testing.assert_close(F.trace(), expected.trace())


def _mean_kl(model, params, direction, eps, X):
    from torch.func import functional_call

    shifted = {n: p + eps * direction[n] for n, p in params.items()}
    with torch.no_grad():
        logp = functional_call(model, params, (X,)).log_softmax(1)
        logq = functional_call(model, shifted, (X,)).log_softmax(1)
    return (logp.exp() * (logp - logq)).sum(1).mean()


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_kl_second_order_expansion(name):
    case = make_case(name)
    F = FisherOperator(case.model, (case.inputs, case.targets))
    params = {n: p.detach() for n, p in case.model.named_parameters()}
    d = {n: torch.randn_like(p) for n, p in params.items()}
    quad = F.quad(d)
    errors = []
    for eps in (1e-3, 1e-4):
        kl = _mean_kl(case.model, params, d, eps, case.inputs)
        errors.append(abs(kl / (0.5 * eps**2 * quad) - 1))
    # O(eps) relative error: shrinks ~10x when eps shrinks 10x
    assert errors[1] < 1e-3
    assert errors[1] < errors[0] / 5


@pytest.mark.parametrize("name", ["mlp", "cnn", "regression", "layernorm"])
def test_symmetric_positive_semidefinite(name):
    case = make_case(name)
    dense = FisherOperator(
        case.model, (case.inputs, case.targets), likelihood=case.likelihood
    ).dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-14)
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert eigenvalues.min() > -1e-12 * eigenvalues.max()


def test_rank_is_at_most_n_times_classes_minus_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    X, y = torch.randn(3, 5, dtype=torch.float64), torch.randint(0, 4, (3,))
    dense = FisherOperator(model, (X, y)).dense()
    assert dense.shape[0] > 3 * 3
    assert torch.linalg.matrix_rank(dense, hermitian=True) == 3 * (4 - 1)


class Reparametrised(nn.Module):
    """Same function as a Linear layer, with weight W = U M for a fixed invertible M."""

    def __init__(self, linear: nn.Linear, mixing: torch.Tensor):
        super().__init__()
        self.register_buffer("mixing", mixing)
        self.u = nn.Parameter(linear.weight.detach() @ torch.linalg.inv(mixing))

    def forward(self, x):
        return x @ (self.u @ self.mixing).T


def test_reparametrisation_covariance():
    """F_φ = J_gᵀ F_θ J_g for θ = g(φ) = vec(U M): J_g = I ⊗ Mᵀ in row-major layout."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 4, bias=False).double()
    mixing = torch.randn(3, 3, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    X, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 4, (20,))
    f_theta = FisherOperator(linear, (X, y)).dense()
    f_phi = FisherOperator(Reparametrised(linear, mixing), (X, y)).dense()
    jac = torch.kron(torch.eye(4, dtype=torch.float64), mixing.T.contiguous())
    torch.testing.assert_close(f_phi, jac.T @ f_theta @ jac)


def test_a_confident_network_keeps_its_quadratic_form_in_float32():
    """θᵀFθ of a nearly one-hot classifier: float32 agrees with float64, never negative.

    Its logits are large (|u| ~ 50) and its probabilities one-hot to within e⁻²⁰, so uᵀΛu is about
    ε‖u‖²; written as uᵀ(p ⊙ u) − (pᵀu)² it is the difference of two numbers of size ‖u‖², which
    float32 returns as noise of either sign (the grokking study measured −5·10⁻³ this way).
    """
    torch.manual_seed(0)
    X = torch.randn(2048, 8, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5)).double()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(10.0)
        top2 = model(X).topk(2, dim=1).values
    X = X[top2[:, 0] - top2[:, 1] > 20][:256]  # the confident points only
    y = model(X).argmax(1)
    reference = FisherOperator(model, (X, y))
    theta = {n: p.detach() for n, p in model.named_parameters()}
    exact = float(reference.quad(theta))
    model32 = model.float()
    single = FisherOperator(model32, (X.float(), y))
    value = float(single.quad({n: p.detach() for n, p in model32.named_parameters()}))
    assert 0 < exact < 1  # confident: the form is tiny against ‖Jθ‖² (thousands here)
    assert value == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_the_output_factor_has_classes_minus_one_columns_that_square_to_diag_p_minus_ppt(classes):
    """Λ(p) = diag p − p pᵀ has rank C − 1, and the true Fisher back-propagates C − 1 columns."""
    torch.manual_seed(classes)
    logits = torch.cat(
        [
            torch.randn(6, classes, dtype=torch.float64),
            30 * torch.randn(6, classes, dtype=torch.float64),  # nearly one-hot rows
            torch.zeros(1, classes, dtype=torch.float64),  # uniform: every class is the largest
        ]
    )
    probs = logits.softmax(dim=1)
    columns = categorical_sqrt_factors(probs)
    assert columns.shape == (classes - 1, len(probs), classes)
    squared = torch.einsum("knc,knd->ncd", columns, columns)
    expected = torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)
    torch.testing.assert_close(squared, expected, rtol=0, atol=1e-15)


def test_a_confident_rows_output_fisher_keeps_its_relative_accuracy_in_float32():
    """Λ_dd = p_d (1 − p_d) of the likeliest class d, when 1 − p_d is far below float32's ε.

    Formed as 1 − p_d it would be 0 (p_d rounds to 1); the factor forms it from the small
    probabilities, Σ_{c≠d} p_c.
    """
    logits = torch.tensor([[30.0, 0.0, 1.0, -2.0]])
    probs = logits.softmax(dim=1)
    assert probs[0, 0] == 1.0  # in float32
    columns = categorical_sqrt_factors(probs)
    squared = torch.einsum("knc,knd->ncd", columns, columns)
    exact = logits.double().softmax(dim=1)
    expected = float(exact[0, 0] * exact[0, 1:].sum())
    assert abs(float(squared[0, 0, 0]) - expected) <= 1e-5 * expected
