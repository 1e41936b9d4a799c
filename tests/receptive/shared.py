"""Brute-force receptive fields: what the layer table says, against what the network does.

The network is made linear and positive (convs and dense layers averaging with
constant weights ``1/fan_in`` and no bias, normalisation as the identity, and,
where the measurement is a derivative, activations as the identity and max
pools as average pools). Then a unit depends on an input pixel exactly when the
pixel lies in its receptive field: nothing cancels.

All units are measured at once, by lines: input batch item ``y`` is the
``y``-th row of pixels (item ``H + x`` the ``x``-th column), and a unit of a
layer responds to it exactly when its box, clipped to the image, meets that
row. The rows (columns) that reach unit row ``i`` (column ``j``) are its box
along that axis. For PyTorch the response is the forward-mode derivative at a
grey image along the line (so a squeeze-excitation gate, which scales a unit by
something computed from the whole image, makes it global, as its gradient
does); for Keras, ONNX and TFLite it is the forward pass on the line itself
(ReLU and max pooling then act as the identity and as "any pixel is on").

:func:`check_table` compares every unit of every conv, pool, block and merge
row with its table box (:func:`convlens.core.receptive.unit_box`) clipped to
the image. Every unit's measured box, corners included, lies inside it; units
whose box lies inside the image, away from the map's borders, have exactly the
table's box (so size, jump and offset are right); after upsampling, the table's
envelope is tight (some unit touches each of its edges). At the borders a unit
can see less than its box: where it reads zero padding that stands for pixels
inside the image (a dilated or strided window stepping over a padded unit, a
pad after a valid conv), or a clamped interpolation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from convlens.core.layers import LayerInfo
from convlens.core.receptive import unit_box

#: The rows the proof is about.
CHECKED_KINDS = ("conv", "pool", "block", "merge")


def lines(h: int, w: int, c: int, *, channels_last: bool = True) -> np.ndarray:
    """``(H + W, H, W, C)`` (or ``(H + W, C, H, W)``) float32: one row of ones, then one column of ones, per item."""
    x = np.zeros((h + w, h, w, c), np.float32)
    for y in range(h):
        x[y, y, :, :] = 1.0
    for col in range(w):
        x[h + col, :, col, :] = 1.0
    return x if channels_last else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def split(response: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``(H + W, h, w)`` response to :func:`lines` as ``(rows, columns)``."""
    return response[:h], response[h:]


def measured_boxes(rows_response: np.ndarray, cols_response: np.ndarray) -> tuple[
        list[tuple[int, int] | None], list[tuple[int, int] | None]]:
    """Each unit row's ``[y0, y1)`` and each unit column's ``[x0, x1)``.

    ``rows_response[y, i, j]`` is nonzero when input row ``y`` reaches unit
    ``(i, j)`` (any channel), ``cols_response[x, i, j]`` the same for input
    column ``x``. ``None``: no line reaches it.
    """
    rows = []
    hit = rows_response != 0
    for i in range(hit.shape[1]):
        ys = np.flatnonzero(hit[:, i, :].any(axis=1))
        rows.append((int(ys[0]), int(ys[-1]) + 1) if ys.size else None)
    cols = []
    hit = cols_response != 0
    for j in range(hit.shape[2]):
        xs = np.flatnonzero(hit[:, :, j].any(axis=1))
        cols.append((int(xs[0]), int(xs[-1]) + 1) if xs.size else None)
    return rows, cols


def upsampled_rows(table: Sequence[LayerInfo]) -> set[int]:
    """Rows with an upsampling at or before them (their boxes are envelopes)."""
    after: set[int] = set()
    for layer in table:
        if layer.upsample is not None or any(p in after for p in layer.parents):
            after.add(layer.index)
        elif not layer.parents and layer.index - 1 in after:
            after.add(layer.index)
    return after


def check_table(table: Sequence[LayerInfo], responses: Mapping[int, tuple[np.ndarray, np.ndarray]],
                hw: tuple[int, int],
                *, kinds: Sequence[str] = CHECKED_KINDS) -> dict[str, int]:
    """Assert that the table's boxes are the measured ones (see the module docstring).

    Args:
        table: the layer table.
        responses: row index -> ``(rows, columns)`` responses of that row's map
            (see :func:`measured_boxes`); every checked row must be there.
        hw: the input's ``(H, W)``.

    Returns:
        counts of rows checked: ``exact`` (boxes inside the image equal the table's); ``envelope``
        (after upsampling: the table's envelope tight); ``contained`` (no box inside the image, so only
        containment could be checked); ``global``.
    """
    h, w = hw
    envelope_rows = upsampled_rows(table)
    counts = {"exact": 0, "envelope": 0, "contained": 0, "global": 0}
    for layer in table:
        if layer.kind not in kinds:
            continue
        assert layer.index in responses, f"{layer.name}: no measurement"
        rows, cols = measured_boxes(*responses[layer.index])
        if layer.global_rf:
            assert all(r == (0, h) for r in rows) and all(c == (0, w) for c in cols), (
                f"{layer.name} is global in the table, but its units see {rows[:3]}x{cols[:3]}...")
            counts["global"] += 1
            continue
        assert layer.rf_size is not None and layer.rf_offset is not None, f"{layer.name}: unknown field"
        exact = layer.index not in envelope_rows
        checked_all = True
        for a, got, limit in ((0, rows, h), (1, cols, w)):
            want = [_clip(unit_box(layer, i, 0) if a == 0 else unit_box(layer, 0, i), a, limit)
                    for i in range(len(got))]
            # every unit, corners included: its box inside the table's, clipped to the image
            for i, (g, t) in enumerate(zip(got, want)):
                if g is None:  # the unit reads only zero padding
                    continue
                assert t is not None and t[0] <= g[0] and g[1] <= t[1], (
                    f"{layer.name} axis {a} unit {i}: measured {g}, outside the table's {t}")
            # units whose table box lies inside the image, away from the map's borders (where a unit
            # reads zero padding that stands for pixels, or a clamped interpolation reads less)
            n = len(got)
            middle = [i for i in range(n // 4, n - n // 4)
                      if layer.rf_offset[a] + i * layer.rf_jump[a] >= 0
                      and layer.rf_offset[a] + i * layer.rf_jump[a] + layer.rf_size[a] <= limit]
            if exact:
                assert all(got[i] == want[i] for i in middle), (
                    f"{layer.name} axis {a}: measured {[got[i] for i in middle]}, table {[want[i] for i in middle]}")
            if len(middle) < (1 if exact else 4):
                checked_all = False
                continue
            if not exact:  # the envelope: tight, some unit touches each edge
                start = min(got[i][0] - i * layer.rf_jump[a] for i in middle)  # type: ignore[index]
                end = max(got[i][1] - i * layer.rf_jump[a] for i in middle)  # type: ignore[index]
                assert (start, end - start) == (layer.rf_offset[a], layer.rf_size[a]), (
                    f"{layer.name} axis {a}: middle units' hull starts at {start}, {end - start} wide; "
                    f"table {layer.rf_offset[a]}, {layer.rf_size[a]}")
        counts[("exact" if exact else "envelope") if checked_all else "contained"] += 1
    return counts


def _clip(box: tuple[float, float, float, float] | None, axis: int, limit: int) -> tuple[int, int] | None:
    if box is None:
        return None
    lo, hi = max(box[axis], 0.0), min(box[axis + 2], float(limit))
    return (int(np.floor(lo)), int(np.ceil(hi))) if hi > lo else None


# --------------------------------------------------------------------------- PyTorch

#: Module types made the identity: normalisations, and activations (their derivative at a grey image
#: is positive anyway; the identity keeps the network exactly linear).
_TORCH_IDENTITY = ("BatchNorm1d", "BatchNorm2d", "LayerNorm", "LayerNorm2d", "GroupNorm", "LocalResponseNorm",
                   "ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "GELU", "SiLU", "Sigmoid", "Tanh", "Dropout",
                   "StochasticDepth")


def torch_linearised(model):  # type: ignore[no-untyped-def]
    """A float32 copy of ``model``: averaging convs and linears, identity normalisations and activations,
    max pools as average pools; module names unchanged."""
    import copy

    import torch
    from torch import nn

    m = copy.deepcopy(model).eval().float()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            kind = type(child).__name__
            if kind in _TORCH_IDENTITY:
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    with torch.no_grad():
        for module in m.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                w.fill_(1.0 / (w.shape[1] * w.shape[2:].numel()))
            elif isinstance(module, nn.ConvTranspose2d):
                w.fill_(1.0 / (w.shape[0] * w.shape[2:].numel()))
            elif isinstance(module, nn.Linear):
                w.fill_(1.0 / w.shape[1])
            b = getattr(module, "bias", None)
            if isinstance(b, torch.Tensor):
                b.zero_()
        for name, p in m.named_parameters():
            if name.endswith("layer_scale"):  # ConvNeXt's per-channel scale of the residual branch
                p.fill_(1.0)
    return m


def torch_responses(model, table: Sequence[LayerInfo], hw: tuple[int, int], channels: int,  # type: ignore[no-untyped-def]
                    kinds: Sequence[str] = ("conv", "pool", "block"), thin: int | None = None
                    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Row index -> the forward-mode derivatives of the row's map along each input row and each column.

    Rows are found by name (``module.path``, ``#k`` for the k-th call), in the
    linearised copy (:func:`torch_linearised`), at a grey (0.5) input. With
    ``thin``, rows are measured on an ``H x thin`` input and columns on a
    ``thin x W`` one: a box along one axis does not depend on the other axis's
    size, and the passes are that much cheaper.

    Returns:
        ``(rows, columns)``: ``(H, h, w)`` and ``(W, h', w')`` responses
        (channels summed in absolute value).
    """
    import torch
    import torch.autograd.forward_ad as fwad

    lin = torch_linearised(model)
    modules = dict(lin.named_modules())
    wanted: dict[tuple[str, int], int] = {}
    for layer in table:
        if layer.kind not in kinds:
            continue
        base, _, call = layer.name.split(":")[0].partition("#")
        if base in modules:
            wanted[(base, int(call) - 1 if call else 0)] = layer.index
    order = sorted(wanted.values())
    calls: dict[str, int] = {}
    captured: dict[int, object] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module, args, output) -> None:  # type: ignore[no-untyped-def]
            k = calls.get(name, 0)
            calls[name] = k + 1
            row = wanted.get((name, k))
            if isinstance(output, dict):  # torchvision's IntermediateLayerGetter: the row is its first output
                output = next(iter(output.values()), None)
            elif isinstance(output, (tuple, list)):
                output = output[0] if output else None
            if row is not None and isinstance(output, torch.Tensor):
                captured[row] = output
        return record

    def along(h: int, w: int, axis: int) -> list[np.ndarray]:
        every = torch.from_numpy(lines(h, w, channels, channels_last=False))
        tangents = every[:h] if axis == 0 else every[h:]
        calls.clear()
        captured.clear()
        with torch.no_grad(), fwad.dual_level():
            lin(fwad.make_dual(torch.full_like(tangents, 0.5), tangents))
            return [fwad.unpack_dual(captured[row]).tangent.abs().sum(1).numpy() for row in order]

    handles = [modules[name].register_forward_hook(hook(name)) for name in {n for n, _ in wanted}]
    h, w = hw
    try:
        rows = along(h, thin or w, 0)
        cols = along(thin or h, w, 1)
    finally:
        for handle in handles:
            handle.remove()
    return {row: (r, c) for row, r, c in zip(order, rows, cols)}
