"""``ImageDataset``: every image of one split as one float32 tensor ``[N, C, H, W]`` in [-1, 1],
with int64 labels when the source has them."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Images as one float32 tensor ``[N, C, H, W]`` in ``[-1, 1]`` with optional int64 labels.

    Attributes: ``images``, ``labels`` (``None`` when the source has none), ``shape`` (C, H, W),
    ``name`` (the source name), ``split``, ``classes`` (class names by label, or ``None``).
    ``dataset[i]`` is ``(image [C, H, W], label)`` with label ``-1`` for unlabelled data, so the
    default DataLoader collation works for both.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, name: str,
                 split: str = "all", classes: Sequence[str] | None = None):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"{name}: images must be a 4-D tensor [N, C, H, W]; got "
                             f"{type(images).__name__} with shape {tuple(getattr(images, 'shape', ()))}")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"{name}: images must have 1 or 3 channels; got shape {tuple(images.shape)}")
        images = images.to(torch.float32).contiguous()
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
                raise ValueError(f"{name}: labels must be a 1-D tensor with one label per image "
                                 f"({images.shape[0]}); got shape {tuple(getattr(labels, 'shape', ()))}")
            labels = labels.to(torch.int64).contiguous()
        self.images = images
        self.labels = labels
        self.name = name
        self.split = split
        self.classes = tuple(classes) if classes is not None else None
        self.shape = tuple(int(s) for s in images.shape[1:])
        # One tensor of targets for __getitem__, so unlabelled data costs no branch per item.
        self._targets = labels if labels is not None else torch.full((images.shape[0],), -1, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index):
        return self.images[index], self._targets[index]

    def __repr__(self) -> str:
        nclass = "unlabelled" if self.labels is None else f"{int(self.labels.unique().numel())} classes"
        return f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, {nclass})"
