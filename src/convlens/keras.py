"""Watching a Keras model learn: :class:`LensCallback` for ``model.fit``, on every Keras backend.

>>> from convlens.keras import LensCallback
>>> model.fit(x, y, epochs=3, callbacks=[LensCallback(x_val[:4], out="runs/1")])

then ``convlens timeline runs/1 --out timeline.html`` (the run folder also
holds ``timeline.html``, TensorBoard events and GIFs). Importing this module
imports Keras (``import convlens`` alone does not).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ._errors import BadArgument
from .adapters.keras import import_keras
from .model import Model
from .render.maps import RenderOptions
from .selection import DEFAULT_TRAINING_SELECTION
from .timeline.recorder import Recorder

__all__ = ["LensCallback", "keras_weights"]

keras = import_keras()


def keras_weights(model: Any) -> dict[str, list[np.ndarray]]:
    """The trainable arrays of every layer that has some, by the layer's name in convlens's table.

    Layers of nested models are named ``outer/inner``, as in ``Lens(model).layers()``.

    Args:
        model: a ``keras.Model``.

    Returns:
        Layer name -> its trainable arrays as numpy (kernel, bias, ...).
    """
    convert = keras.ops.convert_to_numpy
    out: dict[str, list[np.ndarray]] = {}

    def walk(layer: Any, prefix: str) -> None:
        for sub in getattr(layer, "layers", []):
            if isinstance(sub, keras.Model):
                walk(sub, f"{prefix}{sub.name}/")
            elif sub.trainable_weights:
                out[prefix + sub.name] = [convert(v) for v in sub.trainable_weights]

    walk(model, "")
    return out


def _every(every: Any) -> str | int:
    if every == "epoch":
        return "epoch"
    if isinstance(every, int) and not isinstance(every, bool) and every >= 1:
        return every
    raise BadArgument(f"every={every!r}: use 'epoch' (a checkpoint at the end of each epoch) or a number of "
                      "batches such as 50")


class LensCallback(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
    """Records what a Keras model sees while ``fit`` trains it.

    At each checkpoint (the end of every epoch, or every ``every`` batches)
    the fixed images go through the model once; their feature maps (drawn as
    ``convlens maps`` draws them), the filter atlases of the first conv layer,
    the channel health of the selected layers and every layer's weight norm
    and relative change since the previous checkpoint are written to a run
    folder (one subfolder per checkpoint and an ``index.json``), to
    TensorBoard event files, and, when training ends, to an animated GIF per
    layer and the timeline page ``out/timeline.html``. Drawing and writing run
    on a background thread; when ``fit`` returns, the last of it may still be
    going on: :meth:`wait` blocks until the run folder is complete (the end of
    the Python process waits for it too).

    A layer whose share of dead channels (zero for every fixed image) rises
    above ``dead_threshold`` is named once in a warning on the ``"convlens"``
    logger, with the step. A recording failure is logged and stops the
    recording; it never stops training.

    Args:
        images: the fixed images: a batch ``(N, H, W, C)`` exactly as the model
            takes it (e.g. ``x_val[:4]``), or image files, PIL images or
            single-image arrays, loaded and preprocessed as ``convlens maps``
            does (``preprocess``, ``size``).
        layers: the layers to record (default ``blocks``: the last conv layer
            of each resolution; any selection, e.g. ``"conv"``).
        every: ``"epoch"`` or a number of batches.
        out: the run folder (created; a folder holding an earlier run is
            refused unless ``overwrite=True``).
        tensorboard: ``True``: event files in ``out/tensorboard``; a folder:
            there (e.g. Keras's own TensorBoard ``log_dir``); ``False``: none.
        dead_threshold: the share of dead channels (0-1] above which a layer
            is named in a warning.
        model: the model ``fit`` will train, to check the settings now rather
            than when training starts (optional).
        filters: the conv layers whose filter atlases are drawn (default the
            first; any selection, or ``None``).
        initial: also record the model before its first training step.
        preprocess, size: for images given as files or pictures.
        overwrite: replace a run already in ``out``.
        **options: drawing options as for ``convlens maps``: ``norm``,
            ``cmap``, ``max_channels``, ``columns``, ``numbers``, ``tile_size``.

    Raises:
        LayerNotFound: a layer that the model does not have (when ``fit``
            starts, before the first batch, or at once with ``model=``).
        BadImage: images that do not fit the model (idem).
        OutputError: ``out`` cannot be written (idem).
        BadArgument: a bad ``every``, threshold or drawing option (at once).
    """

    def __init__(self, images: Any, layers: str | Iterable[str] | None = DEFAULT_TRAINING_SELECTION,
                 every: str | int = "epoch", *, out: str | os.PathLike[str],
                 tensorboard: bool | str | os.PathLike[str] = True,
                 dead_threshold: float = 0.5, model: Any = None, filters: str | None = "first",
                 initial: bool = False, preprocess: str | None = None, size: Any = None,
                 overwrite: bool = False, **options: Any) -> None:
        super().__init__()
        self.every = _every(every)
        if isinstance(dead_threshold, bool) or not isinstance(dead_threshold, (int, float)) \
                or not 0 < float(dead_threshold) <= 1:
            raise BadArgument(f"dead_threshold must be a fraction in (0, 1], e.g. 0.5 for 50%, "
                              f"not {dead_threshold!r}")
        RenderOptions(**options)  # a bad drawing option fails now, not when training starts
        self._settings: dict[str, Any] = dict(
            layers=layers, out=out, tensorboard=tensorboard, dead_threshold=dead_threshold, filters=filters,
            preprocess=preprocess, size=size, overwrite=overwrite, **options)
        self._images = images
        self.initial = bool(initial)
        self.recorder: Recorder | None = None
        self._recorded_model: Any = None
        self._batches = 0
        self._epoch = 0
        if self.every != "epoch":
            # Only then does the callback need each batch: Keras runs batch hooks of callbacks
            # that define none off the training loop (async dispatch), so epoch-only
            # recording leaves that speed-up alone.
            self.on_train_batch_end = self._on_batch  # type: ignore[method-assign]
        if model is not None:
            self._start(model)

    # ------------------------------------------------------------------ set-up

    def _start(self, model: Any) -> None:
        if self.recorder is not None:
            if model is not self._recorded_model:
                raise BadArgument("this LensCallback records another model; make a new LensCallback "
                                  "(with a new out= folder) for this one")
            return
        s = self._settings
        opened = Model.open(model, preprocess=s["preprocess"])
        options = {k: v for k, v in s.items() if k not in (
            "layers", "out", "tensorboard", "dead_threshold", "filters", "preprocess", "size", "overwrite")}
        self.recorder = Recorder(
            opened, self._images, out=s["out"], layers=s["layers"], filters=s["filters"],
            weights=lambda: keras_weights(model), tensorboard=s["tensorboard"],
            dead_threshold=s["dead_threshold"], size=s["size"], preprocess=s["preprocess"],
            overwrite=s["overwrite"], meta={"every": self.every, "backend": keras.backend.backend(),
                                            "recorder": "convlens.keras.LensCallback"},
            **options)
        self._recorded_model = model

    @property
    def out(self) -> str | os.PathLike[str]:
        """The run folder."""
        return self._settings["out"]

    @property
    def error(self) -> str | None:
        """Why recording stopped, if it did (training went on)."""
        return self.recorder.error if self.recorder is not None else None

    def _step(self) -> int:
        """Optimizer updates so far (the step TensorBoard and Keras's own logs use)."""
        optimizer = getattr(self.model, "optimizer", None)
        try:
            return int(keras.ops.convert_to_numpy(optimizer.iterations))  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - no optimizer variable (a custom loop): count batches
            return self._batches

    # ------------------------------------------------------------------ Keras hooks

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._start(self.model)
        if self.initial and self.recorder is not None and self.recorder.checkpoints == 0:
            self.recorder.checkpoint(self._step(), epoch=0, label="before training")

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch = epoch

    def _on_batch(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._batches += 1
        if self.recorder is not None and isinstance(self.every, int) and self._batches % self.every == 0:
            self.recorder.checkpoint(self._step(), epoch=self._epoch + 1)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.every == "epoch" and self.recorder is not None:
            self.recorder.checkpoint(self._step(), epoch=epoch + 1)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        if isinstance(self.every, int):  # the trained model, unless the last batch was a checkpoint
            step = self._step()
            if recorder.last_step is None or step > recorder.last_step:
                recorder.checkpoint(step, epoch=self._epoch + 1, label=f"step {step} · end of training")
        # The last checkpoint's drawing, the GIFs and the page are written on the worker while
        # `fit` returns: wait() blocks until they are there (so does the end of the interpreter).
        recorder.finish(wait=False)

    def wait(self) -> None:
        """Block until the run folder is complete (the last checkpoint, GIFs, ``timeline.html``)."""
        if self.recorder is not None:
            self.recorder.wait()

