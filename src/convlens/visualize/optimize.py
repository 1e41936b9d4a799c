"""The optimisation loop of feature visualisation: Adam in numpy, many images at once.

Every step draws the images from their parameters (:mod:`.param`), warps them
by one draw of random transforms (:mod:`.transform`), applies the model's
preprocessing, and asks the adapter for one thing: the gradient of the batch's
objectives (:mod:`.objectives`) with respect to its input. The chain is then
walked back in numpy (each piece's explicit adjoint) to the parameters, and
Adam takes a step. The framework runs no optimiser, keeps no parameter
gradients, and may stop its forward pass at the target layer.

Because the parameters, the transforms and Adam live here, a seed gives the
same images in every framework, up to the framework's float32 gradients.
Each image's initial parameters come from its own generator, seeded by
``(seed, index, copy, negative)``, and each batch replays the transforms of one
generator seeded by ``seed``; Adam works element by element: so an image does
not depend on which other images share its batch (without diversity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._progress import NullProgress, Progress
from ..adapters.base import Adapter, Target
from ..adapters.redirect import redirect_unavailable, redirected_gradients
from ..passes import call_model
from .objectives import Diversity, Objective, batch_target, scores
from .param import ImageParam, PresetMap, fft_frequencies
from .transform import Transform, Warp, compose, standard_transforms

__all__ = ["Adam", "Rendered", "high_frequency_share", "pixel_ascent", "plan_batches", "redirect_steps", "render"]


class Adam:
    """Adam (Kingma and Ba 2014, https://arxiv.org/abs/1412.6980), as ``torch.optim.Adam`` computes it.

    Minimises: ``step(params, grad)`` moves ``params`` in place against ``grad``.
    """

    def __init__(self, shape: tuple[int, ...], lr: float = 0.05, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m *= b1
        self.m += (1 - b1) * grad
        self.v *= b2
        self.v += (1 - b2) * grad * grad
        denom = np.sqrt(self.v) / np.sqrt(1 - b2 ** self.t) + self.eps
        params -= (self.lr / (1 - b1 ** self.t)) * self.m / denom


@dataclass
class Rendered:
    """What an optimisation gives, one row per objective, in the order given.

    Attributes:
        images: ``(M, h, w, C)`` float32 pixels in ``[0, 1]`` (the parameter
            images, before any transform or preprocessing).
        scores: ``(M,)`` float64, each objective's value on its final image as
            the model sees it without transforms (sign included: higher is better).
        history: ``(steps, M)`` float64, the objective at each step, on that
            step's transformed image, before the step's update.
    """

    images: np.ndarray
    scores: np.ndarray
    history: np.ndarray


def _groups(objectives: Sequence[Objective]) -> list[int]:
    """Group label per objective: copies of the same objective share one."""
    seen: dict[Objective, int] = {}
    return [seen.setdefault(o, len(seen)) for o in objectives]


def plan_batches(groups: Sequence[int], batch: int, keep_groups: bool) -> list[list[int]]:
    """Consecutive index lists of at most ``batch`` (a group is never split when ``keep_groups``)."""
    out: list[list[int]] = []
    current: list[int] = []
    i = 0
    while i < len(groups):
        j = i + 1
        if keep_groups:
            while j < len(groups) and groups[j] == groups[i]:
                j += 1
        members = list(range(i, j))
        if current and len(current) + len(members) > batch:
            out.append(current)
            current = []
        current.extend(members)
        i = j
    if current:
        out.append(current)
    return out


def _generators(seed: int, objectives: Sequence[Objective]) -> list[np.random.Generator]:
    counts: dict[Objective, int] = {}
    rngs = []
    for o in objectives:
        copy = counts[o] = counts.get(o, -1) + 1
        rngs.append(np.random.default_rng([int(seed), int(o.index), copy, int(o.negative)]))
    return rngs


def _layer_output(adapter: Adapter, batch: np.ndarray, layer: int) -> np.ndarray:
    got: list[np.ndarray] = []
    call_model(adapter, batch, [layer], lambda i, a: got.append(a))
    if not got:
        raise RuntimeError(f"{adapter.name}: the forward pass gave no output for layer {layer}")
    return got[0]


def redirect_steps(steps: int, adapter: Adapter | None = None) -> int:
    """How many of the first steps redirect the gradient of zero-gated units (the first half).

    Lucid's redirected ReLU gradient (:mod:`convlens.adapters.redirect`) lets a
    channel that is zero on the starting image start; an image whose true
    gradient gets through is not changed by it. The second half climbs the
    true gradient only, so the final image is what the model itself rewards.
    None where ``adapter`` cannot redirect (:func:`~convlens.adapters.redirect.redirect_unavailable`).
    """
    return 0 if adapter is not None and redirect_unavailable(adapter) else steps // 2


def render(adapter: Adapter, objectives: Sequence[Objective], *, preset: PresetMap, size: int = 128,
           steps: int = 512, lr: float = 0.05, seed: int = 0, batch: int = 32, fourier: bool = True,
           decorrelate: bool = True, transforms: Sequence[Transform] | None = None,
           input_size: tuple[int, int] | None = None, diversity: float = 0.0,
           progress: Progress | None = None, label: str = "visualize") -> Rendered:
    """Optimise one image per objective.

    Arguments are checked by the caller (:func:`convlens.visualize.visualize`).

    Args:
        adapter: gives ``gradients(..., wrt_input=True)``.
        objectives: one per image, all of one kind and layer.
        preset: the model's preprocessing as an affine map.
        size: side of the square parameter image, in pixels.
        steps: Adam steps.
        lr: Adam's learning rate.
        seed: seeds every random draw.
        batch: images optimised together (one gradient call per step).
        fourier: Fourier-space parameterisation (else pixels).
        decorrelate: decorrelated colours (3-channel models).
        transforms: the random transforms; ``None``: :func:`standard_transforms`
            for ``size``; ``[]``: none.
        input_size: ``(h, w)`` the network is fed (a model's fixed input);
            ``None``: the size the transforms give.
        diversity: weight of the :class:`Diversity` penalty between copies of one objective.
        progress: one step per optimisation step of each batch.
        label: the progress label.
    """
    chain = standard_transforms(size) if transforms is None else list(transforms)
    groups = _groups(objectives)
    batches = plan_batches(groups, batch, keep_groups=diversity > 0)
    channels = len(preset.offset)
    penalty = Diversity(diversity) if diversity > 0 else None
    images = np.zeros((len(objectives), size, size, channels), np.float32)
    final = np.zeros(len(objectives))
    history = np.zeros((steps, len(objectives)))
    progress = progress or NullProgress()
    progress.start(steps * len(batches), f"{label}: {len(objectives)} images, {steps} steps")
    rngs = _generators(seed, objectives)
    for members in batches:
        objs = [objectives[i] for i in members]
        target = batch_target(objs)
        param = ImageParam((len(objs), size, size, channels), fourier=fourier, decorrelate=decorrelate)
        p = param.init([rngs[i] for i in members])
        adam = Adam(p.shape, lr)
        transform_rng = np.random.default_rng(int(seed))
        for step in range(steps):
            warp = compose(chain, transform_rng, (size, size), out_size=input_size)
            pre = preset.forward(warp.forward(param.forward(p)))
            step_target = target
            if penalty is not None and target.layer is not None:
                acts = _layer_output(adapter, pre, target.layer)
                _, dpen = penalty.value_and_grad(acts, [groups[i] for i in members])
                step_target = Target(layer=target.layer, cotangent=target.cotangent_for(acts.shape) - dpen)
                history[step, members] = scores(target, acts)
            with redirected_gradients(step < redirect_steps(steps, adapter)):
                g = adapter.gradients(pre, step_target, wrt_input=True, need_output=False)
            if step_target is target:
                history[step, members] = g.score
            if g.input_grad is None:
                raise RuntimeError(f"{adapter.name}: gradients() gave no input gradient")
            grad = param.backward(warp.adjoint(preset.adjoint(g.input_grad)))
            adam.step(p, -grad)  # ascent on the objective
            progress.advance()
        x = param.forward(p)
        images[members] = x
        final[members] = _final_scores(adapter, x, target, preset, input_size)
    progress.finish()
    return Rendered(images=images, scores=final, history=history)


def _final_scores(adapter: Adapter, x: np.ndarray, target: Target, preset: PresetMap,
                  input_size: tuple[int, int] | None) -> np.ndarray:
    """Each objective on the untransformed image (only resized to a fixed input size)."""
    if input_size is not None and tuple(input_size) != x.shape[1:3]:
        x = compose([], np.random.default_rng(0), x.shape[1:3], out_size=input_size).forward(x)
    g = adapter.gradients(preset.forward(x), target, wrt_input=False, need_output=False)
    return np.asarray(g.score, np.float64)


def pixel_ascent(adapter: Adapter, objectives: Sequence[Objective], *, preset: PresetMap, size: int = 128,
                 steps: int = 512, step_size: float = 0.01, seed: int = 0, batch: int = 32,
                 input_size: tuple[int, int] | None = None) -> Rendered:
    """The naive method, for comparison: gradient ascent on the pixels themselves.

    As the Keras tutorial "Visualizing what convnets learn" and most
    tutorials do it: start from gray with a little noise, step along the
    gradient divided by its root mean square (so each pixel moves about
    ``step_size`` on the 0..1 scale), clip to valid pixels; no
    reparameterisation, no transforms.
    """
    channels = len(preset.offset)
    images = np.zeros((len(objectives), size, size, channels), np.float32)
    final = np.zeros(len(objectives))
    history = np.zeros((steps, len(objectives)))
    rngs = _generators(seed, objectives)
    identity: Warp | None = None
    for members in plan_batches(_groups(objectives), batch, keep_groups=False):
        objs = [objectives[i] for i in members]
        target = batch_target(objs)
        x = 0.5 + 0.1 * np.stack([rngs[i].uniform(-0.5, 0.5, (size, size, channels)) for i in members])
        if input_size is not None and tuple(input_size) != (size, size):
            identity = compose([], np.random.default_rng(0), (size, size), out_size=input_size)
        for step in range(steps):
            pre = preset.forward(identity.forward(x) if identity is not None else x)
            g = adapter.gradients(pre, target, wrt_input=True, need_output=False)
            history[step, members] = g.score
            if g.input_grad is None:
                raise RuntimeError(f"{adapter.name}: gradients() gave no input gradient")
            grad = preset.adjoint(g.input_grad)
            if identity is not None:
                grad = identity.adjoint(grad)
            rms = np.sqrt((grad * grad).reshape(len(objs), -1).mean(axis=1)) + 1e-12
            x = np.clip(x + step_size * grad / rms[:, None, None, None], 0.0, 1.0)
        images[members] = x
        final[members] = _final_scores(adapter, x, target, preset, input_size)
    return Rendered(images=images, scores=final, history=history)



def high_frequency_share(images: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
    """``(M,)`` share of each image's spectral energy above ``cutoff`` cycles per pixel.

    Each channel's mean is removed first (a flat image has no energy); 0.25
    is half the Nyquist frequency. Pixel noise puts about 80% of its energy
    above it, natural photos a few percent.

    Args:
        images: ``(M, h, w, C)`` pixels.
    """
    x = np.asarray(images, np.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.rfft2(x, axes=(1, 2))) ** 2
    # the half spectrum holds the other half of every column but the first and the Nyquist one
    counts = np.full(power.shape[2], 2.0)
    counts[0] = 1.0
    if x.shape[2] % 2 == 0:
        counts[-1] = 1.0
    power = power * counts[None, None, :, None]
    high = fft_frequencies(x.shape[1], x.shape[2]) > cutoff
    total = power.sum(axis=(1, 2, 3))
    return power[:, high].sum(axis=(1, 2)) / np.maximum(total, 1e-30)
