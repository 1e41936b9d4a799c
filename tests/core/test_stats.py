"""Channel health statistics on hand-made activations: exact numbers, flags, streaming, NaN/inf."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from convlens import BadArgument
from convlens.core import reduce as reduce_module
from convlens.core.normalize import normalize_channels
from convlens.core.stats import LayerStats, StatsAccumulator, channel_flags, channel_stats


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # "no RuntimeWarning escapes": any warning inside a test fails it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def one_image() -> np.ndarray:
    """(1, 2, 2, 4): a varying channel, a dead one, a constant one, a symmetric one."""
    x = np.zeros((1, 2, 2, 4), np.float32)
    x[0, :, :, 0] = [[0, 1], [2, 5]]      # mean 2, std sqrt(3.5), one zero in four
    x[0, :, :, 1] = 0                     # dead
    x[0, :, :, 2] = 3                     # constant, not dead
    x[0, :, :, 3] = [[-1, 1], [-1, 1]]    # mean 0, std 1
    return x


def test_exact_numbers_and_flags_of_one_image():
    s = channel_stats(one_image(), index=7, name="conv2", type="Conv2D")
    assert (s.index, s.name, s.type, s.images, s.channels, s.values_per_channel) == (7, "conv2", "Conv2D", 1, 4, 4)
    assert s.mean.dtype == np.float64 and s.mean.shape == (4,)
    assert s.mean.tolist() == [2.0, 0.0, 3.0, 0.0]
    assert s.std.tolist() == pytest.approx([math.sqrt(3.5), 0.0, 0.0, 1.0], rel=1e-15)
    assert s.std[1] == 0.0 and s.std[2] == 0.0  # exactly, not a rounding residue
    assert s.min.tolist() == [0.0, 0.0, 3.0, -1.0]
    assert s.max.tolist() == [5.0, 0.0, 3.0, 1.0]
    assert s.zero_fraction.tolist() == [0.25, 1.0, 0.0, 0.0]
    assert s.dead.tolist() == [False, True, False, False]
    assert s.constant.tolist() == [False, True, True, False]
    assert s.nonfinite.tolist() == [False] * 4
    assert s.count.tolist() == [4, 4, 4, 4]
    assert s.flagged == 2
    assert s.summary() == "conv2: 1 of 4 channels is zero for this image; 1 more is constant"


def test_layer_totals_pool_the_channels_exactly():
    x = one_image()
    s = channel_stats(x)
    flat = x.reshape(-1).astype(np.float64)
    assert s.layer_mean() == pytest.approx(flat.mean(), rel=1e-15)
    assert s.layer_std() == pytest.approx(flat.std(), rel=1e-14)
    assert (s.layer_min(), s.layer_max()) == (-1.0, 5.0)
    assert s.mean_zero_fraction() == 5 / 16


def test_constant_channel_of_an_inexact_value_has_zero_std_and_its_value_as_mean():
    x = np.full((3, 5, 5, 2), 0.1, np.float32)
    x[..., 1] = np.arange(75, dtype=np.float32).reshape(3, 5, 5)
    s = channel_stats(x)
    assert s.std[0] == 0.0 and s.mean[0] == float(np.float32(0.1))
    assert s.constant.tolist() == [True, False] and not s.dead.any()


def test_a_channel_dead_in_one_image_but_not_the_other_is_not_dead():
    a = np.zeros((1, 2, 2, 2), np.float32)
    b = np.zeros((1, 2, 2, 2), np.float32)
    b[0, 1, 1, 0] = 4.0  # channel 0 lives in image b only; channel 1 is dead in both
    acc = StatsAccumulator(3, "relu", "ReLU")
    acc.add(a)
    assert acc.result().dead.tolist() == [True, True]
    acc.add(b)
    s = acc.result()
    assert s.images == 2
    assert s.dead.tolist() == [False, True] and s.constant.tolist() == [False, True]
    # channel 0 over both images: seven zeros and a 4
    assert s.mean[0] == 0.5 and s.std[0] == pytest.approx(math.sqrt(16 / 8 - 0.25), rel=1e-15)
    assert s.zero_fraction.tolist() == [7 / 8, 1.0]
    assert (s.min[0], s.max[0]) == (0.0, 4.0)
    assert s.summary() == "relu: 1 of 2 channels is zero for these 2 images"


def test_streaming_equals_one_batch_and_numpy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 6, 7, 9)) * rng.uniform(0.1, 10, 9) + rng.uniform(-5, 5, 9)).astype(np.float32)
    x[x < -3] = 0  # some exact zeros
    whole = channel_stats(x)
    acc = StatsAccumulator(0, "")
    for image in x:
        acc.add(image[None])
    streamed = acc.result()
    ref = x.reshape(-1, 9).astype(np.float64)
    for s in (whole, streamed):
        assert s.images == 5
        np.testing.assert_allclose(s.mean, ref.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.std, ref.std(axis=0), rtol=1e-12)
        assert s.min.tolist() == ref.min(axis=0).tolist() and s.max.tolist() == ref.max(axis=0).tolist()
        assert s.zero_fraction.tolist() == ((ref == 0).sum(axis=0) / ref.shape[0]).tolist()


def test_chunks_inside_one_batch_merge_like_one_pass(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 13, 11, 3)).astype(np.float32) + 100
    reference = channel_stats(x)
    # the chunks are core.reduce's (StatsAccumulator folds its reductions)
    monkeypatch.setattr(reduce_module, "_CHUNK_VALUES", 7)  # 2 rows of 3 channels per chunk, 143 chunks
    chunked = channel_stats(x)
    np.testing.assert_allclose(chunked.mean, reference.mean, rtol=1e-13)
    np.testing.assert_allclose(chunked.std, reference.std, rtol=1e-11)
    assert chunked.zero_fraction.tolist() == reference.zero_fraction.tolist()


def test_numerically_stable_for_a_large_offset_and_tiny_spread():
    # A million float32 values around 1e4 with std 1e-2: float32 E[x^2] - E[x]^2 returns noise.
    rng = np.random.default_rng(2)
    v = (1e4 + 1e-2 * rng.standard_normal(1_000_000)).astype(np.float32)
    ref = v.astype(np.float64)
    one = channel_stats(v.reshape(1, 1000, 1000, 1))
    acc = StatsAccumulator(0, "big")
    for part in v.reshape(10, 1, 100, 1000, 1):  # ten "images" folded one at a time
        acc.add(part)
    for s in (one, acc.result()):
        assert s.mean[0] == pytest.approx(ref.mean(), rel=1e-13)
        assert s.std[0] == pytest.approx(ref.std(), rel=1e-6)
        assert s.std[0] == pytest.approx(1e-2, rel=0.02)
        assert not s.constant[0]


def test_nan_and_inf_are_left_out_and_flagged():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, :, 0] = [1, 2, 3, np.nan]           # statistics of [1, 2, 3]
    x[0, 0, :, 1] = [0, 0, np.inf, -np.inf]     # every finite value is 0: dead, and non-finite
    x[0, 0, :, 2] = np.nan                      # nothing finite: statistics undefined
    x[0, 0, :, 3] = [5, 5, 5, np.nan]           # constant over its finite values
    s = channel_stats(x, name="bad")
    assert s.nonfinite.tolist() == [True, True, True, True]
    assert s.count.tolist() == [3, 2, 0, 3]
    assert s.mean[0] == 2.0 and s.std[0] == pytest.approx(math.sqrt(2 / 3), rel=1e-15)
    assert (s.min[0], s.max[0], s.zero_fraction[0]) == (1.0, 3.0, 0.0)
    assert (s.mean[1], s.std[1], s.zero_fraction[1]) == (0.0, 0.0, 1.0)
    assert np.isnan([s.mean[2], s.std[2], s.min[2], s.max[2], s.zero_fraction[2]]).all()
    assert (s.mean[3], s.std[3]) == (5.0, 0.0)
    assert s.dead.tolist() == [False, True, False, False]
    assert s.constant.tolist() == [False, True, False, True]
    assert s.summary() == "bad: 1 of 4 channels is zero for this image; 1 more is constant; 4 hold NaN or inf"
    d = s.as_dict()
    text = json.dumps(d, allow_nan=False)  # valid JSON: NaN became null
    back = json.loads(text)
    assert back["mean"][2] is None and back["mean"][0] == 2.0
    assert back["flags"] == {"dead": [1], "constant": [1, 3], "nonfinite": [0, 1, 2, 3]}
    assert back["layer"]["min"] == 0.0 and back["layer"]["max"] == 5.0


def test_a_nan_seen_in_one_image_stays_flagged():
    acc = StatsAccumulator(0, "x")
    bad = np.ones((1, 2, 2, 1), np.float32)
    bad[0, 0, 0, 0] = np.nan
    acc.add(bad)
    acc.add(np.ones((1, 2, 2, 1), np.float32))
    s = acc.result()
    assert s.nonfinite.tolist() == [True] and s.count.tolist() == [7]
    assert s.constant.tolist() == [True] and s.mean[0] == 1.0


def test_flags_agree_with_normalize_channels():
    rng = np.random.default_rng(3)
    for trial in range(20):
        x = rng.choice([0.0, 0.0, 1.5, -2.0, np.nan, np.inf], size=(1, 3, 2, 12), p=[.4, .2, .2, .1, .05, .05])
        x[..., trial % 12] = 0.0
        s = channel_stats(x.astype(np.float32))
        _, flags = normalize_channels(np.moveaxis(x[0], -1, 0))
        assert s.dead.tolist() == flags.dead.tolist()
        assert s.constant.tolist() == flags.constant.tolist()
        assert s.nonfinite.tolist() == flags.nonfinite.tolist()
        assert s.flags.indices() == flags.indices()


def test_channel_flags_from_extremes():
    f = channel_flags(np.array([3, 3, 0, 0, 2]), np.array([0.0, 1.0, 0.0, 0.0, -1.0]),
                      np.array([0.0, 1.0, 0.0, 0.0, 2.0]), np.array([False, True, True, False, False]))
    assert f.dead.tolist() == [True, False, False, False, False]
    assert f.constant.tolist() == [True, True, False, False, False]
    assert f.nonfinite.tolist() == [False, True, True, False, False]


def test_vectors_signals_and_scalars():
    vec = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]], np.float32)  # (N=2, C=3): dense outputs
    s = channel_stats(vec)
    assert (s.images, s.channels, s.values_per_channel) == (2, 3, 1)
    assert s.mean.tolist() == [2.0, 0.0, 2.0] and s.std.tolist() == [1.0, 0.0, 0.0]
    assert s.dead.tolist() == [False, True, False] and s.constant.tolist() == [False, True, True]
    assert s.summary() == ": 1 of 3 channels is zero for these 2 images; 1 more is constant"
    one = channel_stats(vec[:1])  # one value per unit: constant by definition, not worth a mention
    assert one.constant.all() and one.summary() == ": 1 of 3 channels is zero for this image"

    sig = np.zeros((1, 6, 2), np.float32)  # (N, L, C): 1-D maps
    sig[0, :, 0] = [0, 0, 0, 1, 1, 1]
    s = channel_stats(sig, name="conv1d")
    assert (s.channels, s.values_per_channel) == (2, 6)
    assert s.mean.tolist() == [0.5, 0.0] and s.std.tolist() == [0.5, 0.0]
    assert s.zero_fraction.tolist() == [0.5, 1.0] and s.dead.tolist() == [False, True]

    s = channel_stats(np.array([0.0, 2.0, 4.0]))  # (N,): one value per image, one channel
    assert (s.images, s.channels, s.mean.tolist()) == (3, 1, [2.0])


def test_integer_and_float64_inputs():
    s = channel_stats(np.array([[[[0, 2]], [[4, 2]]]], np.uint8))
    assert s.mean.tolist() == [2.0, 2.0] and s.constant.tolist() == [False, True]
    big = np.array([[1e300, -1e300]], np.float64)  # squares overflow float64: inf, no warning
    s = channel_stats(big)
    assert s.constant.all() and s.mean.tolist() == [1e300, -1e300]


def test_summary_grammar():
    x = np.zeros((1, 1, 2, 512), np.float32)
    x[0, 0, 1, 37:] = np.arange(1, 476, dtype=np.float32)  # channels 37-511 hold a 0 and a positive value
    s = channel_stats(x, name="block5_conv3")
    assert s.summary() == "block5_conv3: 37 of 512 channels are zero for this image"
    s = channel_stats(np.ones((3, 1), np.float32), name="d")  # one unit, 3 images
    assert s.summary() == "d: 0 of 1 channel is zero for these 3 images; 1 more is constant"


def test_as_dict_is_complete_and_json_ready():
    s = channel_stats(one_image(), index=2, name="c<1>", type="Conv2D")
    d = json.loads(json.dumps(s.as_dict(), allow_nan=False))
    assert d["name"] == "c<1>" and d["index"] == 2 and d["channels"] == 4 and d["images"] == 1
    assert d["mean"] == [2.0, 0.0, 3.0, 0.0] and d["zero_fraction"] == [0.25, 1.0, 0.0, 0.0]
    assert d["dead"] == [False, True, False, False] and d["constant"] == [False, True, True, False]
    assert d["counts"] == {"dead": 1, "constant": 2, "nonfinite": 0, "flagged": 2}
    assert d["summary"] == s.summary()
    for key in ("std", "min", "max", "nonfinite", "count"):
        assert len(d[key]) == 4


def test_result_is_a_snapshot():
    acc = StatsAccumulator(0, "x")
    acc.add(np.zeros((1, 2, 2, 1), np.float32))
    first = acc.result()
    acc.add(np.ones((1, 2, 2, 1), np.float32))
    assert isinstance(first, LayerStats) and first.dead.tolist() == [True] and first.images == 1
    assert acc.result().dead.tolist() == [False]


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((1, 2, 2, 2, 2)), "shape"),
    (np.zeros((1, 2), complex), "real numbers"),
    (np.array("text"), "real numbers"),
])
def test_bad_input_is_a_bad_argument(bad, needle):
    with pytest.raises(BadArgument, match=needle):
        channel_stats(bad)


def test_channel_count_must_not_change_and_result_needs_data():
    acc = StatsAccumulator(4, "conv")
    with pytest.raises(BadArgument, match="add"):
        acc.result()
    acc.add(np.zeros((1, 2, 2, 3)))
    with pytest.raises(BadArgument, match="5 channels after 3"):
        acc.add(np.zeros((1, 2, 2, 5)))
