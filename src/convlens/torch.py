"""Watching a PyTorch model learn: :class:`LensRecorder`, called from any training loop.

>>> from convlens.torch import LensRecorder
>>> with LensRecorder(model, x_val[:4], layers="conv,act", out="runs/1") as recorder:
...     for epoch in range(3):
...         for x, y in loader:
...             ...                      # forward, backward, optimizer.step()
...             step += 1
...         recorder.record(step, epoch=epoch + 1)

then ``convlens timeline runs/1 --out timeline.html`` (the run folder also
holds ``timeline.html``, TensorBoard events and GIFs). Importing this module
imports PyTorch (``import convlens`` alone does not); TensorFlow is never
needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import numpy as np

from ._errors import BadImage, UnsupportedModel
from .adapters.torch import import_torch
from .lens import Lens
from .selection import DEFAULT_TRAINING_SELECTION
from .timeline.recorder import Recorder

__all__ = ["LensRecorder", "torch_weights"]


def torch_weights(model: Any) -> dict[str, list[np.ndarray]]:
    """The trainable parameters of every module that owns some, by its ``named_modules()`` name.

    These are the names of ``Lens(model).layers()``; the root module's own
    parameters go under its class name.

    Returns:
        Module name -> its parameters as numpy arrays (views of the live
        tensors on the CPU: copy them before training goes on, as the recorder does).
    """
    out: dict[str, list[np.ndarray]] = {}
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            key = ".".join(part.split("@")[0] for part in name.split(".")) or type(model).__name__
            out[key] = [p.detach().float().cpu().numpy() for p in params]
    return out


class LensRecorder:
    """Records what a PyTorch model sees at the checkpoints of a training loop.

    Each :meth:`record` runs the fixed images through the model once (in
    eval mode, without autograd; every module's train/eval flag is restored
    afterwards, so the loop's own mode is untouched) and writes, on a
    background thread, their feature maps (drawn as ``convlens maps`` draws
    them), the filter atlases of the first conv layer, the channel health of
    the selected layers and every module's weight norm and relative change
    since the previous checkpoint: to a run folder (one subfolder per
    checkpoint and an ``index.json``) and to TensorBoard event files. Closing
    the recorder (the end of the ``with`` block, or :meth:`close`) waits for
    the writing and adds an animated GIF per layer and ``out/timeline.html``.

    A layer whose share of dead channels (zero for every fixed image) rises
    above ``dead_threshold`` is named once in a warning on the ``"convlens"``
    logger, with the step. A recording failure is logged and stops the
    recording; it never raises into the training loop.

    PyTorch models usually apply ReLU as separate modules: dead ReLUs show in
    ``act`` layers, so select them too (``layers="blocks,act"`` or
    ``"conv,act"``); a conv layer's own output is taken before its ReLU.

    Args:
        model: the ``torch.nn.Module`` being trained (the live object).
        images: the fixed images: a tensor ``(N, C, H, W)`` as the model takes
            it, a numpy batch ``(N, H, W, C)`` (channels last), or image files,
            PIL images or single-image arrays, loaded and preprocessed as
            ``convlens maps`` does (``preprocess``, ``size``).
        layers: the layers to record (default ``blocks``).
        out: the run folder (created; a folder holding an earlier run is
            refused unless ``overwrite=True``).
        tensorboard: ``True``: event files in ``out/tensorboard``; a folder:
            there; ``False``: none.
        dead_threshold: the share of dead channels (0-1] above which a layer
            is named in a warning.
        filters: the conv layers whose filter atlases are drawn (default the
            first; any selection, or ``None``).
        input_shape: ``(H, W, C)`` for images given as files; taken from a
            batch otherwise.
        preprocess, size: for images given as files or pictures.
        overwrite: replace a run already in ``out``.
        **options: drawing options as for ``convlens maps``: ``norm``,
            ``cmap``, ``max_channels``, ``columns``, ``numbers``, ``tile_size``.

    Raises:
        LayerNotFound: a layer that the model does not have.
        BadImage: images that do not fit the model.
        OutputError: ``out`` cannot be written.
        BadArgument: a bad threshold or drawing option.
    """

    def __init__(self, model: Any, images: Any, layers: str | Iterable[str] | None = DEFAULT_TRAINING_SELECTION, *,
                 out: str | os.PathLike[str], tensorboard: bool | str | os.PathLike[str] = True,
                 dead_threshold: float = 0.5, filters: str | None = "first",
                 input_shape: tuple[int | None, ...] | None = None, preprocess: str | None = None,
                 size: Any = None, overwrite: bool = False, **options: Any) -> None:
        torch = import_torch()
        if not isinstance(model, torch.nn.Module):
            raise UnsupportedModel(f"LensRecorder records a torch.nn.Module, not a {type(model).__name__}; "
                                   "for Keras models use convlens.keras.LensCallback")
        batch = images
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise BadImage(f"the images tensor has shape {tuple(images.shape)}; pass a batch "
                               "(N, C, H, W) as the model takes it")
            batch = images.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
        from_batch = isinstance(batch, np.ndarray) and batch.ndim == 4
        if input_shape is None and from_batch:
            input_shape = tuple(int(d) for d in batch.shape[1:])
        self.model = model
        try:
            self.lens = Lens(model, input_shape=input_shape, preprocess=preprocess)
            self.recorder = Recorder(
                self.lens.model, batch, out=out, layers=layers, filters=filters,
                weights=lambda: torch_weights(model), tensorboard=tensorboard,
                dead_threshold=dead_threshold, size=size, preprocess=preprocess, overwrite=overwrite,
                meta={"recorder": "convlens.torch.LensRecorder"}, **options)
        except UnsupportedModel as exc:
            if not from_batch:
                raise
            shape = tuple(images.shape)
            hint = ("" if isinstance(images, torch.Tensor) else
                    "; numpy batches are channels last (N, H, W, C): pass the tensor itself, or "
                    "np.moveaxis(batch, 1, -1)")
            raise BadImage(f"the images of shape {shape} do not run through {type(model).__name__}: "
                           f"{' '.join(str(exc).split())}{hint}") from None

    @property
    def out(self) -> os.PathLike[str]:
        """The run folder."""
        return self.recorder.out

    @property
    def error(self) -> str | None:
        """Why recording stopped, if it did (training went on)."""
        return self.recorder.error

    @property
    def checkpoints(self) -> int:
        """How many checkpoints were recorded."""
        return self.recorder.checkpoints

    def record(self, step: int, *, epoch: int | None = None, label: str | None = None) -> bool:
        """Record a checkpoint of the model as it is now.

        One forward pass of the fixed images on this thread (eval mode, no
        autograd, every module's mode restored); the rest runs on the
        recorder's worker.

        Args:
            step: the training step (optimizer updates so far).
            epoch: the epoch, if known.
            label: what the pictures say; default ``step S · epoch E``.

        Returns:
            ``False`` when recording has stopped after a failure (logged).
        """
        return self.recorder.checkpoint(step, epoch=epoch, label=label)

    def close(self) -> None:
        """Wait for the writing; write the GIFs, the timeline page and the final index."""
        self.recorder.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()  # also when training raised: what was recorded stays readable
