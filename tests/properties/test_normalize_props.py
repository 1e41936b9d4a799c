"""Properties of convlens.core.normalize on any float array.

Whatever a layer outputs (NaN, +-inf, denormals, constants, ranges near the
float limits), every method gives a valid uint8 picture of the same shape, the
flags say exactly which channels are dead, constant or non-finite, and the
picture keeps the order of the values (a larger value never gets a smaller
index within one scale). The range methods put the minimum at 0 and the
maximum at 255, and a channel that is not constant never comes out as one
colour.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convlens._errors import BadArgument
from convlens.core.normalize import NORMS, finite_range, normalize_channels

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _floats(dtype: np.dtype) -> st.SearchStrategy[float]:
    return st.floats(width=8 * dtype.itemsize)  # NaN, +-inf, denormals and the extremes included


@st.composite
def layers(draw, dtypes=FLOAT_DTYPES) -> np.ndarray:
    """A (C, H, W) array; each channel free, constant, from a few values, or tiny or huge."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    c, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    info = np.finfo(dtype)
    channels = []
    for _ in range(c):
        kind = draw(st.sampled_from(["free", "pool", "tiny", "huge", "near"]))
        if kind == "free":
            elements = _floats(dtype)
        elif kind == "pool":  # constants, dead channels, ties, a NaN among zeros
            pool = draw(
                st.lists(
                    st.one_of(
                        st.sampled_from([0.0, -0.0, 1.0, np.nan, np.inf, -np.inf]), _floats(dtype)
                    ),
                    min_size=1,
                    max_size=3,
                )
            )
            elements = st.sampled_from(pool)
        elif kind == "tiny":  # denormals only
            tiny = float(info.smallest_subnormal)
            elements = st.sampled_from([0.0, tiny, 2 * tiny, -tiny, 7 * tiny, float(info.tiny)])
        elif kind == "huge":
            big = float(info.max)
            elements = st.sampled_from([big, -big, big / 3, 0.0, 1.0, big / 1e3])
        else:  # values that differ in their last bits only
            base = draw(
                st.sampled_from([1.0, 1000.0, -3.5] + ([1e7] if dtype.itemsize > 2 else []))
            )
            steps = np.nextafter(np.array(base, dtype), np.array(np.inf, dtype))
            elements = st.sampled_from([float(np.array(base, dtype)), float(steps)])
        channels.append(draw(hnp.arrays(dtype, (h, w), elements=elements)))
    return np.stack(channels)


def _as_float64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


def quietly(*args, **kwargs):
    """normalize_channels with every warning an error: no RuntimeWarning may escape it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return normalize_channels(*args, **kwargs)


def check_flags(x: np.ndarray, flags) -> None:
    for k, ch in enumerate(_as_float64(x)):
        finite = ch[np.isfinite(ch)]
        constant = finite.size > 0 and finite.min() == finite.max()
        assert bool(flags.nonfinite[k]) == (finite.size < ch.size), k
        assert bool(flags.constant[k]) == constant, k
        assert bool(flags.dead[k]) == (constant and finite.min() == 0), k


def check_order(values: np.ndarray, indices: np.ndarray) -> None:
    """Within one scale, a larger value never gets a smaller index; equal values, equal indices."""
    order = np.argsort(values, kind="stable")
    v, i = values[order], indices[order].astype(int)
    assert np.all(np.diff(i) >= 0), (v, i)
    same = v[1:] == v[:-1]
    assert np.all(np.diff(i)[same] == 0)


@settings(max_examples=150)
@given(x=layers(), method=st.sampled_from(["standardize", "minmax", "layer"]))
@example(x=np.array([[[0.0, 1e-45]]], np.float32), method="minmax")
@example(x=np.array([[[0.0, 1e-45]]], np.float32), method="standardize")
@example(x=np.array([[[1.0, 1.0 + 2**-40]]], np.float64), method="minmax")
@example(x=np.array([[[0.0, 1e-300, np.nan]]], np.float64), method="layer")
@example(x=np.array([[[1e7, 1e7, 1e7, 1e7 + 1]]], np.float32), method="standardize")
@example(
    x=np.array([[[0.0, 0.0]], [[1.7976931348623157e308, -1.7976931348623157e308]]]), method="layer"
)
@example(x=np.array([9e17, -9e17] * 2048, np.float32).reshape(1, 64, 64), method="standardize")
@example(x=np.array([[[1e-17, 1e-17, 1.0000001e-17]]], np.float32), method="standardize")
def test_any_layer_gives_a_valid_picture_and_exact_flags(x, method):
    before = x.copy()
    out, flags = quietly(x, method)
    np.testing.assert_array_equal(x, before)  # the input is never modified
    assert out.dtype == np.uint8 and out.shape == x.shape
    check_flags(x, flags)
    wide = _as_float64(x)
    finite = np.isfinite(wide)
    assert np.all(out[~finite] == 0)  # NaN and inf are drawn as index 0
    if method == "layer":
        check_order(wide[finite], out[finite])
        if finite.any() and wide[finite].min() < wide[finite].max():
            assert out[finite].min() == 0 and out[finite].max() == 255
        return
    for k in range(x.shape[0]):
        ok = finite[k]
        values, picture = wide[k][ok], out[k][ok]
        if values.size == 0:
            continue
        check_order(values, picture)
        if flags.constant[k]:
            assert set(picture.tolist()) == {128 if method == "standardize" else 0}
        elif method == "minmax":
            assert picture.min() == 0 and picture.max() == 255
        else:  # standardize: values above the mean land at 128 or more, those below under 128
            assert picture.min() < 128 <= picture.max()


@settings(max_examples=100)
@given(x=layers(), bounds=st.tuples(st.floats(-1e30, 1e30), st.floats(-1e30, 1e30)).map(sorted))
@example(x=np.array([[[0.0, 1.0, 2.0]]], np.float32), bounds=[0.5, 1.5])
@example(x=np.array([[[0.0, 1e-45, 2e-45]]], np.float32), bounds=[0.0, 2e-45])
@example(x=np.array([[[0.0]], [[3.4028235e38]]], np.float32), bounds=[-1.0, 0.0])
@example(x=np.array([[[4.0]]], np.float16), bounds=[0.0, 2.2250738585072014e-308])
def test_a_global_scale_clips_and_keeps_the_order(x, bounds):
    lo, hi = bounds
    out, flags = quietly(x, "global", value_range=(lo, hi))
    assert out.dtype == np.uint8 and out.shape == x.shape
    check_flags(x, flags)
    wide = _as_float64(x)
    finite = np.isfinite(wide)
    assert np.all(out[~finite] == 0)
    check_order(wide[finite], out[finite])
    values = wide[finite]
    if hi > lo:
        assert np.all(out[finite][values <= lo] == 0)
        assert np.all(out[finite][values >= hi] == 255)
    else:
        assert np.all(out == 0)


@settings(max_examples=100)
@given(
    x=st.one_of(
        layers(),
        hnp.arrays(
            st.sampled_from([np.int8, np.uint8, np.int16, np.bool_]),
            hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
        ),
    )
)
def test_finite_range_is_the_smallest_and_largest_finite_value(x):
    lo, hi = finite_range(x)
    wide = np.asarray(x, dtype=np.float64).ravel()
    finite = wide[np.isfinite(wide)]
    if finite.size == 0:
        assert (lo, hi) == (0.0, 0.0)
    else:
        assert (lo, hi) == (finite.min(), finite.max())


@settings(max_examples=60)
@given(
    method=st.one_of(st.sampled_from(NORMS), st.text(max_size=8)),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3),
    value_range=st.one_of(
        st.none(),
        st.tuples(st.floats(), st.floats()),
        st.text(max_size=3),
        st.lists(st.floats(-5, 5), max_size=3),
    ),
)
def test_bad_arguments_raise_convlens_errors(method, shape, value_range):
    x = np.ones(shape, np.float32)
    try:
        out, _ = normalize_channels(x, method, value_range=value_range)
    except BadArgument:
        return
    assert method in NORMS and x.ndim == 3 and out.shape == x.shape


@pytest.mark.parametrize("method", NORMS)
def test_empty_layers(method):
    out, flags = normalize_channels(np.zeros((0, 3, 3), np.float32), method, value_range=(0, 1))
    assert out.shape == (0, 3, 3) and flags.any().shape == (0,)
