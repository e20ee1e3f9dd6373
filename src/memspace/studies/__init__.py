"""Studies that combine the metric, the measures and training into results.

- :func:`run_demo`: two residual networks, with and without least action, measured.
- the capacity study (:mod:`.capacity`): memorisation under an action budget, with the
  Cover anchor;
- the robustness study (:mod:`.robustness`): layer re-initialization, weight noise
  against (σ²/2) tr F, block sensitivity, and their rank agreement.
"""

from __future__ import annotations

from typing import Any

from .._errors import MemspaceError
from .capacity import CAPACITY_CONFIGS, capacity_study, cover_anchor, cover_probability, memorise
from .demo import run_demo
from .disentanglement import DISENTANGLEMENT_CONFIGS, disentanglement_study
from .measure import measure_network
from .robustness import ROBUSTNESS_CONFIGS, reinitialization, robustness_study, weight_noise

__all__ = ["CAPACITY_CONFIGS", "DISENTANGLEMENT_CONFIGS", "ROBUSTNESS_CONFIGS", "capacity_study",
           "disentanglement_study", "cover_anchor", "cover_probability",
           "measure_network", "memorise", "prepare_study", "reinitialization", "robustness_study", "run_demo",
           "run_study", "weight_noise"]

CONFIGS = {"capacity": CAPACITY_CONFIGS, "robustness": ROBUSTNESS_CONFIGS,
           "disentanglement": DISENTANGLEMENT_CONFIGS}


def prepare_study(name: str, size: str = "quick", data: str | None = None, **overrides: Any):
    """A study's configuration (``"quick"`` or ``"full"``, with overrides) and its data, checked before any work.

    Raises:
        MemspaceError: an unknown study, data the study cannot use, or a grid that cannot run.
    """
    from ..data import load_dataset

    if name not in CONFIGS:
        raise MemspaceError(f"unknown study {name!r}; choose {' or '.join(CONFIGS)}")
    config = {**CONFIGS[name][size], **({"data": data} if data else {}), **overrides}
    if name == "disentanglement":
        from ..disentanglement import DSpritesFile, DSpritesLike

        if config["data"] == "dsprites-like":
            return config, DSpritesLike()
        if not str(config["data"]).endswith(".npz"):
            raise MemspaceError(f"the disentanglement study runs on dsprites-like (generated) or a dSprites .npz "
                                f"file, not {config['data']!r}")
        return config, DSpritesFile(config["data"])
    split = load_dataset(config["data"], seed=0, limit=config.get("limit"))
    if name == "capacity":
        if len(split.input_shape) != 1 or not split.train[0].is_floating_point():
            raise MemspaceError(f"the capacity study trains residual MLPs on real vectors; {config['data']} has "
                                f"samples of shape {split.input_shape}")
        too_big = [n for n in config["sizes"] if n > len(split.train[0])]
        if too_big:
            raise MemspaceError(f"capacity grid: N = {too_big[0]} exceeds the {len(split.train[0])} training points "
                                f"of {config['data']}")
    else:
        from ..paths import check_architecture_fits

        check_architecture_fits(split)
        if config["epochs"] < max(config["taus"]):
            raise MemspaceError(f"robustness: checkpoint τ = {max(config['taus'])} is beyond the "
                                f"{config['epochs']} training epochs")
    return config, split


def run_study(name: str, run, config: dict[str, Any], split=None, **kwargs: Any) -> dict[str, Any]:
    """Run (or resume) the study ``name`` in the run folder ``run``; return its summary."""
    study = {"capacity": capacity_study, "robustness": robustness_study,
             "disentanglement": disentanglement_study}[name]
    return study(run, config, split=split, **kwargs)
