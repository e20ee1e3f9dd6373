"""memspace: a deep network as a memory space, measured with the Fisher metric.

See THEORY.md: Fisher information (``memspace.fisher``), complexity of a
configuration (``memspace.complexity``), a residual network as a path
(``memspace.paths``) and least-action training (``memspace.action``, ``memspace.train``).
"""

from ._errors import DataError, MemspaceError
from .fisher import KFAC, FisherKind, FisherOperator, Likelihood

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # errors
    "MemspaceError",
    "DataError",
    # the metric
    "FisherOperator",
    "FisherKind",
    "Likelihood",
    "KFAC",
]
