"""Splits and class filters shared by the sources.

Splits: ``"train"``, ``"test"`` or ``"all"``. Where the source has no split of its own, the split
is made here (``split_indices``), stratified by class when there are labels, deterministic given
``test_fraction`` and ``seed``. Class filters (``exclude_class`` / ``only_class``) are applied
*after* the split, so the held-out-class outlier protocol (train with ``exclude_class=k``, test on
the full test split) sees the same test images as a run without the filter.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SPLITS", "split_indices", "filter_classes"]

SPLITS = ("train", "test", "all")


def split_indices(n: int, labels: np.ndarray | None, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Indices of ``split`` in a deterministic train/test partition of ``n`` items.

    Stratified: each class is permuted with its own draw from one seeded generator and its first
    ``round(n_c * test_fraction)`` items go to test, so class proportions match in both parts
    (unlike sklearn's ``train_test_split(stratify=...)``, this also works when a class has a
    single member). Indices are returned sorted so the data keep their source order.
    """
    if split == "all":
        return np.arange(n)
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    test_parts, train_parts = [], []
    for idx in groups:
        perm = rng.permutation(idx)
        n_test = int(round(len(idx) * test_fraction))
        test_parts.append(perm[:n_test])
        train_parts.append(perm[n_test:])
    chosen = np.concatenate(test_parts if split == "test" else train_parts)
    return np.sort(chosen)


def filter_classes(name, images, labels, exclude_class, only_class):
    """Drop ``exclude_class`` or keep only ``only_class`` (after the split); ValueError when the
    source has no labels or the class does not occur."""
    if exclude_class is None and only_class is None:
        return images, labels
    if labels is None:
        raise ValueError(f"{name}: exclude_class/only_class need labels, but this source has none")
    present = np.unique(labels)
    wanted = exclude_class if exclude_class is not None else only_class
    if wanted not in present:
        # A class filter that matches nothing is almost always a typo; silently training on every
        # class would invalidate an outlier experiment.
        raise ValueError(f"{name}: class {wanted} not present in this split; classes present: "
                         f"{[int(c) for c in present]}")
    keep = labels != exclude_class if exclude_class is not None else labels == only_class
    return images[keep], labels[keep]
