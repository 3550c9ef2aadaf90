"""The registry of data sources, and ``load_dataset``, the one entry point that reads any of them.

``SOURCES`` maps a data set name to its loader, ``load(root, split, test_fraction, seed) ->
(images, labels, classes)``: images a float32 array ``[N, C, H, W]`` in [-1, 1], labels an int64
array or None, class names or None (one module per source in this package). ``load_dataset`` checks
the arguments, calls the loader, applies the class filter and wraps the result in an
``ImageDataset``. Adding a data set: a module with its ``load`` and one entry in ``SOURCES``.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from . import digits, folder, idx, mnist5k, npz
from .dataset import ImageDataset
from .splits import SPLITS, filter_classes, split_indices

__all__ = ["SOURCES", "DATASETS", "load_dataset", "VALIDATION_FRACTION"]

# The share of the train split that ``load_dataset(..., validation="val")`` holds out.
VALIDATION_FRACTION = 0.2

SOURCES = {
    "digits": digits.load,
    "mnist": idx.load_mnist,
    "fashion-mnist": idx.load_fashion_mnist,
    "npz": npz.load,
    "folder": folder.load,
    "mnist5k": mnist5k.load,
}
DATASETS = tuple(SOURCES)


def load_dataset(name: str = "digits", root: str | os.PathLike | None = None, *, split: str = "train",
                 exclude_class: int | None = None, only_class: int | None = None,
                 test_fraction: float = 0.2, seed: int = 0, validation: str | None = None) -> ImageDataset:
    """Load one split of an image data set, scaled to [-1, 1]; see the module docstring for sources.

    ``exclude_class`` drops one class (held-out-class outlier protocol), ``only_class`` keeps one.
    ``test_fraction`` and ``seed`` fix the split of sources that have none of their own.
    ``validation`` splits the train split once more, so settings can be chosen without looking at
    the test split: ``"val"`` is a stratified ``VALIDATION_FRACTION`` of it, ``"fit"`` the rest
    (``split`` must be "train"; ``splits.split_indices`` with ``seed + 1``).
    """
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    name = name.lower()
    if split not in SPLITS:
        raise ValueError(f"{name}: unsupported split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"{name}: test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}")
    if exclude_class is not None and only_class is not None:
        raise ValueError(f"{name}: give exclude_class or only_class, not both "
                         f"(got exclude_class={exclude_class}, only_class={only_class})")
    for arg, value in (("exclude_class", exclude_class), ("only_class", only_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"{name}: {arg} must be an int class label; got {value!r}")

    if validation is not None:
        if validation not in ("fit", "val"):
            raise ValueError(f"{name}: validation must be None, 'fit' or 'val'; got {validation!r}")
        if split != "train":
            raise ValueError(f"{name}: validation={validation!r} splits the train split; got split={split!r}")

    images, labels, classes = SOURCES[name](root, split, test_fraction, seed)
    if validation is not None:
        part = split_indices(images.shape[0], labels, "test" if validation == "val" else "train",
                             VALIDATION_FRACTION, seed + 1)
        images, labels = images[part], None if labels is None else labels[part]
    images, labels = filter_classes(name, images, labels, exclude_class, only_class)
    if images.shape[0] == 0:
        raise ValueError(f"{name}: split {split!r} has no images")
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
                        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
                        name, split, classes)
