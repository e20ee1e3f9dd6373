"""The README's Python code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["reach"].ratio_trained >= namespace["reach"].ratio_straightened >= 1 - 1e-9
    assert namespace["path"].ratio >= 1
    assert (tmp_path / ".cache" / "tour-run-predictive" / "epoch-0002.safetensors").exists()
