"""The one batch-first pass: batching, fan-out, order, bounded memory, errors, the missing-layer
policy, reductions, norm="global", progress.

A framework-free adapter whose layer ``i`` outputs the constant ``10 * image + i`` for each
image of the batch makes every expectation exact.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from convlens import BadArgument, LayerInfo
from convlens.core.layers import LayerInfo as Info
from convlens.core.memory import per_sample_bytes
from convlens.core.reduce import REDUCTIONS, reduce_channels
from convlens.core.stats import StatsAccumulator
from convlens.passes import (
    Batch,
    CollectMaps,
    MapConsumer,
    PassConsumer,
    StatsConsumer,
    call_model,
    make_batches,
    missing_note,
    run_batches,
    run_pass,
)
from convlens.render.maps import RenderOptions

LAYERS = [LayerInfo(0, "in", "Input", "input", (2, 2, 1))] + [
    LayerInfo(i, f"l{i}", "Conv", "conv", (2, 2, 3)) for i in range(1, 7)]


class Adapter:
    framework, name, input_shape, preprocess = "fake", "fake", (2, 2, 1), "raw"
    class_names, class_names_source, final_activation = None, "", None

    def __init__(self, skip: frozenset[int] = frozenset()) -> None:
        self.runs = 0
        self.sizes: list[int] = []
        self.produced = 0
        self.skip = skip  # layers this model never produces
        self.lock = threading.Lock()

    def layers(self):
        return LAYERS

    def run(self, batch, wanted, on_output):
        images = batch[:, 0, 0, 0].astype(np.float32)
        self.runs += 1
        self.sizes.append(len(batch))
        h, w = batch.shape[1:3]
        for i in wanted:
            if i in self.skip:
                continue
            with self.lock:
                self.produced += 1
            on_output(i, np.broadcast_to(10.0 * images[:, None, None, None] + i,
                                         (len(batch), h, w, 3)).astype(np.float32))
        return images[:, None]

    def kernels(self, index):
        raise NotImplementedError


def batches(n: int) -> list[np.ndarray]:
    """Image k is the constant k (the adapter reads it back)."""
    return [np.full((2, 2, 1), float(k), np.float32) for k in range(n)]


class Recorder(PassConsumer):
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[tuple[int, int, float, tuple]] = []
        self.at_image: dict[int, set[int]] = {}
        self.finished = 0
        self.lock = threading.Lock()

    def on_layer(self, batch, layer, array):
        time.sleep(self.delay)
        assert array.shape[0] == len(batch.images)
        with self.lock:
            for j, image in enumerate(batch.images):
                self.seen.append((image, layer.index, float(array[j].flat[0]), array[j:j + 1].shape))

    def on_batch(self, batch, output):
        with self.lock:
            for image in batch.images:
                self.at_image[image] = {i for k, i, _, _ in self.seen if k == image}
        assert output.tolist() == [[float(image)] for image in batch.images]

    def finish(self):
        self.finished += 1


@pytest.mark.parametrize("workers", [0, 2])
def test_every_consumer_sees_every_layer_of_every_image_once(workers):
    adapter, a, b = Adapter(), Recorder(), Recorder()
    result = run_pass(adapter, LAYERS[1:], batches(3), [a, b], workers=workers, batch_size=1)
    assert [o.tolist() for o in result.outputs] == [[[0.0]], [[1.0]], [[2.0]]] and adapter.runs == 3
    assert result.missing == []
    for r in (a, b):
        assert sorted(r.seen) == [(k, i, 10.0 * k + i, (1, 2, 2, 3)) for k in range(3) for i in range(1, 7)]
        assert r.at_image == {k: set(range(1, 7)) for k in range(3)}  # on_image after all its layers
        assert r.finished == 1


def test_memory_is_bounded_while_work_overlaps():
    adapter = Adapter()
    waiting: list[int] = []

    class Watch(Recorder):
        def on_layer(self, batch, layer, array):
            with adapter.lock:
                waiting.append(adapter.produced - len(self.seen))
            super().on_layer(batch, layer, array)

    run_pass(adapter, LAYERS[1:], batches(2), [Watch(delay=0.01)], workers=2, in_flight=3, batch_size=1)
    # outputs produced but not consumed: the queued ones plus the one the forward pass holds
    assert max(waiting) <= 3 + 1
    assert max(waiting) >= 2  # the forward pass ran ahead of the consumers


@pytest.mark.parametrize("workers", [0, 2])
def test_a_consumer_error_stops_the_pass_after_its_batch(workers):
    adapter = Adapter()

    class Broken(Recorder):
        def on_layer(self, batch, layer, array):
            if layer.index == 3:
                raise BadArgument("cannot draw l3")

    after = Recorder()
    with pytest.raises(BadArgument, match="cannot draw l3"):
        run_pass(adapter, LAYERS[1:], batches(6), [Broken(), after], batch_size=2, workers=workers)
    assert adapter.runs == 1 and adapter.sizes == [2] and after.finished == 0


def test_deferred_jobs_run_and_their_errors_propagate():
    ran = []

    class Later(PassConsumer):
        def on_batch(self, batch, output):
            return [lambda: ran.append(batch.images)]

    run_pass(Adapter(), LAYERS[1:3], batches(3), [Later()], batch_size=2)
    assert sorted(ran) == [(0, 1), (2,)]

    class Fails(PassConsumer):
        def on_batch(self, batch, output):
            def job():
                raise BadArgument("deferred failure")
            return [job]

    with pytest.raises(BadArgument, match="deferred failure"):
        run_pass(Adapter(), LAYERS[1:3], batches(2), [Fails()])


class Drawn(MapConsumer):
    def __init__(self, options):
        super().__init__(options)
        self.calls = []

    def draw(self, image, layer, x, total, shape, value_range):
        self.calls.append((image, layer.index, x.shape, total, shape, value_range))


def test_global_norm_draws_each_image_with_the_union_of_its_layers_ranges():
    consumer = Drawn(RenderOptions(norm="global"))
    run_pass(Adapter(), LAYERS[1:4], batches(2), [consumer], batch_size=2)
    # layer i of image k is the constant 10k + i: image 0 spans 1..3, image 1 spans 11..13
    assert consumer.global_ranges == {0: (1.0, 3.0), 1: (11.0, 13.0)}
    calls = sorted(consumer.calls)
    assert [(k, i, vr) for k, i, _, _, _, vr in calls] == [
        (0, 1, (1.0, 3.0)), (0, 2, (1.0, 3.0)), (0, 3, (1.0, 3.0)),
        (1, 1, (11.0, 13.0)), (1, 2, (11.0, 13.0)), (1, 3, (11.0, 13.0))]
    assert all(x == (3, 2, 2) and total == 3 and shape == (2, 2, 3) for _, _, x, total, shape, _ in calls)


def test_other_norms_draw_each_layer_at_once_unreduced():
    consumer = Drawn(RenderOptions(norm="layer"))
    run_pass(Adapter(), LAYERS[1:3], batches(1), [consumer])
    assert sorted((k, i, x, vr) for k, i, x, _, _, vr in consumer.calls) == [
        (0, 1, (2, 2, 3), None), (0, 2, (2, 2, 3), None)]
    assert consumer.global_ranges == {}


def test_collect_and_stats_consumers():
    collect, stats = CollectMaps(LAYERS[1:3], 2), StatsConsumer(LAYERS[1:3])
    run_pass(Adapter(), LAYERS[1:3], batches(2), [collect, stats])
    assert list(collect.arrays) == ["l1", "l2"] and [a[0, 0, 0] for a in collect.arrays["l2"]] == [2.0, 12.0]
    assert [s.name for s in stats.results()] == ["l1", "l2"] and stats.missing() == []
    assert stats.results()[0].mean.tolist() == [6.0, 6.0, 6.0] and stats.results()[0].images == 2


@pytest.mark.parametrize(("unit", "steps"), [("layer", 6), ("image", 2)])
def test_progress_counts_layers_or_images(unit, steps):
    events = []

    class Spy:
        def start(self, total, label):
            events.append(("start", total, label))

        def advance(self, n=1):
            events.append(("advance", n))

        def finish(self):
            events.append(("finish",))

    run_pass(Adapter(), LAYERS[1:4], batches(2), [PassConsumer()], progress=Spy(), label="x", unit=unit,
             batch_size=1)
    assert events == [("start", steps, "x"), *[("advance", 1)] * steps, ("finish",)]
    events.clear()
    run_pass(Adapter(), LAYERS[1:4], batches(2), [PassConsumer()], progress=Spy(), label="x", unit=unit,
             batch_size=2)  # one batch of two: each step counts both images
    assert events == [("start", steps, "x"), *[("advance", 2)] * (steps // 2), ("finish",)]


# ---------------------------------------------------------------- batching


def sized(shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Image k is the constant k at the given (H, W)."""
    return [np.full((h, w, 1), float(k), np.float32) for k, (h, w) in enumerate(shapes)]


def test_batches_group_consecutive_same_size_images_up_to_batch_size():
    adapter, r = Adapter(), Recorder()
    shapes = [(2, 2)] * 5 + [(3, 4)] * 2 + [(2, 2)]
    result = run_pass(adapter, LAYERS[1:3], sized(shapes), [r], batch_size=2)
    assert adapter.sizes == [2, 2, 1, 2, 1]  # never across a size change, never above batch_size
    assert [float(o[0, 0]) for o in result.outputs] == [float(k) for k in range(8)]
    assert all(o.shape == (1, 1) for o in result.outputs)
    got = sorted(r.seen)
    assert [(k, i) for k, i, _, _ in got] == [(k, i) for k in range(8) for i in (1, 2)]
    assert all(v == 10.0 * k + i for k, i, v, _ in got)
    batches_made = list(make_batches(sized(shapes), LAYERS[1:3], batch_size=3))
    assert [(b.number, b.images, b.inputs.shape) for b in batches_made] == [
        (0, (0, 1, 2), (3, 2, 2, 1)), (1, (3, 4), (2, 2, 2, 1)), (2, (5, 6), (2, 3, 4, 1)),
        (3, (7,), (1, 2, 2, 1))]


def test_the_default_batch_size_follows_the_memory_budget():
    adapter = Adapter()
    run_pass(adapter, LAYERS[1:4], batches(5), [PassConsumer()])
    assert adapter.sizes == [5]  # tiny layers: all five fit the default budget
    per_image = per_sample_bytes(LAYERS[1:4], (2, 2), 4)
    assert per_image == 4 * 3 * 12
    adapter = Adapter()
    run_pass(adapter, LAYERS[1:4], batches(5), [PassConsumer()], memory=per_image * 2)
    assert adapter.sizes == [2, 2, 1]
    adapter = Adapter()
    run_pass(adapter, LAYERS[1:4], batches(3), [PassConsumer()], memory=per_image - 1)
    assert adapter.sizes == [1, 1, 1]  # a budget below one image still runs, one at a time
    with pytest.raises(BadArgument, match="batch_size"):
        run_pass(Adapter(), LAYERS[1:4], batches(1), [PassConsumer()], batch_size=0)


def test_consumers_get_batch_first_arrays_in_image_order():
    arrays = []

    class Keep(PassConsumer):
        def on_layer(self, batch, layer, array):
            arrays.append((batch.number, batch.images, layer.index, array.shape, array[:, 0, 0, 0].tolist()))

    run_pass(Adapter(), LAYERS[1:2], batches(5), [Keep()], batch_size=3, workers=0)
    assert arrays == [(0, (0, 1, 2), 1, (3, 2, 2, 3), [1.0, 11.0, 21.0]),
                      (1, (3, 4), 1, (2, 2, 2, 3), [31.0, 41.0])]


def test_run_batches_takes_the_callers_batches_and_call_model_runs_one():
    adapter, collect = Adapter(), CollectMaps(LAYERS[1:2], 3)
    made = [Batch(0, (0, 1), np.stack(batches(2))), Batch(1, (2,), np.full((1, 2, 2, 1), 2.0, np.float32))]
    result = run_batches(adapter, LAYERS[1:2], iter(made), [collect], images=3)
    assert adapter.sizes == [2, 1] and [float(o[0, 0]) for o in result.outputs] == [0.0, 1.0, 2.0]
    assert [float(a[0, 0, 0]) for a in collect.arrays["l1"]] == [1.0, 11.0, 21.0]
    got = {}
    out = call_model(adapter, made[0], [2], got.__setitem__)
    assert out.tolist() == [[0.0], [1.0]] and got[2][:, 0, 0, 0].tolist() == [2.0, 12.0]


def test_a_forward_of_the_callers_choice_replaces_the_adapters():
    adapter, calls = Adapter(), []

    def forward(inputs, wanted, on_output):
        calls.append((inputs.shape, list(wanted)))
        return adapter.run(inputs, wanted, on_output)

    result = run_pass(adapter, LAYERS[1:3], batches(2), [PassConsumer()], forward=forward, batch_size=2)
    assert calls == [((2, 2, 2, 1), [1, 2])] and len(result.outputs) == 2


# ---------------------------------------------------------------- the missing-layer policy


@pytest.mark.parametrize("workers", [0, 2])
def test_a_layer_without_output_is_listed_once_and_noted_one_way(workers):
    adapter, collect, stats = Adapter(skip=frozenset({2})), CollectMaps(LAYERS[1:4], 3), StatsConsumer(LAYERS[1:4])
    result = run_pass(adapter, LAYERS[1:4], batches(3), [collect, stats], workers=workers)
    assert [layer.name for layer in result.missing] == ["l2"]
    assert list(collect.arrays) == ["l1", "l3"] and stats.missing() == ["l2"]
    assert [s.name for s in stats.results()] == ["l1", "l3"]
    assert missing_note(result.missing) == ("the model produced no output for l2; left out (select other "
                                            "layers, see convlens layers MODEL)")


def test_a_second_output_of_the_same_layer_in_a_batch_is_ignored():
    class Twice(Adapter):
        def run(self, batch, wanted, on_output):
            out = super().run(batch, wanted, on_output)
            for i in wanted:
                on_output(i, np.full((len(batch), 2, 2, 3), -1.0, np.float32))
            return out

    r = Recorder()
    run_pass(Twice(), LAYERS[1:3], batches(2), [r], batch_size=2)
    assert sorted(v for _, _, v, _ in r.seen) == [1.0, 2.0, 11.0, 12.0]


# ---------------------------------------------------------------- reductions


def random_outputs(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((3, 5, 7, 4)) * 3 + 1e3).astype(np.float32)
    a[0, 1, 2, 1] = 0.0
    a[1, :, :, 2] = 0.0
    b = rng.standard_normal((2, 9, 6)).astype(np.float32)
    b[1, 3, 0], b[0, 0, 5], b[1, 2, 5] = np.nan, np.inf, -np.inf
    c = rng.standard_normal((4, 8)).astype(np.float32)
    return [a, b, c]


@pytest.mark.parametrize("seed", [0, 1])
def test_reductions_equal_numpy(seed, monkeypatch):
    import convlens.core.reduce as reduce_module

    monkeypatch.setattr(reduce_module, "_CHUNK_VALUES", 40)  # several chunks per image: the merge counts too
    for x in random_outputs(seed):
        r = reduce_channels(x, REDUCTIONS)
        rows = x.reshape(x.shape[0], -1, x.shape[-1]).astype(np.float64)
        finite = np.isfinite(rows)
        clean = np.where(finite, rows, np.nan)
        assert r["count"].tolist() == finite.sum(axis=1).tolist()
        assert r["nonfinite"].tolist() == (~finite).sum(axis=1).tolist()
        assert r["zeros"].tolist() == (rows == 0).sum(axis=1).tolist()
        assert np.array_equal(r["min"], np.nanmin(clean, axis=1))
        assert np.array_equal(r["max"], np.nanmax(clean, axis=1))
        assert np.array_equal(r["argmax"], np.nanargmax(clean, axis=1))
        assert np.array_equal(r["argmin"], np.nanargmin(clean, axis=1))
        assert r.pop("shape").tolist() == list(x.shape[1:])
        np.testing.assert_allclose(r["sum"], np.nansum(clean, axis=1), rtol=1e-12)
        np.testing.assert_allclose(r["sumsq"], np.nansum(clean ** 2, axis=1), rtol=1e-12)
        m2 = np.nansum((clean - np.nanmean(clean, axis=1, keepdims=True)) ** 2, axis=1)
        np.testing.assert_allclose(r["m2"], m2, rtol=1e-9)
        assert all(v.shape == (x.shape[0], x.shape[-1]) for v in r.values())
    with pytest.raises(BadArgument, match="unknown reduction 'median'"):
        reduce_channels(random_outputs(0)[2], ["max", "median"])


def test_a_consumer_that_declares_reductions_gets_them_instead_of_the_array():
    got, arrays = {}, []

    class Peaks(PassConsumer):
        reductions = {2: ("max", "argmax")}

        def on_layer(self, batch, layer, array):
            arrays.append(layer.index)

        def on_reduced(self, batch, layer, reduced):
            got[(batch.images, layer.index)] = {k: v.tolist() for k, v in reduced.items()}

    run_pass(Adapter(), LAYERS[1:3], batches(3), [Peaks()], batch_size=2)
    assert arrays == [1, 1]
    assert got == {((0, 1), 2): {"max": [[2.0] * 3, [12.0] * 3], "argmax": [[0] * 3, [0] * 3]},
                   ((2,), 2): {"max": [[22.0] * 3], "argmax": [[0] * 3]}}


def test_channel_statistics_from_reductions_equal_the_direct_ones():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 6, 6, 4)) * 1e-2 + 1e4).astype(np.float32)
    x[2, :, :, 1] = 0.0
    x[3, 0, 0, 3] = np.nan
    direct = StatsAccumulator(1, "l1")
    direct.add(x)
    folded = StatsAccumulator(1, "l1")
    for start in (0, 2):  # two batches of per-image reductions
        part = x[start:start + 3] if start == 2 else x[:2]
        folded.add_reduced(reduce_channels(part, ("count", "sum", "m2", "min", "max", "zeros", "nonfinite")))
    a, b = direct.result(), folded.result()
    assert (a.images, a.values_per_channel) == (b.images, b.values_per_channel) == (5, 36)
    for name in ("count", "zero_fraction", "min", "max", "dead", "constant", "nonfinite"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-6)
    assert 0.005 < float(b.std[0]) < 0.02  # the spread of 1e-2 around 1e4 survives


def test_a_layer_table_sizes_free_sides_from_the_input_size():
    free = [Info(1, "c", "Conv", "conv", (None, None, 8), rf_jump=(2, 2))]
    assert per_sample_bytes(free, (10, 20), 10 * 20 * 3) == 4 * 10 * 20 * 3  # the input is larger
    assert per_sample_bytes(free, (100, 40), 0) == 4 * 50 * 20 * 8
