"""``convlens evaluate``: which heatmap method can be trusted for this model on these images.

:func:`evaluate` runs the sanity and faithfulness metrics of
:mod:`convlens.core.evaluation` on every method asked for and returns an
:class:`Evaluation` (``.summary()``, ``.save(out)``, ``.to_json()``, inline in Jupyter).
"""

from __future__ import annotations

from .api import DEFAULT_METHODS, METRICS, evaluate, parse_metrics, read_boxes
from .result import Evaluation, MethodScores

__all__ = ["DEFAULT_METHODS", "METRICS", "Evaluation", "MethodScores", "evaluate", "parse_metrics", "read_boxes"]
