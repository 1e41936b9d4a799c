"""Recording a network while it trains: the framework-free core of the callback and the recorder.

At each checkpoint the training thread runs one forward pass of the fixed
images through the live model (a :class:`~convlens.model.Model` on the pass engine)
and copies the first conv layer's kernels and every layer's trainable
weights. Everything else happens on one background worker fed through a
bounded queue: drawing the feature maps (the same drawing and norms as
``convlens maps``), the filter atlases, channel health, weight norms and
changes, PNG encoding, the checkpoint folder, the TensorBoard events and the
run's ``index.json``. When the worker falls behind, the queue is full and the
next checkpoint waits for it (no checkpoint is ever dropped).

A recording failure never stops training: it is logged once on the
``"convlens"`` logger and recording stops. Mistakes that can be seen before
training (a layer that does not exist, images that do not fit the model, an
output folder that cannot be written) raise at once instead.

Layout of a run folder::

    RUN/index.json                       the run: layers, images, one summary per checkpoint
    RUN/inputs/<image>.png               the fixed images
    RUN/checkpoint-0001/index.json       maps, filters, health and weights of one checkpoint
    RUN/checkpoint-0001/stats.json       every channel's statistics (ChannelStats.to_json())
    RUN/checkpoint-0001/maps/<image>/<NNN_layer>.png
    RUN/checkpoint-0001/filters/<NNN_layer>.png, <NNN_layer>_rgb.png or _gray.png
    RUN/checkpoint-0001/filters/<NNN_layer>.npy   the kernels, (O, I, kh, kw) float32
    RUN/gifs/maps/<image>/<NNN_layer>.gif, RUN/gifs/filters/<NNN_layer>.gif
    RUN/tensorboard/events.out.tfevents.*
    RUN/timeline.html                    written when recording finishes
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import queue
import re
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import BadArgument, BadImage, ConvlensError, OutputError
from .._version import __version__
from ..core.layers import LayerInfo
from ..core.normalize import finite_range, global_range
from ..core.stats import LayerStats, channel_stats
from ..maps import draw_filter_files, draw_map_file
from ..model import Model, as_model
from ..output import OutputDir, atomic_write_bytes, dumps_json, safe_name
from ..passes import Batch, PassConsumer, missing_note, run_batches
from ..render.animation import encode_gif
from ..render.maps import RenderOptions, reduce_map
from ..selection import DEFAULT_TRAINING_SELECTION
from ..stats import ChannelStats

__all__ = ["Recorder", "WeightSource", "logger", "safe_name"]

#: The logger every recording message goes to (warnings about dead channels, failures).
logger = logging.getLogger("convlens")

#: Returns the live model's trainable arrays by layer name; called on the training thread.
WeightSource = Callable[[], Mapping[str, Sequence[np.ndarray]]]

RUN_KIND = "convlens-timeline"
_STOP = object()
_FINISH = object()


def _shape_text(shape: Iterable[Any]) -> str:
    dims = [str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class _Capture:
    """What the training thread hands to the worker: copies, never live framework memory."""

    n: int
    step: int
    epoch: int | None
    label: str
    wall_time: float
    outputs: dict[int, np.ndarray]
    kernels: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]


class Recorder:
    """Records feature maps, filters, channel health and weights of a live model at checkpoints.

    Framework-free: :class:`convlens.keras.LensCallback` and
    :class:`convlens.torch.LensRecorder` build one over a :class:`~convlens.model.Model`
    of the model being trained and call :meth:`checkpoint` and :meth:`finish`.

    Args:
        model: a :class:`~convlens.model.Model` over the live model object (not a
            copy); a :class:`~convlens.Lens` works too (its ``.model``).
        images: the fixed images: a 4-D array ``(N, H, W, C)`` is the model's
            input batch used as is (already preprocessed, channels last);
            anything else (paths, PIL images, a list of arrays) is loaded and
            preprocessed as ``convlens maps`` does (``preprocess``, ``size``).
        out: the run folder (created). A folder that already holds a run is
            refused unless ``overwrite``.
        layers: the layer selection whose maps and health are recorded
            (default ``blocks``: the last conv layer of each resolution).
        filters: the conv layers whose filter atlases are drawn: ``"first"``
            (the first conv layer, default), any selection, or ``None``.
        weights: returns the model's trainable arrays by layer name, called on
            the training thread at each checkpoint; ``None`` records no weights.
        tensorboard: ``True`` writes event files to ``out/tensorboard``; a
            path writes them there (e.g. next to Keras's own TensorBoard
            logs); ``False`` writes none.
        dead_threshold: warn once per layer when the share of its channels
            that are zero for every fixed image rises above this (0-1].
        page: write ``out/timeline.html`` when recording finishes.
        overwrite: replace a run already recorded in ``out`` (only convlens's
            own files there are removed).
        meta: extra JSON-ready facts for the run's index (the front end's settings).
        queue_size: checkpoints that may wait for the worker before the
            training thread waits too.
        **options: drawing options, as for ``convlens maps`` (norm, cmap,
            max_channels, columns, numbers, tile_size).

    Raises:
        LayerNotFound: ``layers`` or ``filters`` names a layer the model lacks.
        BadImage: the images cannot be read or do not fit the model.
        OutputError: the run folder cannot be written, or holds a run already.
        BadArgument: a bad option value.
        MissingDependency: ``tensorboard`` is asked for and not installed.
    """

    def __init__(self, model: Model | Any, images: Any, *, out: str | os.PathLike[str],
                 layers: str | Iterable[str] | None = DEFAULT_TRAINING_SELECTION, filters: str | None = "first",
                 weights: WeightSource | None = None, tensorboard: bool | str | os.PathLike[str] = True,
                 dead_threshold: float = 0.5, size: Any = None, preprocess: str | None = None,
                 page: bool = True, overwrite: bool = False, meta: Mapping[str, Any] | None = None,
                 queue_size: int = 2, **options: Any) -> None:
        if isinstance(dead_threshold, bool) or not isinstance(dead_threshold, (int, float)) \
                or not 0 < float(dead_threshold) <= 1:
            raise BadArgument(f"dead_threshold must be a fraction in (0, 1], e.g. 0.5 for 50%, "
                              f"not {dead_threshold!r}")
        if int(queue_size) < 1:
            raise BadArgument(f"queue_size must be at least 1, not {queue_size!r}")
        self.model = as_model(model)
        self.options = RenderOptions(**options)
        self.dead_threshold = float(dead_threshold)
        self.page = page
        self._weights_source = weights
        self.layers: list[LayerInfo] = self.model.select(layers)
        self._wanted = [layer.index for layer in self.layers]
        self._filter_layers = self._resolve_filters(filters)
        self.inputs, self.image_names, thumbnails, notes = self._fixed_images(images, size, preprocess)
        missing = self._check_forward()
        if missing:  # the one policy: left out of every checkpoint, and noted
            notes = [*notes, missing_note(missing)]
        self.out = Path(out)
        self._tb_dir: Path | None = None
        if tensorboard:
            self._tb_dir = self.out / "tensorboard" if tensorboard is True else Path(tensorboard)
        self._prepare_folder(overwrite)

        self._lock = threading.Lock()  # the run index and the stop flag
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=int(queue_size))
        self._worker: threading.Thread | None = None
        self._events: Any = None
        self._stopped = False
        self._error: str | None = None
        self._n = 0
        self._dirty = False  # checkpoints since the last finish
        self._last_step: int | None = None
        self._warned: set[str] = set()
        self._checkpoints: list[dict[str, Any]] = []
        self._warnings: list[dict[str, Any]] = []
        self._prev: dict[str, np.ndarray] = {}
        self._started = time.time()
        self._index: dict[str, Any] = {
            "kind": RUN_KIND,
            "convlens": __version__,
            "model": self.model.name,
            "framework": self.model.framework,
            "status": "recording",
            "error": None,
            "started": self._started,
            "dead_threshold": self.dead_threshold,
            "images": [{"name": n, "file": f"inputs/{safe_name(n)}.png"} for n in self.image_names],
            "input_shape": list(self.inputs.shape[1:]),
            "notes": notes,
            "layers": [{"index": layer.index, "name": layer.name, "type": layer.type, "kind": layer.kind}
                       for layer in self.layers],
            "filters": [{"index": layer.index, "name": layer.name, "type": layer.type}
                        for layer in self._filter_layers],
            "weights": [],
            "options": {"norm": self.options.norm, "cmap": self.options.cmap,
                        "max_channels": self.options.max_channels, "columns": self.options.columns,
                        "tile_size": self.options.tile_size},
            **dict(meta or {}),
            "tensorboard": os.path.relpath(self._tb_dir, self.out) if self._tb_dir is not None else None,
            "checkpoints": [],
            "warnings": [],
            "gifs": [],
            "page": None,
        }
        if self._tb_dir is not None:
            from .events import import_tensorboard

            import_tensorboard()  # a missing package fails before any file is written
        # the baseline the first checkpoint's weight change is measured from
        self._baseline = self._snapshot() if weights is not None else {}
        self._index["weights"] = list(self._baseline)
        existed = self.out.exists()
        try:
            with OutputDir(self.out) as staging:
                for name, rgb in zip(self.image_names, thumbnails):
                    staging.write_png(f"inputs/{safe_name(name)}.png", rgb)
                staging.write_json("index.json", self._index)
            if self._tb_dir is not None:
                from .events import EventWriter

                self._events = EventWriter(self._tb_dir)
        except BaseException:
            self._undo(existed)
            raise
        # At interpreter exit (the worker is a daemon thread), whatever was captured is still written.
        self._finalizer = weakref.finalize(self, _finish_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ set-up

    def _resolve_filters(self, filters: str | None) -> list[LayerInfo]:
        if filters is None or filters is False:
            return []
        table = self.model.layers()
        if filters == "first":
            convs = [layer for layer in table if layer.has_kernels]
            return convs[:1]
        chosen = [layer for layer in self.model.select(filters) if layer.has_kernels]
        if not chosen:
            raise BadArgument(f"none of the layers selected by filters={filters!r} has convolution "
                              "kernels; select conv layers, or pass filters=None")
        return chosen

    def _fixed_images(self, images: Any, size: Any, preprocess: str | None
                      ) -> tuple[np.ndarray, list[str], list[np.ndarray], list[str]]:
        """The batch the model sees at every checkpoint, the images' names, thumbnails and notes."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = images
            if batch.shape[0] < 1 or 0 in batch.shape:
                raise BadImage(f"the images batch of shape {batch.shape} is empty; pass at least one image")
            if not (np.issubdtype(batch.dtype, np.floating) or np.issubdtype(batch.dtype, np.integer)):
                raise BadImage(f"the images batch has dtype {batch.dtype}; pass numbers")
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if not np.isfinite(batch).all():
                raise BadImage("the images batch holds NaN or infinite values; pass finite inputs")
            want = tuple(self.model.input_shape)
            got = tuple(batch.shape[1:])
            if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
                expected = _shape_text(["N", *("?" if w is None else w for w in want)])
                raise BadImage(f"the images batch of shape {_shape_text(batch.shape)} does not fit "
                               f"{self.model.name}, which takes {expected} (N, H, W, C), channels last; "
                               "pass a batch of that shape (np.moveaxis(batch, 1, -1) turns N, C, H, W "
                               "into N, H, W, C)")
            names = [f"input{i}" for i in range(batch.shape[0])]
            return batch, names, [_thumbnail(x) for x in batch], []
        prepared = self.model.prepare(images, size=size, preprocess=preprocess)
        if len({a.shape for a in prepared.arrays}) > 1:
            raise BadImage("the fixed images have different sizes after preparing, and every checkpoint runs "
                           "them as one batch; pass size=(H, W)")
        thumbs = [np.clip(np.round(im.pixels), 0, 255).astype(np.uint8) for im in prepared.images]
        thumbs = [np.repeat(t, 3, axis=-1) if t.shape[-1] == 1 else t[..., :3] for t in thumbs]
        return (np.ascontiguousarray(np.stack(prepared.arrays), dtype=np.float32),
                [im.name for im in prepared.images], thumbs, list(prepared.notes))

    def _check_forward(self) -> list[LayerInfo]:
        """One pass of the fixed batch now, so that a misfit fails before training, not during it.

        Returns:
            The selected layers the model produced no output for.

        Raises:
            BadImage: the images do not run through the model.
            BadArgument: the model produced none of the selected layers.
        """
        try:
            outputs = self._forward()
        except ConvlensError as exc:
            raise BadImage(f"the fixed images {_shape_text(self.inputs.shape)} do not run through "
                           f"{self.model.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any framework error: the model cannot take them
            raise BadImage(f"the fixed images {_shape_text(self.inputs.shape)} do not run through "
                           f"{self.model.name}: {type(exc).__name__}: {_first_line(exc)}") from None
        missing = [layer for layer in self.layers if layer.index not in outputs]
        if len(missing) == len(self.layers):
            raise BadArgument(f"no output of the selected layers ({', '.join(m.name for m in missing)}) was "
                              "captured; select other layers")
        return missing

    def _prepare_folder(self, overwrite: bool) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"cannot write to {out}: it is a file, not a folder; choose another out= folder")
        index = out / "index.json"
        if index.is_file():
            try:
                kind = json.loads(index.read_text(encoding="utf-8")).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = None
            if kind == RUN_KIND and not overwrite:
                raise OutputError(f"{out} already holds a recorded run; choose a new out= folder, or pass "
                                  "overwrite=True to replace it")
            if kind == RUN_KIND:
                self._remove_run(out)

    def _undo(self, existed: bool) -> None:
        """Remove what a failed construction wrote: no half-made run folder stays behind."""
        with contextlib.suppress(OSError):
            if not existed:
                shutil.rmtree(self.out)
            else:
                (self.out / "index.json").unlink(missing_ok=True)
                shutil.rmtree(self.out / "inputs", ignore_errors=True)

    def _remove_run(self, out: Path) -> None:
        """Remove the files of an earlier run (convlens's names only; nothing else in the folder)."""
        try:
            for path in out.iterdir():
                if path.is_dir() and (re.fullmatch(r"checkpoint-\d+", path.name)
                                      or path.name in ("gifs", "inputs", "tensorboard")):
                    shutil.rmtree(path)
                elif path.name in ("index.json", "timeline.html"):
                    path.unlink()
        except OSError as e:
            raise OutputError(f"cannot replace the run in {out}: {e.strerror or e}; choose a new "
                              "out= folder") from e

    # ------------------------------------------------------------------ the training thread

    @property
    def stopped(self) -> bool:
        """Recording stopped after a failure (see :attr:`error`); training is unaffected."""
        return self._stopped

    @property
    def error(self) -> str | None:
        """Why recording stopped, in one line; ``None`` while it works."""
        return self._error

    @property
    def checkpoints(self) -> int:
        """How many checkpoints were captured so far."""
        return self._n

    @property
    def last_step(self) -> int | None:
        """The step of the last captured checkpoint."""
        return self._last_step

    def _forward(self) -> dict[int, np.ndarray]:
        """One pass of the fixed batch on the engine: by layer index, its ``(N, ...)`` output."""
        keep = _KeepOutputs()
        batch = Batch(0, tuple(range(len(self.inputs))), self.inputs)
        run_batches(self.model, self.layers, [batch], [keep], workers=0)  # the training thread, inline
        return keep.outputs

    def _snapshot(self) -> dict[str, np.ndarray]:
        """Every weighted layer's trainable arrays as one float32 vector (a copy)."""
        if self._weights_source is None:
            return {}
        snap = {}
        for name, arrays in self._weights_source().items():
            flat = [np.asarray(a, dtype=np.float32).ravel() for a in arrays]
            if flat:
                snap[name] = np.concatenate(flat)  # always a new array: later updates cannot reach it
        return snap

    def checkpoint(self, step: int, *, epoch: int | None = None, label: str | None = None) -> bool:
        """Capture the model as it is now and hand it to the worker.

        On the calling (training) thread: one forward pass of the fixed images,
        a copy of the drawn kernels and of the trainable weights. Blocks only
        when ``queue_size`` checkpoints are still waiting for the worker.

        Args:
            step: the training step (optimizer updates so far); the x axis of
                every chart and TensorBoard's step.
            epoch: the epoch, if known (1 after the first epoch).
            label: what the pictures say; default ``step S (epoch E)``.

        Returns:
            ``False`` when recording has stopped (nothing is captured then).
        """
        if self._stopped:
            return False
        n = self._n + 1
        try:
            step = int(step)
            text = label or (f"step {step}" + (f" · epoch {epoch}" if epoch is not None else ""))
            outputs = self._forward()
            kernels: dict[str, np.ndarray] = {}
            for layer in self._filter_layers:
                kernels[layer.name] = np.array(self.model.adapter.kernels(layer.index), dtype=np.float32,
                                               copy=True)
            cap = _Capture(n=n, step=step, epoch=epoch, label=text, wall_time=time.time(), outputs=outputs,
                           kernels=kernels, weights=self._snapshot())
        except Exception as exc:  # noqa: BLE001 - training must go on, whatever broke
            self._stop(f"capturing checkpoint {n} (step {step}) failed", exc)
            return False
        self._n, self._last_step = n, step
        self._dirty = True
        self._start_worker()
        self._queue.put(cap)
        return True

    def finish(self, *, wait: bool = True) -> None:
        """Write the GIFs, the page and the final index, after every checkpoint still being written.

        Called when training ends (``on_train_end``, the end of a ``with``
        block). The work runs on the recorder's worker, after the checkpoints
        queued before it; ``wait=False`` returns at once (:meth:`wait` blocks
        until it is done; so does the end of the interpreter). Recording may
        go on afterwards (another ``fit`` call): the files are written again
        at the next finish. Never raises for a recording failure (it is logged).
        """
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(_FINISH)
        else:  # nothing was ever queued: finish here
            self._finish_run()
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until every queued checkpoint (and a requested finish) is written."""
        if self._worker is not None and self._worker.is_alive():
            self._queue.join()

    def close(self) -> None:
        """:meth:`finish`, wait for it, and record nothing more (later checkpoints do nothing)."""
        self.finish(wait=True)
        self._stopped = True
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(_STOP)
            self._worker.join()
        self._finalizer.detach()

    def _finish_run(self) -> None:
        """The end of a recording: GIFs, page, final index; the event file is closed (the worker's job)."""
        self._dirty = False
        if self._stopped:
            self._close_events()
            return
        try:
            gifs = self._write_gifs()
            with self._lock:
                self._index["gifs"] = gifs
                self._index["status"] = "finished"
                self._index["finished"] = time.time()
            self._write_index()
            if self.page and self._checkpoints:
                from .page import save_timeline

                save_timeline(self.out, self.out / "timeline.html")
                with self._lock:
                    self._index["page"] = "timeline.html"
                self._write_index()
        except Exception as exc:  # noqa: BLE001 - a recording failure must not reach training
            self._stop("finishing the run failed", exc)
        self._close_events()

    def _close_events(self) -> None:
        if self._events is not None:
            try:
                self._events.close()
            except Exception as exc:  # noqa: BLE001 - a recording failure must not reach training
                logger.error("convlens: closing the TensorBoard event file failed: %s", _first_line(exc))
            self._events = None

    def _stop(self, what: str, exc: BaseException) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            reason = str(exc) if isinstance(exc, ConvlensError) else f"{type(exc).__name__}: {_first_line(exc)}"
            self._error = f"{what}: {' '.join(reason.split())}"
            self._index["status"] = "stopped"
            self._index["error"] = self._error
        logger.error("convlens: recording stopped: %s; training goes on without it", self._error)
        with contextlib.suppress(Exception):  # the folder itself may be what broke; said above
            self._write_index()

    # ------------------------------------------------------------------ the worker

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="convlens-recorder", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        """The worker: writes checkpoints and finishes runs, in order, until told to stop."""
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if job is _FINISH:
                    self._finish_run()
                elif not self._stopped:  # once stopped, drain: training must never wait on the worker
                    self._write_job(job)
            finally:
                self._queue.task_done()

    def _write_job(self, cap: _Capture) -> None:
        try:
            if self._events is None and self._tb_dir is not None:  # closed by a finish: a new file
                from .events import EventWriter

                self._events = EventWriter(self._tb_dir)
            with self._lock:
                self._index["status"] = "recording"
            self._write_checkpoint(cap)
        except Exception as exc:  # noqa: BLE001 - a recording failure must not reach training
            self._stop(f"writing checkpoint {cap.n} (step {cap.step}) failed", exc)

    def _write_checkpoint(self, cap: _Capture) -> None:
        folder = f"checkpoint-{cap.n:04d}"
        tb_images: dict[str, bytes] = {}
        with OutputDir(self.out / folder) as staging:
            maps, stats = self._draw_maps(staging, cap, tb_images)
            health = ChannelStats(stats, model=self.model.name, images=self.image_names)
            staging.write_json("stats.json", health.to_json())
            filters = self._draw_filters(staging, cap, tb_images)

            weights = self._weight_rows(cap.weights)
            rows: list[dict[str, Any]] = [{"layer": s.name, "index": s.index, "type": s.type, "channels": s.channels,
                     "dead": int(s.dead.sum()), "dead_fraction": float(s.dead.sum()) / max(s.channels, 1),
                     "constant": int(s.notable.constant.sum()), "nonfinite": int(s.nonfinite.sum()),
                     "zero_fraction": _num(s.mean_zero_fraction()), "summary": s.summary()}
                    for s in stats]
            staging.write_json("index.json", {
                "kind": "convlens-checkpoint", "convlens": __version__, "checkpoint": cap.n, "step": cap.step,
                "epoch": cap.epoch, "label": cap.label, "time": cap.wall_time, "images": self.image_names,
                "maps": maps, "filters": filters, "health": rows, "weights": weights,
            })
        new_warnings = []
        for row in rows:
            if row["dead_fraction"] > self.dead_threshold and row["layer"] not in self._warned:
                self._warned.add(row["layer"])
                warning = {"layer": row["layer"], "step": cap.step, "epoch": cap.epoch, "checkpoint": cap.n,
                           "dead": row["dead"], "channels": row["channels"],
                           "dead_fraction": row["dead_fraction"]}
                new_warnings.append(warning)
                logger.warning(
                    "convlens: layer %s: %d of %d channels (%.0f%%) are dead (zero for every fixed image) "
                    "at step %d%s, above the %.0f%% threshold (a learning rate too high is the usual cause)",
                    row["layer"], row["dead"], row["channels"], 100 * row["dead_fraction"],
                    cap.step, f" (epoch {cap.epoch})" if cap.epoch is not None else "",
                    100 * self.dead_threshold)
        summary = {
            "checkpoint": cap.n, "folder": folder, "step": cap.step, "epoch": cap.epoch, "label": cap.label,
            "time": cap.wall_time,
            "dead_fraction": {r["layer"]: r["dead_fraction"] for r in rows},
            "dead": {r["layer"]: r["dead"] for r in rows},
            "weight_norm": {w["layer"]: w["norm"] for w in weights},
            "weight_change": {w["layer"]: w["change"] for w in weights},
        }
        with self._lock:
            self._checkpoints.append(summary)
            self._warnings.extend(new_warnings)
            self._index["checkpoints"] = list(self._checkpoints)
            self._index["warnings"] = list(self._warnings)
        self._write_index()
        if self._events is not None:
            scalars: dict[str, float] = {f"dead_fraction/{r['layer']}": r["dead_fraction"] for r in rows}
            for w in weights:
                scalars[f"weight_norm/{w['layer']}"] = w["norm"]
                if w["change"] is not None:
                    scalars[f"weight_change/{w['layer']}"] = w["change"]
            self._events.scalars(cap.step, scalars, wall_time=cap.wall_time)
            self._events.images(cap.step, tb_images, wall_time=cap.wall_time)
            self._events.flush()

    def _draw_maps(self, staging: OutputDir, cap: _Capture, tb_images: dict[str, bytes]
                   ) -> tuple[list[dict[str, Any]], list[LayerStats]]:
        """Every selected layer's map grid per image, drawn as ``save_maps`` draws it, and its health.

        The same drawing (:func:`convlens.maps.draw_map_file`), value ranges
        (``norm="global"``: :func:`convlens.core.normalize.global_range` of the image's
        reduced layers), flags and captions as ``convlens maps``; the caption
        ends with the checkpoint's label.
        """
        opts = self.options
        ranges: list[tuple[float, float] | None] = [None] * len(self.image_names)
        reduced: dict[int, list[np.ndarray]] = {}
        if opts.norm == "global":  # one scale over every layer, per image, as `convlens maps`
            for layer in self.layers:
                if layer.index in cap.outputs:
                    reduced[layer.index] = [reduce_map(x, opts) for x in cap.outputs[layer.index]]
            if reduced:
                ranges = [global_range(r[i] for r in reduced.values()) for i in range(len(self.image_names))]
        maps: list[dict[str, Any]] = []
        stats = []
        for layer in self.layers:
            out = cap.outputs.get(layer.index)
            if out is None:
                continue
            total = int(out.shape[-1]) if out.ndim > 1 else 1
            for i, image in enumerate(self.image_names):
                x = reduced[layer.index][i] if layer.index in reduced else out[i]
                drawn = draw_map_file(staging, image, layer, x, opts, total=total,
                                      value_range=ranges[i] if layer.index in reduced else None, note=cap.label)
                tb_images[f"maps/{layer.name}/{image}"] = drawn.png
                maps.append(drawn.entry)
            stats.append(channel_stats(out, index=layer.index, name=layer.name, type=layer.type))
        return maps, stats

    def _draw_filters(self, staging: OutputDir, cap: _Capture, tb_images: dict[str, bytes]
                      ) -> list[dict[str, Any]]:
        """The filter pictures of the captured kernels, drawn as ``save_filters`` draws them, and the kernels."""
        table = {layer.name: layer for layer in self._filter_layers}
        filters: list[dict[str, Any]] = []
        for name, k in cap.kernels.items():
            info = table.get(name)
            if info is None:  # pragma: no cover - kernels are captured for these layers only
                continue
            for drawn in draw_filter_files(staging, info, k, note=cap.label):
                tb_images[f"filters/{name}/{drawn.entry['kind']}"] = drawn.png
                entry = drawn.entry
                if entry["kind"] == "atlas":
                    raw = io.BytesIO()
                    np.save(raw, k, allow_pickle=False)  # the numbers themselves, (O, I, kh, kw) float32
                    kernels = drawn.file[:-len(".png")] + ".npy"
                    staging.write_bytes(kernels, raw.getvalue())
                    entry = {**entry, "kernels": kernels}
                filters.append(entry)
        return filters

    def _weight_rows(self, snapshot: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Norm of each layer's weights and their change since the last checkpoint, ||W_t - W_t-1|| / ||W_t-1||."""
        rows = []
        for name, w in snapshot.items():
            prev = self._prev.get(name, self._baseline.get(name))
            norm = _l2(w)
            change = None
            if prev is not None and prev.shape == w.shape:
                base = _l2(prev)
                if base > 0:
                    change = _l2(w - prev) / base
            rows.append({"layer": name, "params": int(w.size), "norm": _num(norm), "change": _num(change)})
        self._prev = snapshot
        self._baseline = {}
        return rows

    def _write_index(self) -> None:
        with self._lock:
            text = dumps_json(self._index, indent=1)
            atomic_write_bytes(self.out / "index.json", (text + "\n").encode("utf-8"))

    # ------------------------------------------------------------------ GIFs

    def _write_gifs(self) -> list[dict[str, Any]]:
        """One animated GIF per layer and image (and per filter picture) over every checkpoint."""
        with self._lock:
            checkpoints = list(self._checkpoints)
        if not checkpoints:
            return []
        frames: dict[str, list[str]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for c in checkpoints:
            try:
                entries = json.loads((self.out / c["folder"] / "index.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for e in entries.get("maps", []):
                key = f"gifs/{e['file'][:-4]}.gif"
                frames.setdefault(key, []).append(f"{c['folder']}/{e['file']}")
                meta[key] = {"kind": "maps", "layer": e["layer"], "image": e["image"], "file": key}
            for e in entries.get("filters", []):
                key = f"gifs/{e['file'][:-4]}.gif"
                frames.setdefault(key, []).append(f"{c['folder']}/{e['file']}")
                meta[key] = {"kind": f"filters-{e['kind']}", "layer": e["layer"], "file": key}
        with OutputDir(self.out / "gifs") as staging:
            for key, files in frames.items():
                staging.write_bytes(key[len("gifs/"):], encode_gif([_frame(self.out / f) for f in files]))
                meta[key]["frames"] = len(files)
        return list(meta.values())


class _KeepOutputs(PassConsumer):
    """Keeps each layer's output of the (one) batch, by layer index."""

    def __init__(self) -> None:
        self.outputs: dict[int, np.ndarray] = {}

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        self.outputs[layer.index] = array


def _l2(x: np.ndarray) -> float:
    """The L2 norm in float64, without BLAS: a multithreaded BLAS ``dot`` on the worker thread
    spins against the training's own threads (10 ms for 37,000 numbers on a busy 2-core machine)."""
    x64 = x.astype(np.float64)
    return math.sqrt(float(np.multiply(x64, x64, out=x64).sum()))


def _frame(path: Path) -> Any:
    """A recorded PNG as a GIF frame: indexed pictures (the feature-map grids) stay indexed."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P" and "transparency" not in im.info:
            pal = np.asarray(im.getpalette() or [0, 0, 0], np.uint8).reshape(-1, 3)[:256]
            return np.asarray(im), np.ascontiguousarray(pal)
        return np.asarray(im.convert("RGB"))


def _thumbnail(x: np.ndarray) -> np.ndarray:
    """A model input ``(H, W, C)`` of any range as an RGB picture, min-max over the image."""
    lo, hi = finite_range(x)
    scaled = np.zeros(x.shape, np.float32) if hi <= lo else (x - lo) / (hi - lo)
    rgb = np.round(np.clip(np.nan_to_num(scaled), 0, 1) * 255).astype(np.uint8)
    if rgb.shape[-1] == 3:
        return rgb
    return np.repeat(rgb[..., :1], 3, axis=-1)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _finish_at_exit(ref: Callable[[], Recorder | None]) -> None:
    """At interpreter exit: finish a run that was not finished, and wait for the writing."""
    recorder = ref()
    if recorder is None:
        return
    if recorder._dirty and not recorder.stopped:
        recorder.finish(wait=True)
    else:
        recorder.wait()
