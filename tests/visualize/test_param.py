"""Parameterisations: exact adjoints, Lucid's constants, presets as affine maps."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.images import PRESETS, apply_preset
from convlens.visualize.param import (
    COLOR_CORRELATION,
    ColorDecorrelation,
    FourierImage,
    ImageParam,
    PresetMap,
    Sigmoid,
    fft_frequencies,
)


def _adjoint_gap(forward, adjoint, x_shape, y_shape, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(x_shape), rng.standard_normal(y_shape)
    lhs, rhs = float((forward(x) * y).sum()), float((x * adjoint(y)).sum())
    return abs(lhs - rhs) / max(abs(lhs), 1e-12)


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (6, 5), (28, 28)])
def test_fourier_adjoint_is_the_transpose(h, w):
    f = FourierImage((2, h, w, 3))
    assert _adjoint_gap(f.forward, f.adjoint, f.param_shape, (2, h, w, 3)) < 1e-12


def test_fourier_image_is_lucids_formula():
    # one coefficient at a known frequency gives a cosine of the right amplitude
    f = FourierImage((1, 16, 16, 1))
    p = np.zeros(f.param_shape)
    p[0, 0, 0, 2, 0] = 1.0  # real part, 2 cycles across the width
    img = f.forward(p)[0, :, :, 0]
    col = np.arange(16)
    want = 2 * np.cos(2 * np.pi * 2 * col / 16) * f.scale[0, 2] / 16 / 4  # ortho 1/sqrt(256), Lucid's /4
    np.testing.assert_allclose(img, np.broadcast_to(want, (16, 16)), atol=1e-12)
    # the 1/f scaling: frequency 2/16 = 0.125 cycles per pixel -> 8; DC is capped at max(h, w)
    assert f.scale[0, 2] == pytest.approx(8.0)
    assert f.scale[0, 0] == pytest.approx(16.0)


def test_fft_frequencies_layout():
    f = fft_frequencies(4, 6)
    assert f.shape == (4, 4)
    assert f[0, 3] == pytest.approx(0.5) and f[2, 0] == pytest.approx(0.5) and f[0, 0] == 0


def test_white_spectrum_gives_a_pink_image():
    # the 1/f scaling puts more energy in low than in high frequencies
    f = FourierImage((8, 64, 64, 1))
    rngs = [np.random.default_rng(i) for i in range(8)]
    img = f.forward(f.init(rngs))[..., 0]
    power = np.abs(np.fft.fft2(img)) ** 2
    freq = np.sqrt(np.fft.fftfreq(64)[:, None] ** 2 + np.fft.fftfreq(64)[None, :] ** 2)
    low = power[:, (freq > 0) & (freq < 0.1)].mean()
    high = power[:, freq > 0.4].mean()
    assert low > 20 * high


def test_color_matrix_is_lucids_normalised():
    assert np.linalg.norm(COLOR_CORRELATION, axis=0).max() == pytest.approx(1.0)
    np.testing.assert_allclose(COLOR_CORRELATION[0] * 0.46195238, [0.26, 0.09, 0.02], atol=1e-6)
    c = ColorDecorrelation(3)
    assert _adjoint_gap(c.forward, c.adjoint, (2, 3, 3, 3), (2, 3, 3, 3)) < 1e-12
    gray = ColorDecorrelation(1)
    x = np.ones((1, 2, 2, 1))
    assert gray.forward(x) is x


def test_sigmoid_adjoint_matches_finite_differences():
    z = np.linspace(-6, 6, 13)
    x = Sigmoid.forward(z)
    eps = 1e-6
    numeric = (Sigmoid.forward(z + eps) - Sigmoid.forward(z - eps)) / (2 * eps)
    np.testing.assert_allclose(Sigmoid.adjoint(np.ones_like(z), x), numeric, rtol=1e-6)
    assert np.all((x > 0) & (x < 1))
    assert Sigmoid.forward(np.array([1e4, -1e4])).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_preset_map_is_apply_preset(preset, channels):
    m = PresetMap(preset, channels)
    x = np.random.default_rng(1).random((2, 4, 5, channels))
    np.testing.assert_allclose(m.forward(x), apply_preset(255 * x, preset), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(m.inverse(m.forward(x)), x, atol=1e-5)
    gap = _adjoint_gap(lambda v: m.forward(v).astype(np.float64) - m.offset, m.adjoint,
                       (2, 4, 5, channels), (2, 4, 5, channels))
    assert gap < 1e-5


def test_caffe_jacobian_flips_the_channels():
    m = PresetMap("caffe", 3)
    np.testing.assert_allclose(m.matrix, np.eye(3)[::-1], atol=1e-6)
    t = PresetMap("torch", 3)
    np.testing.assert_allclose(np.diag(t.matrix), 1 / 255 / np.array([0.229, 0.224, 0.225]), rtol=1e-6)


def test_image_param_backward_matches_finite_differences():
    param = ImageParam((1, 6, 6, 3))
    rng = np.random.default_rng(0)
    p = rng.standard_normal(param.image.param_shape) * 0.5
    weights = rng.standard_normal((1, 6, 6, 3))
    x = param.forward(p)
    assert x.min() > 0 and x.max() < 1
    grad = param.backward(weights)
    d = rng.standard_normal(p.shape) * 1e-6
    numeric = ((param.forward(p + d) - param.forward(p - d)) * weights).sum() / 2
    assert float((grad * d).sum()) == pytest.approx(float(numeric), rel=1e-5)


def test_one_generator_per_image():
    param = ImageParam((2, 8, 8, 3))
    a = param.init([np.random.default_rng(5), np.random.default_rng(6)])
    b = param.init([np.random.default_rng(6), np.random.default_rng(5)])
    np.testing.assert_array_equal(a[0], b[1])
    with pytest.raises(ValueError):
        param.init([np.random.default_rng(5)])
