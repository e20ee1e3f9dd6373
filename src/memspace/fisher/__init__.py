"""The Fisher information metric (docs/theory.md §1): operator, structures, spectral tools."""

from ._collect import CHECK_SAMPLES, FisherPlan, TapPlan, clear_plan_cache
from .ekfac import EKFAC, EigenBlock
from .kfac import KFAC, KroneckerBlock
from .likelihood import FisherKind, Likelihood
from .operator import FisherOperator
from .spectral import SpectralDensity, hutchpp, stochastic_lanczos_quadrature

__all__ = [
    # the operator
    "FisherOperator",
    "FisherKind",
    "Likelihood",
    "FisherPlan",
    "TapPlan",
    "CHECK_SAMPLES",
    "clear_plan_cache",
    # structures
    "KFAC",
    "KroneckerBlock",
    "EKFAC",
    "EigenBlock",
    # spectral tools
    "SpectralDensity",
    "hutchpp",
    "stochastic_lanczos_quadrature",
]
