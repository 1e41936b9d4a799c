"""A classifier's outputs as class probabilities, and in words how they were read.

A model's outputs are probabilities when its graph ends in a softmax (or a
sigmoid, one probability per class): the adapters read that from the graph
(``Adapter.final_activation``) and their word is taken first. Only when the
graph does not say are the numbers themselves looked at: probabilities lie in
``[0, 1]`` and sum to 1 along the classes. A quantised output cannot sum to
exactly 1: each of its K values is rounded to a step ``s`` (1/256 for a uint8
softmax), which moves the sum by up to ``K * s / 2`` and typically by
``s * sqrt(K / 12)``. The tolerance is therefore ``s * sqrt(K)`` (about 3.5
typical deviations), never less than ``1e-3`` (float rounding).
"""

from __future__ import annotations

import math

import numpy as np

from .._errors import BadArgument

__all__ = ["FINAL_ACTIVATIONS", "softmax", "sum_tolerance", "to_probabilities"]

#: What ``Adapter.final_activation`` may say (``None``: the graph does not say).
FINAL_ACTIVATIONS = ("softmax", "sigmoid", "linear")
#: Sums within this of 1 are probabilities whatever the output's type (float32 rounding).
FLOAT_TOLERANCE = 1e-3


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax along the last axis, in float64, safe for any input.

    NaN and ``-inf`` count as ``-inf`` (probability 0), ``+inf`` as the largest
    float; a row without any usable value becomes uniform.

    Args:
        z: ``(..., K)`` scores.

    Returns:
        ``(..., K)`` float64 in ``[0, 1]``, each row summing to 1.
    """
    z = np.asarray(z, dtype=np.float64)
    z = np.where(np.isnan(z), -np.inf, z)
    z = np.where(np.isposinf(z), np.finfo(np.float64).max, z)
    top = np.max(z, axis=-1, keepdims=True) if z.shape[-1] else np.zeros(z.shape[:-1] + (1,))
    empty = np.isneginf(top)  # every value NaN or -inf: no class is preferred
    z = np.where(empty, 0.0, z - np.where(empty, 0.0, top))
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sum_tolerance(classes: int, quant_step: float | None) -> float:
    """How far from 1 the sum of ``classes`` probabilities may be (see the module docstring)."""
    if quant_step is None or not quant_step > 0 or not math.isfinite(quant_step):
        return FLOAT_TOLERANCE
    return max(FLOAT_TOLERANCE, float(quant_step) * math.sqrt(max(classes, 1)))


def _step_text(step: float) -> str:
    """``1/256`` for a step that is one over a whole number, else ``0.0042``."""
    inverse = 1.0 / step
    if inverse >= 1 and abs(inverse - round(inverse)) < 1e-4 * inverse:
        return f"1/{round(inverse)}"
    return f"{step:.2g}"


def to_probabilities(outputs: np.ndarray, final_activation: str | None = None,
                     quant_step: float | None = None) -> tuple[np.ndarray, str]:
    """Class probabilities from a classifier's outputs, and how they were obtained.

    The graph's word comes first: a model that ends in softmax or sigmoid
    gives its own numbers (when they lie in ``[0, 1]``), one that ends in a
    linear layer gives scores, which go through a softmax. When the graph does
    not say, outputs in ``[0, 1]`` that sum to 1 within :func:`sum_tolerance`
    are taken as they are; anything else goes through a softmax.

    Args:
        outputs: ``(N, K)`` (or ``(K,)``) scores of K classes, any float values.
        final_activation: ``Adapter.final_activation``: ``"softmax"``,
            ``"sigmoid"``, ``"linear"`` or ``None`` (the graph does not say).
        quant_step: the step of a quantised output after dequantisation
            (its scale, e.g. 1/256), or ``None`` for a float output.

    Returns:
        ``(probabilities, how)``: float64 of the shape of ``outputs``, values
        in ``[0, 1]``; and a phrase for the report, e.g. "the model's own
        probabilities (its graph ends in softmax)".

    Raises:
        BadArgument: ``final_activation`` is not one of the words above.
    """
    if final_activation is not None and final_activation not in FINAL_ACTIVATIONS:
        raise BadArgument(f"final_activation must be one of {', '.join(FINAL_ACTIVATIONS)} or None, "
                          f"not {final_activation!r}")
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 0 or out.shape[-1] == 0:
        raise BadArgument(f"class scores must be (N, K) with K >= 1, got shape {out.shape}")
    in_range = bool(np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1)
    if in_range and final_activation == "softmax":
        return out, "the model's own probabilities (its graph ends in softmax)"
    if in_range and final_activation == "sigmoid":
        return out, "the model's own probabilities (its graph ends in sigmoid: each class on its own)"
    if final_activation == "linear":
        return softmax(out), "softmax of the model's outputs (its graph ends in a linear layer: scores)"
    tolerance = sum_tolerance(out.shape[-1], quant_step)
    if in_range and np.all(np.abs(out.sum(axis=-1) - 1) <= tolerance):
        if tolerance > FLOAT_TOLERANCE:
            step = _step_text(float(quant_step))  # type: ignore[arg-type]  # set when tolerance grew
            return out, f"the model's own probabilities (they sum to 1 within the output's quantisation step {step})"
        return out, "the model's own probabilities (they sum to 1)"
    return softmax(out), "softmax of the model's outputs (they are not probabilities)"
