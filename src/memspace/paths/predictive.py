"""The predictive path: depth as a path in the Fisher–Rao simplex (docs/theory.md §3.1).

Apply the read-out to every state of the residual stream, p_l = softmax(head(x_l)),
l = 0..L. The probability simplex with the Fisher metric is a piece of the sphere of
radius 2 (ξ = 2√p), so distances are exact and closed-form:

    d(p, q) = 2·arccos Σ_k √(p_k q_k) = 4·arcsin(‖√p − √q‖ / 2)

(the second form is stable near p = q and smooth when squared). For a unit-variance
Gaussian read-out (regression) d is the Euclidean distance of the means.

Per input, with h = 1/L (depth is the path's time, from 0 to 1):

- length C = Σ_l d(p_l, p_{l+1}); action A = (1/h) Σ_l d(p_l, p_{l+1})²;
- endpoint distance d_0L = d(p_0, p_L).

Least action, exactly: among all paths with the same end points A ≥ C² ≥ d_0L², with
equality for a great-circle arc at constant speed, so A_min = E d_0L² needs no
optimisation and A/A_min ≥ 1 is an exact distance from least action. Over the data it
factors exactly as (E A / E C²)·(E C² / E d²): an uneven speed times a detour factor.

Where the path starts (docs/theory.md §3.1a). ``anchor="prior"`` (v3, the default) starts
it at the class prior π — the prediction of a network that stores nothing about x — and
then visits p_0 … p_L: L+1 steps, h = 1/(L+1), A_min = E d(π, p_L)², a property of the
network's function alone; a network whose blocks are idle has A/A_min = L+1.
``anchor="stem"`` (v2) starts at p_0 = head(stem(x)): L steps, h = 1/L; nothing constrains
p_0 there, so a regulariser can lower A by letting the stem and read-out do all the work.

Cost: one forward with hooks on the blocks plus L+1 read-out evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import DataError, MemspaceError
from .._model_call import ModelCall, OutputSelector, call_with, derivative_kernels
from .._params import check_eval_mode
from .._stream import as_batch_stream
from ..distributed import Collective
from ..fisher.likelihood import Likelihood
from .adapter import ResidualPath, resolve_head

__all__ = [
    "ANCHORS",
    "PredictivePath",
    "label_prior",
    "fisher_rao_distance",
    "predictive_action",
    "predictive_path",
    "readout_path",
    "squared_fisher_rao_distance",
]


ANCHORS = ("prior", "stem")
"""Where a predictive path starts: the class prior (v3, the default) or the stem (v2)."""


def check_anchor(anchor: str) -> str:
    """``anchor`` if it is one of :data:`ANCHORS`, else a MemspaceError naming them."""
    if anchor not in ANCHORS:
        raise MemspaceError(f"unknown anchor {anchor!r}; use 'prior' or 'stem'")
    return anchor


def label_prior(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """The labels' marginal π_k = #{y = k}/N, [C] (float64), for ``prior=``.

    Classes that never occur get 1/(2N) before renormalising, so π stays positive (a
    Fisher–Rao distance from a prior with a zero class is finite, but log π is not).

    Args:
        labels: integer class labels [N] (the training set's).
        num_classes: C; default max label + 1.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() == 0 or labels.dtype.is_floating_point:
        raise MemspaceError("label_prior needs a non-empty vector of integer class labels")
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise MemspaceError(f"labels must lie in 0..{classes - 1}")
    counts = torch.bincount(labels.long(), minlength=classes).double()
    counts = counts.clamp_min(0.5)
    return counts / counts.sum()


def resolve_prior(prior: str | Tensor, targets: Tensor | None, likelihood: str) -> Any:
    """``prior`` with ``"labels"`` replaced by the training targets' marginal (or mean).

    ``"labels"``: :func:`label_prior` of integer labels for classification, the targets'
    mean [C] for regression. ``"uniform"`` and tensors pass through.
    """
    if not (isinstance(prior, str) and prior == "labels"):
        return prior
    if targets is None:
        raise MemspaceError("prior='labels' needs the training targets")
    if Likelihood.parse(likelihood) is Likelihood.CLASSIFICATION:
        return label_prior(targets)
    return torch.as_tensor(targets).double().reshape(len(targets), -1).mean(0)


def _half_chord_squared(logp: Tensor, logq: Tensor) -> Tensor:
    """‖√p − √q‖²/4 = sin²(d/4) from log-probabilities [..., C] → [...]."""
    return ((logp / 2).exp() - (logq / 2).exp()).pow(2).sum(-1).div(4).clamp(0.0, 1.0)


def fisher_rao_distance(logp: Tensor, logq: Tensor) -> Tensor:
    """d(p, q) = 4·arcsin(‖√p − √q‖/2) from log-probabilities [..., C], shape [...]."""
    return 4 * torch.asin(_half_chord_squared(logp, logq).sqrt())


def squared_fisher_rao_distance(logp: Tensor, logq: Tensor) -> Tensor:
    """d(p, q)² = 16·arcsin²(√a), a = ‖√p − √q‖²/4, differentiable everywhere.

    arcsin²(√a) = a + a²/3 + … is analytic at a = 0; below a = 1e-12 its first term is
    used, so the gradient at p = q is 0 rather than 0·∞.
    """
    a = _half_chord_squared(logp, logq)
    small = a < 1e-12
    exact = torch.asin(a.clamp_min(1e-12).sqrt()).pow(2)
    return 16 * torch.where(small, a, exact)


def _distances(outputs: Sequence[Tensor], likelihood: Likelihood, squared: bool = False) -> Tensor:
    """Distances between consecutive read-outs, [N, L] (squared if asked)."""
    if likelihood is Likelihood.REGRESSION:
        steps = [(b - a).pow(2).sum(-1) for a, b in zip(outputs[:-1], outputs[1:])]
        out = torch.stack(steps, dim=1)
        return out if squared else out.sqrt()
    logs = [o.log_softmax(-1) for o in outputs]
    fn = squared_fisher_rao_distance if squared else fisher_rao_distance
    return torch.stack([fn(a, b) for a, b in zip(logs[:-1], logs[1:])], dim=1)


def _endpoint(outputs: Sequence[Tensor], likelihood: Likelihood, squared: bool = False) -> Tensor:
    return _distances([outputs[0], outputs[-1]], likelihood, squared)[:, 0]


def readout_path(
    states: Sequence[Tensor],
    head: Callable[[Tensor], Tensor],
    num: int,
    where: str = "batch",
    *,
    check_finite: bool = True,
) -> list[Tensor]:
    """head(x_l) for every state, each checked to be logits [N, C] (and finite, by default).

    ``check_finite=False`` inside a ``torch.func`` transform, where a data-dependent check
    cannot run (the caller checks the loss it builds instead).
    """
    outputs = []
    for l, state in enumerate(states):
        out = head(state)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != num:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise MemspaceError(
                f"{where}: the read-out maps state x_{l} {tuple(state.shape)} to {shape}; "
                f"it must give logits [N, C] = [{num}, C] (pass head= a module that pools "
                "and projects the stream)"
            )
        if check_finite and not bool(torch.isfinite(out).all()):
            raise DataError(f"{where}: the read-out gives NaN/Inf logits at state x_{l}")
        outputs.append(out)
    return outputs


def predictive_action(
    outputs: Sequence[Tensor],
    *,
    likelihood: str | Likelihood = "classification",
    excess: bool = False,
    anchor: str = "prior",
    prior: str | Tensor = "uniform",
) -> Tensor:
    """Mean over the batch of A = L·Σ_l d(p_l, p_{l+1})² (or A − d(p_0, p_L)²), differentiable.

    Args:
        outputs: read-outs head(x_0) … head(x_L), each [N, C] (in the graph).
        likelihood: ``"classification"`` (Fisher–Rao on the simplex) or ``"regression"``.
        excess: subtract the least action d_0L², leaving A − A_min ≥ 0.
        anchor: ``"stem"``, or ``"prior"``: the path starts at the prior π, so A =
            (L+1)·[d(π, p_0)² + Σ_l d(p_l, p_{l+1})²] and the excess subtracts d(π, p_L)²
            (docs/theory.md §3.1a), as :func:`predictive_path` measures it.
        prior: the prior for ``anchor="prior"`` (as :func:`predictive_path`'s).
    """
    lik = Likelihood.parse(likelihood)
    if check_anchor(anchor) == "prior":
        outputs = [_prior_outputs(prior, lik, outputs[0]), *outputs]
    depth = len(outputs) - 1
    action = depth * _distances(outputs, lik, squared=True).sum(1)
    if excess:
        action = action - _endpoint(outputs, lik, squared=True)
    return action.mean()


@dataclass
class PredictivePath:
    """The predictive path of a residual network on a data set (module doc).

    Attributes:
        length: E C.
        action: E A.
        endpoint_distance: E d(p_0, p_L).
        least_action: E d(p_0, p_L)², the exact least action for these end points.
        speeds: per block, the RMS over data of d(p_l, p_{l+1})/h, [L].
        lens_accuracy: accuracy of head(x_l) for l = 0..L, [L+1] (None without labels).
        num_data: N.
        depth: L.
        likelihood: ``"classification"`` or ``"regression"``.
        mean_squared_length: E C² (for the uneven-speed factor).
        anchor: where the path starts: ``"stem"`` (p_0 = head(stem(x)), L steps, v2) or
            ``"prior"`` (the class prior π, then p_0 … p_L: L+1 steps, the stem's included;
            docs/theory.md §3.1a). Under ``"prior"`` the end-point quantities are d(π, p_L),
            ``speeds`` has L+1 entries (the stem's step first) and h = 1/(L+1).
        points: per data point, when asked (``points=True``): ``length`` [N],
            ``action`` [N], ``endpoint_distance`` [N], ``distances`` [N, L] and
            ``probabilities`` [N, L+1, C] (classification) or ``means``.
    """

    length: float
    action: float
    endpoint_distance: float
    least_action: float
    speeds: np.ndarray
    lens_accuracy: np.ndarray | None
    num_data: int
    depth: int
    likelihood: str
    mean_squared_length: float
    points: dict[str, np.ndarray] | None = field(default=None, repr=False)
    anchor: str = "prior"
    stem_length: float | None = None

    @property
    def ratio(self) -> float:
        """A / A_min ≥ 1: the exact distance from least action (1 = a constant-speed geodesic)."""
        return self.action / self.least_action if self.least_action > 0 else float("inf")

    @property
    def stem_share(self) -> float | None:
        """E d(π, p_0) / E C: the share of the path's length the stem's step carries (prior).

        Near 1 when the stem and read-out do the work and the blocks stand still. None under
        the stem anchor, whose path has no stem step.
        """
        if self.stem_length is None:
            return None
        return self.stem_length / self.length if self.length > 0 else float("nan")

    @property
    def detour(self) -> float:
        """E C / E d ≥ 1, kept for v2's readers: *not* a factor of the ratio.

        Use :attr:`detour_factor` (E C² / E d²), which with :attr:`unevenness` factors it.
        """
        return self.length / self.endpoint_distance if self.endpoint_distance > 0 else float("inf")

    @property
    def unevenness(self) -> float:
        """E A / E C² ≥ 1: 1 when every point moves at constant speed over depth."""
        return (
            self.action / self.mean_squared_length if self.mean_squared_length > 0 else float("inf")
        )

    @property
    def detour_factor(self) -> float:
        """E C² / E d² ≥ 1: how much longer than the geodesic (squared, per point, averaged).

        With :attr:`unevenness` it factors the ratio exactly: A/A_min = unevenness ·
        detour_factor (E A / E C² times E C² / E d²).
        """
        return (
            self.mean_squared_length / self.least_action if self.least_action > 0 else float("inf")
        )

    @property
    def steps(self) -> int:
        """The path's number of steps: L (stem anchor) or L+1 (prior anchor)."""
        return self.depth + (self.anchor == "prior")

    @property
    def step(self) -> float:
        """The step size h = 1/L (stem anchor) or 1/(L+1) (prior anchor)."""
        return 1.0 / self.steps

    def __repr__(self) -> str:
        return (
            f"PredictivePath(A={self.action:.4g}, A_min={self.least_action:.4g}, "
            f"A/A_min={self.ratio:.3f} (uneven {self.unevenness:.3f} × detour "
            f"{self.detour_factor:.3f}), length={self.length:.4g}, anchor={self.anchor}, "
            f"L={self.depth}, "
            f"N={self.num_data})"
        )

    def _repr_html_(self) -> str:
        from ..report.notebook import key_value_table

        lens = None if self.lens_accuracy is None else float(self.lens_accuracy[-1])
        return key_value_table(
            "predictive path",
            [
                ("action A", self.action, ".4g"),
                ("least action A_min", self.least_action, ".4g"),
                ("A / A_min", self.ratio, ".3f"),
                ("length E C", self.length, ".4g"),
                ("uneven speed E A / E C²", self.unevenness, ".3f"),
                ("detour factor E C² / E d²", self.detour_factor, ".3f"),
                ("stem's share of the length", self.stem_share, ".3f"),
                ("anchor", self.anchor, "s"),
                ("lens accuracy at the read-out", lens, ".3f"),
                ("depth L", self.depth, "d"),
                ("points N", self.num_data, "d"),
            ],
        )

    def plot(self, ax: Any = None) -> Any:
        """The report's figure: predictive speed per block against least action's.

        And the lens accuracy.

        Args:
            ax: two matplotlib axes (default: a new figure).

        Returns:
            The matplotlib figure.
        """
        from types import SimpleNamespace

        from ..report import figures

        return figures.predictive_profile(
            {"network": {"measures": SimpleNamespace(predictive_path=self.as_dict())}}, axes=ax
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-point arrays)."""
        return {
            "length": self.length,
            "action": self.action,
            "endpoint_distance": self.endpoint_distance,
            "least_action": self.least_action,
            "ratio": self.ratio,
            "detour": self.detour,
            "unevenness": self.unevenness,
            "detour_factor": self.detour_factor,
            "anchor": self.anchor,
            "stem_share": self.stem_share,
            "speeds": self.speeds.tolist(),
            "lens_accuracy": None if self.lens_accuracy is None else self.lens_accuracy.tolist(),
            "num_data": self.num_data,
            "depth": self.depth,
            "likelihood": self.likelihood,
        }


def predictive_path(
    model: nn.Module,
    data: Any,
    *,
    block_names: Sequence[str] | None = None,
    head: nn.Module | str | Callable[[Tensor], Tensor] | None = None,
    likelihood: str = "classification",
    batch_size: int = 256,
    sample_dim: int = 0,
    output: OutputSelector = None,
    points: bool = False,
    distributed: bool = False,
    anchor: str = "prior",
    prior: str | Tensor = "uniform",
) -> PredictivePath:
    """The predictive path, its action and its exact least action (module doc), streamed.

    Args:
        model: a :class:`~memspace.paths.models.ResidualPathModel`, or any model with
            ``block_names`` (modules mapping x_l to x_{l+1}, in order) and ``head``.
        data: DataLoader, iterable of ``(x, y)`` or an ``(X, y)`` pair. Labels are used
            only for the lens accuracy (classification with integer labels).
        block_names: the residual blocks of a model that is not a memspace residual model.
        head: the read-out applied to every state: a module, the name of one, or a
            callable [stream] → logits [N, C]. Default: the model's ``head``.
        likelihood: ``"classification"`` (Fisher–Rao on the simplex) or ``"regression"``.
        batch_size: rows per batch for an ``(X, y)`` pair.
        sample_dim: the axis of the inputs that indexes data points
            (see :class:`~memspace.FisherOperator`).
        output: how to find the outputs in what the model returns; used only to check the
            model runs.
        points: keep per-point arrays (memory O(N·L·C): for figures on small sets).
        distributed: each rank streams its shard; the sums and counts are all-reduced, so
            every rank returns the whole data set's path (:mod:`memspace.distributed`). Per-point
            arrays stay this rank's.
        anchor: ``"prior"`` (v3, the default: the path starts at the class prior,
            docs/theory.md §3.1a; A_min = E d(π, p_L)², and a network whose blocks are zero
            has A/A_min = L+1 exactly) or ``"stem"`` (v2: it starts at head(stem(x))).
        prior: with ``anchor="prior"``: ``"uniform"`` (1/C each), or the prior itself — class
            probabilities [C] (the training labels' marginal, :func:`label_prior`) for
            classification, the targets' mean [C] for regression (required there).

    Raises:
        MemspaceError: for a model without a read-out, a block that changes the stream's
            shape (naming it), a read-out that does not give [N, C]; DataError for NaN.
    """
    collective = Collective(distributed, "the predictive path")
    with collective.guard():
        return _predictive_path(
            model,
            data,
            block_names,
            head,
            likelihood,
            batch_size,
            sample_dim,
            output,
            points,
            collective,
            anchor,
            prior,
        )


def _prior_outputs(prior, lik: Likelihood, like: Tensor) -> Tensor:
    """The anchor as a read-out [N, C]: log π for classification, the mean for regression."""
    num, classes = like.shape
    if isinstance(prior, str):
        if prior == "labels":
            raise MemspaceError(
                "prior='labels' names the training labels' marginal, which this data does not "
                "give: pass prior=label_prior(training labels)"
            )
        if prior != "uniform":
            raise MemspaceError(
                f"unknown prior {prior!r}; use 'uniform', 'labels' or give the prior [C]"
            )
        if lik is not Likelihood.CLASSIFICATION:
            raise MemspaceError(
                "a regression path anchored at the prior needs prior= the training targets' mean"
            )
        return like.new_zeros(num, classes)  # equal logits: the uniform distribution
    prior = torch.as_tensor(prior, dtype=like.dtype, device=like.device)
    if prior.shape != (classes,):
        raise MemspaceError(
            f"the prior has shape {tuple(prior.shape)}; the read-out gives {classes}"
        )
    if lik is Likelihood.CLASSIFICATION:
        if not bool((prior > 0).all()) or abs(float(prior.sum()) - 1) > 1e-6:
            raise MemspaceError("a class prior must be positive and sum to 1")
        return prior.log().expand(num, classes)
    return prior.expand(num, classes)


def _predictive_path(
    model,
    data,
    block_names,
    head,
    likelihood,
    batch_size,
    sample_dim,
    output,
    points,
    collective: Collective,
    anchor: str = "prior",
    prior: str | Tensor = "uniform",
) -> PredictivePath:
    check_anchor(anchor)
    lik = Likelihood.parse(likelihood)
    check_eval_mode(model)
    path = ResidualPath(model, block_names)
    readout = resolve_head(model, head)
    call = ModelCall(sample_dim, output)
    first = next(model.parameters())
    stream = as_batch_stream(
        data, device=first.device, dtype=first.dtype, batch_size=batch_size, sample_dim=sample_dim
    )
    depth = path.depth
    steps = depth + (anchor == "prior")
    names = ("length", "action", "endpoint", "endpoint2", "length2", "stem")
    sums = dict.fromkeys(names, 0.0)
    speed2 = torch.zeros(steps, dtype=torch.float64)
    correct = torch.zeros(depth + 1, dtype=torch.float64)
    labelled = lik is Likelihood.CLASSIFICATION
    count = 0
    kept: dict[str, list[np.ndarray]] = {}
    for index, (x, y) in enumerate(stream):
        num = call.num_samples(x)
        args, kwargs = call_with(x)
        with torch.no_grad(), derivative_kernels(model), path.capture() as record:
            call.outputs(model(*args, **kwargs), num, f"batch {index}")
        states = path.states(record)
        with torch.no_grad(), derivative_kernels(model):
            outputs = readout_path(states, readout, num, f"batch {index}")
        path_outputs = outputs
        if anchor == "prior":
            path_outputs = [_prior_outputs(prior, lik, outputs[0]), *outputs]
        dist = _distances(path_outputs, lik).double()  # [N, steps]
        endpoint = _endpoint(path_outputs, lik).double()
        length = dist.sum(1)
        action = steps * dist.pow(2).sum(1)
        sums["length"] += float(length.sum())
        sums["action"] += float(action.sum())
        sums["endpoint"] += float(endpoint.sum())
        sums["endpoint2"] += float(endpoint.pow(2).sum())
        sums["length2"] += float(length.pow(2).sum())
        sums["stem"] += float(dist[:, 0].sum())
        speed2 += (dist * steps).pow(2).sum(0).cpu()
        if (
            labelled
            and y is not None
            and y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)
            and y.dim() == 1
        ):
            correct += torch.stack([(o.argmax(1) == y).double().sum() for o in outputs]).cpu()
        else:
            labelled = False
        if points:
            values = {
                "length": length,
                "action": action,
                "endpoint_distance": endpoint,
                "distances": dist,
                ("probabilities" if lik is Likelihood.CLASSIFICATION else "means"): torch.stack(
                    [o.softmax(-1) if lik is Likelihood.CLASSIFICATION else o for o in outputs], 1
                ),
            }
            for key, value in values.items():
                kept.setdefault(key, []).append(value.detach().double().cpu().numpy())
        count += num
    totals = collective.reduce(
        torch.tensor(
            [sums[k] for k in names] + [float(count), float(not labelled)],
            dtype=torch.float64,
        )
    )
    sums = dict(zip(names, totals[: len(names)].tolist()))
    count, labelled = int(totals[len(names)]), labelled and totals[len(names) + 1] == 0
    speed2, correct = collective.reduce(speed2), collective.reduce(correct)
    return PredictivePath(
        length=sums["length"] / count,
        action=sums["action"] / count,
        endpoint_distance=sums["endpoint"] / count,
        least_action=sums["endpoint2"] / count,
        speeds=(speed2 / count).sqrt().numpy(),
        lens_accuracy=(correct / count).numpy() if labelled else None,
        num_data=count,
        depth=depth,
        likelihood=lik.value,
        mean_squared_length=sums["length2"] / count,
        points={k: np.concatenate(v) for k, v in kept.items()} if points else None,
        anchor=anchor,
        stem_length=sums["stem"] / count if anchor == "prior" else None,
    )
