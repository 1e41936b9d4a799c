"""The comparison's one pass over the images: A and B batch by batch, figures streamed.

For each batch of images, A runs first and keeps the outputs of its paired
layers (and the Gram matrices of the layers CKA needs); then B runs, and as
each of its layers' outputs arrives it is compared with A's partner, which
is dropped at once. Memory is one batch of A's paired outputs, whatever the
number of images; CKA and every figure are running sums.

Networks run on the pass engine (:func:`convlens.passes.run_batches`), one
batch of one side at a time through :func:`forward`, the one place this
package runs a model: the comparisons of B's layers run on the engine's
worker threads while B's forward pass goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import BadArgument
from ..core.cka import MIN_BATCH, MinibatchCKA, gram_linear
from ..core.layers import LayerInfo
from ..model import Model
from ..passes import Batch, PassConsumer, missing_note, run_batches
from .metrics import PairStats, flatten_channels

__all__ = ["Side", "Streamed", "batches", "forward", "stream"]


class _Callback(PassConsumer):
    """Hands each layer output of a pass to a function of (row, array); on the engine's worker threads."""

    def __init__(self, fn: Callable[[int, np.ndarray], None]) -> None:
        self.fn = fn

    def on_layer(self, batch: Batch, layer: LayerInfo, array: np.ndarray) -> None:
        self.fn(layer.index, array)


def forward(model: Model, batch: Batch, rows: Sequence[int], on_output: Callable[[int, np.ndarray], None],
            notes: list[str]) -> np.ndarray:
    """One batch through ``model`` on the pass engine: the one place compare runs a network.

    ``on_output(row, array)`` gets each wanted row's output ``(n, ...)`` (canonical layout) on a worker
    thread; every call has returned when this returns. Rows the model never produced get the engine's note.

    Returns:
        The model's output for the batch, ``(n, ...)``.
    """
    table = model.layers()
    layers = [table[r] for r in rows]
    result = run_batches(model, layers, [batch], [_Callback(on_output)], images=len(batch))
    if result.missing:
        note = f"{model.name}: {missing_note(result.missing)}"
        if note not in notes:
            notes.append(note)
    return np.concatenate(result.outputs) if result.outputs else np.zeros((0,), np.float32)


def batches(count: int, batch_size: int) -> list[list[int]]:
    """Image numbers ``0..count-1`` in batches of ``batch_size``; a last batch under
    :data:`~convlens.core.cka.MIN_BATCH` joins the one before (CKA needs 4 images a batch)."""
    out = [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]
    if len(out) > 1 and len(out[-1]) < MIN_BATCH:
        out[-2].extend(out.pop())
    return out


@dataclass
class Side:
    """One network of the comparison and how its images are prepared."""

    model: Model
    size: Any = None
    preprocess: str | None = None


@dataclass
class Picture:
    """Image 0's maps of one layer pair: the channel that differs most, and the mean difference."""

    channel: int
    a: np.ndarray
    b: np.ndarray
    diff: np.ndarray


@dataclass
class Streamed:
    """What the pass gathered (see :func:`stream`)."""

    stats: dict[tuple[int, int], PairStats] = field(default_factory=dict)
    pictures: dict[tuple[int, int], Picture] = field(default_factory=dict)
    output: PairStats | None = None
    output_picture: Picture | None = None
    output_note: str | None = None
    top1: list[tuple[int, int]] = field(default_factory=list)
    shape_notes: dict[tuple[int, int], str] = field(default_factory=dict)
    pair_cka: MinibatchCKA | None = None
    pair_rows: tuple[list[int], list[int]] = ([], [])  # the rows and columns of pair_cka
    matrix_cka: MinibatchCKA | None = None
    notes: list[str] = field(default_factory=list)
    images: int = 0
    input_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None


def _picture(a: np.ndarray, b: np.ndarray, per_image: np.ndarray) -> Picture:
    """Image 0 of a batch: its worst channel in A and B, and the mean |A - B| over channels."""
    c = int(np.argmax(per_image[0])) if per_image.size else 0
    x = np.asarray(a[0], np.float32)
    y = np.asarray(b[0], np.float32).reshape(x.shape)
    if x.ndim == 1:  # a vector: one row of C values
        return Picture(c, x[None, :], y[None, :], np.abs(x - y)[None, :])
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim == 2 else x
    y2 = y.reshape(x2.shape)
    return Picture(c, x2[..., c].copy(), y2[..., c].copy(), np.abs(x2 - y2).mean(axis=-1))


def _prepare(side: Side, images: Sequence[Any], notes: list[str]) -> np.ndarray:
    prepared = side.model.prepare(list(images), size=side.size, preprocess=side.preprocess)
    for note in prepared.notes:
        text = f"{side.model.name}: {note}"
        if text not in notes:
            notes.append(text)
    shapes = {a.shape for a in prepared.arrays}
    if len(shapes) > 1:
        raise BadArgument(f"the images prepared for {side.model.name} have different sizes "
                          f"({', '.join('x'.join(map(str, s[:2])) for s in sorted(shapes))}); pass --size HxW "
                          "(size=) so that they can be compared batch by batch")
    return np.stack(prepared.arrays).astype(np.float32, copy=False)


def stream(a: Side, b: Side, images: Sequence[Any], pairs: Sequence[tuple[LayerInfo, LayerInfo]], *,
           matrix_layers: tuple[Sequence[LayerInfo], Sequence[LayerInfo]] | None = None,
           pair_cka: bool = True, batch_size: int = 16, on_batch: Callable[[int], None] | None = None) -> Streamed:
    """Run both networks over ``images`` and stream every figure.

    Args:
        a, b: the two networks.
        images: image sources (paths, arrays, PIL images), loaded batch by batch.
        pairs: ``(layer of A, layer of B)`` to compare value by value (candidates included).
        matrix_layers: layers of A and of B whose every combination gets a CKA (the CKA matrix).
        pair_cka: compute the CKA of every pair (a Gram matrix per layer and batch).
        batch_size: images per batch (at least 4 for CKA).
        on_batch: called with the number of images done after each batch.
    """
    out = Streamed()
    keys = [(pa.index, pb.index) for pa, pb in pairs]
    rows_a = sorted({i for i, _ in keys} | {x.index for x in (matrix_layers[0] if matrix_layers else ())})
    rows_b = sorted({j for _, j in keys} | {y.index for y in (matrix_layers[1] if matrix_layers else ())})
    partners: dict[int, list[tuple[int, int]]] = {}
    for i, j in keys:
        partners.setdefault(j, []).append((i, j))
    pair_a = sorted({i for i, _ in keys})
    pair_b = sorted({j for _, j in keys})
    out.pair_rows = (pair_a, pair_b)
    out.pair_cka = MinibatchCKA(len(pair_a), len(pair_b), [(pair_a.index(i), pair_b.index(j)) for i, j in keys])
    mat_a = [x.index for x in matrix_layers[0]] if matrix_layers else []
    mat_b = [y.index for y in matrix_layers[1]] if matrix_layers else []
    if matrix_layers:
        out.matrix_cka = MinibatchCKA(len(mat_a), len(mat_b))
    gram_rows_a = (set(pair_a) if pair_cka else set()) | set(mat_a)
    gram_rows_b = (set(pair_b) if pair_cka else set()) | set(mat_b)
    keep_a = set(pair_a)
    total = len(images)
    chunks = batches(total, batch_size)
    cka_ok = all(len(c) >= MIN_BATCH for c in chunks) and bool(gram_rows_a)
    if not cka_ok and gram_rows_a:
        out.notes.append(f"CKA needs at least {MIN_BATCH} images; it was not computed for {total}")
    for number, chunk in enumerate(chunks):
        subset = [images[i] for i in chunk]
        xa, xb = _prepare(a, subset, out.notes), _prepare(b, subset, out.notes)
        if out.input_shapes is None:
            out.input_shapes = (tuple(xa.shape[1:]), tuple(xb.shape[1:]))
            if xa.shape[1:3] != xb.shape[1:3]:
                out.notes.append(f"the two models take different inputs ({xa.shape[1]}x{xa.shape[2]} and "
                                 f"{xb.shape[1]}x{xb.shape[2]}): each side prepared the images for itself; "
                                 "layers of different sizes are compared by CKA only")
        kept: dict[int, np.ndarray] = {}
        grams_a: dict[int, np.ndarray] = {}
        grams_b: dict[int, np.ndarray] = {}

        def on_a(row: int, array: np.ndarray, kept: dict[int, np.ndarray] = kept,
                 grams: dict[int, np.ndarray] = grams_a) -> None:
            array = np.ascontiguousarray(array, np.float32)  # one copy at most; every reshape is then free
            if row in keep_a:
                kept[row] = array
            if cka_ok and row in gram_rows_a:
                grams[row] = gram_linear(array)

        def on_b(row: int, array: np.ndarray, kept: dict[int, np.ndarray] = kept,
                 grams: dict[int, np.ndarray] = grams_b) -> None:
            array = np.ascontiguousarray(array, np.float32)
            if cka_ok and row in gram_rows_b:
                grams[row] = gram_linear(array)
            for key in partners.get(row, ()):
                other = kept.get(key[0])
                if other is None:
                    continue
                _compare(out, key, other, array)

        # A's paired outputs stay in `kept` until B's partners arrive
        out_a = forward(a.model, Batch(number, tuple(chunk), xa), rows_a, on_a, out.notes)
        out_b = forward(b.model, Batch(number, tuple(chunk), xb), rows_b, on_b, out.notes)
        kept.clear()
        _compare_outputs(out, np.asarray(out_a), np.asarray(out_b))
        if cka_ok:
            if keys and pair_cka:
                _add_grams(out.pair_cka, pair_a, pair_b, grams_a, grams_b, out.notes)
            if out.matrix_cka is not None:
                _add_grams(out.matrix_cka, mat_a, mat_b, grams_a, grams_b, out.notes)
        out.images += len(chunk)
        if on_batch is not None:
            on_batch(out.images)
    return out


def _add_grams(acc: MinibatchCKA, rows_a: Sequence[int], rows_b: Sequence[int], grams_a: dict[int, np.ndarray],
               grams_b: dict[int, np.ndarray], notes: list[str]) -> None:
    missing = [r for r in rows_a if r not in grams_a] + [r for r in rows_b if r not in grams_b]
    if missing:
        note = "some layers produced no output in a batch; CKA skipped that batch"
        if note not in notes:
            notes.append(note)
        return
    acc.add([grams_a[r] for r in rows_a], [grams_b[r] for r in rows_b])


def _squeezed(x: np.ndarray) -> tuple[int, ...]:
    """One image's shape without its axes of length 1."""
    return tuple(int(d) for d in x.shape[1:] if d != 1)


def _compare(out: Streamed, key: tuple[int, int], a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0] or _squeezed(a) != _squeezed(b):  # (n, 1, 1, C) and (n, C) are the same values
        out.shape_notes[key] = (f"outputs of shapes {tuple(a.shape[1:])} and {tuple(b.shape[1:])} cannot be "
                                "compared value by value (CKA only)")
        return
    stats = out.stats.get(key)
    if stats is None:
        stats = out.stats[key] = PairStats(int(a.shape[-1]))
    per_image = stats.add(a, b)
    if key not in out.pictures:
        out.pictures[key] = _picture(a, b, per_image)


def _compare_outputs(out: Streamed, a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        out.output_note = (f"the outputs cannot be compared: A gives {tuple(a.shape[1:])} per image, "
                           f"B {tuple(b.shape[1:])}; the paired layers are compared")
        return
    if out.output is None:
        out.output = PairStats(int(a.shape[-1]) if a.ndim > 1 else 1)
    x = a if a.ndim > 1 else a[:, None]
    y = b if b.ndim > 1 else b[:, None]
    per_image = out.output.add(x, y)
    if out.output_picture is None:
        out.output_picture = _picture(x, y, per_image)
    if x.ndim == 2 and x.shape[1] > 1:
        out.top1.extend(zip(np.argmax(x, axis=1).tolist(), np.argmax(y, axis=1).tolist()))


def finite(v: float) -> float | None:
    """``v`` for JSON: ``None`` for nan; infinities kept as ``None`` too (JSON has none)."""
    return float(v) if math.isfinite(v) else None


__all__ += ["Picture", "finite", "flatten_channels"]
