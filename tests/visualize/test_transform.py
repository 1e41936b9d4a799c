"""Transforms: exact adjoints, hand-checkable warps, one generator."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.visualize.transform import (
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    Resize,
    Warp,
    compose,
    standard_transforms,
)


def _images(shape, seed=0):
    return np.random.default_rng(seed).random(shape)


@pytest.mark.parametrize("size,out", [((32, 32), None), ((28, 28), (28, 28)), ((20, 24), (40, 30))])
def test_composed_warp_adjoint_is_exact(size, out):
    warp = compose(standard_transforms(size[0]), np.random.default_rng(3), size, out_size=out)
    x = _images((2, *size, 3))
    y = _images((2, *warp.out_size, 3), seed=1)
    # the linear part: y = M (x - fill) + fill
    lhs = float(((warp.forward(x) - warp.fill) * y).sum())
    rhs = float(((x - warp.fill) * warp.adjoint(y)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_standard_transforms_are_lucids_at_128():
    t = standard_transforms(128)
    assert t[0] == Pad(12) and t[1] == Jitter(8) and t[4] == Jitter(4)
    assert t[2] == RandomScale(tuple(1 + (i - 5) / 50 for i in range(11)))
    assert isinstance(t[3], RandomRotate) and len(t[3].angles) == 26 and t[3].angles.count(0.0) == 6
    warp = compose(t, np.random.default_rng(0), (128, 128))
    assert warp.out_size == (128 + 24 - 8 - 4,) * 2
    small = standard_transforms(28)
    assert (small[0], small[1], small[4]) == (Pad(3), Jitter(2), Jitter(1))


def test_pad_then_crop_is_the_identity_and_pad_is_gray():
    x = _images((1, 5, 6, 3))
    warp = compose([Pad(2)], np.random.default_rng(0), (5, 6))
    y = warp.forward(x)
    assert y.shape == (1, 9, 10, 3)
    np.testing.assert_allclose(y[:, 2:7, 2:8], x, atol=1e-15)
    assert np.all(y[:, :2] == 0.5) and np.all(y[:, :, -2:] == 0.5)


def test_jitter_crops_at_a_drawn_offset():
    x = _images((1, 10, 10, 1))
    rng = np.random.default_rng(7)
    dy, dx = np.random.default_rng(7).integers(0, 4, size=2)
    y = compose([Jitter(3)], rng, (10, 10)).forward(x)
    np.testing.assert_allclose(y, x[:, dy:dy + 7, dx:dx + 7], atol=1e-15)


def test_rotation_by_90_degrees_is_rot90():
    x = _images((1, 5, 5, 2))
    y = compose([RandomRotate((90.0,))], np.random.default_rng(0), (5, 5)).forward(x)
    # a positive angle turns the picture counter-clockwise, as TensorFlow's rotate does
    np.testing.assert_allclose(y, np.rot90(x, k=1, axes=(1, 2)), atol=1e-12)


def test_scale_zooms_about_the_centre():
    x = np.zeros((1, 9, 9, 1))
    x[0, 4, 6, 0] = 1.0  # two pixels right of the centre
    y = compose([RandomScale((2.0,))], np.random.default_rng(0), (9, 9), fill=0.0).forward(x)
    assert y[0, 4, 8, 0] == pytest.approx(1.0)  # now four pixels right of it
    assert y[0, 4, 4, 0] == 0.0


def test_resize_keeps_a_constant_and_maps_corners():
    x = np.full((1, 7, 7, 3), 0.3)
    y = compose([], np.random.default_rng(0), (7, 7), out_size=(14, 14)).forward(x)
    np.testing.assert_allclose(y[:, 1:-1, 1:-1], 0.3, atol=1e-12)
    _, m = Resize((2, 2)).draw(np.random.default_rng(0), (4, 4))
    np.testing.assert_allclose(m @ [0, 0, 1], [0.5, 0.5, 1])  # half-pixel centres


def test_outside_the_image_shows_the_fill():
    warp = Warp((4, 4), (3, 3), np.array([[1, 0, 100], [0, 1, 100], [0, 0, 1.0]]), fill=0.5)
    assert np.all(warp.forward(_images((2, 4, 4, 3))) == 0.5)
    assert warp.operator.nnz == 0


def test_one_generator_draws_everything_in_order():
    a = [compose(standard_transforms(64), np.random.default_rng(11), (64, 64)).matrix for _ in range(2)]
    rng = np.random.default_rng(11)
    b = [compose(standard_transforms(64), rng, (64, 64)).matrix for _ in range(2)]
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(b[0], b[1])


def test_transforms_that_leave_nothing_fail():
    with pytest.raises(ValueError, match="no pixels"):
        compose([Jitter(8)], np.random.default_rng(0), (6, 6))
