"""Images with known generative factors.

DSprites' factor structure, generated here (docs/theory.md §5.4).

Five factors, sampled uniformly and independently, in dSprites' storage order (posY varies
fastest): shape 3 (square, ellipse, heart), scale 6 (linearly in [0.5, 1]), orientation 40
(in [0, 2π), no endpoint), posX 32 and posY 32 (in [0, 1]); 737,280 combinations, each one
image, rendered on demand and deterministically from its factor indices:

- the shape, centred at the origin with unit nominal size (a square of half-side 1, an
  ellipse with semi-axes 1 and 0.5, a heart from the curve x = 16 sin³t,
  y = 13 cos t − 5 cos 2t − 2 cos 3t − cos 4t scaled to unit size), scaled by s·10 pixels,
  rotated by θ, moved to (12 + 40·x, 12 + 40·y);
- rasterised on 64×64 pixels with 4×4 supersampling, thresholded at ½ coverage: uint8 0/1.

The real dSprites ``.npz`` (``imgs`` and ``latents_classes``) gives the same semantics
through :func:`load_dsprites_npz`. Symmetries: the square is identifiable only modulo π/2,
the ellipse modulo π; every metric still treats orientation as 40 classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._errors import DataError
from .._npz import load_npz

__all__ = ["DSpritesFile", "DSpritesLike", "FACTOR_NAMES", "load_dsprites_npz"]

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")


def _heart_polygon(points: int = 200) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    poly = np.stack([x, y], 1)
    poly -= poly.mean(0)
    return poly / np.abs(poly).max()


def _inside_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule for points (px, py) against a closed polygon [V, 2]."""
    inside = np.zeros(px.shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        crosses = ((b > py) != (d > py)) & (px < (c - a) * (py - b) / (d - b + 1e-300) + a)
        inside ^= crosses
    return inside


class _FactorGrid:
    """Factor vectors of a complete grid of sizes ``factor_sizes``.

    In storage order (last factor fastest).
    """

    factor_sizes: tuple[int, ...]

    def _set_sizes(self, sizes: tuple[int, ...]) -> None:
        self.factor_sizes = tuple(sizes)
        self.num_images = int(np.prod(self.factor_sizes))
        self._bases = np.array(
            [int(np.prod(self.factor_sizes[i + 1 :])) for i in range(len(sizes))]
        )

    def sample_factors(
        self, n: int, rng: np.random.RandomState | np.random.Generator
    ) -> np.ndarray:
        """N factor vectors, each factor uniform over its classes [n, 5] int64."""
        if isinstance(rng, np.random.RandomState):
            return np.stack([rng.randint(size, size=n) for size in self.factor_sizes], 1).astype(
                np.int64
            )
        return np.stack([rng.integers(size, size=n) for size in self.factor_sizes], 1).astype(
            np.int64
        )

    def factors_to_index(self, factors: np.ndarray) -> np.ndarray:
        """Flat indices in storage order (posY fastest) [n]."""
        factors = self._check(factors)
        return factors @ self._bases

    def index_to_factors(self, index: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`factors_to_index` [n, 5]."""
        index = np.asarray(index, dtype=np.int64)
        if (index < 0).any() or (index >= self.num_images).any():
            raise DataError(f"image indices must lie in 0..{self.num_images - 1}")
        return np.stack([(index // b) % size for b, size in zip(self._bases, self.factor_sizes)], 1)

    def _check(self, factors: np.ndarray) -> np.ndarray:
        factors = np.asarray(factors)
        if (
            factors.ndim != 2
            or factors.shape[1] != 5
            or not np.issubdtype(factors.dtype, np.integer)
        ):
            raise DataError(
                f"factors must be integer class indices [n, 5], got {factors.dtype} {factors.shape}"
            )
        if (factors < 0).any() or (factors >= np.array(self.factor_sizes)).any():
            raise DataError(f"factor indices out of range for sizes {self.factor_sizes}")
        return factors.astype(np.int64)


class DSpritesLike(_FactorGrid):
    """The procedural dSprites-structured data set (module doc).

    Attributes:
        factor_sizes: (3, 6, 40, 32, 32).
        num_images: 737,280.
    """

    def __init__(self, supersample: int = 4):
        self._set_sizes((3, 6, 40, 32, 32))
        self.supersample = supersample
        self._heart = _heart_polygon()
        s = supersample
        grid = (np.arange(64 * s) + 0.5) / s
        # Pixel coordinates of the subsamples [64s, 64s]
        self._gx, self._gy = np.meshgrid(grid, grid)

    def render(self, factors: np.ndarray) -> np.ndarray:
        """Binary images of the given factor vectors [n, 1, 64, 64] uint8 (deterministic).

        Each shape is rasterised only on the pixels of its bounding box: every shape lies
        within 1.05·√2·size of its centre (the square's corners at √2·size, the heart inside
        its 1.05 box), so the pixels outside are 0 on the full grid too, and every subsample
        inside takes the same elementwise arithmetic as on the full grid: the same image.
        """
        factors = self._check(factors)
        images = np.zeros((len(factors), 1, 64, 64), dtype=np.uint8)
        s = self.supersample
        for n, (shape, scale, orientation, px, py) in enumerate(factors):
            size = (0.5 + 0.5 * scale / 5) * 10.0
            theta = 2 * np.pi * orientation / 40
            cx, cy = 12 + 40 * px / 31, 12 + 40 * py / 31
            reach = 1.05 * math.sqrt(2) * size + 1
            cols = slice(max(0, math.floor(cx - reach)), min(64, math.ceil(cx + reach)))
            rows = slice(max(0, math.floor(cy - reach)), min(64, math.ceil(cy + reach)))
            box = (slice(rows.start * s, rows.stop * s), slice(cols.start * s, cols.stop * s))
            dx, dy = self._gx[box] - cx, self._gy[box] - cy
            # Rotate the grid back into the shape's frame
            u = (np.cos(theta) * dx + np.sin(theta) * dy) / size
            v = (-np.sin(theta) * dx + np.cos(theta) * dy) / size
            if shape == 0:
                mask = (np.abs(u) <= 1) & (np.abs(v) <= 1)
            elif shape == 1:
                mask = u**2 + (v / 0.5) ** 2 <= 1
            else:
                near = (np.abs(u) <= 1.05) & (np.abs(v) <= 1.05)
                mask = np.zeros_like(near)
                mask[near] = _inside_polygon(u[near], -v[near], self._heart)
            height, width = rows.stop - rows.start, cols.stop - cols.start
            coverage = mask.reshape(height, s, width, s).mean(axis=(1, 3))
            images[n, 0, rows, cols] = coverage >= 0.5
        return images


def load_dsprites_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The real dSprites file: (images [N, 1, 64, 64] uint8, factors [N, 5] int64, colour dropped).

    Raises:
        DataError: a missing file, or one without ``imgs`` and ``latents_classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dSprites file {path} does not exist")
    data = load_npz(path, "dSprites file", names=("imgs", "latents_classes"))
    if not {"imgs", "latents_classes"} <= data.keys():
        raise DataError(
            f"{path} is not the dSprites .npz (needs imgs and latents_classes; it has "
            f"{', '.join(sorted(data)) or 'neither'})"
        )
    images, classes = data["imgs"], data["latents_classes"]
    if (
        images.ndim != 3
        or classes.ndim != 2
        or classes.shape[1] != 6
        or len(classes) != len(images)
    ):
        raise DataError(
            f"{path}: latents_classes must be [N, 6] beside imgs [N, 64, 64]; they are "
            f"{list(classes.shape)} and {list(images.shape)}"
        )
    if not np.issubdtype(classes.dtype, np.integer) or not (
        np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_
    ):
        raise DataError(
            f"{path}: imgs and latents_classes must hold integers ({images.dtype}, {classes.dtype})"
        )
    return images[:, None].astype(np.uint8), classes[:, 1:].astype(np.int64)


class DSpritesFile(_FactorGrid):
    """A stored data set with a complete factorial grid (the real dSprites ``.npz``).

    Behind :class:`DSpritesLike`'s interface: ``factor_sizes``, ``sample_factors``,
    ``factors_to_index``, ``index_to_factors`` and ``render`` (which looks the images up instead of
    drawing them).

    Every combination of factor classes must occur exactly once (dSprites: 737,280 images, about
    3 GB as uint8 in memory), so sampling factors uniformly samples images uniformly, as in the
    generated set. Images must be 64×64 binary.

    Raises:
        DataError: a file :func:`load_dsprites_npz` refuses, images that are not 64×64 or not 0/1,
            or factors that are not a complete grid (naming the first missing or repeated one).
    """

    def __init__(self, path: str | Path):
        images, factors = load_dsprites_npz(path)
        if images.shape[1:] != (1, 64, 64):
            raise DataError(f"{path}: images must be 64×64, got {images.shape[2:]}")
        if images.max(initial=0) > 1:
            raise DataError(f"{path}: images must be binary (0/1), found the value {images.max()}")
        if (factors < 0).any():
            raise DataError(f"{path}: latents_classes holds negative class indices")
        sizes = tuple(int(m) + 1 for m in factors.max(0))
        # Bounded before the index arrays below
        if math.prod(sizes) > max(4 * len(factors), 1 << 16):
            raise DataError(
                f"{path}: the factors are not a complete grid: {len(factors)} images for "
                f"{math.prod(sizes)} combinations of sizes {sizes}"
            )
        self._set_sizes(sizes)
        index = factors @ self._bases
        order = np.full(self.num_images, -1, dtype=np.int64)
        order[index] = np.arange(len(index))
        counts = np.bincount(index, minlength=self.num_images)
        if len(index) != self.num_images or (counts != 1).any():
            bad = int(np.nonzero(counts != 1)[0][0])
            what = "missing" if counts[bad] == 0 else "repeated"
            raise DataError(
                f"{path}: the factors are not a complete grid of sizes {self.factor_sizes}: "
                f"combination {self.index_to_factors(np.array([bad]))[0].tolist()} is {what}"
            )
        self.path = str(path)
        self._images, self._order = images, order

    def render(self, factors: np.ndarray) -> np.ndarray:
        """The stored images of the given factor vectors [n, 1, 64, 64] uint8."""
        return self._images[self._order[self.factors_to_index(factors)]]
