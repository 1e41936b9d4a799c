"""What a feature visualisation maximises: Lucid's ``optvis/objectives`` as declarative targets.

An objective is read from one layer's output in the canonical layout and is
handed to the adapter as a :class:`convlens.adapters.base.Target`, so that no
framework code is needed here:

* ``channel``: the mean of one channel's map (``reduce="mean"``);
* ``neuron``: one channel at the centre position of the map (``"center"``);
* ``class``: one class score of the model's output, read before a final
  softmax when the adapter can see one (a logit, as Lucid and Simonyan et
  al. 2013, https://arxiv.org/abs/1312.6034, use it).

Each can be negated (the image a channel most dislikes). A batch holds many
objectives of one kind and layer, one per image; images do not interact
except through the optional :class:`Diversity` penalty (Olah et al.,
"Feature Visualization", Distill 2017, "Diversity"), whose gradient with
respect to the layer's activations is computed here in numpy and handed to
the adapter as ``Target.cotangent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..adapters.base import Target

__all__ = ["KINDS", "Diversity", "Objective", "batch_target", "scores"]

#: objective kind -> the :class:`Target` reduction it uses
KINDS: dict[str, str] = {"channel": "mean", "neuron": "center", "class": "sum"}


@dataclass(frozen=True)
class Objective:
    """One image's objective.

    Attributes:
        kind: ``"channel"``, ``"neuron"`` or ``"class"``.
        layer: table row of the layer; ``None`` for ``class`` (the model's output).
        index: the channel or class.
        negative: minimise instead of maximise.
    """

    kind: str
    layer: int | None
    index: int
    negative: bool = False

    @property
    def sign(self) -> float:
        return -1.0 if self.negative else 1.0


def batch_target(objectives: Sequence[Objective]) -> Target:
    """One :class:`Target` for a batch of objectives of one kind and layer (image ``n``: ``objectives[n]``)."""
    kinds = {o.kind for o in objectives}
    layers = {o.layer for o in objectives}
    if len(kinds) != 1 or len(layers) != 1:
        raise ValueError(f"one batch holds one kind and one layer, got {sorted(kinds)} and {layers}")
    first = objectives[0]
    return Target(layer=first.layer, channels=tuple(o.index for o in objectives), reduce=KINDS[first.kind],
                  weights=tuple(o.sign for o in objectives))


def scores(target: Target, activations: np.ndarray) -> np.ndarray:
    """``(N,)`` float64: each image's objective from its layer's output ``(N, ...)``.

    The dot product of the output with the target's cotangent: exactly the
    score the adapter differentiates, sign included.
    """
    acts = np.asarray(activations, np.float64)
    cot = target.cotangent_for(acts.shape).astype(np.float64)
    return (acts * cot).reshape(len(acts), -1).sum(axis=1)


@dataclass(frozen=True)
class Diversity:
    """The Gram-matrix cosine penalty that pushes images of one objective apart.

    For the images ``n`` of one group (copies of the same objective), with
    ``F_n`` their ``(positions, C)`` activations, ``G_n = F_n.T @ F_n`` and
    ``g_n = G_n / |G_n|`` (Frobenius norm), the penalty is Lucid's
    ``diversity``: ``D = sum_{i != j} <g_i, g_j> / k`` for a group of ``k``;
    the objective becomes ``sum_n score_n - weight * D``.

    Attributes:
        weight: how much the penalty counts (Lucid's example uses 100 with a
            channel mean; the scores here are means too).
    """

    weight: float

    def value_and_grad(self, acts: np.ndarray, groups: Sequence[int]) -> tuple[float, np.ndarray]:
        """The penalty ``weight * sum_groups D`` and its gradient with respect to ``acts``.

        Args:
            acts: ``(N, ..., C)`` activations of the batch.
            groups: ``(N,)`` group label of each image; groups of one image add nothing.

        Returns:
            ``(value, grad)`` with ``grad`` shaped like ``acts`` (float64).
        """
        a = np.asarray(acts, np.float64)
        n, c = a.shape[0], a.shape[-1]
        flat = a.reshape(n, -1, c)
        grams = np.einsum("npi,npj->nij", flat, flat)
        norms = np.sqrt((grams * grams).sum(axis=(1, 2))) + 1e-10
        unit = grams / norms[:, None, None]
        labels = np.asarray(groups)
        total, grad = 0.0, np.zeros_like(flat)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            k = len(members)
            if k < 2:
                continue
            u = unit[members]
            others = u.sum(axis=0)[None] - u  # sum over j != i of g_j
            total += float((u * others).sum()) / k
            h = 2.0 * others / k  # d D / d g_i: each pair appears as (i, j) and (j, i)
            # through the normalisation g = G / |G|, then G = F.T F
            along = (h * u).sum(axis=(1, 2))[:, None, None]
            dg = (h - along * u) / norms[members][:, None, None]
            grad[members] = 2.0 * np.einsum("npi,nij->npj", flat[members], 0.5 * (dg + dg.transpose(0, 2, 1)))
        return self.weight * total, (self.weight * grad).reshape(a.shape)
