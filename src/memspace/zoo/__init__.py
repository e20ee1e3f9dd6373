"""The model zoo: a hyperparameter grid trained.

Measured and ranked (does complexity predict generalization?).

- :mod:`.grid`: grids in YAML, expanded to models with stable ids;
- :mod:`.store`: SQLite (WAL), one row per model and per (model, measure);
- :mod:`.runner`: training and measuring on joblib's loky pool or a Dask cluster, and the
  leaderboard of :mod:`memspace.zoo.ranking`'s statistics.
"""

from .grid import GRIDS, expand, load_grid
from .runner import evaluate_zoo, leaderboard_points, measure_zoo, run_zoo, train_and_measure
from .store import ZooStore

__all__ = [
    "GRIDS",
    "ZooStore",
    "evaluate_zoo",
    "expand",
    "leaderboard_points",
    "load_grid",
    "measure_zoo",
    "run_zoo",
    "train_and_measure",
]
