"""A first Fisher structure in a fresh process, and the vector-Jacobian products it is made of.

memspace back-propagates chosen output cotangents (:mod:`memspace._backprop`): the same numbers
as ``torch.autograd.grad(outputs, inputs, seed)``, without the symbolic-shapes import (sympy) that
torch's check of a seed tensor loads, which once cost a user's first diagonal 0.3 s and 30 MB.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from memspace._backprop import backward_along, grad_along


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    return net, x


def test_grad_along_is_autograds_vector_jacobian_product():
    net, x = _net()
    params = list(net.parameters())
    seeds = torch.randn(3, 6, 4, dtype=torch.float64)
    out = net(x)
    for k, seed in enumerate(seeds):  # several cotangents through one retained graph
        ours = grad_along(out, params, seed, retain_graph=k < len(seeds) - 1)
        theirs = torch.autograd.grad(net(x), params, seed)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_grad_along_reports_unused_inputs_as_torch_does():
    net, x = _net()
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    seed = torch.ones(6, 4, dtype=torch.float64)
    grads = grad_along(net(x), [net[0].weight, unused], seed, allow_unused=True)
    assert grads[1] is None and grads[0] is not None
    with pytest.raises(RuntimeError):
        grad_along(net(x), [net[0].weight, unused], seed)


def test_a_seed_with_a_graph_of_its_own_is_a_value_not_a_path():
    """A cotangent computed from the outputs (the Fisher's Λ u) is not differentiated through.

    Its graph may hold tensors changed in place since (an attention's softmax did); torch's
    ``grad_outputs`` treats it as a value, and so does :func:`backward_along`.
    """
    net, x = _net()
    out = net(x)
    probabilities = out.exp()  # saved for exp's backward
    seed = probabilities * 2  # depends on the parameters
    probabilities.add_(0)  # a graph that cannot be differentiated any more
    theirs = torch.autograd.grad(out, list(net.parameters()), seed, retain_graph=True)
    for p in net.parameters():
        p.grad = None
    backward_along(out, seed, list(net.parameters()))
    for p, b in zip(net.parameters(), theirs):
        torch.testing.assert_close(p.grad, b, rtol=1e-13, atol=1e-15)


def test_grad_along_refuses_a_seed_of_another_shape():
    net, x = _net()
    with pytest.raises(ValueError, match="shape"):
        grad_along(net(x), list(net.parameters()), torch.ones(6, 3, dtype=torch.float64))


def test_a_first_diagonal_kfac_and_product_load_no_symbolic_shapes():
    """In a fresh interpreter, the tapped paths never import torch's symbolic shapes (sympy).

    (``torch.func``'s vmap does, for a model with parameters outside every layer rule: that is
    torch's own cost of the exact per-sample path, not checked here.)
    """
    script = textwrap.dedent(
        """
        import sys, torch
        from torch import nn
        from memspace.fisher import EKFAC, KFAC, FisherOperator
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8), nn.ReLU(),
            nn.Linear(8, 3),
        )
        x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
        for memory in ("fast", "low"):
            for kind in ("true", "mc"):
                F = FisherOperator(model, (x, y), batch_size=4, kind=kind, memory=memory)
                F.diag(), F @ torch.randn(F.shape[0])
                EKFAC.from_kfac(KFAC.from_operator(F))
        print(sorted(m for m in ("sympy", "torch.fx.experimental.symbolic_shapes")
                     if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
