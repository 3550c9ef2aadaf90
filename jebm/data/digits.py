"""``"digits"``: ``sklearn.datasets.load_digits``, 1797 grayscale 8x8 digits, values 0..16, read
from the copy bundled with scikit-learn (never downloaded). Small enough for tests and quick
experiments on a CPU; split here (``jebm.data.splits``)."""
from __future__ import annotations

import numpy as np

from .splits import split_indices

__all__ = ["load"]


def load(root, split, test_fraction, seed):
    """(images, labels, class names) of one split; ``root`` is not used (the data ship with sklearn)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()  # read from the copy bundled with scikit-learn; never downloads
    images = bunch.images.astype(np.float32)[:, None, :, :] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    labels = bunch.target.astype(np.int64)
    idx = split_indices(len(labels), labels, split, test_fraction, seed)
    return images[idx], labels[idx], tuple(str(i) for i in range(10))
