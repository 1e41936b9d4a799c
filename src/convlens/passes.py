"""The one batch-first pass engine that every consumer of layer outputs feeds from.

:func:`run_pass` sends the prepared images through the model in batches
(consecutive images of the same size together, up to ``batch_size``, by
default as many as a memory budget allows) and hands every captured layer
output to every :class:`Consumer` (feature-map PNGs, channel statistics, the
report's grids, the dataset view, the timeline), so that a report needs ONE
forward pass for its maps and its statistics together.
:func:`run_batches` does the same for callers that make their own batches
(the dataset view, with its prefetch thread). :func:`call_model` is the one
documented entry point for views that need passes of their own (Score-CAM's
masked inputs, occlusion, integrated gradients, feature visualisation).

How the work flows::

    main thread:  forward(batch b) ──on_output(i, a)──► submit job(b, i, a)
                                                               │ (at most ``in_flight`` queued)
    workers:      job: consumer.on_layer(b, layer i, a (n, ...)) for every consumer
                       (or on_reduced(b, layer i, {op: (n, C)}) for the layers it reduces)
    main thread:  after batch b's jobs: consumer.on_batch(b, output) ─► deferred jobs (workers)
    main thread:  after every job of every batch: consumer.finish()

* **Memory is bounded**: a semaphore lets at most ``in_flight`` layer outputs
  (4 by default) wait for or sit in the workers; the forward pass blocks on
  the fifth. Consumers keep what they choose, never every output.
* **Work overlaps**: reducing, drawing, encoding and statistics run on the
  worker threads beside the forward pass (numpy and deflate release the GIL).
* **Errors propagate**: an exception in a consumer stops the pass after the
  batch it happened on (the batch's jobs are awaited) and is raised from
  :func:`run_pass` as it was; ``finish`` is not called then.
* **One policy for a layer without output**: a selected layer that no batch
  produced is listed in :attr:`PassResult.missing`; every view adds
  :func:`missing_note` to its notes and leaves the layer out.

A consumer's ``on_layer`` runs on a worker thread. Two workers may call it at
once for two different layers of the same batch; all of batch ``b``'s calls
return before ``on_batch(b, ...)`` is called and before batch ``b + 1``
starts, so one layer's outputs arrive batch by batch, images in order. Jobs
returned by ``on_batch`` may still run while the next batch's layers arrive.

Reductions: a consumer with a ``reductions`` mapping (layer index -> ops of
:data:`convlens.core.reduce.REDUCTIONS`) receives ``on_reduced(batch, layer,
{op: (n, C)})`` for those layers instead of ``on_layer``; today numpy
reduces on the worker (:func:`convlens.core.reduce.reduce_channels`); a model on
an accelerator whose adapter has ``run_reducing`` (PyTorch) reduces there, in
float64, and hands over only ``(n, C)`` arrays, when every consumer of a layer
asks for reductions of it (see :func:`_device_reductions`).

:class:`MapConsumer` is the shared base of every consumer that draws
feature-map grids: it does the ``norm="global"`` buffering (one value range
over all drawn layers of an image) once, for ``save_maps`` and the report.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ._errors import BadArgument, UnsupportedModel
from ._progress import NullProgress, Progress
from .adapters import adapter_device
from .adapters.base import Adapter, OnOutput
from .core.layers import LayerInfo
from .core.memory import MEMORY_BUDGET, batch_size_for, per_sample_bytes
from .core.normalize import global_range
from .core.reduce import reduce_channels
from .core.stats import STATS_REDUCTIONS, LayerStats, StatsAccumulator
from .model import Model
from .render.maps import RenderOptions, reduce_map

__all__ = [
    "MEMORY_BUDGET", "Batch", "CollectMaps", "Consumer", "Forward", "Job", "MapConsumer", "PassConsumer",
    "PassResult", "StatsConsumer", "call_model", "default_batch_size", "make_batches", "missing_note",
    "reduces_on_device", "run_batches", "run_pass",
]

#: Deferred work a consumer hands back from ``on_batch``: run on the pass's workers.
Job = Callable[[], None]

#: A forward pass with ``adapter.run``'s signature: ``(inputs (n, H, W, C), wanted, on_output) -> output``.
Forward = Callable[[np.ndarray, Sequence[int], OnOutput], np.ndarray]


@dataclass(frozen=True, eq=False)
class Batch:
    """Images that go through the network together.

    Attributes:
        number: the batch's number within the pass, from 0.
        images: the image numbers (positions in the pass's input list) it holds, in order.
        inputs: ``(n, H, W, C)`` float32, preprocessed; ``n == len(images)``.
    """

    number: int
    images: tuple[int, ...]
    inputs: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


@runtime_checkable
class Consumer(Protocol):
    """What :func:`run_pass` feeds.

    ``on_layer`` gets the adapter's canonical outputs for the batch's images,
    in the batch's order: ``(n, H, W, C)`` maps, ``(n, L, C)`` signals or
    ``(n, C)`` vectors, float32. It must not keep the array beyond what it
    needs (memory is bounded by not keeping outputs).

    Optionally a consumer has ``reductions: Mapping[int, Sequence[str]]`` (layer
    index -> ops) and ``on_reduced(batch, layer, reduced)``; see the module.
    """

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        """One layer's output for the batch's images (a worker thread)."""
        ...

    def on_batch(self, batch: Batch, output: np.ndarray) -> Iterable[Job] | None:
        """After every ``on_layer`` of the batch returned (the calling thread).

        Args:
            batch: the batch.
            output: the model's output for it, ``(n, ...)`` (``(n, K)`` for a classifier).

        Returns:
            Jobs to run on the pass's workers (e.g. drawing the layers buffered
            for ``norm="global"``), or ``None``.
        """
        ...

    def finish(self) -> None:
        """After every job of every batch (the calling thread); not called when the pass failed."""
        ...


class PassConsumer:
    """A :class:`Consumer` that does nothing: subclass it and override what you need.

    Attributes:
        reductions: layer index -> ops (:data:`convlens.core.reduce.REDUCTIONS`);
            those layers arrive in :meth:`on_reduced` instead of :meth:`on_layer`.
    """

    reductions: Mapping[int, Sequence[str]] = {}

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        pass

    def on_reduced(self, batch: Batch, layer: LayerInfo, reduced: Mapping[str, np.ndarray]) -> None:
        """A layer named in :attr:`reductions`: ``{op: (n, C)}`` for the batch's images (a worker)."""

    def on_batch(self, batch: Batch, output: np.ndarray) -> Iterable[Job] | None:
        return None

    def finish(self) -> None:
        pass


@dataclass
class PassResult:
    """What a pass returns besides what its consumers kept.

    Attributes:
        outputs: per image, the model's output with a batch axis of 1: ``(1, ...)``.
        missing: the selected layers that no batch produced, in selection order
            (the one policy: views leave them out and add :func:`missing_note`).
    """

    outputs: list[np.ndarray] = field(default_factory=list)
    missing: list[LayerInfo] = field(default_factory=list)


def missing_note(missing: Sequence[LayerInfo]) -> str:
    """THE note every view adds for selected layers that produced no output (see :class:`PassResult`)."""
    names = ", ".join(layer.name for layer in missing)
    return (f"the model produced no output for {names}; left out (select other layers, "
            "see convlens layers MODEL)")


def _adapter(model: Model | Adapter) -> Adapter:
    return model.adapter if isinstance(model, Model) else model


def call_model(model: Model | Adapter, batch: Batch | np.ndarray, wanted: Sequence[int] = (),
               on_output: OnOutput | None = None) -> np.ndarray:
    """One forward pass outside the engine: THE entry point for views that need passes of their own.

    Score-CAM's masked inputs, occlusion, integrated gradients, feature
    visualisation and the report's dataset check call this rather than
    ``adapter.run``, so that a later device backend has one place to change.

    Args:
        model: the model (or its adapter).
        batch: ``(n, H, W, C)`` float32 preprocessed inputs, or a :class:`Batch`.
        wanted: layer indexes whose outputs ``on_output`` receives.
        on_output: called ``(index, array (n, ...))`` per wanted layer as it is
            produced (on this thread); default: outputs are dropped.

    Returns:
        The model's output, ``(n, ...)``.
    """
    inputs = batch.inputs if isinstance(batch, Batch) else batch
    return np.asarray(_adapter(model).run(inputs, list(wanted), on_output or _drop))


def _drop(index: int, array: np.ndarray) -> None:
    pass


def default_batch_size(layers: Sequence[LayerInfo], shape: tuple[int, ...], memory: int = MEMORY_BUDGET) -> int:
    """Images of ``shape`` ``(H, W, C)`` per batch that ``memory`` bytes of ``layers``' outputs allow (>= 1)."""
    hw = (int(shape[0]), int(shape[1])) if len(shape) >= 2 else (1, 1)
    return batch_size_for(per_sample_bytes(layers, hw, int(np.prod(shape))), memory)


def make_batches(inputs: Sequence[np.ndarray], layers: Sequence[LayerInfo], *, batch_size: int | None = None,
                 memory: int = MEMORY_BUDGET) -> Iterator[Batch]:
    """Consecutive images of the same shape stacked into batches, in order.

    Args:
        inputs: per image its ``(H, W, C)`` float32 preprocessed input.
        layers: the layers the pass captures (their outputs size the default batch).
        batch_size: images per batch at most; default :func:`default_batch_size`.
        memory: bytes of layer outputs one batch may hold, for the default.

    Yields:
        :class:`Batch` numbered from 0.
    """
    number = 0
    start = 0
    while start < len(inputs):
        shape = np.shape(inputs[start])
        cap = batch_size if batch_size is not None else default_batch_size(layers, shape, memory)
        end = start + 1
        while end < len(inputs) and end - start < cap and np.shape(inputs[end]) == shape:
            end += 1
        stacked = np.stack([np.asarray(a, np.float32) for a in inputs[start:end]])
        yield Batch(number, tuple(range(start, end)), stacked)
        number += 1
        start = end


def run_pass(model: Model | Adapter, layers: Sequence[LayerInfo], inputs: Sequence[np.ndarray],
             consumers: Sequence[Consumer], *, batch_size: int | None = None, memory: int = MEMORY_BUDGET,
             forward: Forward | None = None, progress: Progress | None = None, label: str = "",
             unit: str = "layer", workers: int = 2, in_flight: int = 4) -> PassResult:
    """Run the images through the model in batches and feed every selected layer to every consumer.

    Args:
        model: the model (or its adapter).
        layers: the selected layers (rows of ``model.layers()``).
        inputs: per image, its ``(H, W, C)`` float32 preprocessed input
            (:attr:`convlens.images.PreparedBatch.arrays`); images may differ
            in size: consecutive images of the same size share a batch.
        consumers: fed in this order for each layer output, in one worker job.
        batch_size: images per forward pass at most; default as many as
            ``memory`` bytes of the selected layers' outputs allow (1 to 64).
        memory: the budget for the default batch size, in bytes.
        forward: the forward pass, ``adapter.run``'s signature; default the
            adapter's own (the report passes one that records gradients).
        progress: told ``start(total, label)``, ``advance(n)`` and ``finish()``.
        label: the progress label.
        unit: a progress step is one image's ``"layer"`` output consumed
            (``images x layers`` steps) or a whole ``"image"``.
        workers: worker threads (2: the forward pass, two drawing threads and
            deflate keep two cores busy; more only adds memory). ``0`` runs
            every consumer inline, inside the adapter's callback: memory then
            holds one layer output at a time, and no output outlives its callback.
        in_flight: at most this many layer outputs (and deferred jobs) queued at once.

    Returns:
        :class:`PassResult`: the model's output per image and the layers never produced.

    Raises:
        BadArgument: a bad ``unit``, ``batch_size``, ``workers`` or ``in_flight``.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise BadArgument(f"batch_size must be a positive whole number, not {batch_size!r}")
    inputs = list(inputs)
    batches = make_batches(inputs, layers, batch_size=batch_size, memory=memory)
    return run_batches(model, layers, batches, consumers, forward=forward, progress=progress, label=label,
                       unit=unit, workers=workers, in_flight=in_flight, images=len(inputs))


def run_batches(model: Model | Adapter, layers: Sequence[LayerInfo], batches: Iterable[Batch],
                consumers: Sequence[Consumer], *, forward: Forward | None = None,
                progress: Progress | None = None, label: str = "", unit: str = "layer", workers: int = 2,
                in_flight: int = 4, images: int | None = None) -> PassResult:
    """:func:`run_pass` for callers that make their own batches (the dataset view).

    Args:
        model, layers, consumers, forward, progress, label, unit, workers,
            in_flight: as for :func:`run_pass`.
        batches: the batches in order; their ``images`` number the images of
            :attr:`PassResult.outputs` (contiguous from 0 in the usual case).
            Drawn lazily, one at a time, so a generator may read ahead.
        images: how many images the batches hold, for the progress total
            (``None``: the total is 0, unknown).

    Returns:
        :class:`PassResult`; ``outputs`` holds one entry per image, in batch order.
    """
    if unit not in ("layer", "image"):
        raise BadArgument(f"unit must be 'layer' or 'image', not {unit!r}")
    if workers < 0 or in_flight < 1:
        raise BadArgument(f"workers must be >= 0 and in_flight >= 1, not {workers} and {in_flight}")
    adapter = _adapter(model)
    run: Forward = forward or adapter.run
    progress = progress or NullProgress()
    layers = list(layers)
    by_index = {layer.index: layer for layer in layers}
    wanted = list(by_index)
    reducing, device_ops = _device_reductions(adapter, consumers, by_index) if forward is None else (None, {})
    progress.start((images or 0) * (len(wanted) if unit == "layer" else 1), label)
    produced: set[int] = set()
    outputs: list[np.ndarray] = []
    with _Executor(workers, in_flight) as executor:
        for batch in batches:
            pending: list[Future[None]] = []
            got: set[int] = set()

            def on_output(i: int, a: np.ndarray, batch: Batch = batch, got: set[int] = got,
                          pending: list[Future[None]] = pending) -> None:
                layer = by_index.get(i)
                if layer is None or i in got:  # not asked for, or a second output of a shared layer
                    return
                got.add(i)
                pending.append(executor.submit(functools.partial(
                    _feed, consumers, batch, layer, a, progress if unit == "layer" else None)))

            def on_reduced(i: int, r: Mapping[str, np.ndarray], batch: Batch = batch, got: set[int] = got,
                           pending: list[Future[None]] = pending) -> None:
                layer = by_index.get(i)
                if layer is None or i in got:
                    return
                got.add(i)
                pending.append(executor.submit(functools.partial(
                    _feed_reduced, consumers, batch, layer, r, progress if unit == "layer" else None)))

            if reducing is not None:
                output = np.asarray(reducing(batch.inputs, wanted, on_output, device_ops, on_reduced))
            else:
                output = np.asarray(run(batch.inputs, wanted, on_output))
            for f in pending:
                f.result()  # the batch's layers are all consumed (or the first error is raised)
            produced |= got
            outputs.extend(_split(output, batch))
            for consumer in consumers:
                for deferred in consumer.on_batch(batch, output) or ():
                    executor.submit(deferred)
            if unit == "image":
                progress.advance(len(batch))
            executor.check()  # a failed deferred job stops the pass here
        executor.drain()
    for consumer in consumers:
        consumer.finish()
    progress.finish()
    return PassResult(outputs, [layer for layer in layers if layer.index not in produced])


def _feed(consumers: Sequence[Consumer], batch: Batch, layer: LayerInfo, array: np.ndarray,
          progress: Progress | None) -> None:
    """One layer output of one batch to every consumer: the array, or the reductions it declared."""
    reduced: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    for consumer in consumers:
        ops = getattr(consumer, "reductions", None)
        mine = ops.get(layer.index) if ops else None
        if mine:
            key = tuple(mine)
            if key not in reduced:  # consumers asking for the same ops share one reduction
                reduced[key] = reduce_channels(array, key)
            consumer.on_reduced(batch, layer, reduced[key])  # type: ignore[attr-defined]
        else:
            consumer.on_layer(batch, layer, array)
    if progress is not None:
        progress.advance(len(batch))


#: Reduce on the device also when the model runs on the CPU (tests of the device path; on the CPU the
#: engine's workers reduce in numpy beside the forward pass, which is faster there).
DEVICE_REDUCTIONS_ON_CPU = False


def reduces_on_device(model: Model | Adapter) -> bool:
    """Whether the engine reduces this model's layers where it runs (an accelerator and an adapter
    with ``run_reducing``), so that consumers may declare reductions made for that path."""
    adapter = _adapter(model)
    return getattr(adapter, "run_reducing", None) is not None and (
        adapter_device(adapter) != "cpu" or DEVICE_REDUCTIONS_ON_CPU)


def _device_reductions(adapter: Adapter, consumers: Sequence[Consumer], by_index: Mapping[int, LayerInfo]
                       ) -> tuple[Callable[..., np.ndarray] | None, dict[int, tuple[str, ...]]]:
    """The adapter's ``run_reducing`` and, per layer, the ops to reduce where the model runs.

    A layer is reduced on the device only when every consumer asks for reductions
    of it (the union of their ops, one transfer); a consumer that wants the whole
    array gets it, and the others then reduce it in numpy as before. Adapters
    without ``run_reducing`` (ONNX, Keras, TFLite hand over host arrays anyway),
    and models on the CPU, keep the numpy path.
    """
    reducing = getattr(adapter, "run_reducing", None)
    if reducing is None or not consumers or not reduces_on_device(adapter):
        return None, {}
    ops: dict[int, tuple[str, ...]] = {}
    for index in by_index:
        asked = [getattr(c, "reductions", None) or {} for c in consumers]
        if all(a.get(index) for a in asked):
            ops[index] = tuple(dict.fromkeys(op for a in asked for op in a[index]))
    return (reducing, ops) if ops else (None, {})


def _feed_reduced(consumers: Sequence[Consumer], batch: Batch, layer: LayerInfo, reduced: Mapping[str, np.ndarray],
                  progress: Progress | None) -> None:
    """One layer's device reductions of one batch to every consumer, each its own ops."""
    for consumer in consumers:
        mine = consumer.reductions[layer.index]  # type: ignore[attr-defined]
        consumer.on_reduced(batch, layer, {op: reduced[op] for op in mine})  # type: ignore[attr-defined]
    if progress is not None:
        progress.advance(len(batch))


def _split(output: np.ndarray, batch: Batch) -> list[np.ndarray]:
    """The model's output for a batch as one ``(1, ...)`` array per image."""
    n = len(batch)
    if output.ndim and output.shape[0] == n:
        return [output[j:j + 1] for j in range(n)]
    if n == 1:  # an output without a batch axis: as the adapter gave it
        return [output]
    raise UnsupportedModel(f"the model's output {output.shape} has no batch axis of {n}; "
                           "run it with batch_size=1")


class _Executor:
    """The pass's one bounded executor: ``workers`` threads, at most ``in_flight`` jobs queued.

    With ``workers=0`` every job runs at once on the submitting thread.
    """

    def __init__(self, workers: int, in_flight: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers else None
        self._gate = threading.BoundedSemaphore(in_flight)
        self._live: list[Future[None]] = []  # every job not yet checked, to cancel them on failure

    def submit(self, job: Job) -> Future[None]:
        future: Future[None]
        if self._pool is None:
            future = Future()
            job()  # an exception propagates at once, out of the forward pass
            future.set_result(None)
            return future
        self._gate.acquire()  # blocks the forward pass while `in_flight` jobs wait
        try:
            future = self._pool.submit(self._bounded, job)
        except BaseException:
            self._gate.release()
            raise
        self._live.append(future)
        return future

    def _bounded(self, job: Job) -> None:
        try:
            job()
        finally:
            self._gate.release()

    def check(self) -> None:
        """Raise the first error of a finished job; forget the finished ones."""
        for f in [f for f in self._live if f.done()]:
            f.result()
        self._live[:] = [f for f in self._live if not f.done()]

    def drain(self) -> None:
        """Wait for every job; raise the first error."""
        for f in self._live:
            f.result()
        self._live.clear()

    def __enter__(self) -> _Executor:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is not None:
            for f in self._live:
                f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


# ---------------------------------------------------------------- shared consumers


class CollectMaps(PassConsumer):
    """Keeps every output per layer and image (``Lens.feature_maps``).

    Attributes:
        arrays: after the pass, layer name -> per image its output without the
            batch axis (``(H, W, C)``, ``(L, C)`` or ``(C,)`` float32), in image
            order; a layer the model never produced is left out.
    """

    def __init__(self, layers: Sequence[LayerInfo], n_images: int) -> None:
        self._layers = list(layers)
        self._got: dict[int, list[np.ndarray | None]] = {layer.index: [None] * n_images
                                                          for layer in self._layers}
        self.arrays: dict[str, list[np.ndarray]] = {}

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        slots = self._got[layer.index]
        for j, image in enumerate(batch.images):
            slots[image] = array[j]

    def finish(self) -> None:
        for layer in self._layers:
            got = [a for a in self._got[layer.index] if a is not None]
            if got:
                self.arrays[layer.name] = got


class StatsConsumer(PassConsumer):
    """Channel statistics of each selected layer over every image (:mod:`convlens.core.stats`).

    Declares :data:`~convlens.core.stats.STATS_REDUCTIONS` for every layer, so
    it receives ``(n, C)`` reductions, never the whole output.

    Attributes:
        accumulators: by layer index, the running statistics.
    """

    def __init__(self, layers: Sequence[LayerInfo]) -> None:
        self.accumulators = {layer.index: StatsAccumulator(layer.index, layer.name, layer.type)
                             for layer in layers}
        self.reductions = {i: STATS_REDUCTIONS for i in self.accumulators}
        # one lock per layer: a deferred job could in principle overlap the next batch's outputs
        self._locks = {i: threading.Lock() for i in self.accumulators}

    def on_reduced(self, batch: Batch, layer: LayerInfo, reduced: Mapping[str, np.ndarray]) -> None:
        with self._locks[layer.index]:
            self.accumulators[layer.index].add_reduced(reduced)

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
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

    With ``norm`` other than ``"global"`` each layer of each image is drawn at
    once, on the worker. With ``"global"`` each layer is reduced (the small
    picture that will be drawn, see :func:`~convlens.render.maps.reduce_map`)
    and kept until the batch's last layer, then every kept layer is drawn with
    the union of its image's finite value ranges, in deferred jobs.

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

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        total = int(array.shape[-1]) if array.ndim > 1 else 1
        for j, image in enumerate(batch.images):
            x = array[j]
            if self.options.norm == "global":
                reduced = reduce_map(x, self.options)
                with self._lock:
                    self._buffered.setdefault(image, []).append((layer, reduced, total, tuple(x.shape)))
            else:
                self.draw(image, layer, x, total, tuple(x.shape), None)

    def on_batch(self, batch: Batch, output: np.ndarray) -> Iterable[Job] | None:
        jobs: list[Job] = []
        for image in batch.images:
            with self._lock:
                buffered = self._buffered.pop(image, [])
            if not buffered:
                continue
            vr = self.global_ranges[image] = global_range(r for _, r, _, _ in buffered)
            jobs += [functools.partial(self.draw, image, layer, reduced, total, shape, vr)
                     for layer, reduced, total, shape in buffered]
        return jobs

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
