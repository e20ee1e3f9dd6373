"""K networks of one architecture held as one flat [K, P] tensor of parameters."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .._errors import MemspaceError
from ..action import ActionTerm
from ..paths.adapter import ResidualPath
from ._objective import Objective, PenalisedLoss, classification


def _architecture(model: nn.Module) -> tuple:
    """What must agree between members: module types, tensor names, shapes, dtypes, devices."""
    modules = tuple(
        (name, type(m).__qualname__, m.extra_repr()) for name, m in model.named_modules()
    )
    tensors = tuple(
        (name, tuple(t.shape), t.dtype, t.device.type)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    )
    steps = tuple(
        (name, getattr(m, "step")) for name, m in model.named_modules() if hasattr(m, "step")
    )
    return modules, tensors, steps


def _difference(a: nn.Module, b: nn.Module) -> str:
    (ma, ta, sa), (mb, tb, sb) = _architecture(a), _architecture(b)
    for left, right, what in ((ma, mb, "module"), (ta, tb, "tensor"), (sa, sb, "step")):
        for x, y in zip(left, right):
            if x != y:
                return f"{what} {x[0] or '(root)'}: {x[1:]} against {y[1:]}"
        if len(left) != len(right):
            longer = left if len(left) > len(right) else right
            return f"{what} {longer[min(len(left), len(right))][0]} is in one only"
    return "unknown"


class Population:
    """K networks of one architecture as stacked parameters.

    Args:
        models: the members' networks (their current weights become the members'); they
            must agree in every module, tensor name, shape, dtype and device.
        block_names: the residual blocks of a model that is not a memspace residual model
            (for the action terms).
        head: its read-out (for the predictive actions).

    Attributes:
        size: K.
        params: name → ``[K, ...]`` stacked parameters (leaves that require grad).
        buffers: name → ``[K, ...]`` stacked buffers.

    Raises:
        MemspaceError: no models, or members of different architectures (naming the first
            difference: group the members by architecture, one population per group).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        block_names: Sequence[str] | None = None,
        head: Any = None,
    ):
        models = list(models)
        if not models:
            raise MemspaceError("a population needs at least one model")
        reference = _architecture(models[0])
        for k, model in enumerate(models[1:], start=1):
            if _architecture(model) != reference:
                raise MemspaceError(
                    f"member {k} has another architecture than member 0 "
                    f"({_difference(models[0], model)}): a population holds one architecture; "
                    "group the members by architecture and train one population per group"
                )
        self.template = copy.deepcopy(models[0])
        params, buffers = stack_module_state(models)
        trained = [n for n, q in models[0].named_parameters() if q.requires_grad]
        first = params[trained[0]] if trained else None
        if first is None:
            raise MemspaceError("the models have no parameter that requires grad: nothing to train")
        odd = [
            n for n in trained if (params[n].dtype, params[n].device) != (first.dtype, first.device)
        ]
        if odd:
            raise MemspaceError(
                f"parameter {odd[0]} is {params[odd[0]].dtype} on {params[odd[0]].device}, "
                f"{trained[0]} {first.dtype} on {first.device}: a population stores all its "
                "trained parameters in one dtype on one device"
            )
        # One [K, P] tensor for every trained parameter: each parameter is a leaf view of it,
        # its gradient a view of one [K, P] gradient, so the optimiser runs on one tensor.
        sizes = [params[n][0].numel() for n in trained]
        self.flat = torch.cat([params[n].detach().reshape(len(models), -1) for n in trained], 1)
        self.flat_grad = torch.zeros_like(self.flat)
        self.slices: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.params: dict[str, Tensor] = {}
        offset = 0
        for name, size in zip(trained, sizes):
            shape = tuple(params[name].shape[1:])
            self.slices[name] = (offset, offset + size, shape)
            self.params[name] = self._view(self.flat, name).requires_grad_(True)
            offset += size
        self.frozen = {n: q.detach().clone() for n, q in params.items() if n not in self.slices}
        self.buffers = {name: b.detach().clone() for name, b in buffers.items()}
        self.block_names = block_names
        self.head = head
        self._loss_modules: dict[tuple, PenalisedLoss] = {}
        self.prior: Any = "uniform"
        self._state_shapes: list[tuple[int, ...]] | None = None
        self._scratch: nn.Module | None = None
        self._scratch_tensors: dict[str, Tensor] = {}
        self._state_names = _state_names(self.template)
        self._reach_checked = False

    def _view(self, flat: Tensor, name: str) -> Tensor:
        start, stop, shape = self.slices[name]
        return flat[:, start:stop].view(flat.shape[0], *shape)

    def row_view(self, flat: Tensor, k: int, name: str) -> Tensor:
        """Parameter ``name`` of member k inside a [K, P] tensor laid out like :attr:`flat`."""
        start, stop, shape = self.slices[name]
        return flat[k, start:stop].view(shape)

    def zero_grad(self) -> None:
        """Zero the stacked gradient, into which the next backward accumulates."""
        self.flat_grad.zero_()
        for name, p in self.params.items():
            p.grad = self._view(self.flat_grad, name)

    def backward(self, total: Tensor) -> None:
        """Backward of the members' summed loss into :attr:`flat_grad`.

        Raises:
            MemspaceError: (first call) a trained parameter the loss does not reach: ``fit``'s
                optimiser would skip it, a population's would decay it.
        """
        if not self._reach_checked:
            unused = _unreached(total, self.params)
            if unused:
                raise MemspaceError(
                    f"parameter {unused[0]} takes no part in the loss: freeze it "
                    "(requires_grad_(False)) or remove it before training a population"
                )
            self._reach_checked = True
        self.zero_grad()
        with warnings.catch_warnings():
            # The gradient views share the parameters' strides; autograd only notes that
            # they are not dense.
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            total.backward()

    @classmethod
    def from_seeds(
        cls, factory: Callable[[], nn.Module], seeds: Sequence[int], **kwargs: Any
    ) -> Population:
        """Members built by ``factory()`` after ``torch.manual_seed(seed)``, one per seed."""
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(factory())
        return cls(models, **kwargs)

    @property
    def size(self) -> int:
        """K, the number of members."""
        return self.flat.shape[0]

    def state(self, k: int) -> dict[str, Tensor]:
        """Member k's state dict (parameters and buffers), detached copies."""
        self._check_index(k)
        state = {name: p[k].detach().clone() for name, p in self.params.items()}
        state.update({name: q[k].clone() for name, q in self.frozen.items()})
        state.update({name: b[k].clone() for name, b in self.buffers.items()})
        return {name: state[canonical] for name, canonical in self._state_names.items()}

    def load_state(self, k: int, state: dict[str, Tensor]) -> None:
        """Overwrite member k's parameters and buffers with ``state``."""
        self._check_index(k)
        with torch.no_grad():
            for name in self.params:
                self.row_view(self.flat, k, name).copy_(state[name])
            for name, q in self.frozen.items():
                q[k].copy_(state[name])
            for name, b in self.buffers.items():
                b[k].copy_(state[name])

    def member(self, k: int) -> nn.Module:
        """Member k as an ordinary network (a copy: training it leaves the population alone)."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.state(k))
        return model

    def scratch(self, k: int) -> nn.Module:
        """Member k's weights in one network kept for the purpose (valid until the next call).

        Cheaper than :meth:`member` (no copy of the module): for reading a member, as the
        epoch metrics and checkpoints do.
        """
        self._check_index(k)
        if self._scratch is None:
            # the template itself: outside functional_call its own tensors are never read
            self._scratch = self.template
            self._scratch_tensors = {
                **dict(self._scratch.named_parameters()),
                **dict(self._scratch.named_buffers()),
            }
        stacked = {**self.params, **self.frozen, **self.buffers}
        with torch.no_grad():
            for name, tensor in self._scratch_tensors.items():
                tensor.copy_(stacked[name][k])
        return self._scratch

    def _check_index(self, k: int) -> None:
        if not 0 <= k < self.size:
            raise MemspaceError(f"no member {k} in a population of {self.size}")

    def _rows(self, members: Sequence[int] | None) -> tuple[dict, dict]:
        params = {**self.params, **self.frozen}
        if members is None or list(members) == list(range(self.size)):
            return params, self.buffers
        index = torch.as_tensor(list(members), device=self.flat.device)
        return (
            {name: p.index_select(0, index) for name, p in params.items()},
            {name: b.index_select(0, index) for name, b in self.buffers.items()},
        )

    def logits(self, x: Tensor, members: Sequence[int] | None = None) -> Tensor:
        """The members' outputs on one shared batch ``x`` [B, ...]: [K', B, C].

        Args:
            x: one batch for all members.
            members: which members (default all, K' = K).
        """
        params, buffers = self._rows(members)
        if self.size == 1:  # as in penalised_losses: no vmap for a population of one
            single = ({n: v[0] for n, v in params.items()}, {n: b[0] for n, b in buffers.items()})
            return functional_call(self.template, single, (x,)).unsqueeze(0)

        def call(p, b):
            return functional_call(self.template, (p, b), (x,))

        return batched(call)(params, buffers)

    def evaluate(
        self,
        data: tuple[Tensor, Tensor],
        members: Sequence[int] | None = None,
        batch_size: int = 1024,
    ) -> list[tuple[float, float]]:
        """(mean cross-entropy, accuracy) of each member on the shared ``(X, y)``, batched.

        The same chunks and reductions as :func:`memspace.train.evaluate`, in eval mode.
        """
        X, y = data
        count = self.size if members is None else len(members)
        loss, correct = [0.0] * count, [0] * count
        was_training = self.template.training
        self.template.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(X), batch_size):
                    xb, yb = X[start : start + batch_size], y[start : start + batch_size]
                    logits = self.logits(xb, members)
                    target = yb.expand(count, -1)
                    ce = nn.functional.cross_entropy(
                        logits.transpose(1, 2), target, reduction="none"
                    ).sum(1)
                    hits = (logits.argmax(2) == target).sum(1)
                    for i, (value, hit) in enumerate(zip(ce.tolist(), hits.tolist())):
                        loss[i] += value
                        correct[i] += hit
        finally:
            self.template.train(was_training)
        return [(total / len(X), hit / len(X)) for total, hit in zip(loss, correct)]

    def penalised_losses(
        self,
        members: Sequence[int],
        inputs: Sequence[Tensor],
        action: Any,
        lam: Tensor,
        probes: Sequence[Tensor] | None = None,
        objective: Objective | None = None,
    ) -> tuple[Tensor, ...]:
        """``(total, data loss, action, ...)`` per member, [K'] each, in the autograd graph.

        The loss of :func:`memspace.train.penalised_loss` for every member at once: member i's
        data loss on its batch ``inputs[j][i]`` plus ``lam[i]`` times its action.

        Args:
            members: which members (K' of them), in the order of the batches.
            inputs: the batch tensors, each [K', B, ...] (for classification ``(x, y)``).
            action: the members' common term ``(action, anchor)`` (:attr:`Member.term`; None
                for the data loss alone), or a tuple of terms for
                :func:`classification_with_actions` (``lam`` then [K', 2, A]).
            lam: [K'] their λ.
            probes: for the Jacobian action, one [K', B, ...] tensor per residual block (each
                member's Gaussian probes, drawn as ``fit`` draws them).
            objective: the data loss (default :func:`classification`, ``fit``'s).
        """
        module = self._loss_module(action, objective or classification)
        if self.size == 1:
            # A population of one: no vmap, whose per-operation cost would be all loss. (Only
            # then: in a larger population a member's arithmetic must not depend on how many
            # others still train, so that a resumed population equals an uninterrupted one.)
            (k,) = members
            named = {f"model.{n}": v[k] for n, v in {**self.params, **self.frozen}.items()}
            named_buffers = {f"model.{n}": b[k] for n, b in self.buffers.items()}
            single = None if probes is None else [p[0] for p in probes]
            outputs = functional_call(
                module, (named, named_buffers), ([t[0] for t in inputs], lam[0], single)
            )
            return tuple(o.unsqueeze(0) for o in outputs)
        params, buffers = self._rows(members)
        named = {f"model.{k}": v for k, v in params.items()}
        named_buffers = {f"model.{k}": v for k, v in buffers.items()}
        probe_dims = None if probes is None else [0] * len(probes)

        def call(p, b, batch, lb, pb):
            return functional_call(module, (p, b), (batch, lb, pb))

        outputs = batched(call, in_dims=(0, 0, [0] * len(inputs), 0, probe_dims))(
            named, named_buffers, list(inputs), lam, None if probes is None else list(probes)
        )
        if buffers is not self.buffers and buffers:
            # the forward updated copies of these members' buffers (BatchNorm's running
            # statistics): write them back
            index = torch.as_tensor(list(members), device=self.flat.device)
            with torch.no_grad():
                for name, b in buffers.items():
                    self.buffers[name].index_copy_(0, index, b)
        return outputs

    def set_path(self, block_names: Sequence[str] | None, head: Any) -> None:
        """The residual blocks and read-out the action terms use (of a non-memspace model)."""
        self.block_names, self.head = block_names, head
        self._loss_modules.clear()
        self._state_shapes = None

    def state_shapes(self, x: Tensor) -> list[tuple[int, ...]]:
        """The shape of one sample's residual state after each block (from one sample ``x``)."""
        if self._state_shapes is None:
            path = ResidualPath(self.template, self.block_names)
            with torch.no_grad(), path.capture() as record:
                self.template(x)
            self._state_shapes = [tuple(out.shape[1:]) for out in record.outputs]
        return self._state_shapes

    def set_prior(self, prior: Any) -> None:
        """The prior π of the prior-anchored predictive terms: ``"uniform"`` or a tensor [C]."""
        self.prior = prior
        self._loss_modules.clear()

    def _loss_module(self, term: Any, objective: Objective) -> PenalisedLoss:
        """The loss module of one term ``(action, anchor)``, several (a tuple of them), or None."""
        key = (term, objective)
        if key not in self._loss_modules:
            if term is None:
                bound = None
            elif isinstance(term[0], tuple):  # several terms in one call
                bound = tuple(self._action_term(*t) for t in term)
            else:
                bound = self._action_term(*term)
            self._loss_modules[key] = PenalisedLoss(self.template, bound, objective)
        return self._loss_modules[key]

    def _action_term(self, action: str, anchor: str | None) -> ActionTerm:
        return ActionTerm(
            action,
            self.template,
            self.block_names,
            head=self.head,
            anchor=anchor or "prior",
            prior=self.prior,
        )


def _state_names(model: nn.Module) -> dict[str, str]:
    """Each state-dict name → the name its tensor is stacked under (a tied weight's first name)."""
    first: dict[int, str] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        first.setdefault(id(tensor), name)
    return {name: first[id(tensor)] for name, tensor in model.state_dict(keep_vars=True).items()}


def batched(call: Callable, in_dims: Any = 0) -> Callable:
    """``vmap(call, in_dims)``, with an operation ``vmap`` cannot batch refused by name.

    Raises:
        MemspaceError: a layer of the model has no batching rule (a recurrent layer's fused
            kernel, say): train these networks one by one with ``fit``.
    """
    mapped = vmap(call, in_dims=in_dims)

    def run(*args):
        try:
            return mapped(*args)
        except RuntimeError as error:
            text = str(error)
            if "Batching rule not implemented" not in text:
                raise
            raise MemspaceError(
                f"a population cannot batch this model: {text.splitlines()[0]} (torch.func.vmap "
                "has no rule for it); train these networks one by one with fit"
            ) from None

    return run


def _unreached(total: Tensor, params: dict[str, Tensor]) -> list[str]:
    """The names of ``params`` that no path of ``total``'s autograd graph reaches."""
    seen, stack, reached = set(), [total.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            reached.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return [name for name, p in params.items() if id(p) not in reached]
