"""Filter atlases: RGB composites, filter x input grids, norms."""

from __future__ import annotations

import numpy as np
import pytest

from convlens import BadArgument
from convlens.render.colormap import lut
from convlens.render.filters import filter_grid, filter_norms, rgb_composites

GRAY = lut("gray")


def test_filter_norms_are_exact():
    k = np.zeros((3, 2, 1, 2), np.float32)
    k[0] = [[[3.0, 0.0]], [[0.0, 4.0]]]  # 5
    k[1, 1, 0, 1] = -2.0  # 2
    assert filter_norms(k).tolist() == [5.0, 2.0, 0.0]
    assert filter_norms(k).dtype == np.float64


def test_rgb_composites_shape_and_per_filter_scaling():
    k = np.zeros((5, 3, 3, 3), np.float32)
    k[0] = np.arange(27, dtype=np.float32).reshape(3, 3, 3)  # values 0..26
    k[1] = k[0] * 100 - 7  # same pattern, other scale: same picture
    k[2] = 0.25  # constant: mid-gray
    rgb = rgb_composites(k, cell=32)  # 3x3 patches x ceil(32/3) = 11 -> 33 px
    assert rgb.shape == (2 * 34 + 1, 3 * 34 + 1, 3)
    patch0 = rgb[1:34, 1:34]
    assert patch0[0, 0].tolist() == [0, 88, 177]  # k[0][:, 0, 0] = 0, 9, 18 of 0..26, x 255/26
    assert patch0[-1, -1].tolist() == [78, 167, 255]  # 8, 17, 26
    assert (patch0[:11, :11] == patch0[0, 0]).all()  # one tap = an 11x11 block
    assert np.array_equal(rgb[1:34, 35:68], patch0)
    assert (rgb[1:34, 69:102] == 128).all()
    assert (rgb[35:68, 69:102] == 235).all()  # the unused sixth cell


def test_rgb_composites_caps_and_columns():
    k = np.random.default_rng(0).standard_normal((64, 3, 7, 7)).astype(np.float32)
    shape = rgb_composites(k, max_filters=10, columns=5, cell=14).shape
    assert shape == (2 * 15 + 1, 5 * 15 + 1, 3)
    assert rgb_composites(k, max_filters=10**9).shape == (8 * 36 + 1, 8 * 36 + 1, 3)


def test_rgb_composites_need_three_inputs():
    with pytest.raises(BadArgument, match="3 input channels"):
        rgb_composites(np.zeros((4, 64, 3, 3), np.float32))


def test_filter_grid_shape_with_caps():
    k = np.random.default_rng(1).standard_normal((128, 64, 3, 3)).astype(np.float32)
    rgb = filter_grid(k, GRAY, max_filters=64, max_inputs=16)
    # cells 3x3 x ceil(24/3) = 24 px; rows of 25 px plus a 1 px border; a 16 px header row.
    assert rgb.shape[0] == 16 + 64 * 25 + 1
    grid_w = 16 * 25 + 1
    label_w = rgb.shape[1] - grid_w
    assert 60 < label_w < 160
    # The grid itself sits in the bottom-right corner, white separators included.
    assert (rgb[16, label_w:] == 255).all() and (rgb[16 + 25, label_w:] == 255).all()


def test_filter_grid_cells_are_scaled_per_filter():
    k = np.zeros((2, 2, 1, 2), np.float32)
    k[0] = [[[0.0, 1.0]], [[2.0, 3.0]]]  # filter 0 spans 0..3 over both inputs
    k[1] = 5.0  # constant: mid
    rgb = filter_grid(k, GRAY)  # 1x2 kernels: x12 across, rows 14 tall
    label_w = rgb.shape[1] - (2 * 25 + 1)
    top = 16 + 1
    row0 = rgb[top, label_w + 1 :, 0]
    assert row0[:12].tolist() == [0] * 12 and row0[12:24].tolist() == [85] * 12
    assert row0[25:37].tolist() == [170] * 12 and row0[37:49].tolist() == [255] * 12
    cell = rgb[top : top + 14, label_w + 1 : label_w + 25]
    assert (cell == cell[0]).all()  # rows repeat down the 14-pixel cell
    row1 = rgb[top + 15, label_w + 1 :, 0]
    assert set(row1[:24].tolist()) == {128}
    assert rgb.shape[0] == 16 + 2 * 15 + 1


def test_filter_grid_labels_are_drawn():
    k = np.ones((2, 1, 3, 3), np.float32)
    rgb = filter_grid(k, GRAY)
    label_w = rgb.shape[1] - 26
    labels = rgb[16:, :label_w]
    assert (labels.min(axis=-1) < 100).sum() > 20  # dark text on white
    assert (rgb[:16].min(axis=-1) < 100).any()  # the header row


def test_filter_grid_rejects_bad_kernels():
    with pytest.raises(BadArgument, match=r"\(O, I, kh, kw\)"):
        filter_grid(np.zeros((3, 3, 3)), GRAY)
    with pytest.raises(BadArgument, match="max_inputs"):
        filter_grid(np.zeros((1, 1, 3, 3)), GRAY, max_inputs=0)
