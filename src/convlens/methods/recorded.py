"""One forward pass that also records what a gradient CAM of the top classes needs.

:class:`RecordedForward` has :meth:`Adapter.run`'s signature, so a pass engine
runs it in place of ``adapter.run`` (the report's one pass): every wanted
layer's output goes to ``on_output`` as ``run`` would hand it over, and the
same pass records, for each image, the CAM layer's output and the gradients of
its ``top`` best classes there (the adapter's optional ``run_ranked``, see
:class:`~convlens.adapters.base.RankedGradients`). A gradient CAM (Grad-CAM
and its family) then computes its maps from them with
:meth:`~convlens.methods.base.GradientCam.from_gradients`, without a pass of
its own (:func:`convlens.heatmaps.compute_heatmaps` with ``recorded=``).

Frameworks without gradients (TFLite), adapters without ``run_ranked`` and a
pass that cannot record (a model that cannot be traced) run ``adapter.run``
instead: :attr:`RecordedForward.unavailable` says why, and the CAM is computed
the ordinary way, with its own passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import ConvlensError
from ..adapters.base import Adapter, OnOutput, RankedGradients
from ..core.layers import LayerInfo
from .base import GradientCam, Method

__all__ = ["RecordedForward"]


class RecordedForward:
    """``adapter.run`` that records each image's CAM-layer output and top classes' gradients.

    Args:
        adapter: the model.
        layer: the CAM layer (:func:`~convlens.methods.base.resolve_layer`).
        top: how many of each image's best classes get their gradients (1-10).

    Attributes:
        layer: the CAM layer.
        top: as given.
        unavailable: ``None`` while every pass recorded; else why one did not
            (that pass and the later ones ran ``adapter.run``).
    """

    def __init__(self, adapter: Adapter, layer: LayerInfo, top: int) -> None:
        self.adapter = adapter
        self.layer = layer
        self.top = int(top)
        self.unavailable: str | None = None
        if getattr(adapter, "run_ranked", None) is None:
            self.unavailable = f"{adapter.name}: the adapter cannot record gradients in its forward pass"
        elif adapter.gradients_unavailable() is not None:
            self.unavailable = str(adapter.gradients_unavailable())
        self._images: list[tuple[RankedGradients, int] | None] = []  # per image: its pass and row there

    def __call__(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput) -> np.ndarray:
        """One forward pass of ``batch`` ``(N, H, W, C)``, as :meth:`Adapter.run` (the images in pass order)."""
        n = len(batch)
        if self.unavailable is None:
            try:
                got = self.adapter.run_ranked(  # type: ignore[attr-defined]
                    batch, wanted, on_output, layer=self.layer.index, top=self.top)
            except ConvlensError as exc:  # raised before any output was handed over
                self.unavailable = str(exc)
            else:
                self._images.extend((got, j) for j in range(n))
                return np.asarray(got.output)
        self._images.extend([None] * n)
        return np.asarray(self.adapter.run(batch, wanted, on_output))

    def recorded(self, image: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Image ``image``'s ``(activations (h, w, C), grads (top, h, w, C), classes (top,))``, if recorded."""
        if not 0 <= image < len(self._images) or self._images[image] is None:
            return None
        got, j = self._images[image]  # type: ignore[misc]
        return got.activations[j], got.grads[:, j], got.classes[j]

    def rows_for(self, method: Method, layer: LayerInfo, images: Sequence[int],
                 classes: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(acts, grads)`` per row for ``method`` (:meth:`GradientCam.from_gradients`), or ``None``.

        Args:
            method: the method; only gradient CAMs use recorded gradients.
            layer: the layer it runs on (it must be the recorded one).
            images: the pass's image numbers, in row order.
            classes: per image, the classes its rows explain, in row order.

        Returns:
            ``(M, h, w, C)`` twice, or ``None`` when the method, the layer, an
            image or a class was not recorded (then compute it the ordinary way).
        """
        if not isinstance(method, GradientCam) or layer.index != self.layer.index:
            return None
        acts, grads = [], []
        for image, wanted in zip(images, classes):
            got = self.recorded(image)
            if got is None:
                return None
            a, g, have = got
            for k in wanted:
                hits = np.flatnonzero(have == int(k))
                if not len(hits):
                    return None
                acts.append(a)
                grads.append(g[int(hits[0])])
        if not acts:
            return None
        return np.stack(acts), np.stack(grads)
