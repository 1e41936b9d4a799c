"""The report's "Can these heatmaps be trusted?" section: ``convlens evaluate`` on the report's images.

Not part of a default report (it runs every method many times: the
randomisation test alone runs each once per weighted layer); ask for it with
``--sections ...,evaluate``. Options, in ``section_options["evaluate"]``: any
:func:`convlens.evaluate.evaluate` argument (``method``, ``metrics``,
``samples``, ``boxes``...); the report's defaults are quicker than the
command's (:data:`REPORT_SAMPLES` noisy copies).
"""

from __future__ import annotations

from typing import Any

from ..._errors import ConvlensError
from ...evaluate import evaluate
from ...evaluate.page import render_body
from ...images import PreparedBatch
from ..context import ReportContext
from ..registry import register_section
from ..templating import Markup, render

__all__ = ["REPORT_SAMPLES", "evaluate_section"]

#: Noisy copies of the stability metric in a report.
REPORT_SAMPLES = 4


@register_section("evaluate", "Can these heatmaps be trusted?", order=47, default=False)
def evaluate_section(ctx: ReportContext) -> Markup | None:
    """Rank the heatmap methods on the report's images; say which fail and why."""
    options: dict[str, Any] = dict(ctx.section_options.get("evaluate", {}))
    options.setdefault("samples", REPORT_SAMPLES)
    method = options.pop("method", None)
    prepared = PreparedBatch(images=list(ctx.images), arrays=list(ctx.inputs), notes=[])
    try:
        result = evaluate(ctx.model, prepared, method, **options)
    except ConvlensError as exc:  # one image, a forward-only model with gradient methods: say so, keep the page
        return render("sections/evaluate.html", note=f"not evaluated: {exc}", body="")
    ctx.shared["evaluate"] = result
    return render("sections/evaluate.html", note="", body=render_body(result))
