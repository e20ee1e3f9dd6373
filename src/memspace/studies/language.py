"""``memspace measure --hf``: a local Hugging Face language model measured into a run folder.

Loads a model folder (``config.json`` and safetensors weights) with ``local_files_only`` and never
runs remote code, takes tokens from a text file (tokenised with the folder's tokenizer) or from an
``.npz`` of ``input_ids`` (and optionally ``attention_mask``), and measures

- the Fisher over (sequence, position) pairs (``positions="all"``, one sampled label per position:
  the vocabulary makes the exact columns too many), its trace per layer and in all, and the
  Fisher–Rao norm θᵀFθ;
- the logit lens as a predictive path per token (:func:`memspace.paths.lens_path`): length,
  action, exact least action and their ratio, the speed per layer, the agreement of each layer's
  lens with the model, the layer at which predictions settle, and a token × layer map of the
  path's steps for the first sequence;
- which layers took the fast path (``FisherOperator.plan()``).

Nothing is downloaded and nothing is unpickled: weights must be safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import DataError, MemspaceError, ModelError

__all__ = ["load_language_model", "load_tokens", "measure_hf", "measure_language_model"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MemspaceError(
            "--hf needs the optional extra transformers: pip install 'memspace[hf]'"
        ) from None
    return transformers


def load_language_model(folder: Path) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer or None) from a local Hugging Face folder.

    Raises:
        ModelError: no such folder, no ``config.json``, no safetensors weights, a config that asks
            for remote code (``auto_map``), or a model transformers cannot build from it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such folder (--hf takes a local Hugging Face model folder)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{folder}: no config.json, so not a Hugging Face model folder")
    try:
        config_dict = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{config_path}: not a readable JSON config ({error})") from None
    if not isinstance(config_dict, dict):
        raise ModelError(f"{config_path}: not a JSON object")
    if "auto_map" in config_dict:
        raise ModelError(
            f"{config_path} asks for remote code (auto_map); memspace never runs code from a "
            "model folder"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(
            f"{folder}: no safetensors weights ({' or '.join(WEIGHT_FILES)}); memspace does not "
            "unpickle .bin checkpoints"
        )
    transformers = _transformers()
    options = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True}
    model = None
    errors = []
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()  # the command line prints one line per fact, not tqdm bars
    logging.set_verbosity_error()
    try:
        for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForMaskedLM):
            try:
                model = auto.from_pretrained(folder, **options)
                break
            except (ValueError, OSError, KeyError) as error:
                errors.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
        if model is None:
            raise ModelError(f"{folder}: transformers cannot build a language model ({errors[0]})")
        tokenizer = None
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **options)
            except (ValueError, OSError, KeyError, TypeError):
                tokenizer = None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    return model.float().eval(), tokenizer


def load_tokens(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    text: Path | None = None,
    tokens: Path | None = None,
    max_length: int = 128,
    max_sequences: int = 16,
    note: Callable[[str], None] = lambda message: None,
) -> dict[str, torch.Tensor]:
    """A batch ``{"input_ids", "attention_mask"}`` [N, T] from a text or a token file.

    A text is tokenised as one stream and cut into windows of T = min(max_length, the model's
    context) tokens; what does not fit in ``max_sequences`` windows is left out, with a note. A
    token file holds ``input_ids`` [N, T] (integers below the vocabulary size) and optionally an
    ``attention_mask`` of the same shape; sequences longer than the context are refused.

    Raises:
        DataError: neither or both sources, a missing tokenizer for a text, an unreadable or
            malformed token file, ids outside the vocabulary, a mask of another shape.
    """
    if (text is None) == (tokens is None):
        raise DataError("give the tokens as --text FILE or --tokens FILE.npz (one of them)")
    context = int(getattr(model.config, "max_position_embeddings", None) or max_length)
    vocab = int(model.config.vocab_size)
    length = min(max_length, context)
    if text is not None:
        if tokenizer is None:
            raise DataError(
                f"--text {text}: the model folder has no tokenizer to tokenise it (give "
                "--tokens FILE.npz instead)"
            )
        try:
            content = Path(text).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"--text {text}: cannot read it as text ({error})") from None
        ids = tokenizer(content, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            raise DataError(f"--text {text}: fewer than 2 tokens")
        windows = [ids[i : i + length] for i in range(0, len(ids), length)][:max_sequences]
        if len(ids) > max_sequences * length:
            note(
                f"the text has {len(ids)} tokens; the first {max_sequences} windows of {length} "
                "are measured (--max-sequences, --max-length)"
            )
        input_ids = torch.zeros(len(windows), length, dtype=torch.long)
        mask = torch.zeros(len(windows), length, dtype=torch.long)
        for row, window in enumerate(windows):
            input_ids[row, : len(window)] = torch.tensor(window)
            mask[row, : len(window)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}
    try:
        with np.load(tokens, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(f"--tokens {tokens}: not a readable .npz of arrays ({error})") from None
    if "input_ids" not in arrays:
        raise DataError(f"--tokens {tokens}: no 'input_ids' array (it has {sorted(arrays)})")
    ids = arrays["input_ids"]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise DataError(
            f"--tokens {tokens}: input_ids must be integers [N, T], got {ids.dtype} {ids.shape}"
        )
    if ids.min() < 0 or ids.max() >= vocab:
        raise DataError(
            f"--tokens {tokens}: token ids span [{ids.min()}, {ids.max()}], outside the "
            f"vocabulary of {vocab}"
        )
    if ids.shape[1] > context:
        raise DataError(
            f"--tokens {tokens}: sequences of {ids.shape[1]} tokens, longer than the model's "
            f"context of {context}"
        )
    mask = arrays.get("attention_mask", np.ones_like(ids))
    if mask.shape != ids.shape:
        raise DataError(
            f"--tokens {tokens}: attention_mask has shape {mask.shape}, input_ids {ids.shape}"
        )
    if not mask.any():
        raise DataError(f"--tokens {tokens}: the attention mask keeps no position")
    if ids.shape[0] > max_sequences:
        note(f"the first {max_sequences} of {ids.shape[0]} sequences are measured")
    return {
        "input_ids": torch.from_numpy(ids[:max_sequences].astype(np.int64)),
        "attention_mask": torch.from_numpy((mask[:max_sequences] != 0).astype(np.int64)),
    }


def measure_language_model(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    tokenizer: Any = None,
    seed: int = 0,
    status: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Every measure of the module doc on one token batch, as a JSON-ready dict."""
    import warnings

    from .. import MemspaceWarning
    from ..fisher import FisherOperator
    from ..paths import lens_adapter, lens_path

    adapter = lens_adapter(model)
    F = FisherOperator(
        model, batch, positions="all", output="logits", kind="mc", seed=seed, batch_size=4
    )
    plan = F.plan()
    status(f"Fisher over {F.num_data} positions: {len(plan.tapped)} layers on the fast path")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemspaceWarning)
        diagonal = F.diag()
    theta = {n: t.detach() for n, t in F.space.tensors().items()}
    per_layer: dict[str, float] = {}
    for name, part in F.space.to_dict(diagonal).items():
        layer = name.rpartition(".")[0] or name
        per_layer[layer] = per_layer.get(layer, 0.0) + float(part.sum())
    fisher = {
        "kind": "mc, one label per position",
        "positions": int(F.num_data),
        "trace": float(diagonal.sum()),
        "fisher_rao_norm": float(F.quad(theta)),
        "trace_per_layer": per_layer,
        "parameters": int(F.space.numel),
    }
    status(f"tr F {fisher['trace']:.4g}, Fisher–Rao norm {fisher['fisher_rao_norm']:.4g}")
    lens = lens_path(model, batch, points=True, batch_size=4)
    first = lens.points["sequence"] == 0
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    labels = (
        [tokenizer.decode([i]) for i in ids] if tokenizer is not None else [str(i) for i in ids]
    )
    status(f"lens: A/A_min {lens.ratio:.3f}, settles at layer {lens.settle_layer:.2f}")
    return {
        "family": adapter.family,
        "blocks": adapter.block_names,
        "fisher": fisher,
        "lens": lens.as_dict(),
        "heatmap": {
            "tokens": labels,
            "steps": (lens.points["distances"][first] * (lens.depth + 1)).tolist(),
        },
        "plan": {"fast": plan.tapped, "exact": plan.exact, "jacobians": plan.jacobians},
    }


def measure_hf(
    folder: Path,
    *,
    text: Path | None = None,
    tokens: Path | None = None,
    max_length: int = 128,
    max_sequences: int = 16,
    out: Path = Path("runs/measure"),
    seed: int = 0,
    overwrite: bool = False,
    status: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, Any], Path]:
    """``memspace measure --hf``: measured into a run folder with metrics.json and a report."""
    from .._runs import RunFolder
    from ..report import render_report

    torch.manual_seed(seed)
    model, tokenizer = load_language_model(folder)
    batch = load_tokens(
        model,
        tokenizer,
        text=text,
        tokens=tokens,
        max_length=max_length,
        max_sequences=max_sequences,
        note=status,
    )
    source = str(text if text is not None else tokens)
    config = {
        "hf": str(folder),
        "tokens": source,
        "max_length": max_length,
        "max_sequences": max_sequences,
        "seed": seed,
    }
    with RunFolder.open(
        out, kind="measure", config=config, overwrite=overwrite, finished="metrics.json"
    ) as run:
        language = measure_language_model(
            model, batch, tokenizer=tokenizer, seed=seed, status=status
        )
        metrics = {
            "run": {"model": str(folder), "data": source, "seed": seed},
            "networks": {},
            "language": {"model": Path(folder).name, **language},
        }
        report = render_report(
            metrics, run.path("report.html"), title=f"memspace report: {Path(folder).name}"
        )
        run.write_json("metrics.json", metrics)
    return metrics, report
