"""Studies that combine the metric, the measures and training into results.

- :func:`run_demo`: two residual networks, with and without least action, measured.
- the capacity study (:mod:`.capacity`): memorisation under an action budget, with the
  Cover anchor;
- the robustness study (:mod:`.robustness`): layer re-initialization, weight noise
  against (σ²/2) tr F, block sensitivity, and their rank agreement;
- the disentanglement study (:mod:`.disentanglement`): β-VAEs with and without least action;
- the grokking study (:mod:`.grokking`): the Fisher measures of modular addition through
  memorisation and grokking, with the claims (g1)–(g4).

The studies are listed once, in :data:`.registry.STUDIES`.
"""

from __future__ import annotations

from .base import StudySummary
from .capacity import CAPACITY_CONFIGS, capacity_study, cover_anchor, cover_probability, memorise
from .demo import run_demo
from .disentanglement import DISENTANGLEMENT_CONFIGS, disentanglement_study
from .grokking import GROKKING_CONFIGS, GROKKING_PREDICTIONS, checkpoint_measures, grokking_study
from .measure import measure_network
from .registry import STUDIES, Study, get_study, prepare_study, run_study
from .robustness import ROBUSTNESS_CONFIGS, reinitialization, robustness_study, weight_noise

__all__ = [
    "CAPACITY_CONFIGS",
    "DISENTANGLEMENT_CONFIGS",
    "GROKKING_CONFIGS",
    "GROKKING_PREDICTIONS",
    "ROBUSTNESS_CONFIGS",
    "STUDIES",
    "Study",
    "StudySummary",
    "capacity_study",
    "checkpoint_measures",
    "cover_anchor",
    "cover_probability",
    "disentanglement_study",
    "get_study",
    "grokking_study",
    "measure_network",
    "memorise",
    "prepare_study",
    "reinitialization",
    "robustness_study",
    "run_demo",
    "run_study",
    "weight_noise",
]
