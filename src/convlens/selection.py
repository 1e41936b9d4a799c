"""Layer selection: names, globs, regular expressions, kinds, index ranges and ``blocks``.

A selection is a comma-separated string (or a list of such terms). Each term is
one of:

* a kind: ``conv``, ``pool``, ``act``, ``dense``, ``norm``, ``merge``, ``block``
  (a container's output), ``all``;
* ``blocks``: the output of each resolution stage: its last conv or block
  row before each downsampling (VGG16: indexes 2, 5, 9, 13, 17;
  torchvision ResNet-18: ``conv1``, ``layer1`` ... ``layer4``);
* an index ``7``, a negative index ``-1``, or an inclusive range ``3-9`` / ``3..9``;
* a glob ``block*_conv1`` (``*?[``), matched against full and short names;
* a regular expression ``re:block[45]_conv\\d`` (commas inside its brackets
  belong to it: ``re:conv{1,2}``);
* a layer name, full (``vgg16/block1_conv1``) or short (``block1_conv1``) when
  the short name is unique; a PyTorch container's name is its output
  (``layer4``, ``layer4.1``);
* in Python, a layer object: a ``torch.nn.Module`` of the model
  (``model.layer4[-1]``: every call of it) or a Keras layer.

Naming a module whose output holds no floating-point map (an integer tensor,
a shape) says so in one line; a module object the model never calls names its
type and the closest layers.

The result is the union of the terms, in execution order.

The default selection, one rule: **a view shows what its pictures and numbers
can say something about.**

* :data:`DEFAULT_SELECTION` (``"conv,pool"``) for every view of activations
  that runs once: feature maps, channel statistics, the report, the dataset
  view. Convolutions and poolings are where the spatial
  maps live and change; activations usually repeat the conv before them
  (add ``act`` for frameworks with separate ReLU layers), and dense layers
  have no map.
* :data:`DEFAULT_FILTER_SELECTION` (``"conv"``) for kernels (filter atlases,
  the report's filters): only convolutions have kernels, so asking for
  pooling layers there would select nothing more.
* :data:`DEFAULT_TRAINING_SELECTION` (``"blocks"``) for the training
  recorders (:class:`convlens.keras.LensCallback`, :class:`convlens.torch.LensRecorder`),
  which draw the same layers at every checkpoint: one layer per resolution
  stage keeps each checkpoint small and training fast; the filters they draw
  are the first conv layer's (``filters="first"``).
* One-layer views (Grad-CAM's layer, feature visualisation's layer) take no
  selection default: Grad-CAM uses the last conv layer's output
  (:func:`convlens.methods.default_layer`), visualisation asks for a layer.

Every default reads one of these constants; nothing else spells a default selection.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Sequence

from ._errors import BadArgument, LayerNotFound
from .core.layers import LayerInfo

__all__ = ["DEFAULT_FILTER_SELECTION", "DEFAULT_SELECTION", "DEFAULT_TRAINING_SELECTION", "KIND_TERMS", "blocks",
           "select", "select_indexes"]

#: What a view of activations (maps, statistics, report, dataset view) selects by default.
DEFAULT_SELECTION = "conv,pool"
#: What a view of kernels (filter atlases) selects by default: only convolutions have kernels.
DEFAULT_FILTER_SELECTION = "conv"
#: What the training recorders draw at every checkpoint by default: the last conv of each stage.
DEFAULT_TRAINING_SELECTION = "blocks"
KIND_TERMS = ("conv", "pool", "act", "dense", "norm", "merge", "block", "all")
_INDEX = re.compile(r"^-?\d+$")
_RANGE = re.compile(r"^(\d+)\s*(?:-|\.\.)\s*(\d+)$")


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def blocks(layers: Sequence[LayerInfo]) -> list[int]:
    """Indexes of the output of each resolution stage.

    Resolutions are told apart by the rows' jump (total stride in input
    pixels, see :mod:`convlens.core.receptive`), or by the spatial output size
    when the jump is unknown; only a resolution with a conv layer has stages.
    A stage ends where the network moves to another resolution: at a row fed
    by a row of another resolution (a strided conv or pool, an upsampling),
    or rather at the outermost container around it that ends at the new
    resolution and does no spatial work at any other (ResNet-50's ``layer2``,
    a MobileNet's stride-2 inverted residual, whose expanding 1x1 conv still
    runs at the old resolution). The stage's output is its last conv or block
    (a container's output) row before that; the last stage's is the last such
    row. So a ResNet's stages are ``conv1`` and ``layer1``...``layer4``, a
    VGG's its last convs. A container that holds several stages (VGG's or
    MobileNet's ``features``) is no stage's output. Rows that see the whole
    input (after a global pooling: squeeze-and-excitation gates, ASPP's image
    pooling) belong to no stage.
    """

    def key(layer: LayerInfo) -> object:
        if layer.rf_jump is not None:
            return layer.rf_jump
        return tuple(layer.output_shape[:-1]) if layer.output_shape else None

    by_index = {layer.index: layer for layer in layers}
    with_conv = {key(layer) for layer in layers if layer.kind == "conv" and not layer.global_rf}
    first = {layer.index: layer.index for layer in layers}  # a container's first row: where it starts
    inside: dict[int, list[LayerInfo]] = {layer.index: [] for layer in layers}
    for layer in layers:
        parent, seen = layer.parent, set()
        while parent is not None and parent in by_index and parent not in seen:
            seen.add(parent)
            first[parent] = min(first[parent], layer.index)
            inside[parent].append(layer)
            parent = by_index[parent].parent

    def one_stage(container: LayerInfo) -> bool:
        """Whether a container is (the start of) one stage: what it does at any resolution other than
        the one it ends at is no spatial work at the resolution of its input (a 1x1 expansion, a norm)."""
        entry = [by_index[p] for p in by_index[first[container.index]].parents if p in by_index]
        return all(key(row) == key(container) or (any(key(row) == key(e) for e in entry)
                                                  and row.rf_size in {e.rf_size for e in entry})
                   for row in inside[container.index] if not row.global_rf)

    candidates = [layer for layer in layers if layer.kind in ("conv", "block") and not layer.global_rf
                  and key(layer) in with_conv]
    # a container holding several stages (VGG's or MobileNet's ``features``) is the output of none
    candidates = [c for c in candidates if not inside[c.index] or one_stage(c)]
    ends: set[int] = set()
    for layer in layers:
        if layer.global_rf or layer.kind == "input":
            continue
        for p in layer.parents:
            fed = by_index.get(p)
            if fed is None or fed.global_rf or key(fed) == key(layer) or key(fed) not in with_conv:
                continue
            start = layer  # the outermost container that opens the new stage here
            parent, seen = layer.parent, set()
            while parent is not None and parent in by_index and parent not in seen \
                    and key(by_index[parent]) == key(layer) and one_stage(by_index[parent]):
                seen.add(parent)
                start = by_index[parent]
                parent = start.parent
            before = [c for c in candidates if key(c) == key(fed) and c.index < first[start.index]]
            if before:
                ends.add(before[-1].index)
    if candidates:
        ends.add(candidates[-1].index)
    return sorted(ends)


def _split(text: str) -> list[str]:
    """Split a selection on commas, except commas inside a ``re:`` term's ``()``, ``[]`` or ``{}``.

    ``re:conv{1,2}$,pool`` is two terms, ``re:conv{1,2}$`` and ``pool``; an
    unclosed bracket (``re:[``) keeps the rest of the text in the term, whose
    compilation then says what is wrong.
    """
    terms: list[str] = []
    start, i, n = 0, 0, len(text)
    while i <= n:
        if text[start:].lstrip().startswith("re:"):
            i = _regex_end(text, text.index("re:", start) + 3)
        else:
            i = text.find(",", start)
            i = n if i < 0 else i
        terms.append(text[start:i])
        start = i = i + 1
    return terms


def _regex_end(text: str, i: int) -> int:
    """Where the regular expression starting at ``i`` ends: the first comma outside brackets, or the end."""
    depth, in_class, class_start = 0, False, -1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            # a ] right after [ or [^ is a literal ], not the end of the class
            if c == "]" and i > class_start + 1 and text[class_start + 1:i] != "^":
                in_class = False
        elif c == "[":
            in_class, class_start = True, i
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth = max(depth - 1, 0)
        elif c == "," and depth == 0:
            return i
        i += 1
    return len(text)


def _is_object(term: object) -> bool:
    """Whether a selection term is a layer object (a ``torch.nn.Module``, a Keras layer), not text."""
    return not isinstance(term, (str, bytes, int, LayerInfo)) and (
        callable(getattr(term, "register_forward_hook", None)) or callable(getattr(term, "named_modules", None))
        or isinstance(getattr(term, "name", None), str))


def _terms(spec: str | Iterable[str] | object) -> list[str | object]:
    if isinstance(spec, str) or _is_object(spec) or isinstance(spec, LayerInfo):
        items: list[object] = [spec]
    else:
        items = list(spec)  # type: ignore[call-overload]
    terms: list[str | object] = []
    for item in items:
        if _is_object(item):
            terms.append(item)
        elif isinstance(item, LayerInfo):
            terms.append(str(item.index))
        else:
            terms.extend(t.strip() for t in _split(str(item)) if t.strip())
    if not terms:
        raise BadArgument("empty layer selection; try --layers conv,pool or --layers all")
    return terms


def _match_object(obj: object, layers: Sequence[LayerInfo]) -> list[int]:
    """The rows of a layer object: every call of a torch module (by identity), or a Keras layer's name.

    Raises:
        LayerNotFound: the object is not called by the model (or a module whose
            output is no map); the message gives its type and the closest names.
    """
    hits = [layer.index for layer in layers if layer.extra.get("module_id") == id(obj)]
    if hits:
        return hits
    kind = type(obj).__name__
    for name, what in _not_maps(layers).items():
        if what.get("module_id") == id(obj):
            raise _not_a_map(name, what)
    label = getattr(obj, "name", None)
    if isinstance(label, str) and not callable(getattr(obj, "named_modules", None)):
        hits = [layer.index for layer in layers if layer.name == label or _short(layer.name) == label]
        if hits:
            return hits
    same = [layer for layer in layers if layer.type == kind]
    shape = getattr(getattr(obj, "weight", None), "shape", None)
    if shape is not None:  # the same type with the same weight shape first: a copy of the model's own layer
        same.sort(key=lambda layer: layer.kernel_shape is None or tuple(layer.kernel_shape) != tuple(shape))
    close = ", ".join(layer.name for layer in same[:3])
    hint = f"; closest: {close}" if close else ""
    raise LayerNotFound(
        f"the {kind} object given as a layer is not part of this model (it is not called in its forward; "
        f"a module of another copy of the model?){hint}; pass one of the model's own modules or a name "
        "from `convlens layers MODEL`")


def _not_maps(layers: Sequence[LayerInfo]) -> dict[str, dict[str, object]]:
    """Modules the model calls whose output is no image-derived map (row 0's ``extra["not_maps"]``)."""
    found = layers[0].extra.get("not_maps") if layers else None
    return found if isinstance(found, dict) else {}


def _not_a_map(name: str, what: dict[str, object]) -> LayerNotFound:
    return LayerNotFound(
        f"layer {name!r} ({what.get('type')}) outputs {what.get('output')}, not a map computed from the image; "
        "pick a layer with feature maps (`convlens layers MODEL` lists them)")


def _not_found(term: str, layers: Sequence[LayerInfo]) -> LayerNotFound:
    full = [layer.name for layer in layers]
    names = list(dict.fromkeys(full + sorted({_short(name) for name in full})))  # each name once
    close = difflib.get_close_matches(term, names, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return LayerNotFound(
        f"no layer matches {term!r}{hint}; run `convlens layers MODEL` to list every layer "
        f"(or use kinds {', '.join(KIND_TERMS)}, blocks, globs like 'block*' or 're:PATTERN')"
    )


def _match(term: str | object, layers: Sequence[LayerInfo]) -> list[int]:
    if not isinstance(term, str):
        return _match_object(term, layers)
    low = term.lower()
    if low == "all":
        return [layer.index for layer in layers if layer.kind != "input"]
    if low in KIND_TERMS:
        return [layer.index for layer in layers if layer.kind == low]
    if low == "blocks":
        return blocks(layers)
    if _INDEX.match(term):
        i = int(term)
        n = len(layers)
        if not -n <= i < n:
            raise LayerNotFound(f"layer index {i} is out of range: the model has layers 0..{n - 1}; "
                                "run `convlens layers MODEL` to list them")
        return [layers[i].index]
    m = _RANGE.match(term)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise BadArgument(f"layer range {term!r} runs backwards; write it as {hi}-{lo}")
        hits = [layer.index for layer in layers if lo <= layer.index <= hi]
        if not hits:
            raise LayerNotFound(f"layer range {term!r} holds no layer: the model has layers "
                                f"0..{len(layers) - 1}")
        return hits
    if term.startswith("re:"):
        try:
            pattern = re.compile(term[3:])
        except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999}, deep nesting
            raise BadArgument(f"invalid regular expression {term[3:]!r}: {exc}; "
                              "write it in Python's re syntax, e.g. 're:conv[12]$'") from None
        hits = [layer.index for layer in layers
                if pattern.search(layer.name) or pattern.search(_short(layer.name))]
    elif any(c in term for c in "*?["):
        hits = [layer.index for layer in layers
                if fnmatch.fnmatchcase(layer.name, term) or fnmatch.fnmatchcase(_short(layer.name), term)]
    else:
        hits = [layer.index for layer in layers if layer.name == term]
        if not hits:
            hits = [layer.index for layer in layers if _short(layer.name) == term]
            if len(hits) > 1:
                full = ", ".join(layers[i].name for i in hits)
                raise LayerNotFound(f"{term!r} names several layers ({full}); use the full name")
    if not hits and term in _not_maps(layers):
        raise _not_a_map(term, _not_maps(layers)[term])
    if not hits:
        raise _not_found(term, layers)
    return hits


def select(layers: Sequence[LayerInfo], spec: str | Iterable[object] | object | None = None) -> list[LayerInfo]:
    """The layers a selection names, in execution order (``convlens.select``).

    The same type as :meth:`convlens.Lens.select` and :meth:`convlens.Model.select`
    return; unlike them, a selection that matches no layer gives ``[]``.

    Args:
        layers: the model's layers in execution order (``layers[i].index == i``).
        spec: the selection; ``None`` means :data:`DEFAULT_SELECTION`. Also a
            layer object (a ``torch.nn.Module`` of the model, e.g.
            ``model.layer4[-1]``; a Keras layer) or a list mixing them with terms.

    Returns:
        The selected rows of ``layers``, sorted by index, each once.

    Raises:
        LayerNotFound: a term matches nothing; the message lists the closest names.
        BadArgument: the selection is empty or malformed.
    """
    return [layers[i] for i in select_indexes(layers, spec)]


def select_indexes(layers: Sequence[LayerInfo], spec: str | Iterable[object] | object | None = None) -> list[int]:
    """Resolve a selection against a layer table, as indexes (:func:`select` gives the rows).

    Args:
        layers: the model's layers in execution order (``layers[i].index == i``).
        spec: the selection; ``None`` means :data:`DEFAULT_SELECTION`; layer
            objects as in :func:`select`.

    Returns:
        Sorted, unique layer indexes.

    Raises:
        LayerNotFound: a term matches nothing; the message lists the closest names.
        BadArgument: the selection is empty or malformed.
    """
    chosen: set[int] = set()
    for term in _terms(DEFAULT_SELECTION if spec is None else spec):
        chosen.update(_match(term, layers))
    return sorted(chosen)
