"""Which layer of network A corresponds to which layer of network B.

Pairing runs on the two layer tables alone (no forward pass):

1. **Alignment.** Both tables (without their inputs) are aligned in
   execution order, as two sequences are (Needleman-Wunsch with free gaps):
   two layers can pair when they are of the same kind, have the same number
   of channels (when both know it) and the same kernel shape (when both have
   one). Among alignments, the one with most pairs wins, and a pair whose
   names agree counts three times, so names decide wherever they survive
   (PyTorch ``layer1.0.conv1`` and ONNX ``/layer1/layer1.0/conv1/Conv`` have
   the same name key, see :func:`name_key`) and graph position, kind, width
   and kernel decide where they do not (TFLite's ``agree_1/conv1_1``).
2. **Fused operations.** One form may compute in one operation what the
   other computes in several: TFLite fuses a ReLU into the conv before it,
   an ONNX export folds a BatchNorm into the conv. A paired layer followed,
   on one side only, by unpaired activation or normalisation layers (each
   the only parent of the next) is therefore given *candidates*: its partner
   may stand for any layer of that chain. The comparison keeps the candidate
   that agrees best over the images (:attr:`Pair.candidates`).

A ``--pairs`` file (CSV ``a,b`` of layer names, one pair per line, an
optional ``a,b`` header) replaces all of this.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import BadArgument, LayerNotFound, UnsupportedModel
from ..core.layers import LayerInfo

__all__ = ["Pair", "Pairing", "name_key", "pair_layers", "read_pairs"]

#: Layer kinds an exporter may fold into the operation before them.
FUSIBLE = ("act", "norm")

PAIRS_HELP = ("write the pairs yourself: a CSV file with one 'a,b' line per pair of layer names "
              "(convlens layers MODEL lists them) and pass it with --pairs FILE (pairs= in Python)")


@dataclass(frozen=True)
class Pair:
    """Two layers that compute the same thing in networks A and B.

    Attributes:
        a: the layer of A.
        b: the layer of B.
        how: ``"name"``, ``"structure"`` or ``"file"``.
        candidates: ``(a, b)`` alternatives when an operation was fused on one
            side (see the module docstring), the first being ``(a, b)``
            itself; ``()`` when there is none.
    """

    a: LayerInfo
    b: LayerInfo
    how: str
    candidates: tuple[tuple[LayerInfo, LayerInfo], ...] = field(default=(), compare=False)


@dataclass
class Pairing:
    """The pairs of two layer tables, and what was left over.

    Attributes:
        pairs: in A's execution order.
        unpaired_a: layers of A with no partner (the input excluded).
        unpaired_b: layers of B with no partner.
        how: ``"automatic"`` or ``"file"``.
    """

    pairs: list[Pair]
    unpaired_a: list[LayerInfo]
    unpaired_b: list[LayerInfo]
    how: str


def name_key(layer: LayerInfo) -> tuple[str, ...]:
    """A layer's name reduced to what survives an export.

    Lower-cased words (split on anything that is not a letter or digit),
    consecutive repeats and a trailing operator type dropped:
    ``/layer1/layer1.0/conv1/Conv`` and ``layer1.0.conv1`` both give
    ``("layer1", "0", "conv1")``.
    """
    words = [w for w in re.split(r"[^0-9a-z]+", layer.name.lower()) if w]
    if len(words) > 1 and words[-1] == layer.type.lower():
        words.pop()
    out: list[str] = []
    for w in words:
        if not out or out[-1] != w:
            out.append(w)
    return tuple(out)


def _channels(layer: LayerInfo) -> int | None:
    shape = layer.output_shape
    if not shape or shape[-1] is None:
        return None
    return int(shape[-1])


def _compatible(a: LayerInfo, b: LayerInfo) -> bool:
    if a.kind != b.kind:
        return False
    ca, cb = _channels(a), _channels(b)
    if ca is not None and cb is not None and ca != cb:
        return False
    return not (a.kernel_shape and b.kernel_shape and tuple(a.kernel_shape) != tuple(b.kernel_shape))


def _align(xs: Sequence[LayerInfo], ys: Sequence[LayerInfo]) -> list[tuple[int, int, bool]]:
    """The best alignment of two layer sequences: ``(i, j, names agree)`` in order."""
    n, m = len(xs), len(ys)
    kx, ky = [name_key(x) for x in xs], [name_key(y) for y in ys]
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = score[i], score[i + 1]
        for j in range(m - 1, -1, -1):
            best = max(below[j], row[j + 1])
            if _compatible(xs[i], ys[j]):
                best = max(best, below[j + 1] + (3 if kx[i] == ky[j] else 1))
            row[j] = best
    out: list[tuple[int, int, bool]] = []
    i = j = 0
    while i < n and j < m:
        same = kx[i] == ky[j]
        if _compatible(xs[i], ys[j]) and score[i][j] == score[i + 1][j + 1] + (3 if same else 1):
            out.append((i, j, same))
            i, j = i + 1, j + 1
        elif score[i][j] == score[i + 1][j]:
            i += 1
        else:
            j += 1
    return out


def _chain(table: Sequence[LayerInfo], start: LayerInfo, paired: set[int]) -> list[LayerInfo]:
    """Unpaired act/norm layers right after ``start``, each fed by the one before only."""
    chain: list[LayerInfo] = []
    prev = start
    for layer in table[start.index + 1:]:
        if layer.index in paired or layer.kind not in FUSIBLE or tuple(layer.parents) != (prev.index,):
            break
        chain.append(layer)
        prev = layer
    return chain


def pair_layers(table_a: Sequence[LayerInfo], table_b: Sequence[LayerInfo]) -> Pairing:
    """Pair the layers of two networks automatically (see the module docstring).

    Args:
        table_a: A's layer table, the input first.
        table_b: B's layer table.

    Returns:
        The pairing; it may hold no pair (the caller decides whether that is an error).
    """
    xs = [layer for layer in table_a if layer.kind != "input"]
    ys = [layer for layer in table_b if layer.kind != "input"]
    aligned = _align(xs, ys)
    paired_a = {xs[i].index for i, _, _ in aligned}
    paired_b = {ys[j].index for _, j, _ in aligned}
    pairs = []
    for i, j, same in aligned:
        a, b = xs[i], ys[j]
        chain_a, chain_b = _chain(table_a, a, paired_a), _chain(table_b, b, paired_b)
        candidates: tuple[tuple[LayerInfo, LayerInfo], ...] = ()
        if chain_a and not chain_b:
            candidates = ((a, b), *((c, b) for c in chain_a))
        elif chain_b and not chain_a:
            candidates = ((a, b), *((a, c) for c in chain_b))
        pairs.append(Pair(a, b, "name" if same else "structure", candidates))
    return Pairing(pairs, [x for x in xs if x.index not in paired_a], [y for y in ys if y.index not in paired_b],
                   "automatic")


def read_pairs(source: str | os.PathLike[str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(a, b)`` layer names of a ``--pairs`` file (CSV ``a,b``), or of a list of pairs as given.

    Raises:
        BadArgument: the file cannot be read, a row does not hold two names, or it holds no pair.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise BadArgument(f"cannot read the pairs file {path}: {reason}; {PAIRS_HELP}") from None
        rows: list[tuple[str, str]] = []
        for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) != 2 or not all(cells):
                raise BadArgument(f"{path} line {number} holds {len(cells)} cells ({','.join(row)!r}); "
                                  f"each line is one pair 'a,b' of layer names")
            if number == 1 and [c.lower() for c in cells] == ["a", "b"]:
                continue
            rows.append((cells[0], cells[1]))
        where = str(path)
    else:
        rows = [(str(a), str(b)) for a, b in source]
        where = "pairs="
    if not rows:
        raise BadArgument(f"{where} holds no pair; {PAIRS_HELP}")
    return rows


def pairs_from_names(table_a: Sequence[LayerInfo], table_b: Sequence[LayerInfo],
                     rows: Sequence[tuple[str, str]], names: tuple[str, str]) -> Pairing:
    """The pairing a ``--pairs`` file asks for.

    Args:
        table_a, table_b: the two layer tables.
        rows: ``(a, b)`` layer names.
        names: the two models' names, for messages.

    Raises:
        LayerNotFound: a row names a layer its model does not have.
    """
    by_a = {layer.name: layer for layer in table_a}
    by_b = {layer.name: layer for layer in table_b}
    pairs = []
    for number, (a, b) in enumerate(rows, 1):
        for side, name, table, model in (("A", a, by_a, names[0]), ("B", b, by_b, names[1])):
            if name not in table:
                raise LayerNotFound(f"pair {number} ({a},{b}): {model} (model {side}) has no layer {name!r}; "
                                    f"convlens layers lists its layers")
        pairs.append(Pair(by_a[a], by_b[b], "file"))
    used_a = {p.a.index for p in pairs}
    used_b = {p.b.index for p in pairs}
    return Pairing(pairs, [x for x in table_a if x.kind != "input" and x.index not in used_a],
                   [y for y in table_b if y.kind != "input" and y.index not in used_b], "file")


def no_pairs_error(name_a: str, name_b: str) -> UnsupportedModel:
    """The error for two networks none of whose layers could be paired."""
    return UnsupportedModel(f"no layer of {name_a} could be paired with a layer of {name_b} (no two layers "
                            f"share a kind, a width and a kernel); {PAIRS_HELP}")
