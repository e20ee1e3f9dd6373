"""disent's metric functions.

Loaded file by file so that its heavy framework imports are not needed.

disent (a PyTorch disentanglement framework) is installed with ``pip install --no-deps``; its
package ``__init__`` pulls in lightning, h5py and its data pipeline, none of which the pure
metric functions use. Returns None when disent is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def load_disent_metrics():
    spec = importlib.util.find_spec("disent")
    if spec is None or spec.submodule_search_locations is None:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {k: v for k, v in sys.modules.items() if k == "disent" or k.startswith("disent.")}
    try:
        package = types.ModuleType("disent")
        package.__path__ = [str(root)]
        metrics = types.ModuleType("disent.metrics")
        metrics.__path__ = [str(root / "metrics")]
        dataset = types.ModuleType("disent.dataset")
        dataset.DisentDataset = object
        sys.modules.update(
            {"disent": package, "disent.metrics": metrics, "disent.dataset": dataset}
        )
        loaded = {}
        for name in ("utils", "_mig", "_dci", "_sap", "_factor_vae"):
            module_spec = importlib.util.spec_from_file_location(
                f"disent.metrics.{name}", root / "metrics" / f"{name}.py"
            )
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[f"disent.metrics.{name}"] = module
            setattr(metrics, name, module)
            module_spec.loader.exec_module(module)
            loaded[name] = module
        return loaded
    finally:
        for key in [k for k in sys.modules if k == "disent" or k.startswith("disent.")]:
            del sys.modules[key]
        sys.modules.update(saved)
