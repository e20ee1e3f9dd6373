"""Typed results: what :func:`~memspace.studies.measure.measure_network` returns and a report reads.

:class:`NetworkMeasures` holds every measure of one network as attributes, with a schema
version, so that a figure reads ``m.fisher_trace`` rather than a string look-up, and a metrics
file is checked when it is read back (:meth:`NetworkMeasures.from_dict`). It converts to and from
the JSON a run folder stores (``metrics.json``), which keeps its layout: a file written before the
schema field existed reads as version 1.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .._errors import MemspaceError

__all__ = ["SCHEMA_VERSION", "NetworkMeasures"]

SCHEMA_VERSION = 1
"""The version of the measures' layout; a file of a newer version is refused, naming both."""


@dataclass
class NetworkMeasures:
    """Every measure of one network (docs/theory.md §1–3; :mod:`memspace.studies.measure`).

    Attributes:
        train_loss, train_acc, test_loss, test_acc: cross-entropy and accuracy on each split.
        gap: train − test accuracy (the generalization gap).
        fisher_rao_norm: θᵀFθ.
        num_params: P, the number of parameters the Fisher covers.
        fisher_trace: tr F (exact).
        top_eigenvalues: the top eigenvalues of F, descending (Lanczos).
        effective_dimension, effective_dimension_z: d_eff(z) = Σ λ/(λ+z) and its z = 10⁻³ λ_max.
        spectral_density: the SLQ density on a log grid (``log10_grid``, ``mass_per_decade``,
            ``fraction_near_zero``, ``floor``).
        predictive_path: :meth:`memspace.paths.PredictivePath.as_dict` under the prior anchor
            (v3; None when the model is not a path; then ``path_skipped`` says why).
        predictive_path_stem: the same under the stem anchor (v2), reported beside it.
        sensitivity: :meth:`memspace.paths.BlockSensitivity.as_dict`, with the path.
        predictive_points: per-point distances from the start over depth (and angles for two
            classes).
        fisher_distance_from_init, euclidean_distance_from_init: given the initial weights.
        trajectory_length, trajectory_step_lengths: the Fisher arc length of training, given
            checkpoints.
        trajectories: for 2-D inputs, test points through depth and their predictive speeds.
        extra: keys of a metrics file this version does not know, kept as read.
        schema: :data:`SCHEMA_VERSION`.
    """

    train_acc: float
    test_acc: float
    gap: float
    fisher_rao_norm: float
    num_params: int
    fisher_trace: float
    top_eigenvalues: list[float]
    effective_dimension: float
    spectral_density: dict[str, Any]
    train_loss: float | None = None
    test_loss: float | None = None
    effective_dimension_z: float | None = None
    predictive_path: dict[str, Any] | None = None
    predictive_path_stem: dict[str, Any] | None = None
    path_skipped: str | None = None
    sensitivity: dict[str, Any] | None = None
    predictive_points: dict[str, Any] | None = None
    fisher_distance_from_init: float | None = None
    euclidean_distance_from_init: float | None = None
    trajectory_length: float | None = None
    trajectory_step_lengths: list[float] | None = None
    trajectories: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``metrics.json`` (absent measures left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: Any, source: str = "the measures") -> NetworkMeasures:
        """The measures of a metrics file, checked.

        A mapping, of a schema this version reads, with every measure a network always has.

        Raises:
            MemspaceError: naming ``source`` and what is wrong.
        """
        if not isinstance(data, dict):
            raise MemspaceError(
                f"{source}: the measures are a {type(data).__name__}, not a mapping"
            )
        schema = data.get("schema", 1)
        if (
            not isinstance(schema, int)
            or isinstance(schema, bool)
            or not 1 <= schema <= SCHEMA_VERSION
        ):
            raise MemspaceError(
                f"{source}: measures of schema {schema!r}; this memspace reads schema 1 to "
                f"{SCHEMA_VERSION} (a newer memspace wrote it?)"
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        required = [
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise MemspaceError(
                f"{source}: the measures lack {', '.join(missing)}; rerun the command that wrote it"
            )
        values = {k: v for k, v in data.items() if k in known}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    # ------------------------------------------------------------ looking at it
    def __repr__(self) -> str:
        path = (
            f", A/A_min={_fmt(self.predictive_path.get('ratio'), '.3f')}"
            if self.predictive_path
            else ""
        )
        return (
            f"NetworkMeasures(test_acc={_fmt(self.test_acc, '.3f')}, gap={_fmt(self.gap, '+.3f')}, "
            f"fisher_rao_norm={_fmt(self.fisher_rao_norm, '.4g')}, "
            f"fisher_trace={_fmt(self.fisher_trace, '.4g')}, "
            f"effective_dimension={_fmt(self.effective_dimension, '.1f')}{path}, "
            f"P={self.num_params})"
        )

    def _repr_html_(self) -> str:
        from ..report.html import summary_table

        return summary_table({"network": {"measures": self}})

    def plot(self, ax: Any = None) -> Any:
        """The report's spectrum figure for this network.

        The top of the spectrum and the SLQ density.

        Args:
            ax: two matplotlib axes to draw on (default: a new figure with two).

        Returns:
            The matplotlib figure.
        """
        from ..report import figures

        return figures.spectrum({"network": {"measures": self}}, axes=ax)


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec`` for a repr, or its own repr when it is not a number."""
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return repr(value)
