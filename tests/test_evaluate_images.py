"""Image grids (jebm.evaluate.images): value mapping, grid geometry (checked by reopening the PNG), errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from jebm.evaluate.images import FILL, PADDING, save_grid, save_rows, to_uint8


def test_to_uint8_mapping_layout_and_clipping():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.5, -3.0]).reshape(1, 1, 1, 5)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 5, 1)
    assert out[0, 0, :, 0].tolist() == [0, 128, 255, 255, 0]  # out-of-range values are clipped
    # channels move last: a pure red [N, 3, H, W] image is (255, 0, 0) per pixel
    red = -torch.ones(2, 3, 4, 6)
    red[:, 0] = 1
    r = to_uint8(red)
    assert r.shape == (2, 4, 6, 3) and (r[..., 0] == 255).all() and (r[..., 1:] == 0).all()
    # numpy input works the same
    np.testing.assert_array_equal(to_uint8(red.numpy()), r)


def test_to_uint8_errors():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\] with C in \(1, 3\); got \(4, 4\)"):
        to_uint8(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"got \(2, 2, 4, 4\)"):
        to_uint8(torch.zeros(2, 2, 4, 4))
    bad = torch.zeros(2, 1, 4, 4)
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        to_uint8(bad)
    with pytest.raises(ValueError, match="torch.Tensor or numpy array"):
        to_uint8([[0.0]])


def test_save_grid_upscales_tiny_grayscale(tmp_path):
    # 10 digits-sized 8x8 images, default nrow = ceil(sqrt(10)) = 4 -> 3 rows x 4 columns;
    # 8x8 tiles are enlarged 4x (nearest) to 32x32.
    images = -torch.ones(10, 1, 8, 8)
    images[0, 0, 0, 0] = 1.0  # one white pixel in the first image's top-left corner
    path = tmp_path / "deep" / "er" / "grid.png"  # parent folders are created
    assert save_grid(images, path) == path
    with Image.open(path) as im:
        assert im.mode == "L"
        tile = 32 + PADDING
        assert im.size == (4 * tile + PADDING, 3 * tile + PADDING)  # (width, height)
        a = np.asarray(im)
    p = PADDING
    assert (a[p:p + 4, p:p + 4] == 255).all()  # the white pixel became a 4x4 block
    assert (a[p + 4:p + 32, p + 4:p + 32] == 0).all()
    assert (a[:p] == FILL).all()  # border padding
    # the last two cells of row 3 are empty and filled with the padding colour
    assert (a[p + 2 * tile:, p + 2 * tile:] == FILL).all()
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # the atomic write left no temporary file


def test_save_grid_rgb_no_upscale_and_nrow(tmp_path):
    images = torch.rand(5, 3, 32, 40) * 2 - 1
    path = tmp_path / "rgb.png"
    save_grid(images, path, nrow=2)  # 2 per row -> 3 rows
    with Image.open(path) as im:
        assert im.mode == "RGB"
        assert im.size == (2 * (40 + PADDING) + PADDING, 3 * (32 + PADDING) + PADDING)
        a = np.asarray(im)
    # the first tile round-trips exactly through to_uint8
    np.testing.assert_array_equal(a[PADDING:PADDING + 32, PADDING:PADDING + 40], to_uint8(images[:1])[0])
    # overwriting an existing grid works (os.replace over the old file)
    save_grid(images[:1], path)
    with Image.open(path) as im:
        assert im.size == (40 + 2 * PADDING, 32 + 2 * PADDING)


def test_save_grid_errors(tmp_path):
    with pytest.raises(ValueError, match=r"must end in .png"):
        save_grid(torch.zeros(1, 1, 8, 8), tmp_path / "g.jpg")
    with pytest.raises(ValueError, match="N = 0"):
        save_grid(torch.zeros(0, 1, 8, 8), tmp_path / "g.png")
    with pytest.raises(ValueError, match="nrow must be a positive int"):
        save_grid(torch.zeros(2, 1, 8, 8), tmp_path / "g.png", nrow=0)
    with pytest.raises(ValueError, match="NaN"):
        save_grid(torch.full((2, 3, 8, 8), float("inf")), tmp_path / "g.png")
    assert not list(tmp_path.iterdir())  # nothing written on failure


def test_save_rows_pads_short_rows(tmp_path):
    rows = [torch.ones(3, 3, 8, 8), -torch.ones(1, 3, 8, 8), torch.zeros(2, 3, 8, 8)]
    path = tmp_path / "rows.png"
    save_rows(rows, path)
    tile = 32 + PADDING  # 8x8 enlarged to 32x32
    with Image.open(path) as im:
        assert im.mode == "RGB"
        assert im.size == (3 * tile + PADDING, 3 * tile + PADDING)
        a = np.asarray(im)
    p = PADDING
    assert (a[p:p + 32, p:p + 32] == 255).all()                     # row 0: white images
    assert (a[p + tile:p + tile + 32, p:p + 32] == 0).all()         # row 1, col 0: black image
    assert (a[p + tile:p + 2 * tile, p + tile:] == FILL).all()      # row 1, cols 1-2: blank padding
    assert (a[p + 2 * tile:p + 2 * tile + 32, p:p + 32] == 128).all()  # row 2: mid gray


def test_save_rows_errors(tmp_path):
    with pytest.raises(ValueError, match="non-empty list"):
        save_rows([], tmp_path / "r.png")
    with pytest.raises(ValueError, match="non-empty list"):
        save_rows(torch.zeros(2, 1, 8, 8), tmp_path / "r.png")
    with pytest.raises(ValueError, match="same image shape"):
        save_rows([torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9)], tmp_path / "r.png")
    with pytest.raises(ValueError, match=r"row 1: .*got \(2, 8, 8\)"):
        save_rows([torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8)], tmp_path / "r.png")
