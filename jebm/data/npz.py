"""``"npz"``: a ``.npz`` file of image arrays.

``root`` is a ``.npz`` file holding either ``x_train``/``x_test`` (with ``y_train``/``y_test``
when labelled) or ``images`` (with ``labels`` when labelled), in which case the split is made
here (``jebm.data.splits``). Layout rule, see :func:`_to_nchw`: 3-D arrays are ``[N, H, W]`` (one
channel); 4-D arrays are channels-last ``[N, H, W, C]`` when only the last axis has size 1 or 3,
channels-first ``[N, C, H, W]`` when only axis 1 does, and when both do (e.g. ``[N, 3, 3, 3]``)
uint8 arrays are taken as channels-last (the CIFAR-10 / SVHN convention) and every other dtype as
channels-first (the torch convention). Value rule, see :func:`_scale_to_unit`: integer arrays are
0..255; float arrays with a negative value are already in [-1, 1], otherwise in [0, 1] when their
maximum is at most 1, otherwise 0..255. Arrays are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .splits import split_indices

__all__ = ["load"]


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Put an image array into [N, C, H, W] by the layout rule in the module docstring."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim != 4:
        raise ValueError(f"{where} has shape {x.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W] "
                         "with C in (1, 3)")
    last, first = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
    if not (last or first):
        raise ValueError(f"{where} has shape {x.shape}: neither axis 1 nor axis 3 has 1 or 3 channels; "
                         f"expected [N, H, W, C] or [N, C, H, W] with C in (1, 3)")
    channels_last = last and (not first or x.dtype == np.uint8)
    return np.transpose(x, (0, 3, 1, 2)) if channels_last else x


def _scale_to_unit(x: np.ndarray, where: str) -> np.ndarray:
    """Map pixel values to [-1, 1] by the value rule in the module docstring."""
    if x.dtype.kind == "b" or x.dtype.kind not in "iuf":
        raise ValueError(f"{where} has dtype {x.dtype}; expected an integer or float image array")
    if x.size == 0:
        return x.astype(np.float32)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{where} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if x.dtype.kind in "iu":
        if lo < 0 or hi > 255:
            raise ValueError(f"{where}: integer pixels must be 0..255; found {lo:g}..{hi:g}")
        return x.astype(np.float32) / 127.5 - 1.0
    if lo < 0:
        if lo < -1 or hi > 1:
            raise ValueError(f"{where}: float pixels with negative values must lie in [-1, 1]; found {lo:g}..{hi:g}")
        return x.astype(np.float32)
    if hi <= 1:
        return x.astype(np.float32) * 2.0 - 1.0
    if hi <= 255:
        return x.astype(np.float32) / 127.5 - 1.0
    raise ValueError(f"{where}: float pixels must lie in [-1, 1], [0, 1] or [0, 255]; found {lo:g}..{hi:g}")


def _npz_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    # SVHN-style label arrays come as [N, 1]; anything else that is not one integer per image is an error.
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"{where} has shape {y.shape} and dtype {y.dtype}; expected 1-D integer labels")
    if y.shape[0] != n:
        raise ValueError(f"{where}: label count {y.shape[0]} != image count {n}")
    return y.astype(np.int64)


def load(root, split, test_fraction, seed):
    """(images, labels or None, None): the arrays of the ``.npz`` file ``root``."""
    if root is None:
        raise ValueError("npz: root must be the path of a .npz file")
    path = Path(root)
    if not path.is_file():
        raise ValueError(f"npz: expected a .npz file at {path}; "
                         f"{'it is a folder' if path.is_dir() else 'it does not exist'}")
    try:
        # allow_pickle=False: a data file must never be able to run code.
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"npz: cannot read {path} as a .npz archive: {exc}") from exc
    if not hasattr(loaded, "files"):  # np.load gives a bare ndarray for a .npy file
        raise ValueError(f"npz: {path} is a single .npy array, not a .npz archive of named arrays")
    try:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # Object arrays (refused without pickle) or a damaged member.
        raise ValueError(f"npz: cannot read the arrays in {path}: {exc}") from exc

    keys = sorted(arrays)
    expected_msg = (f"npz: {path} has arrays [{', '.join(keys)}]; expected x_train/y_train/x_test/y_test "
                    f"(y_* optional) or images/labels (labels optional)")
    if "x_train" in arrays or "x_test" in arrays:
        prefixes = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[split]
        parts = []
        for p in prefixes:
            if f"x_{p}" not in arrays:
                raise ValueError(f"npz: {path} has no x_{p} for split {split!r}; arrays: [{', '.join(keys)}]")
            x = _to_nchw(arrays[f"x_{p}"], f"npz: {path}[x_{p}]")
            y = arrays.get(f"y_{p}")
            parts.append((x, None if y is None else _npz_labels(y, x.shape[0], f"npz: {path}[y_{p}]")))
        if len({x.shape[1:] for x, _ in parts}) > 1:
            raise ValueError(f"npz: {path}: x_train and x_test differ in image shape: "
                             f"{[x.shape[1:] for x, _ in parts]}")
        if len({y is None for _, y in parts}) > 1:
            raise ValueError(f"npz: {path}: one of x_train/x_test has labels (y_*) and the other has none")
        x = np.concatenate([x for x, _ in parts])
        y = None if parts[0][1] is None else np.concatenate([y for _, y in parts])
        return _scale_to_unit(x, f"npz: {path}[x_*]"), y, None
    if "images" in arrays:
        x = _to_nchw(arrays["images"], f"npz: {path}[images]")
        y = arrays.get("labels")
        y = None if y is None else _npz_labels(y, x.shape[0], f"npz: {path}[labels]")
        idx = split_indices(x.shape[0], y, split, test_fraction, seed)
        return _scale_to_unit(x[idx], f"npz: {path}[images]"), None if y is None else y[idx], None
    raise ValueError(expected_msg)
