"""The local engine: a data source streamed through a model in batches, with checkpoints.

:class:`BatchRunner` is the per-batch work both engines share (the Ray actors
build one each): read the records (:func:`~convlens.dataset.sources.read_batch`),
prepare each image exactly as the rest of convlens does
(:func:`convlens.images.prepare`: channels, bilinear resize, the preset), run
ONE forward pass over the whole ``(N, H, W, C)`` batch on the pass engine
(:func:`convlens.passes.run_batches`, which routes the layer outputs and lists
the layers the model did not produce) and fold every selected layer's output
into a fresh :class:`~convlens.dataset.accumulate.DatasetAccumulator` as soon
as the engine hands it over. Unreadable images become failures, never errors.
A selected layer the model never produces is left out with the engine's note;
one produced for some batches only, or no layer at all, is an error.

:func:`run_local` streams the batches: a prefetch thread reads and prepares the
next batches while the model runs on the current one (decoding and resizing
release the GIL, as the frameworks' forward passes do), each batch's
accumulator is merged into the run's, and every ``checkpoint_every`` images the
run's state is written atomically to a :class:`Checkpoint`. The run's state
only changes by merging whole batches, so a checkpoint always sits at a batch
boundary; a resumed run skips the ids it holds and reads the remaining records
in the same batches, so its result is identical to an uninterrupted run's.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import BadArgument, BadImage, ConvlensError, OutputError, UnsupportedModel
from .._progress import NullProgress, Progress
from ..adapters import exact_kernels
from ..adapters.base import Adapter
from ..core.layers import LayerInfo
from ..images import prepare
from ..output import atomic_write_bytes
from ..passes import Batch, PassConsumer, reduces_on_device, run_batches
from .accumulate import DATASET_REDUCTIONS, DatasetAccumulator
from .sources import Record, Source, read_batch

__all__ = ["DEFAULT_SIZE", "BatchRunner", "Checkpoint", "LoadedBatch", "default_checkpoint_folder",
           "input_size", "run_local"]

#: The input size of a model that accepts any size, when none is asked for.
DEFAULT_SIZE = (224, 224)

_CHECKPOINT_VERSION = 1


def input_size(input_shape: Sequence[int | None], size: int | Sequence[int] | None,
               model_name: str) -> tuple[tuple[int, int], str | None]:
    """The one ``(H, W)`` every image of the run is prepared to, and a note when it was chosen.

    A fixed-size model uses its size (``size`` must agree); a free-size model
    uses ``size``, else :data:`DEFAULT_SIZE` (batches need one size).

    Raises:
        UnsupportedModel: the model does not take images ``(H, W, C)``.
        BadArgument: ``size`` is not positive or differs from a fixed size.
    """
    if len(input_shape) != 3:
        raise UnsupportedModel(f"{model_name} takes input of shape {tuple(input_shape)}, not images "
                               "(H, W, C); the dataset view needs an image model")
    h, w = input_shape[0], input_shape[1]
    if size is not None:
        parts = [size, size] if isinstance(size, (int, np.integer)) else list(size)
        if (len(parts) != 2 or any(isinstance(p, bool) or not isinstance(p, (int, np.integer))
                                   or p < 1 for p in parts)):
            raise BadArgument(f"size must be H or (H, W) with positive integers, not {size!r}")
        sh, sw = int(parts[0]), int(parts[1])
        if (h is not None and h != sh) or (w is not None and w != sw):
            raise BadArgument(f"{model_name} takes a fixed input of {h}x{w}; --size {sh}x{sw} "
                              "cannot be used with it (leave --size out)")
        return (sh, sw), None
    if h is not None and w is not None:
        return (int(h), int(w)), None
    dh, dw = DEFAULT_SIZE
    return (int(h or dh), int(w or dw)), (
        f"{model_name} accepts any input size; every image was resized to {w or dw}x{h or dh} "
        "(width x height) so that images run in batches (--size to choose)")


@dataclass
class LoadedBatch:
    """One batch of records, read and prepared (what the prefetch thread hands over).

    Attributes:
        records: the batch's records, in order.
        inputs: ``(n, H, W, C)`` float32, the readable images prepared (n may be 0).
        ids: ``(n,)`` int64 ids of the readable images.
        labels: ``(n,)`` int64 labels (-1 unlabelled).
        failed: ``(id, name, reason)`` of each unreadable image.
    """

    records: list[Record]
    inputs: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    failed: list[tuple[int, str, str]]


class BatchRunner:
    """The per-batch work of the dataset view, shared by the local and the Ray engine.

    Args:
        adapter: the model.
        layers: the selected layers (rows of ``adapter.layers()``).
        source: the data set the records come from.
        size: ``H`` or ``(H, W)`` for a free-size model (see :func:`input_size`).
        preprocess: the preprocessing preset.
        k: examples kept per channel and ranking.
        classes: number of classes of the labels (0: none).

    Attributes:
        input_size: the ``(H, W)`` every image is prepared to.
        size_note: why that size, when the model did not fix it (else None).
    """

    def __init__(self, adapter: Adapter, layers: Sequence[LayerInfo], source: Source, *,
                 size: int | Sequence[int] | None, preprocess: str, k: int, classes: int) -> None:
        if not layers:
            raise BadArgument("the dataset view needs at least one layer; select some with --layers")
        self.adapter, self.layers, self.source = adapter, list(layers), source
        self.preprocess, self.k, self.classes = preprocess, int(k), int(classes)
        self.input_size, self.size_note = input_size(adapter.input_shape, size, adapter.name)
        c = adapter.input_shape[2]
        self.channels = int(c) if c is not None else 3
        self._lock = threading.Lock()
        self._missing: frozenset[str] | None = None  # the layers the first batch lacked

    def load(self, records: Sequence[Record]) -> LoadedBatch:
        """Read and prepare records; unreadable ones are listed, never raised."""
        arrays, ids, labels, failed = [], [], [], []
        for record, got in zip(records, read_batch(self.source, records)):
            if not isinstance(got, BadImage):
                try:
                    x, _ = prepare(got, size=self.input_size, channels=self.channels,
                                   preprocess=self.preprocess)
                except BadImage as e:
                    got = e
                else:
                    arrays.append(x)
                    ids.append(record.id)
                    labels.append(record.label)
                    continue
            failed.append((record.id, record.name, " ".join(str(got).split())))
        h, w = self.input_size
        inputs = np.stack(arrays) if arrays else np.zeros((0, h, w, self.channels), np.float32)
        return LoadedBatch(list(records), inputs, np.asarray(ids, np.int64),
                           np.asarray(labels, np.int64), failed)

    def forward(self, batch: LoadedBatch, *, workers: int = 0) -> DatasetAccumulator:
        """One forward pass over the loaded batch, on the pass engine, folded into a fresh accumulator.

        The batch goes through :func:`convlens.passes.run_batches` (the one pass
        engine: it routes each selected layer's ``(n, ...)`` output to the
        folding consumer and lists the layers the model did not produce).

        Args:
            batch: the loaded batch (its failures are recorded too).
            workers: 0 folds each layer's output inside the forward pass (on a
                machine whose cores the framework keeps busy, a folding thread only
                competes with it); 1 folds on a thread while the forward pass goes on.

        Raises:
            UnsupportedModel: the model produced none of the selected layers, or
                not the same layers as in an earlier batch (the statistics would
                cover other images per layer).
        """
        acc = DatasetAccumulator(self.layers, self.k, self.classes)
        if batch.failed:
            fid, names, reasons = zip(*batch.failed)
            acc.add_failures(np.asarray(fid, np.int64), names, reasons)
        if not batch.ids.size:
            return acc
        fold = _Fold(acc, batch.ids, batch.labels if self.classes else None)
        if reduces_on_device(self.adapter):  # the maps are reduced where the model runs: (N, C) cross to the host
            fold.reductions = {layer.index: DATASET_REDUCTIONS for layer in self.layers}
        images = tuple(int(i) for i in batch.ids)
        # TF32 and cuDNN autotuning off: the same batch gives the same bits again (resume, Ray = local)
        with exact_kernels():
            result = run_batches(self.adapter, self.layers, [Batch(0, images, batch.inputs)], [fold],
                                 workers=workers, in_flight=max(1, 2 * workers))
        self._check_missing(result.missing)
        acc.add_images(batch.ids)
        return acc

    def _check_missing(self, missing: Sequence[LayerInfo]) -> None:
        """The engine's missing-layer policy, plus what a dataset run needs to stay meaningful.

        A layer the model never produces is left out of the result with the
        engine's note (:func:`convlens.passes.missing_note`, added by the view).
        But a run without any layer has nothing to show, and a layer produced
        for some batches and not others would have statistics and rankings over
        other images than its neighbours': both are errors.
        """
        names = frozenset(layer.name for layer in missing)
        if len(names) == len(self.layers):
            raise UnsupportedModel(f"{self.adapter.name} produced none of the selected layers "
                                   f"({', '.join(sorted(names))}) in a forward pass; select other layers "
                                   "(convlens layers MODEL lists them)")
        with self._lock:
            if self._missing is None:
                self._missing = names
            elif names != self._missing:
                changed = ", ".join(sorted(names ^ self._missing))
                raise UnsupportedModel(f"{self.adapter.name} produced {changed} for some batches and "
                                       "not for others; select layers on the model's fixed path")

    def run(self, records: Sequence[Record]) -> DatasetAccumulator:
        """Read, prepare and run one batch of records into a fresh accumulator."""
        return self.forward(self.load(records))


class _Fold(PassConsumer):
    """The pass engine's consumer for one batch: each layer's ``(n, ...)`` output into its accumulator.

    The dataset reductions (extremes with their positions, float32 sums along
    each map, zeros) are not the engine's declared reductions: the rankings
    need the position of the minimum and the means the float32 pairwise sums
    along each map that the results have always been computed with, so the
    consumer takes the whole array (see :func:`~.accumulate.reduce_maps`).
    """

    def __init__(self, acc: DatasetAccumulator, ids: np.ndarray, labels: np.ndarray | None) -> None:
        self.acc, self.ids, self.labels = acc, ids, labels

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        self.acc.add(layer, array, self.ids, self.labels)

    def on_reduced(self, batch: Batch, layer: LayerInfo, reduced: Mapping[str, np.ndarray]) -> None:
        self.acc.add_reduced(layer, reduced, self.ids, self.labels)


class _Prefetch:
    """Runs ``load`` over the batches in a thread, ``depth`` batches ahead of the consumer."""

    _DONE = object()

    def __init__(self, load: Callable[[Sequence[Record]], LoadedBatch],
                 batches: Sequence[Sequence[Record]], depth: int = 2) -> None:
        self._load, self._batches = load, batches
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="convlens-dataset-read", daemon=True)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for records in self._batches:
                if self._stop.is_set() or not self._put(self._load(records)):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[LoadedBatch]:
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


class Checkpoint:
    """A run's state on disk, to resume it: ``state.npz`` (no pickle) and ``checkpoint.json``.

    ``state.npz`` holds the accumulator's flat state and the run's fingerprint
    (model, data, layers, k, input size, preprocessing, batch size), written
    in one atomic rename, so a checkpoint is whole or absent.
    ``checkpoint.json`` repeats the fingerprint and the images done, for people.

    Args:
        folder: where the files live (created at the first save).
        fingerprint: JSON-ready settings a resumed run must share.
    """

    def __init__(self, folder: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = {"convlens": "dataset-checkpoint", "version": _CHECKPOINT_VERSION,
                            **fingerprint}

    @property
    def state_file(self) -> Path:
        return self.folder / "state.npz"

    def exists(self) -> bool:
        return self.state_file.is_file()

    def save(self, acc: DatasetAccumulator) -> None:
        """Write the accumulator's state atomically.

        Raises:
            OutputError: the folder cannot be written.
        """
        state = acc.state()
        state["checkpoint.fingerprint"] = np.asarray(json.dumps(self.fingerprint, sort_keys=True))
        buf = io.BytesIO()
        np.savez(buf, **state)  # type: ignore[arg-type]  # numpy's stub types only allow_pickle
        atomic_write_bytes(self.state_file, buf.getvalue())
        info = {**self.fingerprint, "images": acc.images, "failed": len(acc.failures)}
        atomic_write_bytes(self.folder / "checkpoint.json",
                           (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())

    def load(self, layers: Sequence[LayerInfo]) -> DatasetAccumulator:
        """The saved accumulator, after checking it was written for the same settings.

        Raises:
            BadArgument: no checkpoint, a damaged one, or one of other settings.
        """
        if not self.exists():
            raise BadArgument(f"there is no checkpoint to resume in {self.folder}; run without "
                              "--resume to start")
        try:
            with np.load(self.state_file, allow_pickle=False) as f:
                state = {key: f[key] for key in f.files}
            saved = json.loads(str(state.pop("checkpoint.fingerprint")))
        except (OSError, ValueError, KeyError) as e:
            raise BadArgument(f"the checkpoint {self.state_file} cannot be read ({e}); delete "
                              f"{self.folder} and run without --resume") from None
        differ = [key for key in sorted(set(saved) | set(self.fingerprint))
                  if saved.get(key) != self.fingerprint.get(key)]
        if differ:
            what = "; ".join(f"{key} {saved.get(key)!r} there, {self.fingerprint.get(key)!r} now"
                             for key in differ[:3])
            raise BadArgument(f"the checkpoint in {self.folder} is of another run ({what}); resume "
                              "with the same model, data and options, or run without --resume "
                              "to start over")
        return DatasetAccumulator.from_state(layers, state)

    def remove(self) -> None:
        """Delete the checkpoint folder (after a successful run)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def run_local(runner: BatchRunner, *, batch_size: int = 32, checkpoint: Checkpoint | None = None,
              checkpoint_every: int = 1000, resume: bool = False,
              progress: Progress | None = None, fold_threads: int = 0,
              prefetch: bool = True) -> DatasetAccumulator:
    """Stream every record of ``runner.source`` through the model, in batches of ``batch_size``.

    Args:
        runner: the per-batch work.
        batch_size: images per forward pass.
        checkpoint: where to save the state every ``checkpoint_every`` images
            and when interrupted (Ctrl-C or an error); ``None``: never.
        checkpoint_every: images between checkpoints.
        resume: continue from ``checkpoint`` (which must exist and match).
        progress: told ``start(images to do, label)``, ``advance(n)`` per batch, ``finish()``.
        fold_threads: the pass engine's workers (see :meth:`BatchRunner.forward`): 0 folds
            each layer's output inside the forward pass (default: on a machine whose cores
            the framework already keeps busy, a folding thread only competes with it); 1
            folds on a thread while the forward pass goes on.
        prefetch: read and prepare the next batches in a thread while the model runs
            (default); False reads each batch just before its forward pass.

    Returns:
        The accumulator of the whole run. The checkpoint is left in place
        (the caller removes it once the result is saved).

    Raises:
        BadArgument: ``resume`` without a matching checkpoint; bad sizes.
    """
    if int(batch_size) < 1 or int(checkpoint_every) < 1:
        raise BadArgument("batch size and checkpoint interval must be at least 1")
    if fold_threads not in (0, 1):
        raise BadArgument(f"fold_threads must be 0 or 1, not {fold_threads!r}")
    if resume and checkpoint is None:
        raise BadArgument("resuming needs a checkpoint folder")
    progress = progress or NullProgress()
    source = runner.source
    acc = (checkpoint.load(runner.layers) if resume and checkpoint is not None
           else DatasetAccumulator(runner.layers, runner.k, runner.classes))
    records = source.records
    done = acc.seen(np.fromiter((r.id for r in records), np.int64, len(records)))
    todo = [r for r, seen in zip(records, done) if not seen]
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    label = "dataset" if not resume else f"dataset (resumed after {len(records) - len(todo)} images)"
    progress.start(len(todo), label)
    since = 0
    consistent = True  # False only while a merge is changing the state

    # Reading and preparing run ahead in the prefetch thread; each batch goes through the pass
    # engine (folding inline, or on a thread beside the forward pass with fold_threads=1) and is
    # merged at once, so the run's state only changes at batch boundaries.
    try:
        loaded = (_Prefetch(runner.load, batches) if prefetch
                  else (runner.load(records) for records in batches))
        for batch in loaded:
            part = runner.forward(batch, workers=fold_threads)
            consistent = False
            acc.merge(part)
            since += len(batch.records)
            consistent = True
            if checkpoint is not None and since >= checkpoint_every:
                checkpoint.save(acc)
                since = 0
            progress.advance(len(batch.records))
    except BaseException:
        if checkpoint is not None and consistent and since:
            try:
                checkpoint.save(acc)
            except (ConvlensError, OSError):  # the original error matters more
                pass
        raise
    progress.finish()
    return acc


def default_checkpoint_folder(out: str | os.PathLike[str]) -> Path:
    """Where ``convlens dataset --out OUT`` keeps its checkpoint: ``.OUT.convlens-resume`` beside OUT.

    Beside, not inside: OUT itself is only touched by the final atomic commit,
    so an interrupted run leaves no OUT at all (nothing partial), and the
    commit, which may replace files in OUT, cannot touch the checkpoint.

    Raises:
        OutputError: OUT has no name (a filesystem root).
    """
    target = Path(out).expanduser().absolute()
    if not target.name:
        raise OutputError(f"cannot keep a checkpoint beside {out}; choose a named output folder")
    return target.parent / f".{target.name}.convlens-resume"
