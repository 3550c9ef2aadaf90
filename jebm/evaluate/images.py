"""Image grids for samples, reconstructions and hierarchical-sampling figures.

Images come in the model's convention, ``[N, C, H, W]`` in ``[-1, 1]`` with C = 1 or 3. Grids are
tiled with ``skimage.util.montage`` and written as PNG with PIL. Tiny images (the 8x8 digits) are
enlarged by an integer factor with nearest neighbour, so every pixel stays a crisp square and
the grid can be read on screen. Files are written atomically (``jebm.atomic``) so a run killed
mid-write never leaves a half PNG where a previous grid was.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import atomic_write

__all__ = ["to_uint8", "save_grid", "save_rows", "MIN_TILE", "PADDING", "FILL"]

MIN_TILE = 32   # tiles smaller than this (on their short side) are enlarged to at least this size
PADDING = 2     # pixels of FILL between tiles and around the grid
FILL = 255      # white separators: dark digit backgrounds stay distinguishable from the gaps


def to_uint8(images) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] (tensor or array) -> ``[N, H, W, C]`` uint8 (-1 -> 0, 1 -> 255).

    Values slightly outside [-1, 1] (a generator's output is not clamped) are clipped; NaN or
    infinite values raise, since they mean a diverged model and would otherwise show as black.
    """
    if isinstance(images, torch.Tensor):
        arr = images.detach().to("cpu", torch.float32).numpy()
    elif isinstance(images, np.ndarray):
        if images.dtype.kind not in "iuf":
            raise ValueError(f"images must be a real-valued array; got dtype {images.dtype}")
        arr = images.astype(np.float32)
    else:
        raise ValueError(f"images must be a torch.Tensor or numpy array [N, C, H, W]; got {type(images).__name__}")
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, C, H, W] with C in (1, 3); got {tuple(arr.shape)}")
    if arr.shape[2] == 0 or arr.shape[3] == 0:
        raise ValueError(f"images have an empty spatial size: {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"images contain {bad} NaN or infinite values (of {arr.size})")
    out = np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def _upscale_factor(h: int, w: int) -> int:
    return max(1, math.ceil(MIN_TILE / min(h, w)))


def _enlarge(tiles: np.ndarray) -> np.ndarray:
    """Nearest-neighbour enlargement of [N, H, W, C] tiles by the integer factor for their size."""
    k = _upscale_factor(tiles.shape[1], tiles.shape[2])
    if k == 1:
        return tiles
    return tiles.repeat(k, axis=1).repeat(k, axis=2)


def _write_png(grid: np.ndarray, path) -> Path:
    """Write an [H, W, C] uint8 grid as PNG at ``path``, atomically, creating parent folders."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"grid path must end in .png (the file is written as PNG); got {path}")
    # uint8 [H, W] gives mode L, uint8 [H, W, 3] gives RGB; no mode argument (deprecated in Pillow 11.3)
    img = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def _montage(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tile [K, h, w, C] uint8 (K <= rows * cols) into one [H, W, C] grid with FILL padding."""
    from skimage.util import montage

    c = tiles.shape[3]
    grid = montage(tiles, grid_shape=(rows, cols), padding_width=PADDING, fill=(FILL,) * c, channel_axis=-1)
    return grid.astype(np.uint8)


def save_grid(images, path, nrow: int | None = None) -> Path:
    """Write ``images`` ``[N, C, H, W]`` in [-1, 1] as one PNG grid; returns the path.

    ``nrow`` is the number of images per grid row (as in torchvision's ``make_grid``); default
    ``ceil(sqrt(N))``, a near-square grid. Empty cells of the last row are left blank.
    """
    tiles = to_uint8(images)
    n = tiles.shape[0]
    if n == 0:
        raise ValueError("save_grid: no images to write (N = 0)")
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"save_grid: nrow must be a positive int (images per row); got {nrow!r}")
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)
    return _write_png(_montage(_enlarge(tiles), rows, cols), path)


def save_rows(rows: Sequence, path) -> Path:
    """Write one grid row per entry of ``rows`` (each ``[n_i, C, H, W]`` in [-1, 1]); returns the path.

    Made for hierarchical sampling figures: row l shows samples with only layer l resampled.
    Rows shorter than the longest are padded with blank cells on the right, so columns line up.
    """
    if isinstance(rows, (torch.Tensor, np.ndarray)) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise ValueError("save_rows: rows must be a non-empty list of [n_i, C, H, W] tensors")
    converted = []
    for i, r in enumerate(rows):
        try:
            converted.append(to_uint8(r))
        except ValueError as exc:
            raise ValueError(f"save_rows: row {i}: {exc}") from exc
    shapes = {t.shape[1:] for t in converted}
    if len(shapes) > 1:
        raise ValueError(f"save_rows: every row needs the same image shape [H, W, C]; got "
                         f"{[tuple(t.shape[1:]) for t in converted]}")
    cols = max(t.shape[0] for t in converted)
    if cols == 0:
        raise ValueError("save_rows: every row is empty; nothing to write")
    h, w, c = converted[0].shape[1:]
    blank = np.full((1, h, w, c), FILL, dtype=np.uint8)
    padded = [np.concatenate([t] + [blank] * (cols - t.shape[0])) for t in converted]
    tiles = np.concatenate(padded)
    return _write_png(_montage(_enlarge(tiles), len(rows), cols), path)
