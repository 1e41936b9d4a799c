"""Compare two networks layer by layer: ``convlens.compare(a, b, images)`` and ``convlens compare A B``.

* :mod:`.pairing`: which layer of A corresponds to which layer of B.
* :mod:`.metrics`: streamed error figures per pair and channel.
* :mod:`.run`: the one pass over the images (A and B batch by batch).
* :mod:`.result`: :class:`Comparison`, its summary, index.json and pictures.
* :mod:`.charts` and :mod:`.page`: the PNG pictures and ``compare.html``.
"""

from __future__ import annotations

from .api import METRICS, compare
from .result import CASES, CKAMatrix, Comparison, PairResult

__all__ = ["CASES", "METRICS", "CKAMatrix", "Comparison", "PairResult", "compare"]
