"""A residual network as a path of near-identity maps (docs/theory.md §3)."""

from .adapter import ResidualPath, StreamCapture, resolve_head
from .hf import LensAdapter, lens_adapter
from .lens import LensPath, lens_path, unigram_prior
from .models import (
    ResidualBlock,
    ResidualCNN,
    ResidualMLP,
    ResidualPathModel,
    build_model,
    check_architecture_fits,
)
from .modular import (
    FourierSpectrum,
    ModularMLP,
    ModularTransformer,
    embedding_matrix,
    fourier_concentration,
    fourier_spectrum,
)
from .predictive import (
    PredictivePath,
    fisher_rao_distance,
    predictive_action,
    predictive_path,
    readout_path,
    squared_fisher_rao_distance,
)
from .sensitivity import BlockSensitivity, block_sensitivity

__all__ = [
    # models
    "ResidualBlock",
    "ResidualPathModel",
    "ResidualMLP",
    "ResidualCNN",
    "build_model",
    "check_architecture_fits",
    # modular arithmetic (grokking) and the Fourier structure of its embeddings
    "ModularTransformer",
    "ModularMLP",
    "FourierSpectrum",
    "embedding_matrix",
    "fourier_spectrum",
    "fourier_concentration",
    # any model
    "ResidualPath",
    "StreamCapture",
    "resolve_head",
    # the predictive path and its exact least action
    "PredictivePath",
    # the logit lens of a language model as a predictive path, per token
    "LensAdapter",
    "LensPath",
    "lens_adapter",
    "lens_path",
    "unigram_prior",
    "predictive_path",
    "predictive_action",
    "readout_path",
    "fisher_rao_distance",
    "squared_fisher_rao_distance",
    # a robustness diagnostic
    "BlockSensitivity",
    "block_sensitivity",
]
