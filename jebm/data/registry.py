"""Image data sets for training and evaluating JEBM models.

One entry point, :func:`load_dataset`, returns an :class:`ImageDataset`: every image as one
float32 tensor ``[N, C, H, W]`` scaled to ``[-1, 1]`` (the scale the papers' ``sigma_x = 0.3``
assumes), plus integer labels when the source has them. Nothing is ever downloaded: "digits"
ships with scikit-learn, every other source is read from a path the user gives.

Sources (``DATASETS``):

``"digits"``
    ``sklearn.datasets.load_digits``: 1797 grayscale 8x8 digits, values 0..16. Small enough for
    tests and quick experiments on a CPU.
``"mnist"``, ``"fashion-mnist"``
    ``root`` is the folder holding the four raw IDX files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each
    optionally gzipped (``.gz``). The IDX format is parsed here with numpy and checked field by
    field, so a truncated download fails with a message instead of a reshape error.
``"npz"``
    ``root`` is a ``.npz`` file holding either ``x_train``/``x_test`` (with ``y_train``/``y_test``
    when labelled) or ``images`` (with ``labels`` when labelled), in which case the split is made
    here. Layout rule, see :func:`_to_nchw`: 3-D arrays are ``[N, H, W]`` (one channel); 4-D arrays
    are channels-last ``[N, H, W, C]`` when only the last axis has size 1 or 3, channels-first
    ``[N, C, H, W]`` when only axis 1 does, and when both do (e.g. ``[N, 3, 3, 3]``) uint8 arrays are
    taken as channels-last (the CIFAR-10 / SVHN convention) and every other dtype as channels-first
    (the torch convention). Value rule, see :func:`_scale_to_unit`: integer arrays are 0..255; float
    arrays with a negative value are already in [-1, 1], otherwise in [0, 1] when their maximum is
    at most 1, otherwise 0..255.
``"folder"``
    ``root`` is a folder of image files, either directly inside it (no labels) or in one subfolder
    per class (labels = index of the subfolder name in sorted order). If ``root`` holds ``train``
    and ``test`` subfolders, each is read that way and gives the split; otherwise the split is made
    here. Every image is converted to one mode (1-channel ``L`` when all images are grayscale,
    else ``RGB``) and resized (bilinear) to the most common size among the files.

Splits: ``"train"``, ``"test"`` or ``"all"``. Where the source has no split of its own, the split
is made here, stratified by class when there are labels, deterministic given ``test_fraction`` and
``seed``. Class filters (``exclude_class`` / ``only_class``) are applied *after* the split, so the
held-out-class outlier protocol (train with ``exclude_class=k``, test on the full test split) sees
the same test images as a run without the filter.

Every missing or malformed input raises ``ValueError`` saying what was expected where.
"""
from __future__ import annotations

import gzip
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DATASETS", "SPLITS", "ImageDataset", "load_dataset", "read_idx"]

DATASETS = ("digits", "mnist", "fashion-mnist", "npz", "folder")
SPLITS = ("train", "test", "all")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# File extensions read as images by the "folder" source; anything else (README, .DS_Store, ...)
# is ignored so a data folder may carry notes beside the images.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm"})


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


def load_dataset(name: str = "digits", root: str | os.PathLike | None = None, *, split: str = "train",
                 exclude_class: int | None = None, only_class: int | None = None,
                 test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """Load one split of an image data set, scaled to [-1, 1]; see the module docstring for sources.

    ``exclude_class`` drops one class (held-out-class outlier protocol), ``only_class`` keeps one.
    ``test_fraction`` and ``seed`` fix the split of sources that have none of their own.
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

    if name == "digits":
        images, labels, classes = _load_digits(split, test_fraction, seed)
    elif name in ("mnist", "fashion-mnist"):
        images, labels = _load_mnist(name, root, split)
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    elif name == "npz":
        images, labels = _load_npz(root, split, test_fraction, seed)
        classes = None
    else:
        images, labels, classes = _load_folder(root, split, test_fraction, seed)

    images, labels = _filter_classes(name, images, labels, exclude_class, only_class)
    if images.shape[0] == 0:
        raise ValueError(f"{name}: split {split!r} has no images")
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
                        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
                        name, split, classes)


# ----------------------------------------------------------------------------------------------
# split and class filters


def _split_indices(n: int, labels: np.ndarray | None, split: str, test_fraction: float, seed: int) -> np.ndarray:
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


def _filter_classes(name, images, labels, exclude_class, only_class):
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


# ----------------------------------------------------------------------------------------------
# digits


def _load_digits(split, test_fraction, seed):
    from sklearn.datasets import load_digits

    bunch = load_digits()  # read from the copy bundled with scikit-learn; never downloads
    images = bunch.images.astype(np.float32)[:, None, :, :] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    labels = bunch.target.astype(np.int64)
    idx = _split_indices(len(labels), labels, split, test_fraction, seed)
    return images[idx], labels[idx], tuple(str(i) for i in range(10))


# ----------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

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
        raise ValueError(f"{name}: labels in {labels_path} must be 0..9; found {int(labels.min())}..{int(labels.max())}")
    return images, labels.astype(np.int64)


def _load_mnist(name, root, split):
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


# ----------------------------------------------------------------------------------------------
# npz


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Put an image array into [N, C, H, W] by the layout rule in the module docstring."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim != 4:
        raise ValueError(f"{where} has shape {x.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W] with C in (1, 3)")
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


def _load_npz(root, split, test_fraction, seed):
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
            raise ValueError(f"npz: {path}: x_train and x_test differ in image shape: {[x.shape[1:] for x, _ in parts]}")
        if len({y is None for _, y in parts}) > 1:
            raise ValueError(f"npz: {path}: one of x_train/x_test has labels (y_*) and the other has none")
        x = np.concatenate([x for x, _ in parts])
        y = None if parts[0][1] is None else np.concatenate([y for _, y in parts])
        return _scale_to_unit(x, f"npz: {path}[x_*]"), y
    if "images" in arrays:
        x = _to_nchw(arrays["images"], f"npz: {path}[images]")
        y = arrays.get("labels")
        y = None if y is None else _npz_labels(y, x.shape[0], f"npz: {path}[labels]")
        idx = _split_indices(x.shape[0], y, split, test_fraction, seed)
        return _scale_to_unit(x[idx], f"npz: {path}[images]"), None if y is None else y[idx]
    raise ValueError(expected_msg)


# ----------------------------------------------------------------------------------------------
# image folder

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


def _load_folder(root, split, test_fraction, seed):
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
    idx = _split_indices(len(files), labels, split, test_fraction, seed)
    if len(idx) == 0:
        raise ValueError(f"folder: split {split!r} of {root} is empty ({len(files)} images, test_fraction={test_fraction})")
    images = _read_images([files[i] for i in idx])
    return _from_uint8(images), None if labels is None else labels[idx], classes


def _from_uint8(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 127.5 - 1.0
