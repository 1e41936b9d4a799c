"""The pipeline every heatmap method shares, and what it returns.

A method is a small subclass of :class:`Method` that overrides one function,
:meth:`Method.raw_maps`; the base owns everything else, in this order:

1. capability: a method that needs gradients asks the adapter
   (:meth:`~convlens.adapters.base.Adapter.gradients_unavailable`) before any
   work and fails with :class:`UnsupportedModel` naming the forward-only methods;
2. the batch: ``(N, H, W, C)`` float32, preprocessed; an image whose pixels
   are all equal is refused (nothing to point at: no gradient signal, every
   map equal);
3. the layer (CAM methods): the user's choice, or :func:`default_layer`;
4. the targets (:mod:`convlens.methods.targets`): top-1, classes by index or
   name, a box of a segmentation output;
5. the raw maps (the method), then for CAMs ReLU, bilinear upsampling to the
   input's resolution and min-max scaling to 0..1 per map, as pytorch-grad-cam
   does; for input attributions the channel reduction the method declares and
   a scaling by the largest magnitude.

Every method has the same :meth:`Method.compute` signature; what differs
(Integrated Gradients' steps, occlusion's window) goes to the constructor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .._errors import BadArgument, BadImage, UnsupportedModel
from .._progress import NullProgress, Progress
from ..adapters.base import Adapter, Gradients, InputItems, Target
from ..core.cam import minmax, resize_bilinear
from ..core.detection import guess_layout, looks_like_torchvision
from ..core.layers import LayerInfo
from ..core.memory import MEMORY_BUDGET, batch_size_for, per_sample_bytes
from ..images import apply_preset, check_not_constant
from ..model import classes_in
from ..passes import call_model
from ..selection import select_indexes
from .targets import Objective, Rows, TargetSpec, parse_classes, resolve_objective, resolve_rows

__all__ = [
    "MEMORY_BUDGET",
    "Context",
    "GradientCam",
    "Method",
    "MethodResult",
    "check_gradients",
    "default_layer",
    "gradients_problem",
    "positive_int",
    "resolve_layer",
    "spatial_layers",
]



@dataclass
class MethodResult:
    """Heatmaps of one method for a batch: one map per (image, class) row.

    Attributes:
        method: the method's registry name, e.g. ``"gradcam"``.
        title: its display name, e.g. ``"Grad-CAM"``.
        kind: ``"cam"`` (a layer's map, upsampled) or ``"input"`` (an attribution to the pixels).
        maps: ``(M, H, W)`` float32 at the network input's resolution. CAMs: 0..1
            (ReLU, then min-max per map). Input attributions: 0..1 for
            unsigned methods (saliency, SmoothGrad), -1..1 for signed ones
            (Integrated Gradients, occlusion), scaled per map by the largest
            magnitude so that 0 stays 0.
        raw: before upsampling and scaling. CAMs: ``(M, h, w)`` float32 at the
            layer's resolution, before the ReLU. Input attributions: ``(M, H,
            W, C)`` float32 per input channel, in the score's units.
        scores: ``(M,)`` float64, each row's target score in the model's output
            as :meth:`Adapter.run` returns it (a probability when the model
            ends in a softmax; summed over the box for a segmentation).
        images: ``(M,)`` int, the batch image each row explains.
        classes: ``(M,)`` int, the class each row explains.
        labels: the class of each row as text (its name when known).
        layer: the CAM's layer, ``None`` for input attributions.
        signed: maps run from -1 to 1 (else 0 to 1).
        flat: ``(M,)`` bool, the map carried no signal (every value equal
            before scaling, e.g. the ReLU removed everything); such maps are all 0.
        extra: method-specific figures, e.g. Integrated Gradients'
            ``completeness_gap`` ``(M,)``.
        target: the resolved rows (:class:`~convlens.methods.targets.Rows`):
            what each row explains (a detection's box, a region...).
    """

    method: str
    title: str
    kind: str
    maps: np.ndarray
    raw: np.ndarray
    scores: np.ndarray
    images: np.ndarray
    classes: np.ndarray
    labels: list[str]
    layer: LayerInfo | None
    signed: bool = False
    flat: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    extra: dict[str, Any] = field(default_factory=dict)
    target: Rows | None = None

    def __len__(self) -> int:
        return len(self.maps)


# --------------------------------------------------------------------------- layers


def _hw(layer: LayerInfo) -> tuple[int | None, int | None] | None:
    shape = layer.output_shape
    if shape is None or len(shape) != 3:
        return None
    return shape[0], shape[1]


def _is_spatial(layer: LayerInfo) -> bool:
    """The output is a 2-D map ``(H, W, C)`` with more than one position (free sizes allowed)."""
    hw = _hw(layer)
    if hw is None or layer.kind == "input":
        return False
    h, w = hw
    return h is None or w is None or h * w > 1


def spatial_layers(table: Sequence[LayerInfo]) -> list[LayerInfo]:
    """The layers a CAM can use: 2-D maps with several positions, the model's output excluded."""
    rows = [layer for layer in table if _is_spatial(layer)]
    if len(table) > 1:
        rows = [layer for layer in rows if layer.index != table[-1].index] or rows
    return rows


def default_layer(table: Sequence[LayerInfo]) -> LayerInfo:
    """The layer a CAM uses when none is chosen: the output of the last conv layer.

    More precisely, the last layer (in execution order, the model's output
    excluded) whose output has the same resolution as the last conv layer's,
    so that the ReLU, normalisation or residual addition that follows the
    conv is included; named by the innermost block that hands it on as its
    output: ResNet-18 ``layer4.1`` (the output of ``layer4.1.relu#2``,
    pytorch-grad-cam's recommended ``model.layer4[-1]``),
    torchvision VGG16 ``features.29`` (relu5_3, the Grad-CAM paper's layer,
    14x14; pytorch-grad-cam's README suggests the 7x7 pool after it), Keras
    VGG16 ``block5_conv3``, MobileNetV2 ``features.18.2`` / ``out_relu``, the
    demo CNN ``conv3``. When the model has no conv layer with spatial maps,
    the last layer with spatial maps.

    Raises:
        UnsupportedModel: no layer has spatial maps.
    """
    rows = spatial_layers(table)
    before_head = detector_layer(table, rows)
    if before_head is not None:
        return before_head
    if not rows:
        raise UnsupportedModel(
            "no layer of this model outputs 2-D maps (H, W, C) with more than one "
            "position, so there is nothing for a CAM to show; use an input "
            "attribution method (saliency, ig, occlusion)"
        )
    convs = [layer for layer in rows if layer.kind == "conv"]
    if not convs:
        return rows[-1]
    last = convs[-1]
    chosen = [layer for layer in rows if layer.index >= last.index and _hw(layer) == _hw(last)
              and layer.kind != "block"][-1]
    return _enclosing_block(table, chosen)


def _enclosing_block(table: Sequence[LayerInfo], row: LayerInfo) -> LayerInfo:
    """The innermost container row whose output is ``row``'s own (``layer4.1`` for ``layer4.1.relu#2``), else ``row``.

    A container that ends with a row hands that row's tensor on as its output
    (its one data parent is that row); naming the block is what users write
    (pytorch-grad-cam's ``model.layer4[-1]``).
    """
    for layer in table[row.index + 1:]:
        if layer.kind == "block" and layer.parents == (row.index,) and layer.output_shape == row.output_shape:
            return layer
    return row


def _per_row(rows: Any) -> bool:
    """Whether the rows carry their own objectives (a detection's cotangent, a region per row, another
    output), so that each pass needs the target of exactly its rows."""
    return rows.cotangents is not None or (rows.mask is not None and rows.mask.ndim == 3) or rows.output is not None


#: A CAM layer of a detector or segmenter should have maps of at least this many positions a side.
MIN_SIDE = 7


def _big_enough(layer: LayerInfo) -> bool:
    hw = _hw(layer)
    return hw is not None and all(d is None or d >= MIN_SIDE for d in hw)


def _module_path(name: str) -> str:
    """A row's name as a dotted module path: ONNX's ``/model.15/cv2/act/Mul`` is ``model.15.cv2.act.Mul``."""
    return name.strip("/").replace("/", ".")


def _stage_end(rows: Sequence[LayerInfo], table: Sequence[LayerInfo], prefix: str) -> LayerInfo | None:
    """The output of the module named ``prefix``: its container row when the table has one, else its
    last row, followed by the activation after it (a shared activation module is named elsewhere)."""
    block = next((r for r in rows if _module_path(r.name) == prefix), None)
    if block is not None:
        return block
    inside = [r for r in rows if _module_path(r.name).startswith(prefix + ".")]
    if not inside:
        return None
    last = inside[-1]
    nxt = table[last.index + 1] if last.index + 1 < len(table) else None
    if nxt is not None and nxt.kind == "act" and _hw(nxt) == _hw(last) and _is_spatial(nxt):
        return nxt
    return last


def _shared_ancestor(table: Sequence[LayerInfo], inputs: Sequence[int],
                     rows: Sequence[LayerInfo]) -> LayerInfo | None:
    """The last spatial row that every row of ``inputs`` reads (itself or through its parents), with
    maps of at least :data:`MIN_SIDE` a side when it has free sizes or big enough ones."""
    if not inputs:
        return None
    # one pass from the last input down, each row carrying the set of inputs that read it as a bit
    # mask (rows run in order: a row's parents come before it)
    reach = {start: 0 for start in inputs}
    for k, start in enumerate(inputs):
        reach[start] |= 1 << k
    for i in range(max(inputs), -1, -1):
        m = reach.get(i, 0)
        if m:
            for p in table[i].parents:
                if p >= i:
                    return _shared_ancestor_walk(table, inputs, rows)
                reach[p] = reach.get(p, 0) | m
    everyone = (1 << len(inputs)) - 1
    spatial = {r.index for r in rows if _big_enough(r)}
    best = max((i for i, m in reach.items() if m == everyone and i in spatial), default=None)
    return table[best] if best is not None else None


def _shared_ancestor_walk(table: Sequence[LayerInfo], inputs: Sequence[int],
                          rows: Sequence[LayerInfo]) -> LayerInfo | None:
    """:func:`_shared_ancestor` for a table whose rows are not in execution order: a walk per input."""
    common: set[int] | None = None
    for start in inputs:
        seen, todo = {start}, [start]
        while todo:
            for p in table[todo.pop()].parents:
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        common = seen if common is None else common & seen
    spatial = {r.index for r in rows if _big_enough(r)}
    best = max((i for i in (common or set()) if i in spatial), default=None)
    return table[best] if best is not None else None


def detector_layer(table: Sequence[LayerInfo], rows: Sequence[LayerInfo] | None = None) -> LayerInfo | None:
    """The default CAM layer of a detector or segmenter, before its heads; ``None`` for other models.

    A CAM inside a head (a box-regression conv of one channel) shows nothing,
    so the layer is the last one that every head reads, with maps of at least
    :data:`MIN_SIDE` a side when there is one:

    * Ultralytics YOLO (``model.N`` stages, the last one the Detect/Segment
      head): the last neck stage that every one of the head's inputs reads
      (YOLOv8: ``model.15``, the stride-8 output of the neck, which the
      stride-16 and stride-32 outputs are computed from). pytorch-grad-cam's
      examples take the stage just before the head (``model.21``), but only
      the stride-32 detections depend on it: a gradient CAM of a stride-8
      detection there is zero. Without the graph's parents: ``model.{N-1}``;
    * torchvision detectors: the FPN's row that every level's output reads
      (the top of its top-down path, ``backbone.fpn.inner_blocks.N``), so that
      a detection of any level has a gradient there; else the finest output;
    * DeepLab: the ASPP output (``classifier.0.project``).
    """
    rows = list(rows if rows is not None else spatial_layers(table))
    if not rows:
        return None
    names = [_module_path(r.name) for r in table]
    stages = sorted({int(m.group(1)) for n in names if (m := re.match(r"model\.(\d+)(\.|$)", n))})
    last_stage = re.match(r"model\.(\d+)", names[-1])
    if len(stages) >= 3 and last_stage is not None:
        head = f"model.{last_stage.group(1)}"
        inside = {r.index for r, n in zip(table, names) if n == head or n.startswith(head + ".")}
        inputs = sorted({p for i in inside for p in table[i].parents if p not in inside})
        shared = _shared_ancestor(table, inputs, rows)
        if shared is not None:
            return shared
        k = int(last_stage.group(1)) - 1
        return _stage_end(rows, table, f"model.{k}")
    fpn = [r for r in rows if re.search(r"(^|\.)fpn\.layer_blocks\.\d+", _module_path(r.name))]
    if fpn:
        # every level's detections read the top of the FPN's top-down path; a finer level's output is
        # not read by the coarser levels' heads (a gradient CAM of their detections there is zero)
        inner = [(int(m.group(1)), r) for r in rows
                 if (m := re.search(r"(?:^|\.)fpn\.inner_blocks\.(\d+)", _module_path(r.name)))]
        top = [r for k, r in inner if k == max(k for k, _ in inner) and _big_enough(r)]
        if top:
            return top[-1]
        good = [r for r in fpn if _big_enough(r)] or fpn
        return good[-1]
    aspp = [r for r in rows if re.search(r"(^|\.)(aspp|classifier\.0)\.project(\.|$)", _module_path(r.name))]
    if aspp:
        return aspp[-1]
    return None


#: The last table asked for its default layer (its rows) and that layer: a detector's takes walks over
#: the whole table (milliseconds for YOLOv8's 1,400 rows), and an adapter hands out its one table for
#: every heatmap of the model. Compared row by row (the same row objects compare at once), so a table
#: edited in place is not answered from the cache.
_LAST_DEFAULT: list[tuple[tuple[LayerInfo, ...], LayerInfo]] = []


def _cached_default_layer(table: Sequence[LayerInfo]) -> LayerInfo:
    rows = tuple(table)
    if _LAST_DEFAULT and _LAST_DEFAULT[0][0] == rows:
        return _LAST_DEFAULT[0][1]
    chosen = default_layer(table)
    _LAST_DEFAULT[:] = [(rows, chosen)]
    return chosen


def resolve_layer(table: Sequence[LayerInfo], layer: str | int | LayerInfo | object | None) -> LayerInfo:
    """The one layer a CAM method runs on.

    Args:
        table: the model's layer table.
        layer: a name or selection term naming one layer, a table index, a
            :class:`LayerInfo`, a layer object of the model (a
            ``torch.nn.Module`` such as ``model.layer4[-1]``), or ``None`` for
            :func:`default_layer`.

    Raises:
        LayerNotFound: no such layer.
        BadArgument: the selection names several layers, or one without
            spatial maps (the message names layers that would work).
    """
    if layer is None:
        return _cached_default_layer(table)
    if isinstance(layer, LayerInfo):
        chosen = table[layer.index]
    else:
        # a layer object (``model.layer4[-1]``) is matched by identity, anything else as a term
        hits = select_indexes(table, layer if not isinstance(layer, (str, int)) else str(layer))
        if len(hits) != 1:
            raise BadArgument(
                f"layer {layer!r} names {len(hits)} layers; a CAM needs one "
                f"(e.g. {table[hits[-1]].name!r})"
            )
        chosen = table[hits[0]]
    if not _is_spatial(chosen):
        good = spatial_layers(table)
        names = ", ".join(
            f"{g.name} " + "x".join("?" if d is None else str(d) for d in (_hw(g) or ()))
            for g in good[-4:]
        )
        where = f"layers with maps: {names}" if good else "this model has no layer with maps"
        raise BadArgument(
            f"layer {chosen.name!r} outputs {chosen.output_shape}, not 2-D maps with more "
            f"than one position, so a CAM cannot use it; {where}"
        )
    return chosen


# --------------------------------------------------------------------------- the pipeline


class Context:
    """What one :meth:`Method.compute` call knows; methods read it and call its passes.

    Attributes:
        adapter: the model.
        batch: ``(N, H, W, C)`` float32 preprocessed images.
        table: the model's layer table.
        layer: the CAM's layer (``None`` for input attributions).
        preprocess: the preset the batch was made with (for baselines in pixels).
        progress: where slow methods report.
        output: the model's output for ``batch`` once a pass computed it.
    """

    def __init__(
        self,
        adapter: Adapter,
        batch: np.ndarray,
        table: list[LayerInfo],
        layer: LayerInfo | None,
        *,
        spec: TargetSpec,
        names: Sequence[str] | None,
        box: Sequence[float] | None,
        preprocess: str,
        progress: Progress,
        memory: int,
        forward_first: bool = False,
        objective: Objective | None = None,
        agnostic: bool = False,
    ) -> None:
        self.adapter = adapter
        self.batch = batch
        self.table = table
        self.layer = layer
        self.preprocess = preprocess
        self.progress = progress
        self.output: np.ndarray | None = None
        self.memory = memory
        self._spec, self._names, self._box = spec, names, box
        # Forward-only methods run the batch anyway: resolving classes against the real output
        # checks them even when the layer table does not say how many classes there are.
        self._forward_first = forward_first
        #: method-specific figures the method records for :attr:`MethodResult.extra`
        self.extra: dict[str, Any] = {}
        self._rows: Rows | None = None
        #: ``(acts, grads)`` per row given by the caller (:meth:`GradientCam.from_gradients`): no pass
        self.given: tuple[np.ndarray, np.ndarray] | None = None
        self._activations: np.ndarray | None = None
        #: the model output of each row, when a gradient pass gave it
        self.row_output: np.ndarray | None = None
        #: the gradient passes differentiated logits read before a final softmax
        self.logits = False
        self.objective = objective
        #: the method needs no class (Eigen-CAM): a model without class scores gets one row per image
        self.agnostic = agnostic
        self._outputs: list[tuple[str, np.ndarray]] | None = None

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.batch.shape[1]), int(self.batch.shape[2])

    def all_outputs(self) -> list[tuple[str, np.ndarray]]:
        """Every model output for the batch, by name (the adapter's ``outputs()``, else its one output)."""
        if self._outputs is None and self.output is not None and (self.objective is None or (
                self.objective.output is None and self.objective.layout in (None, "yolo", "yolo-obj"))) \
                and self.output.ndim == 3 and guess_layout([tuple(self.output.shape[1:])]) == "yolo" \
                and not all(looks_like_torchvision(o) for o in self.output):
            self._outputs = [("output", self.output)]  # a dense detector's one output, given: no pass
        if self._outputs is None:
            many = getattr(self.adapter, "outputs", None)
            if callable(many):
                self._outputs = [(str(n), np.asarray(a)) for n, a in many(self.batch)]
                if self.output is None and self._outputs:
                    self.output = self._outputs[0][1]
            else:
                self._outputs = [("output", self.forward())]
        return self._outputs

    def _objective_rows(self, strict: bool) -> Rows | None:
        """Rows for what is not one class score of a classifier (detections, regions, raw values,
        embeddings, another output); ``None`` when not ``strict`` and the outputs are no detector's."""
        objective = self.objective or Objective()
        classes = parse_classes(self._spec, None, self._names) if self._spec is not None else None
        try:
            return resolve_objective(objective, self.all_outputs(), classes=classes, names=self._names,
                                     input_hw=self.hw)
        except BadArgument:
            if strict:
                raise
            return None

    @property
    def rows(self) -> Rows:
        """The resolved targets (top-1, a box or a forward-only method run the batch first)."""
        if self._rows is None and self.objective is not None and not self.objective.is_plain():
            self._rows = self._objective_rows(strict=True)
        if self._rows is None:
            if self.output is None and (
                self._spec is None or self._box is not None or self._forward_first
            ):
                self.forward()
            if self.output is not None and self.output.ndim == 3 and self._box is None:
                self._rows = self._objective_rows(strict=False)
            if self._rows is None:
                self._rows = self._classic_rows()
        return self._rows

    def _classic_rows(self) -> Rows:
        try:
            return resolve_rows(
                self._spec,
                self.output,
                n_images=len(self.batch),
                n_classes=_known_classes(self.table, self._names),
                names=self._names,
                box=self._box,
                input_hw=self.hw,
            )
        except BadArgument:
            if not (self.agnostic and self._spec is None and self._box is None):
                raise
        n = len(self.batch)  # a class-agnostic method on a model without class scores: one map per image
        return Rows(images=np.arange(n), classes=np.zeros(n, int), labels=["any class"] * n, kind="agnostic",
                    values=np.zeros(n))

    def forward(self, *, capture: bool = False) -> np.ndarray:
        """The model's output for the batch: one forward pass unless known already.

        Args:
            capture: also capture the CAM layer's activations (:meth:`activations`).
        """
        capture = capture and self.layer is not None
        if self.output is None or (capture and self._activations is None):
            captured: list[np.ndarray] = []
            wanted = [self.layer.index] if capture else []  # type: ignore[union-attr]
            self.output = call_model(self.adapter, self.batch, wanted, lambda i, a: captured.append(a))
            if captured:
                self._activations = np.asarray(captured[0], np.float32)
        return self.output

    def activations(self) -> np.ndarray:
        """``(N, h, w, C)``: the CAM layer's output for the batch (one forward pass, shared)."""
        self.forward(capture=True)
        if self._activations is None:
            raise UnsupportedModel(
                f"the adapter gave no output for layer {self.layer.name!r}"  # type: ignore[union-attr]
                "; choose another layer"
            )
        return self._activations

    def row_scores(self) -> np.ndarray:
        """``(M,)`` each row's score, from whichever pass computed the model's output."""
        rows = self.rows
        if self.row_output is not None:
            return rows.scores(self.row_output)
        return rows.scores(self.forward()[rows.images])

    def per_sample_bytes(self, backward: bool) -> int:
        """Estimated bytes one input takes in a pass: its layer outputs (twice with gradients)."""
        return per_sample_bytes(self.table, self.hw, int(np.prod(self.batch.shape[1:])), backward=backward)

    def batch_size(self, wanted: int | None, *, backward: bool) -> int:
        """Items per pass: ``wanted`` if given, else as many as the memory budget allows (1-64)."""
        if wanted is not None:
            return positive_int("batch_size", wanted)
        return batch_size_for(self.per_sample_bytes(backward), self.memory)

    def gradients(
        self,
        x: np.ndarray,
        classes: Sequence[int] | np.ndarray,
        *,
        layers: Sequence[int] = (),
        wrt_input: bool = False,
        part: np.ndarray | slice | None = None,
    ) -> Gradients:
        """One gradient pass of ``x`` ``(B, H, W, C)``, item ``b`` explaining ``classes[b]``.

        ``part``: the rows the items are (an index array or slice into :attr:`rows`),
        for rows with their own objective (a detection's cotangent, a region per row).
        """
        rows = self.rows
        if part is not None and _per_row(rows):
            target = rows.target(part)
        else:
            target = self._target(classes)
        g = self.adapter.gradients(
            np.ascontiguousarray(x, np.float32),
            target,
            list(layers),
            wrt_input=wrt_input,
            need_output=True,
        )
        self.logits = bool(g.logits)
        return g

    def _target(self, classes: Sequence[int] | np.ndarray) -> Target:
        """The adapter target of items explaining ``classes`` (one class each)."""
        return Target(layer=None, channels=tuple(int(c) for c in classes), reduce="sum", mask=self.rows.mask,
                      output=self.rows.output)

    def layer_gradients(self, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(acts, grads)``, each ``(M, h, w, C)``: the CAM layer's output and d score / d output.

        One gradient pass over all rows when they fit :data:`MEMORY_BUDGET`, else several;
        none when the caller gave them (:attr:`given`: the report's one recorded pass).
        """
        rows = self.rows
        if self.given is not None:
            given_acts, given_grads = (np.asarray(a, np.float32) for a in self.given)
            if given_acts.shape != given_grads.shape or len(given_acts) != len(rows):
                raise BadArgument(f"given activations {given_acts.shape} and gradients {given_grads.shape} "
                                  f"for {len(rows)} rows: give one (h, w, C) pair per row")
            if self.output is not None:
                self.row_output = self.output[rows.images]
            return given_acts, given_grads
        layer = self.layer.index  # type: ignore[union-attr]
        # one row is one pass whatever the budget (the estimate walks the whole table)
        step = 1 if len(rows) == 1 and batch_size is None else self.batch_size(batch_size, backward=True)
        acts, grads, outs = [], [], []
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            images = rows.images[part]
            # the batch itself when the pass is over all of it in order (one image, one row): no copy
            x = self.batch if np.array_equal(images, np.arange(len(self.batch))) else self.batch[images]
            g = self.gradients(x, rows.classes[part], layers=[layer], part=part)
            acts.append(np.asarray(g.activations[layer], np.float32))
            grads.append(np.asarray(g.grads[layer], np.float32))
            if g.output is not None:
                outs.append(np.asarray(g.output))
        if len(outs) == len(acts):
            self.row_output = _joined(outs)
        return _joined(acts), _joined(grads)

    def input_gradients(
        self, x: np.ndarray, classes: np.ndarray, batch_size: int | None = None,
        rows_of: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """d score / d input for many items, in passes under the memory budget.

        Args:
            x: ``(B, H, W, C)`` inputs.
            classes: ``(B,)`` the class each item differentiates.
            batch_size: items per pass; default from :data:`MEMORY_BUDGET`.
            rows_of: ``(B,)`` the row each item explains; default the rows in
                order when there is one item per row.

        Returns:
            ``(grads, score, output)``: ``(B, H, W, C)`` float32 gradients,
            ``(B,)`` the differentiated scores (logits where the adapter sees
            them), and the model outputs ``(B, ...)`` (``None`` if the adapter
            gave none).
        """
        step = self.batch_size(batch_size, backward=True)
        if rows_of is None and len(x) == len(self.rows):
            rows_of = np.arange(len(x))
        grads, scores, outs = [], [], []
        for start in range(0, len(x), step):
            part = slice(start, start + step)
            g = self.gradients(x[part], classes[part], wrt_input=True,
                               part=None if rows_of is None else rows_of[part])
            if g.input_grad is None:
                raise UnsupportedModel(f"{self.adapter.name}: the adapter gave no input gradient")
            grads.append(np.asarray(g.input_grad, np.float32))
            scores.append(np.asarray(g.score, np.float64))
            if g.output is not None:
                outs.append(np.asarray(g.output))
        output = np.concatenate(outs) if len(outs) == len(grads) and outs else None
        return np.concatenate(grads), np.concatenate(scores), output

    def summed_input_gradients(
        self,
        items: InputItems,
        *,
        batch_size: int | None,
        label: str,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """Weighted sums of input gradients over many items per row (IG's path, SmoothGrad's noise).

        An adapter with ``input_gradient_sums`` (PyTorch) makes the items and
        keeps the sums in the framework, on the model's device, until the end
        (:class:`~convlens.adapters.base.InputGradientSums`); others get the
        items made in numpy one batch at a time (noise from
        ``numpy.random.default_rng(items.seed)``). Memory holds one batch of
        items either way; progress is reported per item.

        Args:
            items: what to differentiate; ``items.origin`` has one entry per row.
            batch_size: items per pass; default from the memory budget.
            label: what the progress bar says.

        Returns:
            ``(total, score, outputs)``: ``(M, H, W, C)`` float64 sums, ``(I,)``
            each item's differentiated score, and the kept items' outputs by index.
        """
        rows = self.rows
        # A pass to the input keeps each layer's output for the backward pass and frees each gradient
        # once it has passed it on (no layer's gradient is returned): the outputs' bytes once, not twice.
        # On a CPU, larger batches pay each operator's fixed cost fewer times per item.
        step = self.batch_size(batch_size, backward=False)
        n_items = len(items.item_row)
        self.progress.start(n_items, label)
        try:
            fast = getattr(self.adapter, "input_gradient_sums", None)
            if callable(fast) and not _per_row(rows):
                got = fast(items, lambda idx: self._target(rows.classes[items.item_row[idx]]),
                           batch_size=step, on_batch=self.progress.advance)
                self.logits = bool(got.logits)
                return np.asarray(got.total, np.float64), np.asarray(got.score, np.float64), dict(got.outputs)
            total = np.zeros((len(rows), *self.batch.shape[1:]), np.float64)
            score = np.zeros(n_items)
            outputs: dict[int, np.ndarray] = {}
            rng = np.random.default_rng(items.seed)
            for start in range(0, n_items, step):
                idx = np.arange(start, min(start + step, n_items))
                r = items.item_row[idx]
                grads, score[idx], out = self.input_gradients(items.make(idx, rng), rows.classes[r], len(idx),
                                                              rows_of=r)
                grads = np.abs(grads) if items.absolute else grads
                for row in np.unique(r):
                    total[row] += np.tensordot(items.weights[idx][r == row], grads[r == row], axes=1)
                if out is not None and items.keep is not None:
                    outputs.update({int(k): out[n] for n, k in enumerate(idx) if items.keep[k]})
                self.progress.advance(len(idx))
        finally:
            self.progress.finish()
        return total, score, outputs

    def baseline(
        self, spec: str | float | np.ndarray, *, blur_sigma: float | None = None
    ) -> np.ndarray:
        """A reference input ``(N, H, W, C)``.

        ``"zero"`` (zeros after preprocessing, captum's default), ``"black"``
        (black pixels through the preset), ``"blur"`` (the image blurred), a
        number or an array.
        """
        from ..core.cam import gauss_blur

        shape = self.batch.shape
        if isinstance(spec, str):
            key = spec.strip().lower()
            if key == "zero":
                return np.zeros(shape, np.float32)
            if key == "black":
                return np.broadcast_to(
                    apply_preset(np.zeros(shape[1:], np.float32), self.preprocess), shape
                ).astype(np.float32)
            if key in ("blur", "blurred"):
                sigma = (
                    blur_sigma if blur_sigma is not None else max(1.0, min(shape[1], shape[2]) / 16)
                )
                return gauss_blur(self.batch, sigma)
            raise BadArgument(
                f"unknown baseline {spec!r}; use zero, black, blur, a number or an array "
                f"of shape {shape[1:]}"
            )
        arr = np.asarray(spec, np.float32)
        try:
            return np.broadcast_to(arr, shape).astype(np.float32)
        except ValueError:
            raise BadArgument(
                f"a baseline of shape {arr.shape} does not fit images of shape "
                f"{shape[1:]} (preprocessed, channels last)"
            ) from None


def positive_int(name: str, value: Any) -> int:
    """``value`` when it is a whole number >= 1, else :class:`BadArgument` naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BadArgument(f"{name} must be a positive whole number, not {value!r}")
    return int(value)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The passes' arrays as one: the one pass's own array (no copy) when there is one."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _known_classes(table: Sequence[LayerInfo], names: Sequence[str] | None) -> int | None:
    if names:
        return len(names)
    shape = table[-1].output_shape if table else None
    return classes_in(shape) if shape else None


def _check_batch(batch: Any) -> np.ndarray:
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim != 4 or 0 in x.shape:
        raise BadArgument(
            f"heatmaps take a batch of images (N, H, W, C), not an array of shape {x.shape}"
        )
    # min and max carry a NaN through and hold any infinity: two reductions, no (N, H, W, C) mask
    if not (np.isfinite(x.min()) and np.isfinite(x.max())):
        raise BadImage(
            "the image holds NaN or infinite values after preprocessing; check the image and "
            "the preprocessing preset"
        )
    for i, image in enumerate(x):
        check_not_constant(image, f"image {i} of the batch")
    return x


#: Every method class with a registry name, in definition order; filled by ``Method.__init_subclass__``
#: (the package's ``METHODS`` orders them for front ends). Lets this module name the forward-only
#: methods without importing its package.
REGISTRY: dict[str, type[Method]] = {}


def forward_only_names() -> list[str]:
    """The registered methods that need only forward passes."""
    return [n for n, m in REGISTRY.items() if not m.needs_gradients]


def gradients_problem(adapter: Any, needing: str | Sequence[str], *, alternatives: bool = True) -> str | None:
    """THE sentence for work that needs gradients on a model that cannot give them, else ``None``.

    Every gradient check (heatmap methods, the report's sections, feature
    visualisation) says it in these words.

    Args:
        adapter: the model's adapter (its ``gradients_unavailable()`` gives the reason).
        needing: what needs the gradients: a method title (``"Grad-CAM"``), several, or
            ``"feature visualisation"``.
        alternatives: name the forward-only heatmap methods as what works instead.

    Returns:
        ``"Grad-CAM needs gradients, which model cannot give: REASON; forward-only methods by
        name: scorecam, eigencam, occlusion"``, or ``None`` when gradients are available.
    """
    why = adapter.gradients_unavailable()
    if why is None:
        return None
    what = [needing] if isinstance(needing, str) else list(needing)
    verb = "needs" if len(what) == 1 else "need"
    text = f"{', '.join(what)} {verb} gradients, which {adapter.name} cannot give: {str(why).rstrip('.')}"
    if alternatives:
        text += f"; forward-only methods by name: {', '.join(forward_only_names())}"
    return text


def check_gradients(adapter: Any, needing: str | Sequence[str], *, alternatives: bool = True) -> None:
    """Raise :func:`gradients_problem`'s sentence as :class:`UnsupportedModel`, before any work."""
    problem = gradients_problem(adapter, needing, alternatives=alternatives)
    if problem is not None:
        raise UnsupportedModel(problem)


class Method:
    """The base of every heatmap method.

    Class attributes:
        name: registry name (``"gradcam"``).
        title: display name (``"Grad-CAM"``).
        paper: link to the method's paper.
        needs_gradients: the method needs :meth:`Adapter.gradients`.
        kind: ``"cam"`` (maps of a layer) or ``"input"`` (attribution to the pixels).
        signed: input attributions only: the map keeps its sign (-1..1).
        reduce: input attributions only: how channels are reduced to one map:
            ``"absmax"`` (largest magnitude, Simonyan et al.), ``"sum"`` (captum's
            convention for additive attributions) or ``"mean"``.
        slow: the method reports progress.

    Args:
        batch_size: items per pass of the slow methods (masked inputs, path
            points, noisy copies, occluded images); default as many as
            ``memory`` allows, estimated from the layer table (at most 64).
        memory: bytes of layer outputs one pass may hold (:data:`MEMORY_BUDGET`).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    kind: ClassVar[str] = "cam"
    signed: ClassVar[bool] = False
    reduce: ClassVar[str] = "absmax"
    slow: ClassVar[bool] = False
    #: the method explains a score (``False``: class-agnostic, e.g. Eigen-CAM, runs on any model)
    needs_target: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY[cls.name] = cls

    def __init__(self, *, batch_size: int | None = None, memory: int = MEMORY_BUDGET) -> None:
        self.batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
        self.memory = positive_int("memory (bytes)", memory)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def raw_maps(self, ctx: Context) -> np.ndarray:
        """The method itself: CAMs ``(M, h, w)`` before ReLU; attributions ``(M, H, W, C)``."""
        raise NotImplementedError

    def compute(
        self,
        adapter: Adapter,
        batch: np.ndarray,
        *,
        target: TargetSpec = None,
        layer: str | int | LayerInfo | None = None,
        class_names: Sequence[str] | None = None,
        box: Sequence[float] | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
        output: np.ndarray | None = None,
        objective: Objective | None = None,
    ) -> MethodResult:
        """Heatmaps of ``batch`` for ``target``.

        Args:
            adapter: the model (:func:`convlens.adapters.open_model`).
            batch: ``(N, H, W, C)`` float32 images, preprocessed for the model.
            target: ``None`` (each image's top class), a class index or name,
                or several (a list or a comma-separated string): one map per
                image and class, image-major.
            layer: CAM methods: the layer (a name, index or selection term
                naming one layer); default :func:`default_layer`. Input
                attributions ignore it.
            class_names: names of the output classes; default the adapter's.
            box: ``(top, left, bottom, right)`` in input pixels: for a
                segmentation model, sum the class's score over this region only.
            preprocess: the preset ``batch`` was made with; default the adapter's
                (used by baselines given in pixels, e.g. black).
            progress: receives progress of slow methods.
            output: the model's output for ``batch`` (what :meth:`Adapter.run`
                returned), when the caller has it already: saves the forward
                pass that a top-1 target or a box needs.
            objective: what to explain beyond a classifier's class
                (:class:`~convlens.methods.targets.Objective`: a detection by
                box or rank, a segmentation region, a raw output value, an
                embedding's similarity, another output). A detector's output
                is decoded even without one (each image's best detection, or
                of the class named).

        Raises:
            UnsupportedModel: a gradient method on a model without gradients
                (raised before any work), or no layer with maps.
            BadArgument: a bad class, layer, box or option.
            BadImage: an image whose pixels are all equal, or non-finite values.
        """
        return self._compute(adapter, batch, target=target, layer=layer, class_names=class_names, box=box,
                             preprocess=preprocess, progress=progress, output=output, given=None,
                             objective=objective)

    def _compute(
        self,
        adapter: Adapter,
        batch: np.ndarray,
        *,
        target: TargetSpec,
        layer: str | int | LayerInfo | None,
        class_names: Sequence[str] | None,
        box: Sequence[float] | None,
        preprocess: str | None,
        progress: Progress | None,
        output: np.ndarray | None,
        given: tuple[np.ndarray, np.ndarray] | None,
        objective: Objective | None = None,
    ) -> MethodResult:
        """:meth:`compute`; ``given``: the CAM layer's ``(acts, grads)`` per row, no gradient pass."""
        if self.needs_gradients:
            check_gradients(adapter, self.title)
        x = _check_batch(batch)
        table = adapter.layers()
        chosen = resolve_layer(table, layer) if self.kind == "cam" else None
        labels = list(class_names) if class_names is not None else adapter.class_names
        ctx = Context(
            adapter,
            x,
            table,
            chosen,
            spec=target,
            names=labels,
            box=box,
            preprocess=preprocess or adapter.preprocess or "unit",
            progress=progress or NullProgress(),
            memory=self.memory,
            forward_first=not self.needs_gradients,
            objective=objective,
            agnostic=not self.needs_target,
        )
        if output is not None:
            out = np.asarray(output)
            if out.ndim < 2 or len(out) != len(x):
                raise BadArgument(f"output of shape {out.shape} for a batch of {len(x)} images")
            ctx.output = out
        ctx.given = given
        scorer = self.needs_target and not self.needs_gradients
        if scorer and objective is not None and not objective.is_plain():
            _check_scored(self, ctx.rows)  # before any work; a plain target resolves in the method's own pass
        raw = np.asarray(self.raw_maps(ctx), np.float32)
        rows = ctx.rows
        if scorer:
            _check_scored(self, rows)
        if self.kind == "cam":
            cam = np.maximum(raw, 0)
            flat = cam.max(axis=(1, 2)) - cam.min(axis=(1, 2)) <= 0
            maps = minmax(resize_bilinear(cam, ctx.hw))
        else:
            reduced = {
                "absmax": lambda a: np.abs(a).max(axis=-1),
                "sum": lambda a: a.sum(axis=-1),
                "mean": lambda a: a.mean(axis=-1),
            }[self.reduce](raw.astype(np.float64))
            peak = np.abs(reduced).max(axis=(1, 2), keepdims=True)
            flat = (
                peak[:, 0, 0] <= 0
                if self.signed
                else (reduced.max(axis=(1, 2)) == reduced.min(axis=(1, 2)))
            )
            maps = (reduced / np.where(peak > 0, peak, 1.0)).astype(np.float32)
        return MethodResult(
            method=self.name,
            title=self.title,
            kind=self.kind,
            maps=maps,
            raw=raw,
            scores=ctx.row_scores(),
            images=rows.images,
            classes=rows.classes,
            labels=rows.labels,
            layer=chosen,
            signed=self.signed and self.kind == "input",
            flat=np.asarray(flat, bool),
            extra=ctx.extra,
            target=rows,
        )


def _check_scored(method: Method, rows: Rows) -> None:
    """Forward-only methods that score outputs (Score-CAM, occlusion) read class scores: refuse the
    targets that are not one (a detection, a raw value, an embedding's similarity), before any pass."""
    if rows.cotangents is not None or rows.output is not None:
        raise BadArgument(f"{method.title} scores the model's class outputs; for a {rows.kind} target use a "
                          "gradient method (gradcam, hirescam, saliency, ig) or eigencam")


class GradientCam(Method):
    """The base of the gradient CAMs: one gradient pass to the layer, then :meth:`combine`."""

    needs_gradients = True
    kind = "cam"

    def combine(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """``(M, h, w)`` from the layer's ``acts`` and ``grads`` ``(M, h, w, C)``."""
        raise NotImplementedError

    def raw_maps(self, ctx: Context) -> np.ndarray:
        acts, grads = ctx.layer_gradients(self.batch_size)
        return self.combine(acts, grads)

    def from_gradients(
        self,
        adapter: Adapter,
        batch: np.ndarray,
        activations: np.ndarray,
        grads: np.ndarray,
        *,
        output: np.ndarray,
        target: TargetSpec = None,
        layer: str | int | LayerInfo | None = None,
        class_names: Sequence[str] | None = None,
        preprocess: str | None = None,
    ) -> MethodResult:
        """The method's maps from activations and gradients a pass already recorded: no pass at all.

        The same result as :meth:`compute` with the same arguments (the same
        rows, labels, scores, ReLU, upsampling and scaling), when the given
        arrays are what :meth:`compute`'s gradient pass would record: the
        report's one forward pass gives them (see
        :class:`convlens.methods.recorded.RecordedForward`).

        Args:
            adapter: the model (its layer table and class names; it runs nothing).
            batch: ``(N, H, W, C)`` float32, the preprocessed images.
            activations: ``(M, h, w, C)`` the CAM layer's output for each row's image.
            grads: ``(M, h, w, C)`` d (row's class score) / d ``activations``, as
                :meth:`~convlens.adapters.base.Adapter.gradients` gives it.
            output: ``(N, ...)`` the model's output for ``batch`` (the rows' scores).
            target, layer, class_names, preprocess: as :meth:`compute`; the
                rows are resolved from ``target`` and ``output`` (image-major,
                then the classes in the order given).

        Raises:
            BadArgument: arrays that do not give one ``(h, w, C)`` pair per row.
        """
        return self._compute(adapter, batch, target=target, layer=layer, class_names=class_names, box=None,
                             preprocess=preprocess, progress=None, output=output,
                             given=(activations, grads))
