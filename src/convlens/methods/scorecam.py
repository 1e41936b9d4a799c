"""Score-CAM: channels weighed by the score of the input they mask.

https://arxiv.org/abs/1910.01279
"""

from __future__ import annotations

import numpy as np

from ..core.cam import score_cam_masks, softmax, weighted_sum
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
        plans = {int(i): score_cam_masks(acts[i], ctx.hw) for i in np.unique(rows.images)}
        ctx.progress.start(
            sum(len(v) + 1 for _, v in plans.values()), f"{self.title} masked inputs"
        )
        out = np.zeros((len(rows), *acts.shape[1:3]))
        for i, (masks, varying) in plans.items():
            mine = np.flatnonzero(rows.images == i)
            classes = rows.classes[mine]
            # Every constant channel masks the input to zeros: one pass scores them all.
            scores = np.empty((len(mine), acts.shape[-1]))
            scores[:] = class_scores(self._run(ctx, ctx.batch[i] * 0.0), classes, rows.mask)[0][
                :, None
            ]
            ctx.progress.advance()
            for start in range(0, len(varying), step):
                part = masks[start : start + step, :, :, None] * ctx.batch[i][None]
                scores[:, varying[start : start + step]] = class_scores(
                    self._run(ctx, part), classes, rows.mask
                ).T
                ctx.progress.advance(len(part))
            for j, m in enumerate(mine):
                out[m] = weighted_sum(acts[i][None], softmax(scores[j])[None])[0]
        ctx.progress.finish()
        return out

    @staticmethod
    def _run(ctx: Context, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x if x.ndim == 4 else x[None], np.float32)
        return np.asarray(ctx.adapter.run(x, [], lambda i, a: None))
