"""How much of each channel's top-k image set B kept: two dataset folders, one per network, compared.

``convlens dataset`` ranks, per channel of each selected layer, the ``k``
images that drive it hardest. Run on the same data with A and with B (two
checkpoints), the two folders say which channels still respond to the same
images: per paired layer and channel, ``|top_k(A) ∩ top_k(B)| / k``, 1 for a
channel that kept its whole set, 0 for one that found other images.

Images are matched by their record name (the path under the data root, or
``file#row`` for Parquet), so the two runs may list the data in any order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import BadArgument
from ..dataset.result import DatasetResult, LayerExamples

__all__ = ["LEAST", "KeptLayer", "common_layers", "load_datasets", "top_k_kept"]

#: Channels listed as "kept least" per layer (every channel's figure is in index.json).
LEAST = 5


@dataclass
class KeptLayer:
    """The top-k overlap of one pair of layers.

    Attributes:
        a, b: the layers' names in A and in B.
        k: the images compared per channel (the smaller of the two folders' ``k``).
        channels: per channel, ``|A ∩ B| / n`` of the top-``k`` images, with ``n``
            the smaller of the two sets' sizes (``k`` unless fewer images were
            seen); ``None`` where a channel ranked no image.
        mean: the mean over the channels, ``None`` without any.
        least: the channels that kept least, lowest first: ``{"channel", "kept"}``.
    """

    a: str
    b: str
    k: int
    channels: list[float | None]
    mean: float | None
    least: list[dict[str, Any]] = field(default_factory=list)


def _load(x: Any, side: str) -> DatasetResult:
    if isinstance(x, DatasetResult):
        return x
    if not isinstance(x, (str, os.PathLike)):
        raise BadArgument(f"the dataset of {side} must be a folder written by `convlens dataset` or a "
                          f"DatasetResult, got {type(x).__name__}")
    return DatasetResult.load(x)


def load_datasets(datasets: Any) -> tuple[DatasetResult, DatasetResult]:
    """``(folder_a, folder_b)`` (paths or :class:`~convlens.DatasetResult`) read and checked.

    Raises:
        BadArgument: not two of them, or a folder that holds no dataset view.
    """
    if isinstance(datasets, (str, os.PathLike)) or not isinstance(datasets, Sequence) or len(datasets) != 2:
        raise BadArgument("datasets needs two dataset folders, (folder of A, folder of B): run "
                          "`convlens dataset MODEL DATA --out DIR` with each model on the same data")
    return _load(datasets[0], "A"), _load(datasets[1], "B")


def _names(d: DatasetResult) -> dict[int, str]:
    return {r.id: r.name for r in d.source.records}


def _layers(d: DatasetResult) -> dict[str, LayerExamples]:
    return {ex.layer.name: ex for ex in d.layers}


def common_layers(da: DatasetResult, db: DatasetResult, names: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs of ``names`` whose A layer is in ``da`` and B layer in ``db``."""
    la, lb = _layers(da), _layers(db)
    return [(a, b) for a, b in names if a in la and b in lb]


def _kept(ids_a: np.ndarray, ids_b: np.ndarray, names_a: dict[int, str], names_b: dict[int, str],
          k: int) -> float | None:
    sa = {names_a.get(int(i), f"#{int(i)}") for i in ids_a[:k] if i >= 0}
    sb = {names_b.get(int(i), f"#{int(i)}") for i in ids_b[:k] if i >= 0}
    n = min(len(sa), len(sb))
    return len(sa & sb) / n if n else None


def top_k_kept(da: DatasetResult, db: DatasetResult,
               pairs: Sequence[tuple[str, str]]) -> tuple[list[KeptLayer], list[str]]:
    """Per pair of layers in both folders, the share of each channel's top-k images B kept.

    Args:
        da, db: the dataset views of A and of B (same data).
        pairs: ``(layer of A, layer of B)`` names, in A's order.

    Returns:
        The layers compared (pairs absent from either folder are left out) and notes
        (different data, different channel counts).
    """
    notes: list[str] = []
    if da.images != db.images or da.source.description != db.source.description:
        notes.append(f"the two dataset folders saw different data ({da.source.description}, {da.images} images; "
                     f"{db.source.description}, {db.images} images): the top-k overlaps compare different sets")
    la, lb = _layers(da), _layers(db)
    names_a, names_b = _names(da), _names(db)
    k = min(da.k, db.k)
    out: list[KeptLayer] = []
    for a, b in pairs:
        if a not in la or b not in lb:
            continue
        ea, eb = la[a], lb[b]
        if ea.channels != eb.channels:
            notes.append(f"{a}: {ea.channels} channels in A's dataset folder, {eb.channels} in B's: "
                         "top-k overlap not computed")
            continue
        kept = [_kept(ea.top.ids[c], eb.top.ids[c], names_a, names_b, k) for c in range(ea.channels)]
        known = [(v, c) for c, v in enumerate(kept) if v is not None]
        mean = float(np.mean([v for v, _ in known])) if known else None
        least = [{"channel": c, "kept": v} for v, c in sorted(known)[:LEAST]]
        out.append(KeptLayer(a, b, k, kept, mean, least))
    return out, notes
