"""One streaming forward pass that every consumer of layer outputs feeds from.

:func:`run_pass` runs each prepared image once through ``adapter.run`` and
hands every captured layer output to every :class:`Consumer` (feature-map
PNGs, channel statistics, the report's grids, later heatmaps and the dataset
view), so that a report needs ONE forward pass per image for its maps and its
statistics together.

How the work flows::

    main thread:  adapter.run(image k) ──on_output(i, a)──► submit job(k, i, a)
                                                                   │ (at most ``in_flight`` queued)
    2 workers:    job: consumer.on_layer(k, layer i, a) for every consumer
    main thread:  after image k's jobs: consumer.on_image(k, output) ─► deferred jobs (workers)
    main thread:  after every job of every image: consumer.finish()

* **Memory is bounded**: a semaphore lets at most ``in_flight`` layer outputs
  (4 by default) wait for or sit in the workers; the forward pass blocks on
  the fifth. Consumers keep what they choose (a reduced map for
  ``norm="global"``, running sums for statistics), never every output.
* **Work overlaps**: reducing, drawing, encoding and statistics run on two
  worker threads beside the forward pass and each other (numpy and deflate
  release the GIL).
* **Errors propagate**: an exception in a consumer stops the pass after the
  image it happened on (the image's jobs are awaited), and is raised from
  :func:`run_pass` as it was; ``finish`` is not called then.

A consumer's ``on_layer`` runs on a worker thread. Two workers may call it at
once for two different layers of the same image; all of image ``k``'s calls
return before ``on_image(k, ...)`` is called and before image ``k + 1`` starts,
so one layer's outputs arrive image by image. Jobs returned by ``on_image``
may still run while the next image's layers arrive.

:class:`MapConsumer` is the shared base of every consumer that draws
feature-map grids: it does the ``norm="global"`` buffering (one value range
over all drawn layers of an image) once, for ``save_maps`` and the report.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np

from ._errors import BadArgument
from ._progress import NullProgress, Progress
from .adapters.base import Adapter
from .core.layers import LayerInfo
from .core.normalize import finite_range, union_range
from .core.stats import LayerStats, StatsAccumulator
from .render.maps import RenderOptions, reduce_map

__all__ = ["CollectMaps", "Consumer", "MapConsumer", "PassConsumer", "StatsConsumer", "run_pass"]

#: Deferred work a consumer hands back from ``on_image``: run on the pass's workers.
Job = Callable[[], None]


@runtime_checkable
class Consumer(Protocol):
    """What :func:`run_pass` feeds.

    ``on_layer`` gets the adapter's canonical outputs as a batch of one:
    ``(1, H, W, C)`` maps, ``(1, L, C)`` signals or ``(1, C)`` vectors, float32.
    It must not keep the array beyond what it needs (memory is bounded by
    not keeping outputs).
    """

    def on_layer(self, image: int, layer: LayerInfo, array: np.ndarray) -> None:
        """One layer's output for image number ``image`` (a worker thread)."""
        ...

    def on_image(self, image: int, output: np.ndarray) -> Iterable[Job] | None:
        """After every ``on_layer`` of image ``image`` returned (the calling thread).

        Args:
            image: the image's number.
            output: the model's output for it, batch first (``(1, K)`` for a classifier).

        Returns:
            Jobs to run on the pass's workers (e.g. drawing the layers buffered
            for ``norm="global"``), or ``None``.
        """
        ...

    def finish(self) -> None:
        """After every job of every image (the calling thread); not called when the pass failed."""
        ...


class PassConsumer:
    """A :class:`Consumer` that does nothing: subclass it and override what you need."""

    def on_layer(self, image: int, layer: LayerInfo, array: np.ndarray) -> None:
        pass

    def on_image(self, image: int, output: np.ndarray) -> Iterable[Job] | None:
        return None

    def finish(self) -> None:
        pass


def run_pass(adapter: Adapter, layers: Sequence[LayerInfo], batches: Sequence[np.ndarray],
             consumers: Sequence[Consumer], *, progress: Progress | None = None, label: str = "",
             unit: str = "layer", workers: int = 2, in_flight: int = 4) -> list[np.ndarray]:
    """Run each image once through the model and feed every selected layer to every consumer.

    Args:
        adapter: the model.
        layers: the selected layers (rows of ``adapter.layers()``).
        batches: per image, its ``(H, W, C)`` float32 preprocessed input
            (:attr:`convlens.images.PreparedBatch.arrays`); images may differ in size.
        consumers: fed in this order for each layer output, in one worker job.
        progress: told ``start(total, label)``, ``advance()`` per step and ``finish()``.
        label: the progress label.
        unit: a progress step is a ``"layer"`` output consumed (``images x layers``
            steps) or a whole ``"image"``.
        workers: worker threads (2: the forward pass, two drawing threads and
            deflate keep two cores busy; more only adds memory). ``0`` runs
            every consumer inline, inside the adapter's callback: memory then
            holds one layer output at a time, and no output outlives its callback
            (channel statistics, whose folding is cheap next to the forward pass).
        in_flight: at most this many layer outputs (and deferred jobs) queued at once.

    Returns:
        The model's output per image, each batch first (``(1, K)`` for a classifier).
    """
    if unit not in ("layer", "image"):
        raise BadArgument(f"unit must be 'layer' or 'image', not {unit!r}")
    progress = progress or NullProgress()
    wanted = [layer.index for layer in layers]
    table = adapter.layers()
    progress.start(len(batches) * (len(wanted) if unit == "layer" else 1), label)
    gate = threading.BoundedSemaphore(in_flight)
    outputs: list[np.ndarray] = []

    def bounded(job: Job) -> Job:
        def run() -> None:
            try:
                job()
            finally:
                gate.release()
        return run

    if workers == 0:
        return _run_inline(adapter, wanted, table, batches, consumers, progress, unit)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        live: list[Future[None]] = []  # every job not yet checked, to cancel them on failure

        def submit(job: Job) -> Future[None]:
            gate.acquire()  # blocks the forward pass while `in_flight` jobs wait
            future = pool.submit(bounded(job))
            live.append(future)
            return future

        try:
            for k, batch in enumerate(batches):
                pending: list[Future[None]] = []

                def on_output(i: int, a: np.ndarray, k: int = k, pending: list = pending) -> None:
                    info = table[i]

                    def job() -> None:
                        for consumer in consumers:
                            consumer.on_layer(k, info, a)
                        if unit == "layer":
                            progress.advance()

                    pending.append(submit(job))

                output = np.asarray(adapter.run(batch[None], wanted, on_output))
                for f in pending:
                    f.result()  # the image's layers are all consumed (or the first error is raised)
                outputs.append(output)
                for consumer in consumers:
                    for deferred in consumer.on_image(k, output) or ():
                        submit(deferred)
                if unit == "image":
                    progress.advance()
                for f in [f for f in live if f.done()]:
                    f.result()  # a failed deferred job stops the pass here
                live[:] = [f for f in live if not f.done()]
            for f in live:
                f.result()
        except BaseException:
            for f in live:
                f.cancel()
            raise
    for consumer in consumers:
        consumer.finish()
    progress.finish()
    return outputs


def _run_inline(adapter: Adapter, wanted: list[int], table: list[LayerInfo], batches: Sequence[np.ndarray],
                consumers: Sequence[Consumer], progress: Progress, unit: str) -> list[np.ndarray]:
    """:func:`run_pass` with ``workers=0``: every consumer called on this thread, in the callback."""
    outputs = []
    for k, batch in enumerate(batches):
        def on_output(i: int, a: np.ndarray, k: int = k) -> None:
            for consumer in consumers:
                consumer.on_layer(k, table[i], a)
            if unit == "layer":
                progress.advance()

        output = np.asarray(adapter.run(batch[None], wanted, on_output))
        outputs.append(output)
        for consumer in consumers:
            for job in consumer.on_image(k, output) or ():
                job()
        if unit == "image":
            progress.advance()
    for consumer in consumers:
        consumer.finish()
    progress.finish()
    return outputs


# ---------------------------------------------------------------- shared consumers


class CollectMaps(PassConsumer):
    """Keeps every output, stacked per layer after the pass (``Lens.feature_maps``).

    Attributes:
        arrays: after the pass, layer name -> ``(N, ...)`` float32, the images in
            order; a layer the adapter never produced is left out.
    """

    def __init__(self, layers: Sequence[LayerInfo], n_images: int) -> None:
        self._layers = list(layers)
        self._got: dict[int, list[np.ndarray | None]] = {layer.index: [None] * n_images
                                                          for layer in self._layers}
        self.arrays: dict[str, np.ndarray] = {}

    def on_layer(self, image: int, layer: LayerInfo, array: np.ndarray) -> None:
        self._got[layer.index][image] = array[0]

    def finish(self) -> None:
        for layer in self._layers:
            got = [a for a in self._got[layer.index] if a is not None]
            if got:
                self.arrays[layer.name] = np.stack(got)


class StatsConsumer(PassConsumer):
    """Channel statistics of each selected layer over every image (:mod:`convlens.core.stats`).

    Attributes:
        accumulators: by layer index, the running statistics.
    """

    def __init__(self, layers: Sequence[LayerInfo]) -> None:
        self.accumulators = {layer.index: StatsAccumulator(layer.index, layer.name, layer.type)
                             for layer in layers}
        # one lock per layer: a deferred job could in principle overlap the next image's outputs
        self._locks = {i: threading.Lock() for i in self.accumulators}

    def on_layer(self, image: int, layer: LayerInfo, array: np.ndarray) -> None:
        with self._locks[layer.index]:
            self.accumulators[layer.index].add(array)

    def missing(self) -> list[str]:
        """Names of the selected layers that no image produced."""
        return [acc.name for acc in self.accumulators.values() if acc.images == 0]

    def results(self) -> list[LayerStats]:
        """Statistics of every layer that was produced at least once, in selection order."""
        return [acc.result() for acc in self.accumulators.values() if acc.images]


class MapConsumer(PassConsumer):
    """Base of the consumers that draw feature-map grids; owns ``norm="global"``.

    With ``norm`` other than ``"global"`` each layer is drawn at once, on the
    worker. With ``"global"`` each layer is reduced (the small picture that
    will be drawn, see :func:`~convlens.render.maps.reduce_map`) and kept
    until the image's last layer, then every kept layer is drawn with the
    union of their finite value ranges, in deferred jobs.

    Subclasses implement :meth:`draw`.

    Attributes:
        options: how maps are drawn.
        global_ranges: with ``norm="global"``, per image number the value range
            its layers were drawn with.
    """

    def __init__(self, options: RenderOptions) -> None:
        self.options = options
        self.global_ranges: dict[int, tuple[float, float]] = {}
        self._buffered: dict[int, list[tuple[LayerInfo, np.ndarray, int, tuple[int, ...]]]] = {}
        self._lock = threading.Lock()

    def on_layer(self, image: int, layer: LayerInfo, array: np.ndarray) -> None:
        x = array[0]
        total = int(array.shape[-1]) if array.ndim > 1 else 1
        if self.options.norm == "global":
            reduced = reduce_map(x, self.options)
            with self._lock:
                self._buffered.setdefault(image, []).append((layer, reduced, total, tuple(x.shape)))
        else:
            self.draw(image, layer, x, total, tuple(x.shape), None)

    def on_image(self, image: int, output: np.ndarray) -> Iterable[Job] | None:
        with self._lock:
            buffered = self._buffered.pop(image, [])
        if not buffered:
            return None
        vr = self.global_ranges[image] = union_range(finite_range(r) for _, r, _, _ in buffered)
        return [functools.partial(self.draw, image, layer, reduced, total, shape, vr)
                for layer, reduced, total, shape in buffered]

    def draw(self, image: int, layer: LayerInfo, x: np.ndarray, total: int, shape: tuple[int, ...],
             value_range: tuple[float, float] | None) -> None:
        """Draw one layer of one image (a worker thread).

        Args:
            image: the image's number.
            layer: the layer.
            x: its output for the image without the batch axis, or, when
                ``value_range`` is given, already reduced by ``reduce_map``.
            total: the layer's channel count.
            shape: the layer's output shape for one image (before any reduction).
            value_range: ``norm="global"``'s range for this image, else ``None``.
        """
        raise NotImplementedError
