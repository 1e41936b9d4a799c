"""Models with several inputs: which one is the image, and what the others are held at.

convlens explains one image input. A model that takes more (a Siamese
network's second image, a detector's image-size tensor, a conditioning
vector, a mask) is run with its other inputs held fixed for every pass and
every image: the values the user gives (``--input NAME=FILE.npy``,
``inputs={NAME: array}`` in Python), else zeros of the declared shape, with
a note. The choice is made once, here, when the model is opened; each
adapter then feeds :meth:`HeldInputs.arguments` (the framework's own layout,
batched) wherever it calls its model, so that every view (maps, statistics,
heatmaps, the report, visualisation, the dataset view) works unchanged.

Shapes here are one item's, without the batch axis, in the framework's own
layout (channels first for PyTorch and most ONNX files): the held inputs are
passed to the model as they are, never converted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import BadArgument

__all__ = ["HeldInputs", "InputSlot", "check_single_input", "hold_inputs", "image_input_name", "looks_like_image",
           "read_input_files"]

_HOW = "--input NAME=FILE.npy (inputs={'NAME': array} in Python)"


@dataclass(frozen=True)
class InputSlot:
    """One input of a model, as the framework declares it.

    Attributes:
        name: the input's name (Keras input name, ``forward`` parameter, ONNX graph input).
        shape: one item's shape without the batch axis, in the framework's own
            layout, ``None`` for a free dimension; ``None`` when the framework
            does not declare it (a PyTorch ``forward``).
        dtype: numpy dtype name of the values the model takes (``"float32"``, ``"int64"``).
        batch: the model takes the input with a leading batch axis (the value is
            repeated for every item of a batch); ``False``: as it is, once per call
            (an ONNX scalar, or a ``[2]`` size tensor beside a batched image).
    """

    name: str
    shape: tuple[int | None, ...] | None = None
    dtype: str = "float32"
    batch: bool = True

    def describe(self) -> str:
        """``name (3, None, None) float32``, for messages."""
        if self.shape is None:
            return self.name
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({dims}{',' if len(self.shape) == 1 else ''}) {self.dtype}"


@dataclass(frozen=True, eq=False)
class HeldInputs:
    """Which input is the image, and the values every other input is held at.

    Attributes:
        slots: every input of the model, in the order the model takes them.
        image: the position of the image input in ``slots``.
        values: by name, each other input's value for ONE item (no batch
            axis), in the slot's dtype and the framework's own layout.
        notes: sentences to show once (an input held at zeros, which image
            input was chosen among several).
    """

    slots: tuple[InputSlot, ...]
    image: int
    values: Mapping[str, np.ndarray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def image_slot(self) -> InputSlot:
        """The image input's slot."""
        return self.slots[self.image]

    def summary(self) -> str:
        """One line naming every input and its role, for ``convlens layers``."""
        roles = [f"{s.describe()} = {'the image' if i == self.image else 'held'}" for i, s in enumerate(self.slots)]
        return f"inputs: {'; '.join(roles)}"

    def batched(self, name: str, n: int) -> np.ndarray:
        """Input ``name``'s value repeated for a batch of ``n`` (a read-only broadcast view); an input the
        model takes without a batch axis (:attr:`InputSlot.batch` false) as it is."""
        value = self.values[name]
        if not next(s for s in self.slots if s.name == name).batch:
            return value
        return np.broadcast_to(value[None], (int(n), *value.shape))

    def arguments(self, image: Any, n: int) -> list[Any]:
        """Every input in the model's order: ``image`` (any framework tensor) at its place, the held ones
        batched for ``n`` items as numpy arrays (adapters convert them to their tensors)."""
        return [image if i == self.image else np.ascontiguousarray(self.batched(s.name, n))
                for i, s in enumerate(self.slots)]

    def named(self, image: Any, n: int) -> dict[str, Any]:
        """:meth:`arguments` by input name (an ONNX feed, a Keras dict input)."""
        return {s.name: a for s, a in zip(self.slots, self.arguments(image, n))}


def looks_like_image(slot: InputSlot) -> bool:
    """Whether an input can be an image: 3 axes (H, W, C or C, H, W), floating point or uint8, and, where
    declared, 1, 3 or 4 channels on one side."""
    if slot.shape is None:
        return True
    if len(slot.shape) != 3 or not (slot.dtype.startswith(("float", "bfloat")) or slot.dtype == "uint8"):
        return False
    first, last = slot.shape[0], slot.shape[-1]
    return first is None or last is None or first in (1, 3, 4) or last in (1, 3, 4)


def image_input_name(slots: Sequence[InputSlot], image_input: str | None = None,
                     is_image: Callable[[InputSlot], bool] = looks_like_image) -> str:
    """The name of the input the images fill: ``image_input`` when given (not checked here), else the
    first input that looks like an image (``is_image``), else the first input (THE default rule)."""
    if image_input is not None:
        return image_input
    return next((s.name for s in slots if is_image(s)), slots[0].name)


def check_single_input(model: str, slot: InputSlot, *, image_input: str | None = None,
                       inputs: Mapping[str, Any] | None = None) -> None:
    """What a model with ONE input accepts of ``image_input`` and ``inputs``: its own name, and nothing.

    Raises:
        BadArgument: ``image_input`` names another input, or ``inputs`` is not empty.
    """
    if image_input is not None and image_input != slot.name:
        raise BadArgument(f"--image-input {image_input}: {model} takes one input ({slot.name}); leave "
                          "--image-input out")
    if inputs:
        raise BadArgument(f"--input {next(iter(inputs))}: {model} takes one input ({slot.name}), the image; "
                          "--input is for models with several inputs")


def hold_inputs(model: str, slots: Sequence[InputSlot], *, image_input: str | None = None,
                inputs: Mapping[str, Any] | None = None,
                is_image: Callable[[InputSlot], bool] = looks_like_image) -> HeldInputs | None:
    """Decide the image input of a model and the values its other inputs are held at.

    Args:
        model: the model's name, for messages.
        slots: the model's inputs, in its order.
        image_input: the image input's name; ``None``: the first input that
            looks like an image (``is_image``), else the first.
        inputs: values of the other inputs by name, one item each (a leading
            batch axis of 1 is accepted), in the framework's own layout.
        is_image: whether a slot can be the image (adapters may be stricter).

    Returns:
        ``None`` for a model with one input (after checking that the
        arguments fit it), else the :class:`HeldInputs`.

    Raises:
        BadArgument: an unknown name, the image input given a value, a value
            of the wrong shape or type, or a missing value whose shape is not
            declared (it cannot be zeros).
    """
    slots = tuple(slots)
    given = dict(inputs or {})
    if not slots:
        raise BadArgument(f"{model} declares no input")
    if len(slots) == 1:
        check_single_input(model, slots[0], image_input=image_input, inputs=given)
        return None
    listing = ", ".join(s.describe() for s in slots)
    names = [s.name for s in slots]
    notes: list[str] = []
    if image_input is not None:
        if image_input not in names:
            raise BadArgument(f"--image-input {image_input}: {model} has no such input; its inputs are {listing}")
        image = names.index(image_input)
    else:
        image = names.index(image_input_name(slots, is_image=is_image))
        candidates = [i for i, s in enumerate(slots) if is_image(s)]
        if len(candidates) > 1:
            notes.append(f"{model} takes {len(candidates)} image inputs ({', '.join(names[i] for i in candidates)}); "
                         f"{names[image]} is explained, pick another with --image-input NAME")
    for name in given:
        if name not in names:
            raise BadArgument(f"--input {name}: {model} has no such input; its inputs are {listing}")
        if name == names[image]:
            raise BadArgument(f"--input {name}: {name} is the image input, which the images fill; give the "
                              "other inputs with --input, or pick another image input with --image-input")
    values: dict[str, np.ndarray] = {}
    zeros: list[str] = []
    for i, slot in enumerate(slots):
        if i == image:
            continue
        if slot.name in given:
            values[slot.name] = _fit(model, slot, given[slot.name])
            continue
        if slot.shape is None or any(d is None for d in slot.shape):
            what = "does not declare its shape" if slot.shape is None else f"has free dimensions {slot.describe()}"
            raise BadArgument(f"{model} takes several inputs and {slot.name} {what}, so it cannot be held at "
                              f"zeros; give it with {_HOW.replace('NAME', slot.name)}")
        dims = [int(d) for d in slot.shape if d is not None]
        values[slot.name] = np.zeros(dims, np.dtype(slot.dtype))
        zeros.append(slot.describe())
    if zeros:
        notes.append(f"{model}'s other inputs are held at zeros: {', '.join(zeros)}; give their values with "
                     f"{_HOW}")
    return HeldInputs(slots, image, values, tuple(notes))


def _fit(model: str, slot: InputSlot, value: Any) -> np.ndarray:
    """``value`` as one item of ``slot``: a leading batch axis of 1 dropped, the slot's dtype, shape checked."""
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise BadArgument(f"--input {slot.name}: an array of {arr.dtype} values; give numbers")
    declared = slot.shape
    if declared is not None:
        if slot.batch and arr.ndim == len(declared) + 1 and arr.shape[0] == 1:
            arr = arr[0]
        fits = arr.ndim == len(declared) and all(d is None or int(d) == s for d, s in zip(declared, arr.shape))
        if not fits:
            raise BadArgument(f"--input {slot.name}: the array has shape {tuple(arr.shape)}, but {model} takes "
                              f"{slot.describe()} for one item (without the batch axis, in the model's own layout)")
    target = np.dtype(slot.dtype)
    if target.kind in "iub" and arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise BadArgument(f"--input {slot.name}: {model} takes {slot.dtype} values there, and the array holds "
                          "fractions")
    return np.array(arr, dtype=target, order="C")  # (np.ascontiguousarray makes a scalar 1-D)


def read_input_files(pairs: Sequence[str]) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` pairs (the CLI's ``--input``) as ``{NAME: array}``; no pickle is ever loaded.

    Raises:
        BadArgument: a pair without ``=``, a name given twice, a file that is
            missing or not a numeric ``.npy`` array.
    """
    out: dict[str, np.ndarray] = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        name, file = name.strip(), file.strip()
        if not sep or not name or not file:
            raise BadArgument(f"--input {pair!r}: give NAME=FILE.npy, e.g. --input mask=mask.npy")
        if name in out:
            raise BadArgument(f"--input {name} is given twice; give each input once")
        path = Path(os.path.expanduser(file))
        if not path.is_file():
            raise BadArgument(f"--input {name}: {file} is not a file; give a .npy array saved with numpy.save")
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic != b"\x93NUMPY":
            kind = "an .npz archive" if magic.startswith(b"PK") else "not a .npy array"
            raise BadArgument(f"--input {name}: {file} is {kind}; save one numeric array with numpy.save")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            reason = "it holds Python objects, which convlens does not unpickle" if "pickle" in str(exc) else \
                f"{exc}"
            raise BadArgument(f"--input {name}: cannot read {file}: {reason}; save a numeric array with "
                              "numpy.save") from None
        out[name] = arr
    return out
