"""Normalisation of feature maps to colormap indices, on hand-made arrays."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from convlens import BadArgument
from convlens.core.normalize import NORMS, ChannelFlags, finite_range, normalize_channels


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # "never a RuntimeWarning": any warning inside a test fails it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_standardize_is_the_tutorial_formula():
    ch = np.array([[0.0, 1.0], [2.0, 5.0]], dtype=np.float32)  # mean 2, std sqrt(3.5)
    out, flags = normalize_channels(ch[None])
    expected = np.clip((ch - 2.0) / np.sqrt(3.5) * 64 + 128, 0, 255).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2)
    assert out[0].tolist() == expected.tolist() == [[59, 93], [128, 230]]
    assert not flags.any().any()


def test_standardize_clips_outliers():
    x = np.zeros((1, 1, 100), np.float32)
    x[0, 0, 0] = 1000.0  # ~10 standard deviations
    out, _ = normalize_channels(x)
    assert out[0, 0, 0] == 255
    assert set(out[0, 0, 1:].tolist()) == {121}  # (0 - 10) / 99.5 * 64 + 128 = 121.57


def test_channels_are_independent_and_order_is_kept():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32) * np.arange(1, 6)[:, None, None]
    out, _ = normalize_channels(x)
    for c in range(5):
        single, _ = normalize_channels(x[c : c + 1])
        assert np.array_equal(out[c], single[0])


def test_constant_channel_is_128_and_flagged_constant():
    x = np.stack([np.full((3, 3), 2.5), np.arange(9.0).reshape(3, 3)]).astype(np.float32)
    out, flags = normalize_channels(x)
    assert (out[0] == 128).all()
    assert flags.constant.tolist() == [True, False]
    assert flags.dead.tolist() == [False, False]


def test_zero_channel_is_dead_and_constant():
    x = np.zeros((3, 4, 4), np.float32)
    x[1] = np.arange(16).reshape(4, 4)
    out, flags = normalize_channels(x)
    assert flags.dead.tolist() == [True, False, True]
    assert flags.constant.tolist() == [True, False, True]
    assert flags.nonfinite.tolist() == [False, False, False]
    assert (out[0] == 128).all() and (out[2] == 128).all()


def test_nonfinite_values_are_flagged_excluded_and_drawn_as_zero():
    x = np.tile(np.array([0.0, 1.0, 2.0, 3.0], np.float32), (4, 1)).reshape(4, 1, 4)
    x[0, 0, 3] = np.nan
    x[1, 0, 3] = np.inf
    x[2, 0, 3] = -np.inf
    x[3] = np.nan
    for method in ("standardize", "minmax", "layer"):
        out, flags = normalize_channels(x, method)
        assert out.dtype == np.uint8
        assert flags.nonfinite.tolist() == [True, True, True, True]
        assert out[:3, 0, 3].tolist() == [0, 0, 0]
        assert (out[3] == 0).all()
        assert flags.dead[3] == flags.constant[3] == False  # noqa: E712 - no finite value at all
    # Statistics ignore the bad pixel: [0, 1, 2] has mean 1, std sqrt(2/3).
    out, _ = normalize_channels(x, "standardize")
    finite = np.array([0.0, 1.0, 2.0])
    expected = np.clip((finite - 1) / np.sqrt(2 / 3) * 64 + 128, 0, 255).astype(np.uint8)
    assert out[0, 0, :3].tolist() == expected.tolist() == [49, 128, 206]
    out, _ = normalize_channels(x, "minmax")
    assert out[1, 0, :3].tolist() == [0, 128, 255]


def test_nonfinite_channel_with_one_finite_value_is_constant():
    x = np.array([[[np.nan, 4.0, np.inf]]], np.float32)
    out, flags = normalize_channels(x)
    assert out[0, 0].tolist() == [0, 128, 0]
    assert flags.constant.tolist() == [True] and flags.nonfinite.tolist() == [True]


def test_minmax_exact_values():
    x = np.array([[[0.0, 1.0, 2.0, 3.0]], [[-2.0, -1.0, 0.0, 2.0]], [[7.0, 7.0, 7.0, 7.0]]],
                 np.float32)
    out, flags = normalize_channels(x, "minmax")
    assert out[0, 0].tolist() == [0, 85, 170, 255]
    assert out[1, 0].tolist() == [0, 64, 128, 255]  # 63.75 and 127.5 round up
    assert out[2, 0].tolist() == [0, 0, 0, 0]  # constant -> 0
    assert flags.constant.tolist() == [False, False, True]


def test_layer_uses_one_scale_for_all_channels():
    x = np.array([[[0.0, 1.0]], [[2.0, 4.0]]], np.float32)  # layer range 0..4
    out, _ = normalize_channels(x, "layer")
    assert out[:, 0].tolist() == [[0, 64], [128, 255]]


def test_global_uses_the_given_range_and_clips():
    x = np.array([[[-5.0, 0.0, 5.0, 10.0, 20.0]]], np.float32)
    out, _ = normalize_channels(x, "global", value_range=(0.0, 10.0))
    assert out[0, 0].tolist() == [0, 0, 128, 255, 255]
    out, _ = normalize_channels(x, "global", value_range=(3.0, 3.0))
    assert out[0, 0].tolist() == [0, 0, 0, 0, 0]


def test_global_needs_a_valid_range():
    x = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(BadArgument, match="value_range"):
        normalize_channels(x, "global")
    with pytest.raises(BadArgument, match="lo <= hi"):
        normalize_channels(x, "global", value_range=(1.0, 0.0))
    with pytest.raises(BadArgument, match="finite"):
        normalize_channels(x, "global", value_range=(0.0, float("nan")))


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(BadArgument) as err:
        normalize_channels(np.zeros((1, 2, 2)), "zscore")
    assert all(name in str(err.value) for name in NORMS)


def test_shape_and_dtype_checks():
    with pytest.raises(BadArgument, match=r"\(C, H, W\)"):
        normalize_channels(np.zeros((2, 2)))
    with pytest.raises(BadArgument, match="dtype"):
        normalize_channels(np.zeros((1, 2, 2), complex))


def test_integer_and_float64_inputs():
    ints = np.arange(12, dtype=np.int64).reshape(1, 3, 4)
    out, _ = normalize_channels(ints, "minmax")
    assert out[0, 0].tolist() == [0, 23, 46, 70]
    out64, _ = normalize_channels(ints.astype(np.float64), "minmax")
    assert np.array_equal(out, out64)


def test_huge_magnitudes_do_not_overflow():
    x = np.array([[[3e38, -3e38, 0.0, 1.0]]], np.float32)
    out, flags = normalize_channels(x)
    x64 = x.astype(np.float64)
    expected = np.clip((x64 - x64.mean()) / x64.std() * 64 + 128, 0, 255).astype(np.uint8)
    assert out[0, 0].tolist() == expected[0, 0].tolist() == [218, 37, 128, 128]
    assert normalize_channels(x, "minmax")[0][0, 0].tolist() == [255, 0, 128, 128]
    wide = np.array([[[1e300, -1e300, 0.0]]])  # float64 beyond float32's range
    assert normalize_channels(wide, "layer")[0][0, 0].tolist() == [255, 0, 128]


def test_empty_input():
    out, flags = normalize_channels(np.zeros((0, 4, 4), np.float32))
    assert out.shape == (0, 4, 4) and flags.any().shape == (0,)


def test_flags_helpers_are_json_ready():
    flags = ChannelFlags(dead=np.array([True, False, False]),
                         constant=np.array([True, False, True]),
                         nonfinite=np.array([False, True, False]))
    assert flags.any().tolist() == [True, True, True]
    idx = flags.indices()
    assert idx == {"dead": [0], "constant": [0, 2], "nonfinite": [1]}
    assert all(type(i) is int for v in idx.values() for i in v)


def test_finite_range():
    assert finite_range(np.array([3.0, np.nan, -2.0, np.inf])) == (-2.0, 3.0)
    assert finite_range(np.array([np.nan, np.inf])) == (0.0, 0.0)
    assert finite_range(np.array([], np.float32)) == (0.0, 0.0)
    assert finite_range(np.arange(5, dtype=np.int8)) == (0.0, 4.0)
    lo, hi = finite_range(np.zeros((2, 3, 3), np.float32))
    assert type(lo) is float and (lo, hi) == (0.0, 0.0)


def test_vgg_sized_layer_is_fast():
    x = np.random.default_rng(0).standard_normal((64, 224, 224)).astype(np.float32)
    normalize_channels(x)
    best = min(_timed(lambda: normalize_channels(x)) for _ in range(3))
    assert best < 0.1  # typically ~7 ms; a generous bound so slow CI machines pass


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _awkward_layer(h: int, w: int, c: int, dtype=np.float32) -> np.ndarray:
    """(H, W, C) ReLU-like maps with every kind of channel: constant, dead, NaN/inf, huge, tiny spans."""
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal((h, w, c)), 0) * rng.uniform(0.1, 10, c)
    x[..., 1] = 0.0
    x[..., 2] = 3.0
    x[5, 6, 3] = np.nan
    x[7, 1, 4] = np.inf
    x[..., 5] = np.nan
    x[..., 6] *= 1e20
    x[..., 7] = 1e6 + x[..., 7] * 1e-3
    return x.astype(dtype)


@pytest.mark.parametrize("method", NORMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_channels_last_and_chunking_give_the_same_indices(method, dtype, monkeypatch):
    import convlens.core.normalize as normalize

    x = _awkward_layer(64, 48, 20, np.float32 if dtype == np.int16 else dtype)
    if dtype == np.int16:
        x = np.nan_to_num(x, nan=1, posinf=2).clip(-3e4, 3e4).astype(np.int16)
    first = np.ascontiguousarray(np.moveaxis(x, -1, 0))
    vr = (0.5, 4.0) if method == "global" else None
    monkeypatch.setattr(normalize, "_CHUNK_BYTES", 1 << 40)  # the whole layer at once
    whole, whole_flags = normalize_channels(first, method, value_range=vr)
    for chunk in (1, 3 * 64 * 48 * 4, 7 * 64 * 48 * 8):  # one channel, 3 (float32) or 7 (float64) at a time
        monkeypatch.setattr(normalize, "_CHUNK_BYTES", chunk)
        for out, flags in (normalize_channels(first, method, value_range=vr),
                           normalize_channels(x, method, value_range=vr, channels_last=True),
                           normalize_channels(x[:, :, :13], method, value_range=vr, channels_last=True)):
            c = out.shape[0]
            assert out.shape == (c, 64, 48) and out.dtype == np.uint8
            assert np.array_equal(out, whole[:c]) or (method == "layer" and c == 13)
            for name in ("dead", "constant", "nonfinite"):
                assert np.array_equal(getattr(flags, name), getattr(whole_flags, name)[:c])
    if method != "layer":  # a channel subset keeps each channel's own indices (not the layer's scale)
        sub, _ = normalize_channels(x[:, :, :13], method, value_range=vr, channels_last=True)
        assert np.array_equal(sub, whole[:13])
    if dtype == np.float32:
        assert whole_flags.indices()["nonfinite"] == [3, 4, 5]
        assert whole_flags.indices()["dead"] == [1]


def test_channels_last_shape_check_names_the_layout():
    with pytest.raises(BadArgument, match=r"\(H, W, C\)"):
        normalize_channels(np.zeros((4, 4), np.float32), channels_last=True)
    out, flags = normalize_channels(np.zeros((3, 0, 5), np.float32), channels_last=True)
    assert out.shape == (5, 3, 0) and flags.dead.shape == (5,)
