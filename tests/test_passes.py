"""The one streaming pass: fan-out, order, bounded memory, errors, norm="global", progress.

A framework-free adapter whose layer ``i`` outputs the constant ``10 * image + i``
makes every expectation exact.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from convlens import BadArgument, LayerInfo
from convlens.passes import CollectMaps, MapConsumer, PassConsumer, StatsConsumer, run_pass
from convlens.render.maps import RenderOptions

LAYERS = [LayerInfo(0, "in", "Input", "input", (2, 2, 1))] + [
    LayerInfo(i, f"l{i}", "Conv", "conv", (2, 2, 3)) for i in range(1, 7)]


class Adapter:
    framework, name, input_shape, preprocess = "fake", "fake", (2, 2, 1), "raw"
    class_names, class_names_source, final_activation = None, "", None

    def __init__(self) -> None:
        self.runs = 0
        self.produced = 0
        self.lock = threading.Lock()

    def layers(self):
        return LAYERS

    def run(self, batch, wanted, on_output):
        image = int(batch[0, 0, 0, 0])
        self.runs += 1
        for i in wanted:
            with self.lock:
                self.produced += 1
            on_output(i, np.full((1, 2, 2, 3), 10.0 * image + i, np.float32))
        return np.array([[float(image)]], np.float32)

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

    def on_layer(self, image, layer, array):
        time.sleep(self.delay)
        with self.lock:
            self.seen.append((image, layer.index, float(array.flat[0]), array.shape))

    def on_image(self, image, output):
        with self.lock:
            self.at_image[image] = {i for k, i, _, _ in self.seen if k == image}
        assert output.tolist() == [[float(image)]]

    def finish(self):
        self.finished += 1


@pytest.mark.parametrize("workers", [0, 2])
def test_every_consumer_sees_every_layer_of_every_image_once(workers):
    adapter, a, b = Adapter(), Recorder(), Recorder()
    outputs = run_pass(adapter, LAYERS[1:], batches(3), [a, b], workers=workers)
    assert [o.tolist() for o in outputs] == [[[0.0]], [[1.0]], [[2.0]]] and adapter.runs == 3
    for r in (a, b):
        assert sorted(r.seen) == [(k, i, 10.0 * k + i, (1, 2, 2, 3)) for k in range(3) for i in range(1, 7)]
        assert r.at_image == {k: set(range(1, 7)) for k in range(3)}  # on_image after all its layers
        assert r.finished == 1


def test_memory_is_bounded_while_work_overlaps():
    adapter = Adapter()
    waiting: list[int] = []

    class Watch(Recorder):
        def on_layer(self, image, layer, array):
            with adapter.lock:
                waiting.append(adapter.produced - len(self.seen))
            super().on_layer(image, layer, array)

    run_pass(adapter, LAYERS[1:], batches(2), [Watch(delay=0.01)], workers=2, in_flight=3)
    # outputs produced but not consumed: the queued ones plus the one the forward pass holds
    assert max(waiting) <= 3 + 1
    assert max(waiting) >= 2  # the forward pass ran ahead of the consumers


def test_a_consumer_error_stops_the_pass_after_its_image():
    adapter = Adapter()

    class Broken(Recorder):
        def on_layer(self, image, layer, array):
            if layer.index == 3:
                raise BadArgument("cannot draw l3")

    after = Recorder()
    with pytest.raises(BadArgument, match="cannot draw l3"):
        run_pass(adapter, LAYERS[1:], batches(3), [Broken(), after])
    assert adapter.runs == 1 and after.finished == 0


def test_deferred_jobs_run_and_their_errors_propagate():
    ran = []

    class Later(PassConsumer):
        def on_image(self, image, output):
            return [lambda: ran.append(image)]

    run_pass(Adapter(), LAYERS[1:3], batches(3), [Later()])
    assert sorted(ran) == [0, 1, 2]

    class Fails(PassConsumer):
        def on_image(self, image, output):
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
    run_pass(Adapter(), LAYERS[1:4], batches(2), [consumer])
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
    assert list(collect.arrays) == ["l1", "l2"] and collect.arrays["l2"][:, 0, 0, 0].tolist() == [2.0, 12.0]
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

    run_pass(Adapter(), LAYERS[1:4], batches(2), [PassConsumer()], progress=Spy(), label="x", unit=unit)
    assert events == [("start", steps, "x"), *[("advance", 1)] * steps, ("finish",)]
