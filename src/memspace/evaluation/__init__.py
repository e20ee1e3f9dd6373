"""Evidence a reviewer accepts: intervals, paired tests, multiplicity and verdicts (§5).

:mod:`.statistics` holds the tests (seed-clustered bootstrap intervals for τ, Ψ and mean
differences; Wilcoxon signed-rank and non-inferiority across seeds; a permutation null for
the best of M measures; Holm's correction; sample standard deviations; a logistic threshold
N*), :mod:`.verdicts` the pre-registered predictions and the rules that read a verdict from
committed results, and :mod:`.calibration` accuracy, NLL and calibration error.
"""

from .calibration import classification_metrics, expected_calibration_error
from .statistics import (
    Estimate,
    PairedComparison,
    best_of_permutation,
    clustered_bootstrap,
    equivalence,
    holm,
    kendall_ci,
    logistic_threshold,
    mean_ci,
    noninferiority,
    paired_comparison,
    sample_std,
)
from .verdicts import (
    VERDICTS,
    Prediction,
    Verdict,
    decide_direction,
    decide_noninferiority,
    read_results,
)

__all__ = [
    # predictions
    "classification_metrics",
    "expected_calibration_error",
    # statistics
    "Estimate",
    "PairedComparison",
    "sample_std",
    "clustered_bootstrap",
    "mean_ci",
    "kendall_ci",
    "paired_comparison",
    "noninferiority",
    "equivalence",
    "best_of_permutation",
    "holm",
    "logistic_threshold",
    # verdicts
    "VERDICTS",
    "Prediction",
    "Verdict",
    "decide_direction",
    "decide_noninferiority",
    "read_results",
]
