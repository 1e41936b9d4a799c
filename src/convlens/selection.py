"""Layer selection: names, globs, regular expressions, kinds, index ranges and ``blocks``.

A selection is a comma-separated string (or a list of such terms). Each term is
one of:

* a kind: ``conv``, ``pool``, ``act``, ``dense``, ``norm``, ``merge``, ``all``;
* ``blocks``: the last conv layer of each resolution stage, i.e. the last conv
  before each downsampling (VGG16: indexes 2, 5, 9, 13, 17);
* an index ``7``, a negative index ``-1``, or an inclusive range ``3-9`` / ``3..9``;
* a glob ``block*_conv1`` (``*?[``), matched against full and short names;
* a regular expression ``re:block[45]_conv\\d`` (commas inside its brackets
  belong to it: ``re:conv{1,2}``);
* a layer name, full (``vgg16/block1_conv1``) or short (``block1_conv1``) when
  the short name is unique.

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
KIND_TERMS = ("conv", "pool", "act", "dense", "norm", "merge", "all")
_INDEX = re.compile(r"^-?\d+$")
_RANGE = re.compile(r"^(\d+)\s*(?:-|\.\.)\s*(\d+)$")


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def blocks(layers: Sequence[LayerInfo]) -> list[int]:
    """Indexes of the last conv layer of each resolution stage.

    Stages are told apart by the conv output's jump (its total stride in input
    pixels, see :mod:`convlens.core.receptive`), or by its spatial output size
    when the jump is unknown. Convs after a global pooling (squeeze-and-excitation
    gates, ASPP's image pooling) see the whole input in one pixel: they belong to
    no resolution stage.
    """
    last: dict[object, int] = {}
    for layer in layers:
        if layer.kind != "conv" or layer.global_rf:
            continue
        key: object = layer.rf_jump if layer.rf_jump is not None else (
            tuple(layer.output_shape[:-1]) if layer.output_shape else None
        )
        last.pop(key, None)  # keep stages in the order in which they end
        last[key] = layer.index
    return sorted(last.values())


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


def _terms(spec: str | Iterable[str]) -> list[str]:
    items = [spec] if isinstance(spec, str) else list(spec)
    terms = [t.strip() for item in items for t in _split(str(item))]
    terms = [t for t in terms if t]
    if not terms:
        raise BadArgument("empty layer selection; try --layers conv,pool or --layers all")
    return terms


def _not_found(term: str, layers: Sequence[LayerInfo]) -> LayerNotFound:
    full = [layer.name for layer in layers]
    names = list(dict.fromkeys(full + sorted({_short(name) for name in full})))  # each name once
    close = difflib.get_close_matches(term, names, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return LayerNotFound(
        f"no layer matches {term!r}{hint}; run `convlens layers MODEL` to list every layer "
        f"(or use kinds {', '.join(KIND_TERMS)}, blocks, globs like 'block*' or 're:PATTERN')"
    )


def _match(term: str, layers: Sequence[LayerInfo]) -> list[int]:
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
    if not hits:
        raise _not_found(term, layers)
    return hits


def select(layers: Sequence[LayerInfo], spec: str | Iterable[str] | None = None) -> list[LayerInfo]:
    """The layers a selection names, in execution order (``convlens.select``).

    The same type as :meth:`convlens.Lens.select` and :meth:`convlens.Model.select`
    return; unlike them, a selection that matches no layer gives ``[]``.

    Args:
        layers: the model's layers in execution order (``layers[i].index == i``).
        spec: the selection; ``None`` means :data:`DEFAULT_SELECTION`.

    Returns:
        The selected rows of ``layers``, sorted by index, each once.

    Raises:
        LayerNotFound: a term matches nothing; the message lists the closest names.
        BadArgument: the selection is empty or malformed.
    """
    return [layers[i] for i in select_indexes(layers, spec)]


def select_indexes(layers: Sequence[LayerInfo], spec: str | Iterable[str] | None = None) -> list[int]:
    """Resolve a selection against a layer table, as indexes (:func:`select` gives the rows).

    Args:
        layers: the model's layers in execution order (``layers[i].index == i``).
        spec: the selection; ``None`` means :data:`DEFAULT_SELECTION`.

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
