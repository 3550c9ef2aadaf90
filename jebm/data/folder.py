"""``"folder"``: a folder of image files.

``root`` is a folder of image files, either directly inside it (no labels) or in one subfolder per
class (labels = index of the subfolder name in sorted order). If ``root`` holds ``train`` and
``test`` subfolders, each is read that way and gives the split; otherwise the split is made here
(``jebm.data.splits``). Every image is converted to one mode (1-channel ``L`` when all images are
grayscale, else ``RGB``) and resized (bilinear) to the most common size among the files. Files
whose extension is not in ``IMAGE_EXTENSIONS`` are ignored.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .splits import split_indices

__all__ = ["load", "IMAGE_EXTENSIONS"]

# File extensions read as images by the "folder" source; anything else (README, .DS_Store, ...)
# is ignored so a data folder may carry notes beside the images.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm"})

_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _scan_folder(root: Path):
    """(files, labels or None, class names or None) for one folder, flat or one subfolder per class."""
    files = _image_files(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in subdirs if _image_files(d)]
    if files and class_dirs:
        # Loose images next to class folders would get no label; refuse instead of guessing.
        raise ValueError(f"folder: {root} holds both image files ({files[0].name}, ...) and class subfolders "
                         f"({', '.join(d.name for d in class_dirs)}); expected one or the other")
    if files:
        return files, None, None
    if not class_dirs:
        raise ValueError(f"folder: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root} "
                         f"or in its subfolders {[d.name for d in subdirs]}")
    all_files, labels = [], []
    for label, d in enumerate(class_dirs):
        fs = _image_files(d)
        all_files += fs
        labels += [label] * len(fs)
    return all_files, np.asarray(labels, dtype=np.int64), tuple(d.name for d in class_dirs)


def _read_images(files: list[Path]) -> np.ndarray:
    """Read files with PIL into [N, C, H, W] uint8, one mode and size for all (module docstring)."""
    from PIL import Image, UnidentifiedImageError

    loaded = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                loaded.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ValueError(f"folder: cannot read image {f}: {exc}") from exc
    gray = all(im.mode in _GRAY_MODES or (im.mode == "P" and _palette_is_gray(im)) for im in loaded)
    target_mode = "L" if gray else "RGB"
    size = Counter(im.size for im in loaded).most_common(1)[0][0]  # ties: the first seen (sorted order)
    out = np.empty((len(loaded), 1 if gray else 3, size[1], size[0]), dtype=np.uint8)
    for i, im in enumerate(loaded):
        im = _to_8bit(im)
        if im.mode != target_mode:
            im = im.convert(target_mode)
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        out[i] = a[None] if gray else a.transpose(2, 0, 1)
    return out


def _palette_is_gray(im) -> bool:
    pal = im.getpalette()
    if pal is None:
        return False
    rgb = np.asarray(pal, dtype=np.int64).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _to_8bit(im):
    """16-bit, 32-bit int and float grayscale images to 8-bit ``L``; PIL's own convert clips them."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float64)
        # 16-bit PNGs store 0..65535; 32-bit 'I' images seen in practice also hold 16-bit data.
        return Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8))  # uint8 2-D -> mode L
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"folder: float image {getattr(im, 'filename', '')} contains NaN or infinite values")
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(a * scale), 0, 255).astype(np.uint8))  # uint8 2-D -> mode L
    return im


def load(root, split, test_fraction, seed):
    """(images, labels or None, class names or None) of the image folder ``root``."""
    if root is None:
        raise ValueError("folder: root must be a folder of images (optionally one subfolder per class)")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder: expected a folder of images at {root}; "
                         f"{'it is a file' if root.exists() else 'it does not exist'}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        # The folder carries its own split; read the part(s) asked for, with one class list for both.
        names = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[split]
        scans = {p: _scan_folder(root / p) for p in ("train", "test")}
        class_sets = {p: s[2] for p, s in scans.items()}
        if (class_sets["train"] is None) != (class_sets["test"] is None):
            raise ValueError(f"folder: {root}/train and {root}/test must both have class subfolders or neither")
        classes = None
        if class_sets["train"] is not None:
            classes = tuple(sorted(set(class_sets["train"]) | set(class_sets["test"])))
        files, labels = [], []
        for p in names:
            fs, lbls, cls = scans[p]
            files += fs
            if classes is not None:
                # Relabel by the union of class names so train and test agree on label numbers.
                labels += [classes.index(cls[i]) for i in lbls]
        images = _read_images(files)
        y = np.asarray(labels, dtype=np.int64) if classes is not None else None
        return _from_uint8(images), y, classes
    files, labels, classes = _scan_folder(root)
    idx = split_indices(len(files), labels, split, test_fraction, seed)
    if len(idx) == 0:
        raise ValueError(f"folder: split {split!r} of {root} is empty ({len(files)} images, "
                         f"test_fraction={test_fraction})")
    images = _read_images([files[i] for i in idx])
    return _from_uint8(images), None if labels is None else labels[idx], classes


def _from_uint8(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 127.5 - 1.0
