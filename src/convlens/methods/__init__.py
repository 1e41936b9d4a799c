"""Heatmap methods: where a network looks when it decides.

One small module per method over :class:`~convlens.methods.base.Method`, which
owns the pipeline. Use the registry::

    from convlens import methods
    result = methods.create("gradcam").compute(adapter, batch, target="tabby")
    result.maps        # (M, H, W) float32, 0..1

Methods that need gradients fail at once on a model that cannot give them
(TFLite); :func:`forward_only` names the ones that run everywhere.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from .._errors import BadArgument
from .base import (
    MEMORY_BUDGET,
    REGISTRY,
    Context,
    GradientCam,
    Method,
    MethodResult,
    check_gradients,
    default_layer,
    gradients_problem,
    resolve_layer,
)
from .eigencam import EigenCAM
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus
from .hirescam import HiResCAM
from .integrated_gradients import IntegratedGradients
from .layercam import LayerCAM
from .occlusion import Occlusion
from .recorded import RecordedForward
from .saliency import Saliency
from .scorecam import ScoreCAM
from .smoothgrad import SmoothGrad
from .targets import Rows, TargetSpec
from .xgradcam import XGradCAM

__all__ = [
    "MEMORY_BUDGET",
    "METHODS",
    "Context",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCam",
    "HiResCAM",
    "IntegratedGradients",
    "LayerCAM",
    "Method",
    "MethodResult",
    "Occlusion",
    "RecordedForward",
    "Rows",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "TargetSpec",
    "XGradCAM",
    "check_gradients",
    "create",
    "default_layer",
    "forward_only",
    "get",
    "gradient_methods",
    "gradients_problem",
    "names",
    "resolve_layer",
]

#: Every method by registry name, CAMs first, in the order front ends list them.
METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        LayerCAM,
        HiResCAM,
        ScoreCAM,
        EigenCAM,
        Saliency,
        SmoothGrad,
        IntegratedGradients,
        Occlusion,
    )
}

#: Other spellings people type.
# The registry in the front ends' order, so that messages (base.gradients_problem) list the
# methods as the command line does.
for _name in METHODS:
    REGISTRY[_name] = REGISTRY.pop(_name)

ALIASES = {
    "gradcampp": "gradcam++",
    "gradcamplusplus": "gradcam++",
    "integratedgradients": "ig",
    "vanillagradient": "saliency",
    "gradient": "saliency",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def names() -> list[str]:
    """Every method's registry name."""
    return list(METHODS)


def forward_only() -> list[str]:
    """The methods that need only forward passes (they run on every framework, TFLite included)."""
    return [n for n, m in METHODS.items() if not m.needs_gradients]


def gradient_methods() -> list[str]:
    """The methods that need gradients."""
    return [n for n, m in METHODS.items() if m.needs_gradients]


def get(name: str) -> type[Method]:
    """The method class of a name (``gradcam``, ``Grad-CAM++``, ``integrated_gradients``...).

    Raises:
        BadArgument: an unknown name (the message lists the closest and every name).
    """
    if not isinstance(name, str):
        raise BadArgument(f"a method name is text such as 'gradcam', not {name!r}")
    key = _key(name)
    by_key = {_key(n): n for n in METHODS} | ALIASES
    if key in by_key:
        return METHODS[by_key[key]]
    close = difflib.get_close_matches(key, list(by_key), n=2, cutoff=0.6)
    hint = (
        f"; did you mean {' or '.join(dict.fromkeys(by_key[c] for c in close))}?" if close else ""
    )
    raise BadArgument(f"unknown heatmap method {name!r}{hint}; methods: {', '.join(METHODS)}")


def create(name: str, **options: Any) -> Method:
    """An instance of a method, with its options (e.g. ``create("ig", steps=32)``).

    Raises:
        BadArgument: an unknown method or option.
    """
    cls = get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise BadArgument(
            f"{cls.title}: {exc}; see help(convlens.methods.{cls.__name__})"
        ) from None
