"""Efficiency ↔ disentanglement.

Data with known factors and the standard scores (docs/theory.md §5.4).
"""

from .additivity import marginal_probabilities, path_action, product_distance, product_task
from .data import FACTOR_NAMES, DSpritesFile, DSpritesLike, load_dsprites_npz
from .metrics import (
    beta_vae_score,
    dci,
    dci_from_importance,
    explicitness,
    factor_vae_score,
    factor_vae_vote_accuracy,
    histogram_discretize,
    mig,
    modularity,
    modularity_from_mi,
    mutual_info_matrix,
    sap,
    sap_from_matrix,
)

__all__ = [
    "DSpritesFile",
    "DSpritesLike",
    "marginal_probabilities",
    "path_action",
    "product_distance",
    "product_task",
    "FACTOR_NAMES",
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "explicitness",
    "factor_vae_score",
    "factor_vae_vote_accuracy",
    "histogram_discretize",
    "load_dsprites_npz",
    "mig",
    "modularity",
    "modularity_from_mi",
    "mutual_info_matrix",
    "sap",
    "sap_from_matrix",
]
