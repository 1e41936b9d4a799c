"""convlens.core.cam's CAM and attribution arithmetic, against hand numbers and references."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from convlens.core.cam import (
    eigen_cam,
    gauss_blur,
    grad_cam,
    grad_cam_pp,
    hires_cam,
    ig_alphas,
    layer_cam,
    minmax,
    occlusion_windows,
    resize_bilinear,
    score_cam_masks,
    softmax,
    weighted_sum,
    xgrad_cam,
)


def test_resize_by_hand():
    x = np.array([[0.0, 4.0]]).reshape(1, 1, 2)
    # Half-pixel centres: outputs 0..3 sit at input positions -0.25, 0.25, 0.75, 1.25 (clamped).
    np.testing.assert_allclose(resize_bilinear(x, (1, 4))[0, 0], [0, 1, 3, 4])
    # Corners aligned: positions 0, 1/3, 2/3, 1.
    np.testing.assert_allclose(
        resize_bilinear(x, (1, 4), align_corners=True)[0, 0], [0, 4 / 3, 8 / 3, 4], rtol=1e-6
    )


@pytest.mark.parametrize(
    "src, dst", [((7, 7), (224, 224)), ((3, 5), (28, 17)), ((2, 2), (64, 64)), ((7, 7), (7, 7))]
)
def test_resize_matches_opencv_and_torch(src, dst):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, *src)).astype(np.float32)
    ours = resize_bilinear(maps, dst)
    for i in range(2):
        np.testing.assert_allclose(ours[i], cv2.resize(maps[i], dst[::-1]), atol=1e-5)
    corner = torch.nn.UpsamplingBilinear2d(size=dst)(torch.from_numpy(maps)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(maps, dst, align_corners=True), corner, atol=1e-5)
    channels = rng.normal(size=(1, *src, 3)).astype(np.float32)
    np.testing.assert_allclose(
        resize_bilinear(channels, dst)[0, ..., 1],
        cv2.resize(channels[0, ..., 1], dst[::-1]),
        atol=1e-5,
    )


def test_minmax_and_softmax():
    np.testing.assert_allclose(
        minmax(np.array([[[2.0, 4.0], [6.0, 10.0]]])), [[[0, 0.25], [0.5, 1.0]]], atol=1e-6
    )
    assert not minmax(np.full((1, 2, 2), 3.0)).any()  # a constant map becomes zeros, not NaN
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3.0)])), [0.25, 0.75])
    assert np.isfinite(softmax(np.array([1000.0, 0.0]))).all()


def _pair():
    """Two channels on a 1x2 map: acts [[1, 3]] and [[2, 2]]; grads [[1, -1]] and [[0.5, 0.5]]."""
    acts = np.array([[[[1.0, 2.0], [3.0, 2.0]]]])  # (1, 1, 2, 2): h=1, w=2, C=2
    grads = np.array([[[[1.0, 0.5], [-1.0, 0.5]]]])
    return acts, grads


def test_cam_formulas_by_hand():
    acts, grads = _pair()
    # Grad-CAM weights: mean gradient (0, 0.5): map 0.5 * (2, 2).
    np.testing.assert_allclose(grad_cam(acts, grads)[0, 0], [1.0, 1.0])
    # HiResCAM: sum_c g * A = (1*1 + 0.5*2, -1*3 + 0.5*2) = (2, -2).
    np.testing.assert_allclose(hires_cam(acts, grads)[0, 0], [2.0, -2.0])
    # LayerCAM: relu(g) * A: (1 + 1, 0 + 1).
    np.testing.assert_allclose(layer_cam(acts, grads)[0, 0], [2.0, 1.0])
    # XGrad-CAM weights: sum(g A) / sum(A) = (1 - 3) / 4 = -0.5 and (1 + 1) / 4 = 0.5.
    np.testing.assert_allclose(xgrad_cam(acts, grads)[0, 0], [-0.5 + 1.0, -1.5 + 1.0], rtol=1e-6)
    # Grad-CAM++: channel 0 (sum A = 4): g = 1 -> alpha = 1 / (2 + 4) = 1/6; g = -1: relu drops it.
    # Channel 1 (sum A = 4): g = 0.5 -> alpha = 0.25 / (0.5 + 0.5) = 1/4, twice: weight 2 * 0.5 / 4.
    np.testing.assert_allclose(
        grad_cam_pp(acts, grads)[0, 0],
        np.array([1.0, 3.0]) / 6 + np.array([2.0, 2.0]) * 0.25,
        rtol=1e-5,
    )
    np.testing.assert_allclose(weighted_sum(acts, np.array([[2.0, -1.0]]))[0, 0], [0.0, 4.0])


def test_eigen_cam_sign_and_degenerate_maps():
    u = np.array([0.0, 1.0, 5.0, 2.0])
    acts = (u[:, None] * np.array([1.0, 3.0])[None]).reshape(1, 2, 2, 2)
    out = eigen_cam(acts)[0].ravel()
    np.testing.assert_allclose(out, (u - u.mean()) * math.sqrt(10), rtol=1e-6)
    np.testing.assert_allclose(
        eigen_cam(-acts)[0].ravel(), -out, rtol=1e-6
    )  # follows the activation
    assert not eigen_cam(np.ones((1, 2, 2, 3))).any()  # nothing varies: a zero map, no NaN
    nan = acts.copy()
    nan[0, 0, 0, 0] = np.nan
    assert np.isfinite(eigen_cam(nan)).all()


def test_score_cam_masks():
    acts = np.zeros((2, 2, 3), np.float32)
    acts[..., 0] = [[0, 1], [2, 3]]
    acts[..., 2] = 7.0  # constant
    masks, varying = score_cam_masks(acts, (4, 4))
    assert varying.tolist() == [0] and masks.shape == (1, 4, 4)
    np.testing.assert_allclose(masks[0, 0], [0, 1 / 9, 2 / 9, 1 / 3], rtol=1e-5)
    assert masks.min() == 0 and masks.max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "method",
    ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"],
)
def test_ig_points_are_captums(method):
    alphas, weights = ig_alphas(7, method)
    step_sizes, captum_alphas = approximation_parameters(method)
    np.testing.assert_allclose(alphas, captum_alphas(7), atol=1e-7)
    if method == "riemann_trapezoid":
        # captum's weights sum to (n - 1) / n; the trapezoid rule's sum to 1.
        np.testing.assert_allclose(weights * 6 / 7, step_sizes(7), atol=1e-12)
    else:
        np.testing.assert_allclose(weights, step_sizes(7), atol=1e-12)
    assert weights.sum() == pytest.approx(1.0)
    # Gauss-Legendre with 7 points integrates x^13 exactly: 1/14.
    if method == "gausslegendre":
        assert (weights * alphas**13).sum() == pytest.approx(1 / 14, rel=1e-12)
    with pytest.raises(ValueError):
        ig_alphas(3, "simpson")


def test_gauss_blur_keeps_constants_and_the_mean():
    flat = np.full((1, 9, 9, 2), 3.0, np.float32)
    np.testing.assert_allclose(gauss_blur(flat, 2.0), flat, rtol=1e-6)
    spike = np.zeros((1, 21, 21, 1), np.float32)
    spike[0, 10, 10] = 1.0
    blurred = gauss_blur(spike, 1.5)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-5) and blurred[0, 10, 10, 0] < 0.1
    assert blurred[0, 10, 11, 0] == pytest.approx(blurred[0, 11, 10, 0])  # isotropic
    np.testing.assert_array_equal(gauss_blur(spike, 0), spike)
    assert gauss_blur(np.ones((1, 2, 2, 1)), 5.0).shape == (
        1,
        2,
        2,
        1,
    )  # radius larger than the image


def test_occlusion_windows_as_captum_places_them():
    assert occlusion_windows(5, 2, 2) == [(0, 2), (2, 4), (4, 5)]
    assert occlusion_windows(4, 2, 2) == [(0, 2), (2, 4)]
    assert occlusion_windows(3, 3, 1) == [(0, 3)]
    assert occlusion_windows(64, 16, 10) == [
        (0, 16),
        (10, 26),
        (20, 36),
        (30, 46),
        (40, 56),
        (50, 64),
    ]


def test_grad_cam_of_float32_arrays_is_the_float64_formula_to_the_bit():
    rng = np.random.default_rng(6)
    acts = rng.random((2, 9, 7, 16), dtype=np.float32)
    grads = rng.standard_normal((2, 9, 7, 16)).astype(np.float32)
    want = np.einsum("nhwc,nc->nhw", acts.astype(np.float64), grads.astype(np.float64).mean(axis=(1, 2)))
    np.testing.assert_array_equal(grad_cam(acts, grads), want)


def test_resize_and_minmax_are_the_plain_formulas_to_the_bit():
    rng = np.random.default_rng(7)
    maps = rng.random((2, 10, 6), dtype=np.float32)
    h, w = 80, 48
    pos = lambda n_in, n_out: np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)  # noqa: E731
    py, px = pos(10, h), pos(6, w)
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    y1, x1 = np.minimum(y0 + 1, 9), np.minimum(x0 + 1, 5)
    fy, fx = (py - y0).astype(np.float32)[None, :, None], (px - x0).astype(np.float32)[None, None, :]
    rows = maps[:, y0] * (1 - fy) + maps[:, y1] * fy
    want = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    got = resize_bilinear(maps, (h, w))
    np.testing.assert_array_equal(got, want)
    shifted = want - want.min(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(minmax(got), shifted / (1e-7 + shifted.max(axis=(1, 2), keepdims=True)))
