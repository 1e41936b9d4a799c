"""A model as convlens sees it: the :class:`Model` value every view takes.

``Model`` sits below everything that uses a model (feature maps, statistics,
heatmaps, the report, feature visualisation, the dataset view, the timeline,
the command line) and above the adapters. It holds what every view needs to
know once, decided in one place:

* the adapter (the framework's model behind the one contract),
* the preprocessing preset, and whether convlens guessed it,
* the model's class names and where they come from,
* the layer table and the selection rule,
* how to open the model again in another process (:class:`ModelSpec`).

:class:`convlens.Lens` is a thin facade over it; the views take a ``Model``
and never the facade, so nothing below the facade imports it.

>>> model = Model.open("demo")
>>> [layer.name for layer in model.select("conv")]
['conv1', 'conv2', 'conv3']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import BadArgument, UnsupportedModel
from .adapters import HeldInputs, adapter_device, open_model, parse_device
from .adapters.base import Adapter
from .classes import IMAGENET_SOURCE, check_class_names, is_imagenet_keyword, read_labels
from .core.layers import LayerInfo
from .images import PreparedBatch, prepare_batch
from .selection import DEFAULT_SELECTION, select

__all__ = ["DEFAULT_PREPROCESS", "Model", "ModelSpec", "as_model", "classes_in"]

#: The preset a model gets when neither the user nor the model's origin names one: pixels / 255.
DEFAULT_PREPROCESS = "unit"


@dataclass(frozen=True)
class ModelSpec:
    """How a model was opened, so that another process (a Ray actor) can open it again.

    ``Model.open(**spec.kwargs())`` reopens it.

    Attributes:
        model: a model file (absolute path) or a name (``vgg16``, ``torchvision:resnet18``, ``demo``).
        weights: zoo models: ``imagenet``, ``none`` or a weights file.
        input_shape: ``(H, W, C)`` for models that do not know theirs.
        trust: allow model files that run code when loaded.
        preprocess: the preprocessing preset asked for, if any.
        device: the device asked for (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); ``None``: ``auto``.
            Each process resolves it on its own machine (a Ray actor's GPU).
        image_input: a model with several inputs: the image input's name.
        inputs: the values its other inputs are held at, ``(name, array)`` pairs.
    """

    model: str
    weights: str | None = None
    input_shape: tuple[int | None, ...] | None = None
    trust: bool = False
    preprocess: str | None = None
    device: str | None = None
    image_input: str | None = None
    inputs: tuple[tuple[str, np.ndarray], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, model: str | os.PathLike[str], *, weights: str | None = None,
           input_shape: Sequence[int | None] | None = None, trust: bool = False,
           preprocess: str | None = None, device: str | None = None, image_input: str | None = None,
           inputs: Mapping[str, Any] | None = None) -> ModelSpec:
        """The spec of ``model``; a path that exists becomes absolute (actors may run elsewhere)."""
        text = os.fspath(model)
        if os.path.exists(text):
            text = os.path.abspath(text)
        held = tuple((str(k), np.asarray(v)) for k, v in (inputs or {}).items())
        return cls(text, weights, tuple(input_shape) if input_shape is not None else None,
                   bool(trust), preprocess, parse_device(device), image_input, held)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`convlens.adapters.open_model` and :meth:`Model.open`."""
        return {"model": self.model, "weights": self.weights, "input_shape": self.input_shape,
                "trust": self.trust, "preprocess": self.preprocess, "device": self.device,
                "image_input": self.image_input, "inputs": dict(self.inputs) or None}


def classes_in(output_shape: Sequence[int | None]) -> int | None:
    """K, the number of class scores in an output of ``output_shape`` per image, else ``None``.

    THE rule (:meth:`Model.output_classes` applies it to a model): an output of
    shape ``(K,)`` per image with K >= 2 is a classifier's; one unit is a score
    or a regression, not a choice between classes, and a map is not one score per class.

    Args:
        output_shape: the output for one image, without the batch axis.
    """
    if len(output_shape) == 1 and output_shape[0] is not None and int(output_shape[0]) > 1:
        return int(output_shape[0])
    return None


class Model:
    """A model opened by convlens: adapter, preprocessing, class names, selection.

    Build one with :meth:`Model.open` (any model object, file or name convlens
    reads) or wrap an adapter directly.

    Args:
        adapter: the framework's model behind :class:`~convlens.adapters.base.Adapter`.
        preprocess: the preprocessing preset; ``None``: the adapter's own, else
            :data:`DEFAULT_PREPROCESS` (then :attr:`preprocess_guessed` is true).
        spec: how to open the model again in another process; ``None`` for an
            in-memory model, which cannot be reopened.

    Attributes:
        adapter: the adapter.
        preprocess: the preset every view uses unless told otherwise.
        preprocess_guessed: neither the user nor the model's origin named the
            preset: it is :data:`DEFAULT_PREPROCESS` by default, and outputs say so.
        spec: see above.
        source: what the model was opened from (a path or a name), else ``None``.
    """

    def __init__(self, adapter: Adapter, *, preprocess: str | None = None, spec: ModelSpec | None = None) -> None:
        self.adapter = adapter
        named = preprocess or adapter.preprocess
        self.preprocess: str = named or DEFAULT_PREPROCESS
        self.preprocess_guessed: bool = named is None
        self.spec = spec
        self.source: str | None = spec.model if spec is not None else None

    @classmethod
    def open(cls, model: Any, *, weights: str | None = None, input_shape: Sequence[int | None] | None = None,
             trust: bool = False, preprocess: str | None = None, device: str | None = None,
             image_input: str | None = None, inputs: Mapping[str, Any] | None = None) -> Model:
        """Open a model object, file or name (see :func:`convlens.adapters.open_model`).

        A :class:`Model` is returned as it is (the other arguments must then be unset).

        Args:
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``None``:
                ``auto`` for files and names, and where it is for an in-memory model.
            image_input: a model with several inputs: the name of the input the
                images fill; ``None``: the first that looks like an image.
            inputs: the values the other inputs are held at, by name (one item
                each, the framework's own layout); left out: zeros, with a note.

        Raises:
            BadModel, UnsupportedModel, UnsafeModel, WeightsUnavailable: as ``open_model``.
            BadArgument: a device this machine does not have, or inputs that do not fit the model.
        """
        if isinstance(model, Model):
            return model
        adapter = open_model(model, weights=weights, input_shape=input_shape, trust=trust, preprocess=preprocess,
                             device=device, image_input=image_input, inputs=inputs)
        spec = (ModelSpec.of(model, weights=weights, input_shape=input_shape, trust=trust, preprocess=preprocess,
                             device=device, image_input=image_input, inputs=inputs)
                if isinstance(model, (str, os.PathLike)) else None)
        return cls(adapter, preprocess=preprocess, spec=spec)

    # ------------------------------------------------------------------ what the adapter knows

    @property
    def name(self) -> str:
        """The model's name."""
        return self.adapter.name

    @property
    def framework(self) -> str:
        """``"keras"``, ``"torch"``, ``"onnx"`` or ``"tflite"``."""
        return self.adapter.framework

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """``(H, W, C)`` with ``None`` for free dimensions."""
        return self.adapter.input_shape

    @property
    def device(self) -> str:
        """Where the model runs: ``"cpu"``, ``"cuda:0"``, ``"mps"`` (read from the adapter each time)."""
        return adapter_device(self.adapter)

    @property
    def device_note(self) -> str | None:
        """A sentence to show once when the model cannot run where it was asked to (TFLite on a GPU)."""
        note = getattr(self.adapter, "device_note", None)
        return str(note) if note else None

    def layers(self) -> list[LayerInfo]:
        """Every layer in execution order, the input first (rows of the layer table)."""
        return self.adapter.layers()

    # ------------------------------------------------------------------ selection

    def select(self, layers: str | Iterable[str] | None = None) -> list[LayerInfo]:
        """The layers a selection names, in execution order (see :mod:`convlens.selection`).

        Args:
            layers: names, globs, regexes, kinds, index ranges or ``"blocks"``;
                ``None``: :data:`convlens.selection.DEFAULT_SELECTION`.

        Raises:
            LayerNotFound: a name that matches no layer.
            UnsupportedModel: the selection matches no layer of this model.
        """
        table = self.adapter.layers()
        chosen = select(table, layers)
        if not chosen:
            kinds = sorted({layer.kind for layer in table if layer.kind != "input"})
            raise UnsupportedModel(f"{self.name} has no layer of the selected kinds "
                                   f"({layers or DEFAULT_SELECTION}); it has {', '.join(kinds)} layers: "
                                   "choose with --layers (e.g. --layers all)")
        return chosen

    # ------------------------------------------------------------------ inputs

    def prepare(self, images: Any, *, size: int | Sequence[int] | None = None,
                preprocess: str | None = None) -> PreparedBatch:
        """Load images and prepare them for this model (see :func:`convlens.images.prepare_batch`).

        Args:
            images: one image or a list (paths, PIL images or arrays).
            size: ``H`` or ``(H, W)`` for models that accept any size; default the image's own.
            preprocess: a preset; default :attr:`preprocess`.
        """
        prepared = prepare_batch(images, self.input_shape, size=size, preprocess=preprocess or self.preprocess,
                                 model_name=self.name)
        return self._noted(prepared, preprocess)

    def _noted(self, prepared: PreparedBatch, preprocess: str | None) -> PreparedBatch:
        """``prepared`` with :meth:`preprocess_note` and :attr:`input_notes` first in its notes: every view
        that prepares images through the model says so (CLI lines, index.json, the report)."""
        for note in reversed([self.preprocess_note(preprocess), *self.input_notes]):
            if note and note not in prepared.notes:
                prepared.notes.insert(0, note)
        return prepared

    @property
    def held_inputs(self) -> HeldInputs | None:
        """A model with several inputs: which is the image and what the others are held at; else ``None``."""
        held = getattr(self.adapter, "held_inputs", None)
        return held if isinstance(held, HeldInputs) else None

    @property
    def input_notes(self) -> list[str]:
        """Sentences every view shows about a model's other inputs (held at zeros, which image input)."""
        held = self.held_inputs
        return list(held.notes) if held is not None else []

    def preprocess_note(self, preprocess: str | None = None) -> str | None:
        """A sentence for every output when the preset was guessed, else ``None``."""
        if preprocess or not self.preprocess_guessed:
            return None
        return (f"preprocessing {self.preprocess} was guessed (pixels / 255): {self.name} did not say "
                "which it expects, and predictions are wrong if it was trained otherwise; pass --preprocess "
                "(preprocess= in Python), e.g. torch for torchvision's ImageNet models")

    def labels_hint(self, names: Sequence[str] | None, classes: int | None) -> str | None:
        """A one-line hint for a 1000-way classifier shown without class names, else ``None``."""
        if names is not None or classes != 1000:
            return None
        return (f"{self.name} outputs 1000 classes but has no class names; if they are ImageNet's, pass "
                "--labels imagenet (labels=\"imagenet\" in Python)")

    # ------------------------------------------------------------------ class names

    def output_classes(self, output_shape: Sequence[int | None] | None = None) -> int | None:
        """K, the number of class scores per image, or ``None`` when the output is not one score per class.

        The one place that decides it: an output of shape ``(K,)`` per image with K >= 2
        is a classifier's (one unit is a score or a regression, not a choice between classes).

        Args:
            output_shape: the model's output for one image, without the batch axis;
                default the last row of the layer table.
        """
        return classes_in(self.output_shape() if output_shape is None else output_shape)

    def output_shape(self) -> tuple[int | None, ...]:
        """The model's output for one image as the layer table's last row has it (``()`` when unknown)."""
        table = self.adapter.layers()
        last = table[-1].output_shape if table else None
        return tuple(last) if last else ()

    def class_names(self, labels: str | os.PathLike[str] | Sequence[str] | None = None, *,
                    classes: int | None = None, output_shape: Sequence[int] | None = None
                    ) -> tuple[list[str] | None, str]:
        """The model's class names, and where they come from in words.

        ``labels`` (a file, one name per line, a list, or ``"imagenet"`` for the
        built-in ImageNet-1k names: ``--labels``) win;
        otherwise the names the adapter knows (ImageNet's for keras.applications
        and torchvision classifiers, the demo's digits).

        Args:
            labels: the user's class names, if any.
            classes: K, the number of class scores the model outputs per image,
                when the caller ran the model; else read with :meth:`output_classes`.
            output_shape: the model's output per image, when known.

        Returns:
            ``(names, source)``, e.g. ``(["0", ..., "9"], "the demo model's digits")``;
            ``(None, "")`` when no names are known or they do not fit K.

        Raises:
            BadArgument: ``labels`` cannot be read, hold no names, their count is
                not K, or the model is not a classifier.
        """
        given = read_labels(labels) if labels is not None else None
        if classes is None:
            if output_shape is None:
                output_shape = self.output_shape()  # type: ignore[assignment]
            classes = self.output_classes(output_shape)
        imagenet = is_imagenet_keyword(labels)
        if imagenet and classes is not None and classes != len(given or ()):
            raise BadArgument(f"--labels imagenet gives ImageNet's {len(given or ())} class names, but {self.name} "
                              f"outputs {classes} classes; give a labels file with one name per class")
        names, source = check_class_names(self.name, classes, given=given, known=self.adapter.class_names,
                                          known_source=self.adapter.class_names_source,
                                          output_shape=tuple(output_shape or ()))
        return names, IMAGENET_SOURCE if imagenet and names is not None else source

    def __repr__(self) -> str:
        return f"Model({self.name!r}, framework={self.framework!r}, preprocess={self.preprocess!r})"


def as_model(model: Any) -> Model:
    """``model`` as a :class:`Model`: a Model as it is, anything with a ``.model`` Model (a Lens), else opened."""
    if isinstance(model, Model):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, Model):
        return inner
    return Model.open(model)
