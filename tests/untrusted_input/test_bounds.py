"""Untrusted files stay within stated bounds: a few hundred bytes can never cost gigabytes.

Each hostile file is opened in a fresh process whose address space is capped
(``resource.setrlimit(RLIMIT_AS)``) at what memspace has mapped after its imports plus
:data:`HEADROOM`: the refusal must come as a one-line :class:`MemspaceError` naming the bound,
inside the cap. Without the bounds these inputs grow to tens of gigabytes (the label check of
``[0, 1, 10**12]``, an alias bomb in a grid, a deflate bomb in an ``.npz``) and the capped
process dies with a MemoryError instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from memspace import MemspaceError
from memspace._npz import load_npz

HEADROOM = 512 * 2**20

CAPPED = """
import json, resource, sys
# imports first: the cap is on top of them
import memspace.data, memspace.zoo, memspace.disentanglement
from memspace import MemspaceError
size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, size + {headroom}))
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "data":
        memspace.data.load_dataset(path)
    elif kind == "grid":
        memspace.zoo.expand(memspace.zoo.load_grid(path))
    elif kind == "dsprites":
        memspace.disentanglement.data.DSpritesFile(path)
    print(json.dumps({{"outcome": "accepted"}}))
except MemspaceError as error:
    print(json.dumps({{"outcome": "refused", "message": str(error)}}))
except MemoryError:
    print(json.dumps({{"outcome": "out of memory"}}))
"""


def capped(kind: str, path: Path, **env: str) -> dict:
    import os

    result = subprocess.run(
        [sys.executable, "-c", CAPPED.format(headroom=HEADROOM), kind, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def npy_member(
    archive: zipfile.ZipFile,
    name: str,
    header_shape: tuple,
    dtype: str,
    data: bytes,
    compress: bool = True,
) -> None:
    """An ``.npy`` member whose header claims ``header_shape`` (whatever ``data`` holds)."""
    header = {"descr": dtype, "fortran_order": False, "shape": header_shape}
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    blob = (
        b"\x93NUMPY\x01\x00"
        + (len(text) + pad + 1).to_bytes(2, "little")
        + text
        + b" " * pad
        + b"\n"
        + data
    )
    archive.writestr(
        name + ".npy", blob, compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    )


def test_a_label_of_10_to_the_12_is_refused_in_linear_memory(tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, X=np.zeros((3, 2)), y=np.array([0, 1, 10**12]))
    assert path.stat().st_size < 1000
    outcome = capped("data", path)
    assert (
        outcome["outcome"] == "refused"
        and "over the bound of 1048576 classes" in outcome["message"]
    )


def test_a_deflate_bomb_is_refused_before_it_inflates(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        npy_member(archive, "y", (1000,), "<i8", np.arange(1000).astype("<i8").tobytes())
        with archive.open("X.npy", "w", force_zip64=True) as member:  # 1 GiB of zeros in about 5 MB
            text = repr({"descr": "<f8", "fortran_order": False, "shape": (1000, 2**17)}).encode()
            member.write(
                b"\x93NUMPY\x01\x00" + (117).to_bytes(2, "little") + text.ljust(116) + b"\n"
            )
            chunk = bytes(1 << 24)
            for _ in range(64):
                member.write(chunk)
    assert path.stat().st_size < 8 * 2**20
    # Below the cap's headroom: the default (4 GiB) is for machines with room
    budget = str(256 * 2**20)
    outcome = capped("data", path, MEMSPACE_MAX_NPZ_BYTES=budget)
    assert (
        outcome["outcome"] == "refused"
        and f"over the bound of {budget} bytes" in outcome["message"]
    ), outcome
    assert "MEMSPACE_MAX_NPZ_BYTES" in outcome["message"]


def test_a_header_that_claims_more_than_the_member_holds_is_refused(tmp_path):
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        npy_member(archive, "X", (10**6, 10**5), "<f8", b"\x00" * 64)
        npy_member(archive, "y", (2,), "<i8", np.arange(2).astype("<i8").tobytes())
    outcome = capped("data", path)
    assert outcome["outcome"] == "refused" and "shape (1000000, 100000)" in outcome["message"]


def test_the_budget_is_the_one_stated_and_can_be_raised(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, X=np.zeros((1000, 100)), y=np.arange(1000) % 2)
    with pytest.raises(MemspaceError, match="over the bound of 100000 bytes"):
        load_npz(path, max_bytes=100_000)
    assert load_npz(path, max_bytes=10**6)["X"].shape == (1000, 100)
    outcome = capped("data", path, MEMSPACE_MAX_NPZ_BYTES="50000")
    assert outcome["outcome"] == "refused" and "over the bound of 50000 bytes" in outcome["message"]


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "pickle.npz"
    with zipfile.ZipFile(path, "w") as archive:
        # A pickle would follow
        npy_member(archive, "X", (2,), "|O", b"\x80\x04\x95" + b"\x00" * 40)
    with pytest.raises(MemspaceError, match="holds Python objects"):
        load_npz(path)


def test_arrays_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.normal(size=(3, 4)),
        "b": np.asfortranarray(rng.normal(size=(5, 2))),
        "c": np.array(7),
        "d": np.array(["x", "yz"]),
        "e": rng.integers(0, 9, (2, 3)).astype(">i4"),
    }
    np.savez_compressed(tmp_path / "all.npz", **arrays)
    loaded = load_npz(tmp_path / "all.npz")
    assert loaded.keys() == arrays.keys()
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name


def test_an_alias_bomb_in_a_grid_is_refused(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ngrid:\n  lr: [0.01]\n")
    assert path.stat().st_size < 1000
    outcome = capped("grid", path)
    assert outcome["outcome"] == "refused" and "not allowed in a grid" in outcome["message"]


def test_a_grid_of_too_many_models_is_refused_before_expansion(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(
        "seeds: ["
        + ", ".join(map(str, range(100)))
        + "]\ngrid:\n"
        + "".join(
            f"  {name}: [{', '.join(['1'] * 20)}]\n" for name in ("width", "depth", "batch_size")
        )
    )
    outcome = capped("grid", path)
    assert outcome["outcome"] == "refused" and "800000 models" in outcome["message"]


def test_a_dsprites_file_claiming_a_vast_grid_is_refused(tmp_path):
    path = tmp_path / "dsprites.npz"
    classes = np.zeros((4, 6), np.int64)
    classes[:, 1:] = [[10**6] * 5] * 4  # a grid of 10^30 combinations from four images
    np.savez(path, imgs=np.zeros((4, 64, 64), np.uint8), latents_classes=classes)
    outcome = capped("dsprites", path)
    assert outcome["outcome"] == "refused" and "not a complete grid" in outcome["message"]
