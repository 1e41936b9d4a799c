"""Score-CAM: channels weighed by the score of the input they mask.

https://arxiv.org/abs/1910.01279
"""

from __future__ import annotations

import numpy as np

from ..core.cam import score_cam_masks, softmax, weighted_sum
from ..passes import call_model
from .base import Context, Method
from .targets import class_scores

__all__ = ["ScoreCAM"]


class ScoreCAM(Method):
    """Score-CAM: each channel, upsampled and scaled to 0..1, masks the input; the target's
    scores of the masked inputs, softmaxed over channels, weigh the channels.

    Forward only: one pass per channel with spatial variation, batched under
    the memory budget, plus one pass for all constant channels together
    (their masks are all zero, so they share one masked input and one score;
    pytorch-grad-cam runs each of them). All classes asked for an image are
    scored from the same passes. As in pytorch-grad-cam the masks multiply the
    preprocessed input and the scores are the model's outputs as given (no
    softmax added), softmaxed over channels.
    """

    name = "scorecam"
    title = "Score-CAM"
    paper = "https://arxiv.org/abs/1910.01279"
    slow = True

    def raw_maps(self, ctx: Context) -> np.ndarray:
        acts, rows = ctx.activations(), ctx.rows
        step = ctx.batch_size(self.batch_size, backward=False)
        images = [int(i) for i in np.unique(rows.images)]
        flat = acts.reshape(len(acts), -1, acts.shape[-1])
        varying = {i: np.flatnonzero(flat[i].max(axis=0) > flat[i].min(axis=0)) for i in images}
        constant = {i: len(varying[i]) < acts.shape[-1] for i in images}
        total = sum(len(varying[i]) + constant[i] for i in images)
        ctx.progress.start(total, f"{self.title} masked inputs")
        out = np.zeros((len(rows), *acts.shape[1:3]))
        try:
            for i in images:
                mine = np.flatnonzero(rows.images == i)
                classes = rows.classes[mine]
                scores = np.empty((len(mine), acts.shape[-1]))
                if constant[i]:  # every constant channel masks the input to zeros: one pass for all
                    zero = class_scores(
                        self._run(ctx, ctx.batch[i : i + 1] * 0.0), classes, rows.mask
                    )
                    scores[:] = zero.T
                    ctx.progress.advance()
                for start in range(0, len(varying[i]), step):
                    chunk = varying[i][start : start + step]
                    masks, _ = score_cam_masks(acts[i][..., chunk], ctx.hw)  # masks made per chunk
                    part = masks[..., None] * ctx.batch[i][None]
                    scores[:, chunk] = class_scores(self._run(ctx, part), classes, rows.mask).T
                    ctx.progress.advance(len(chunk))
                for j, m in enumerate(mine):
                    out[m] = weighted_sum(acts[i][None], softmax(scores[j])[None])[0]
        finally:
            ctx.progress.finish()
        return out

    @staticmethod
    def _run(ctx: Context, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x if x.ndim == 4 else x[None], np.float32)
        return call_model(ctx.adapter, x)
