"""``"mnist"``, ``"fashion-mnist"``: the raw IDX files.

``root`` is the folder holding the four raw IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each
optionally gzipped (``.gz``). The IDX format is parsed here with numpy and checked field by field
(``read_idx``), so a truncated download fails with a message instead of a reshape error.
"""
from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file (optionally gzipped, by the ``.gz`` suffix) into a native-endian array.

    Layout: 2 zero bytes, a type code byte, a byte with the number of dimensions, one big-endian
    uint32 per dimension, then the data, big-endian, row-major. Every field is checked, and the
    data must be exactly as long as the dimensions say: a short file is a truncated download, a
    long one is not the file we think it is.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as exc:  # gzip raises OSError/EOFError on bad data
        raise ValueError(f"idx: cannot read {path}: {exc}") from exc
    if len(raw) < 4:
        raise ValueError(f"idx: {path} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"idx: {path} has wrong magic number 0x{raw[:4].hex()}; expected 0x0000TTNN with type "
                         f"TT in {{{', '.join(f'{k:02x}' for k in _IDX_DTYPES)}}} and NN dimensions")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"idx: {path} has {ndim} dimensions (magic 0x{raw[:4].hex()}); expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"idx: {path} is truncated: header needs {header} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise ValueError(f"idx: {path} is {what}: dimensions {dims} need {expected} data bytes, found {actual}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(name: str, root: Path, stem: str) -> Path:
    # Some mirrors write "train-images.idx3-ubyte" (a dot instead of the hyphen); accept that too.
    variants = (stem, stem.replace("-idx", ".idx"))
    for v in variants:
        for candidate in (root / v, root / (v + ".gz")):
            if candidate.is_file():
                return candidate
    found = sorted(p.name for p in root.iterdir())
    # List what is there (the usual cause is a wrong folder or a differently named download),
    # but not thousands of names when root is some large unrelated folder.
    shown = found if len(found) <= 20 else found[:20] + [f"... {len(found) - 20} more"]
    raise ValueError(f"{name}: expected {stem}(.gz) in {root}; found: {shown if found else 'nothing (empty folder)'}")


def _load_idx_pair(name: str, root: Path, prefix: str):
    images_path = _find_idx(name, root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(name, root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.dtype != np.uint8:
        raise ValueError(f"{name}: {images_path} holds {images.dtype} data; expected unsigned bytes (type 0x08)")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name}: {labels_path} holds {labels.dtype} data; expected integer labels")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{name}: label count {labels.shape[0]} in {labels_path} != image count "
                         f"{images.shape[0]} in {images_path}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{name}: labels in {labels_path} must be 0..9; "
                         f"found {int(labels.min())}..{int(labels.max())}")
    return images, labels.astype(np.int64)


def _load_mnist(name, root, split):
    """(images, labels) of the IDX files in ``root``."""
    if root is None:
        raise ValueError(f"{name}: root must be the folder holding the raw IDX files "
                         f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                         f"t10k-labels-idx1-ubyte, optionally .gz); nothing is downloaded")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{name}: expected a folder holding the IDX files at {root}; "
                         f"{'it is a file' if root.exists() else 'it does not exist'}")
    prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    parts = [_load_idx_pair(name, root, p) for p in prefixes]
    if len({imgs.shape[1:] for imgs, _ in parts}) > 1:
        raise ValueError(f"{name}: train and test images in {root} differ in size: "
                         f"{[imgs.shape[1:] for imgs, _ in parts]}")
    images = np.concatenate([imgs for imgs, _ in parts])
    labels = np.concatenate([lbls for _, lbls in parts])
    return images[:, None, :, :].astype(np.float32) / 127.5 - 1.0, labels


def load_mnist(root, split, test_fraction, seed):
    """MNIST's (images, labels, class names); the split is the files' own."""
    images, labels = _load_mnist("mnist", root, split)
    return images, labels, tuple(str(i) for i in range(10))


def load_fashion_mnist(root, split, test_fraction, seed):
    """Fashion-MNIST's (images, labels, class names); the split is the files' own."""
    images, labels = _load_mnist("fashion-mnist", root, split)
    return images, labels, FASHION_MNIST_CLASSES
