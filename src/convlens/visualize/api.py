"""``visualize()``: checks a request, runs the optimisation, returns a :class:`Visualization`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .._errors import BadArgument, UnsupportedModel
from .._progress import Progress
from ..adapters.base import Adapter
from ..adapters.redirect import redirect_unavailable
from ..core.layers import LayerInfo
from ..methods.base import check_gradients
from ..model import Model
from ..selection import select_indexes
from .objectives import KINDS, Objective
from .optimize import redirect_steps, render
from .param import PresetMap
from .probe import probe_channels
from .result import Visualization

__all__ = ["DEFAULTS", "LIMITS", "parse_channels", "visualize"]

#: Lucid's defaults: 128-pixel images, 512 Adam steps at learning rate 0.05.
DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_LR, DEFAULT_BATCH = 128, 512, 0.05, 32
DEFAULTS: dict[str, float] = {"size": DEFAULT_SIZE, "steps": DEFAULT_STEPS, "lr": DEFAULT_LR,
                              "batch_size": DEFAULT_BATCH}

#: Accepted ranges, inclusive.
LIMITS = {"steps": (1, 100_000), "size": (16, 1024), "batch_size": (1, 4096), "copies": (1, 64)}

_RANGE = re.compile(r"^(\d+)\s*(?:-|\.\.)\s*(\d+)$")


def parse_channels(spec: Any, total: int, what: str = "channel", where: str = "") -> list[int]:
    """Channels from ``"all"``, ``"0-31"``, ``"3,7,12-15"``, an int or a sequence of ints.

    Raises:
        BadArgument: a malformed spec or an index outside ``0..total-1``.
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(range(total))
        out: list[int] = []
        for term in filter(None, (t.strip() for t in text.split(","))):
            m = _RANGE.match(term)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise BadArgument(f"{what}s {term!r}: the range runs backwards; write {hi}-{lo}")
                out.extend(range(lo, hi + 1))
            elif term.isdigit():
                out.append(int(term))
            else:
                raise BadArgument(f"{what}s {spec!r}: write all, a number, a range such as 0-31, "
                                  "or a comma-separated list")
        values = out
    elif isinstance(spec, (int,)) and not isinstance(spec, bool):
        values = [int(spec)]
    elif isinstance(spec, Iterable):
        values = []
        for v in spec:
            if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
                raise BadArgument(f"{what}s must be whole numbers, not {v!r}")
            values.append(int(v))
    else:
        raise BadArgument(f"{what}s must be 'all', a range such as '0-31', or whole numbers, not {spec!r}")
    if not values:
        raise BadArgument(f"no {what}s selected; give e.g. 0-31 or all")
    bad = [v for v in values if not 0 <= v < total]
    if bad:
        raise BadArgument(f"{what} {bad[0]} is out of range{where}: it has {total} {what}s (0-{total - 1})")
    return list(dict.fromkeys(values))


def _check_int(name: str, value: Any) -> int:
    lo, hi = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadArgument(f"{name} must be a whole number from {lo} to {hi}, not {value!r}")
    return int(value)


def _check_float(name: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise BadArgument(f"{name} must be a {'positive' if positive else 'non-negative'} number, "
                          f"not {value!r}")
    return float(value)


def _layer(table: list[LayerInfo], layer: Any, objective: str) -> LayerInfo:
    chosen = select_indexes(table, layer)
    if len(chosen) != 1:
        names = ", ".join(table[i].name for i in chosen[:5])
        more = ", ..." if len(chosen) > 5 else ""
        raise BadArgument(f"--layer {layer!r} names {len(chosen)} layers ({names}{more}); "
                          "name one layer")
    info = table[chosen[0]]
    if info.index == 0 or info.kind == "input":
        raise BadArgument(f"{info.name} is the model's input, which has no features to visualise; "
                          "choose a conv layer (see: convlens layers MODEL)")
    shape = info.output_shape
    if not shape or shape[-1] is None:
        raise UnsupportedModel(f"layer {info.name} has no channels to visualise (output shape {shape}); "
                               "choose a conv layer (see: convlens layers MODEL)")
    if objective == "neuron" and len(shape) < 2:
        raise BadArgument(f"layer {info.name} has no spatial positions (output {tuple(shape)}), so no "
                          "centre neuron; use --objective channel")
    return info


def visualize(model: Model | Adapter, layer: str | int | None = None,
              channels: str | int | Sequence[int] | None = None, *,
              preprocess: str | None = None, objective: str = "channel", negative: bool = False,
              steps: int = DEFAULT_STEPS, size: int | None = None, seed: int = 0,
              batch_size: int = DEFAULT_BATCH, lr: float = DEFAULT_LR, diversity: float = 0.0,
              copies: int = 1, input_size: tuple[int, int] | None = None,
              progress: Progress | None = None) -> Visualization:
    """Feature visualisation: the images that most excite channels, neurons or classes.

    Lucid's method (Olah et al., "Feature Visualization", Distill 2017,
    https://distill.pub/2017/feature-visualization/): a Fourier-space image
    with 1/f scaling and decorrelated colour (:mod:`.param`), random pad,
    jitter, scale and rotation each step (:mod:`.transform`), Adam; in the
    first half of the steps, zero-gated units (ReLU, ReLU6, hard-swish,
    max-pool) pass Lucid's redirected gradient, so that a channel that is zero
    on the starting image starts (:mod:`convlens.adapters.redirect`). A
    channel is called dead only when it is zero on the probe photos
    (:mod:`.probe`). Many
    channels are optimised together in batches; the framework only gives the
    gradient with respect to its input, so a seed gives the same images in
    every framework.

    Args:
        model: the model (a :class:`~convlens.model.Model`, or its adapter).
        layer: the layer (a name, index or any one-layer selection); not used
            for ``objective="class"``.
        channels: ``"all"``, ``"0-31"``, ints; default the first ``batch_size``
            channels (or classes).
        preprocess: the model's preset; default the model's (an adapter's own, else ``unit``).
        objective: ``"channel"`` (mean of the map), ``"neuron"`` (centre unit)
            or ``"class"`` (a logit of the output).
        negative: minimise instead.
        steps: optimisation steps (Lucid: 512).
        size: side of the square image; default 128 (Lucid), or the model's
            fixed input side when that is smaller (28 for MNIST).
        seed: seeds every random draw: same seed, same images.
        batch_size: images optimised together (memory grows with it; ``--batch-size``).
        lr: Adam's learning rate (Lucid: 0.05).
        diversity: weight of the diversity penalty between the ``copies`` of
            each channel (Distill's Gram-matrix cosine similarity); needs ``copies >= 2``.
        copies: images per channel.
        input_size: ``(h, w)`` fed to the network; default the model's fixed
            input, else the size the transforms give (``size`` + 12 at 128).
        progress: receives one step per optimisation step.

    Raises:
        UnsupportedModel: the model gives no gradients (TFLite), takes no
            images, or the layer has no channels.
        BadArgument: a channel out of range, steps or size out of range, ...
        LayerNotFound: no such layer.
    """
    asked = preprocess
    if isinstance(model, Model):
        adapter = model.adapter
        preprocess = preprocess or model.preprocess
    else:
        adapter = model
        model = Model(adapter)
    check_gradients(adapter, "feature visualisation", alternatives=False)
    if len(adapter.input_shape) != 3:
        raise UnsupportedModel(f"{adapter.name} takes input of shape {adapter.input_shape}, not images "
                               "(H, W, C); feature visualisation needs an image model")
    if objective not in KINDS:
        raise BadArgument(f"objective {objective!r}: choose one of {', '.join(KINDS)}")
    steps = _check_int("steps", steps)
    batch = _check_int("batch_size", batch_size)
    copies = _check_int("copies", copies)
    lr = _check_float("lr", lr, positive=True)
    diversity = _check_float("diversity", diversity, positive=False)
    if diversity > 0 and copies < 2:
        raise BadArgument("diversity pushes several images of one channel apart: give copies of 2 or "
                          "more (--copies 4)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BadArgument(f"seed must be a non-negative whole number, not {seed!r}")
    h, w, c = adapter.input_shape
    if c is None:
        raise UnsupportedModel(f"{adapter.name} does not say how many channels its input has; "
                               "give --input-shape H,W,C")
    fixed = (int(h), int(w)) if h is not None and w is not None else None
    if size is None:
        size = max(min(DEFAULT_SIZE, max(fixed)) if fixed else DEFAULT_SIZE, LIMITS["size"][0])
    size = _check_int("size", size)
    if input_size is None:
        input_size = fixed
    elif fixed is not None and tuple(input_size) != fixed:
        raise BadArgument(f"{adapter.name} takes a fixed input of {fixed[0]}x{fixed[1]}, not {input_size}")

    table = adapter.layers()
    info: LayerInfo | None
    if objective == "class":
        if layer is not None:
            raise BadArgument("the class objective reads the model's output; leave --layer out")
        info = None
        out_shape = table[-1].output_shape
        if not out_shape or out_shape[-1] is None or len(out_shape) != 1:
            raise UnsupportedModel(f"{adapter.name}'s output {out_shape} is not a vector of class scores; "
                                   "use --objective channel with --layer")
        total = int(out_shape[-1])
        where = f" for {adapter.name}'s output"
        what = "class"
    else:
        if layer is None:
            raise BadArgument(f"the {objective} objective needs a layer: give --layer NAME "
                              "(see: convlens layers MODEL)")
        info = _layer(table, layer, objective)
        total = int(info.output_shape[-1] or 0)  # type: ignore[index]
        where = f" for {info.name}"
        what = "channel"
    chosen = parse_channels(channels if channels is not None else f"0-{min(total, batch) - 1}",
                            total, what, where)
    objs = [Objective(objective, None if info is None else info.index, ch, negative)
            for ch in chosen for _ in range(copies)]
    preset = preprocess or adapter.preprocess or "unit"
    rendered = render(adapter, objs, preset=PresetMap(preset, int(c)), size=size, steps=steps, lr=lr,
                      seed=seed, batch=batch, input_size=input_size, diversity=diversity,
                      progress=progress, label=f"visualize {info.name if info else 'classes'}")
    sign = -1.0 if negative else 1.0
    labels = list(adapter.class_names) if objective == "class" and adapter.class_names else None
    probe = None if info is None else probe_channels(model, info.index, preprocess=preset, size=input_size,
                                                     channels=total)
    settings = {"steps": steps, "size": size, "seed": seed, "lr": lr, "batch_size": batch,
                "diversity": diversity, "preprocess": preset,
                "input_size": list(input_size) if input_size else None,
                "parameterisation": "fourier 1/f, decorrelated colour, sigmoid",
                "redirected_steps": redirect_steps(steps, adapter),
                "redirect_note": redirect_unavailable(adapter),
                "preprocess_note": model.preprocess_note(asked),
                "input_notes": model.input_notes,
                "transforms": "pad, jitter, scale, rotate, jitter (Lucid's standard_transforms)"}
    return Visualization(model=adapter.name, framework=adapter.framework, layer=info, objective=objective,
                         negative=negative, channels=[o.index for o in objs], copies=copies,
                         images=rendered.images, activations=rendered.scores * sign,
                         history=rendered.history, settings=settings, labels=labels,
                         dead=None if probe is None else [bool(probe.dead[o.index]) for o in objs],
                         probe_images=None if probe is None else probe.images)
