"""``memspace measure --hf``: a local Hugging Face folder measured end to end, and refused cleanly.

The folder is a tiny GPT-2 saved here with a word-level tokenizer; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_support import assert_clean_failure, run_cli

transformers = pytest.importorskip("transformers")
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "[UNK]", "[PAD]"]


def save_folder(path: Path, tokenizer: bool = True) -> Path:
    import tokenizers
    import torch

    config = transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=len(WORDS), n_positions=12,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)
    if tokenizer:
        model = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
        inner = tokenizers.Tokenizer(model)
        inner.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=inner, unk_token="[UNK]", pad_token="[PAD]"
        )
        fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_folder(tmp_path_factory.mktemp("hf") / "tiny-gpt2")


def test_a_text_is_measured_into_a_run_folder_with_a_report(folder, tmp_path):
    (tmp_path / "story.txt").write_text("the cat sat on the mat " * 6 + "a dog ran")
    done = run_cli(
        "measure", "--hf", str(folder), "--text", "story.txt", "--max-length", "8",
        "--max-sequences", "3", "--out", "run", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    language = json.loads(done.stdout)
    assert language["family"] == "gpt2" and language["fisher"]["positions"] == 24
    assert "the first 3 windows of 8" in done.stderr  # the text was longer: said, not hidden
    lens = language["lens"]
    assert lens["ratio"] >= 1 and len(lens["speeds"]) == 3 and lens["agreement"][-1] == 1.0
    assert language["heatmap"]["tokens"][:3] == ["the", "cat", "sat"]
    assert "transformer.h.0.attn.c_attn" in language["plan"]["fast"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["language"]["lens"] == lens
    page = (tmp_path / "run" / "report.html").read_text()
    assert "The logit lens as a predictive path" in page and "Where each token" in page


def test_a_token_file_is_measured_with_its_mask(folder, tmp_path):
    ids = np.array([[0, 1, 2, 3, 0, 4], [5, 6, 7, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask)
    done = run_cli(
        "measure", "--hf", str(folder), "--tokens", "tokens.npz", "--out", "run", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    language = json.loads(done.stdout)
    assert language["fisher"]["positions"] == 9 and language["lens"]["num_tokens"] == 9


def _remote(path: Path) -> Path:
    save_folder(path, tokenizer=False)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    return path


BAD = {
    "no folder": (lambda p, f: p / "missing", ["--text", "t.txt"], "no such folder"),
    "no config": (lambda p, f: p, ["--text", "t.txt"], "no config.json"),
    "remote code": (lambda p, f: _remote(p / "remote"), ["--text", "t.txt"], "remote code"),
    "no tokenizer": (
        lambda p, f: save_folder(p / "bare", tokenizer=False),
        ["--text", "t.txt"],
        "no tokenizer",
    ),
    "ids outside the vocabulary": (
        lambda p, f: f,
        ["--tokens", "big.npz"],
        "outside the vocabulary",
    ),
    "longer than the context": (
        lambda p, f: f,
        ["--tokens", "long.npz"],
        "longer than the model's context",
    ),
    "a mask of the wrong shape": (
        lambda p, f: f,
        ["--tokens", "mask.npz"],
        "attention_mask has shape",
    ),
    "every position masked": (
        lambda p, f: f,
        ["--tokens", "empty.npz"],
        "keeps no position",
    ),
    "with --model": (lambda p, f: f, ["--model", "x", "--text", "t.txt"], "alone"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folders_and_tokens_are_one_line_exit_2(case, tmp_path, folder):
    make, extra, message = BAD[case]
    target = make(tmp_path, folder)
    (tmp_path / "t.txt").write_text("the cat sat")
    np.savez(tmp_path / "big.npz", input_ids=np.array([[0, 99]]))
    np.savez(tmp_path / "long.npz", input_ids=np.zeros((1, 20), dtype=int))
    np.savez(
        tmp_path / "mask.npz", input_ids=np.zeros((2, 4), dtype=int), attention_mask=np.ones((2, 3))
    )
    np.savez(
        tmp_path / "empty.npz",
        input_ids=np.zeros((2, 4), dtype=int),
        attention_mask=np.zeros((2, 4)),
    )
    done = run_cli("measure", "--hf", str(target), *extra, "--out", "run", cwd=tmp_path)
    assert_clean_failure(done)
    assert message in done.stderr
    assert not (tmp_path / "run").exists()
