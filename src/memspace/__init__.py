"""memspace: a deep network as a memory space, measured with the Fisher metric.

The data flow is one way (docs/theory.md): the metric (:mod:`memspace.fisher`) → quantities
of a configuration (:mod:`memspace.complexity`) and of a path (:mod:`memspace.paths`)
→ least action (:mod:`memspace.action`, :mod:`memspace.train`) → studies and reports.
"""

from ._errors import DataError, MemspaceError, MemspaceWarning
from .action import (
    ACTIONS,
    ActionTerm,
    StraightenResult,
    jacobian_action,
    kinetic_action,
    straighten,
)
from .complexity import TrajectoryLength, fisher_distance, fisher_rao_norm, trajectory_length
from .data import DataSplit, load_dataset, modular_arithmetic
from .fisher import EKFAC, KFAC, FisherKind, FisherOperator, Likelihood
from .paths import (
    BlockSensitivity,
    PredictivePath,
    ResidualCNN,
    ResidualMLP,
    ResidualPath,
    block_sensitivity,
    fisher_rao_distance,
    predictive_path,
)
from .train import FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # errors
    "MemspaceError",
    "MemspaceWarning",
    "DataError",
    # the metric
    "FisherOperator",
    "FisherKind",
    "Likelihood",
    "KFAC",
    "EKFAC",
    # complexity of a configuration
    "fisher_rao_norm",
    "fisher_distance",
    "trajectory_length",
    "TrajectoryLength",
    # a network as a path
    "ResidualMLP",
    "ResidualCNN",
    "ResidualPath",
    "predictive_path",
    "PredictivePath",
    "fisher_rao_distance",
    "block_sensitivity",
    "BlockSensitivity",
    # least action
    "ACTIONS",
    "ActionTerm",
    "kinetic_action",
    "jacobian_action",
    "straighten",
    "StraightenResult",
    "fit",
    "FitResult",
    # data
    "load_dataset",
    "modular_arithmetic",
    "DataSplit",
]
