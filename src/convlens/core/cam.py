"""The arithmetic of class activation maps and input attributions, in numpy only.

Every function here takes canonical channels-last arrays (activations and
gradients ``(N, h, w, C)``, inputs ``(N, H, W, C)``) and never imports a
framework; :mod:`convlens.methods` runs the model and calls these.

Where a reference implementation exists, the formulas follow it to the
epsilon, so that the agreement tests can hold to 1e-4: pytorch-grad-cam 1.5.7
for the CAM family, captum 0.9.0 for the input attributions.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "eigen_cam",
    "gauss_blur",
    "grad_cam",
    "grad_cam_pp",
    "hires_cam",
    "ig_alphas",
    "layer_cam",
    "minmax",
    "occlusion_windows",
    "resize_bilinear",
    "score_cam_masks",
    "softmax",
    "weighted_sum",
    "xgrad_cam",
]


# --------------------------------------------------------------------------- resizing and scaling


def _axis_weights(
    n_in: int, n_out: int, align_corners: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indexes ``i0, i1`` and the weight of ``i1``: linear interpolation on one axis."""
    if align_corners:
        pos = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        # Half-pixel centres, clamped at the borders: OpenCV's INTER_LINEAR and
        # torch's align_corners=False (pytorch-grad-cam resizes with cv2.resize).
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0.0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def resize_bilinear(
    maps: np.ndarray, size: tuple[int, int], *, align_corners: bool = False
) -> np.ndarray:
    """Bilinear resize of the axes 1 and 2 of ``maps`` (no antialiasing: for upsampling).

    Args:
        maps: ``(N, h, w)`` or ``(N, h, w, C)``.
        size: ``(H, W)``.
        align_corners: ``False``: half-pixel centres (OpenCV ``INTER_LINEAR``,
            what pytorch-grad-cam uses to upsample its CAMs); ``True``: corner
            pixels aligned (torch ``UpsamplingBilinear2d``, what its Score-CAM
            uses to build masks).

    Returns:
        float32 array ``(N, H, W)`` or ``(N, H, W, C)``.
    """
    x = np.asarray(maps, dtype=np.float32)
    h, w = x.shape[1], x.shape[2]
    height, width = int(size[0]), int(size[1])
    if (h, w) == (height, width):
        return x.copy()
    y0, y1, fy = _axis_weights(h, height, align_corners)
    x0, x1, fx = _axis_weights(w, width, align_corners)
    extra = (1,) * (x.ndim - 3)
    fy = fy.reshape((1, height, 1) + extra)
    fx = fx.reshape((1, 1, width) + extra)
    rows = x[:, y0] * (1 - fy) + x[:, y1] * fy
    # the large result in place: the same float32 operations, no temporaries of its size
    out = rows[:, :, x0]
    out *= 1 - fx
    right = rows[:, :, x1]
    right *= fx
    out += right
    return out


def minmax(maps: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Each map shifted to start at 0 and divided by its new maximum plus ``eps``.

    pytorch-grad-cam's ``scale_cam_image`` to the letter, so a constant map
    becomes all zeros rather than NaN.

    Args:
        maps: ``(N, ...)``.

    Returns:
        float32 array of the same shape in ``[0, 1)``.
    """
    x = np.asarray(maps, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    x = x - x.min(axis=axes, keepdims=True)  # a new array: the division goes in place
    x /= eps + x.max(axis=axes, keepdims=True)
    return x


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """A numerically stable softmax."""
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


# --------------------------------------------------------------------------- the CAM family
# acts, grads: (N, h, w, C); every function returns (N, h, w) float64 before ReLU.


def weighted_sum(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_c weights[n, c] * acts[n, :, :, c]``: the CAM of per-channel weights ``(N, C)``."""
    a = np.asarray(acts)
    if a.dtype != np.float32:
        a = a.astype(np.float64)
    # float32 activations as they are: einsum computes in float64 (the weights' type) without a float64 copy
    return np.einsum("nhwc,nc->nhw", a, np.asarray(weights, np.float64))


def grad_cam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391).

    Channel weights are the spatial mean of the gradient.
    """
    return weighted_sum(acts, np.asarray(grads).mean(axis=(1, 2), dtype=np.float64))


def grad_cam_pp(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063), eq. 19.

    The closed form for an exponential score, as pytorch-grad-cam computes it:
    ``alpha = g^2 / (2 g^2 + sum(A) g^3 + 1e-6)`` (0 where ``g == 0``), channel
    weight ``sum(alpha * relu(g))`` over positions.
    """
    a = np.asarray(acts, np.float64)
    g = np.asarray(grads, np.float64)
    g2 = g * g
    total = a.sum(axis=(1, 2), keepdims=True)
    alpha = np.where(g != 0, g2 / (2 * g2 + total * g2 * g + 1e-6), 0.0)
    return weighted_sum(a, (np.maximum(g, 0) * alpha).sum(axis=(1, 2)))


def xgrad_cam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020, https://arxiv.org/abs/2008.02312).

    Channel weight ``sum(g * A) / (sum(A) + 1e-7)`` over positions.
    """
    a = np.asarray(acts, np.float64)
    g = np.asarray(grads, np.float64)
    weights = (g * a).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + 1e-7)
    return weighted_sum(a, weights)


def layer_cam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021): ``sum_c relu(g) * A``.

    https://ieeexplore.ieee.org/document/9462463
    """
    return (np.maximum(np.asarray(grads, np.float64), 0) * np.asarray(acts, np.float64)).sum(
        axis=-1
    )


def hires_cam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891): ``sum_c g * A``.

    With global average pooling after the layer this equals Grad-CAM times
    ``h * w`` at every position before the ReLU only when the gradient is
    constant over positions; in general it keeps the gradient's spatial detail.
    """
    return (np.asarray(grads, np.float64) * np.asarray(acts, np.float64)).sum(axis=-1)


def eigen_cam(acts: np.ndarray) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299).

    The projection of each position's (channel-centred) activation vector on
    the first principal component, as pytorch-grad-cam's ``get_2d_projection``
    computes it (non-finite values set to 0, each channel's mean over positions
    subtracted, first right singular vector).

    Sign convention: an SVD's sign is arbitrary (pytorch-grad-cam keeps
    whatever LAPACK returns). convlens orients the component so that the map
    correlates positively with the layer's mean activation over channels
    (``sum_p map[p] * mean_c A[p, c] >= 0``): it is high where the layer is
    active. When that sum is 0 the largest-magnitude value is made positive.

    Returns:
        ``(N, h, w)`` float64.
    """
    a = np.nan_to_num(np.asarray(acts, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    n, h, w, c = a.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        flat = a[i].reshape(h * w, c)
        centred = flat - flat.mean(axis=0)
        if not np.any(centred):
            continue
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        agree = float(proj @ flat.mean(axis=1))
        if agree < 0 or (agree == 0 and proj[np.argmax(np.abs(proj))] < 0):
            proj = -proj
        out[i] = proj.reshape(h, w)
    return out


def score_cam_masks(acts: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Score-CAM's masks (Wang et al. 2020, https://arxiv.org/abs/1910.01279) for one image.

    Each channel upsampled to the input (corner-aligned bilinear, as
    pytorch-grad-cam's ``UpsamplingBilinear2d``) and min-max scaled to 0..1
    with pytorch-grad-cam's ``1e-8``.

    Args:
        acts: ``(h, w, C)`` one image's activations.
        size: the input's ``(H, W)``.

    Returns:
        ``(masks, varying)``: ``masks`` ``(K, H, W)`` float32 for the ``K``
        channels that are not constant, and ``varying`` their channel indexes.
        A constant channel's mask is all zeros (its upsampled min equals its
        max), so every such channel masks the input to zeros and gets the same
        score: the caller scores that input once.
    """
    a = np.asarray(acts, np.float32)
    flat = a.reshape(-1, a.shape[-1])
    varying = np.flatnonzero(flat.max(axis=0) > flat.min(axis=0))
    if varying.size == 0:
        return np.zeros((0, *size), np.float32), varying
    up = resize_bilinear(np.moveaxis(a[..., varying], -1, 0)[..., None], size, align_corners=True)[
        ..., 0
    ]
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    return ((up - lo) / (hi - lo + 1e-8)).astype(np.float32), varying


# --------------------------------------------------------------------------- input attributions


def ig_alphas(steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Integration points and weights on ``[0, 1]`` for Integrated Gradients, as captum makes them.

    Args:
        steps: number of points.
        method: ``gausslegendre`` (captum's default), ``riemann_trapezoid``,
            ``riemann_left``, ``riemann_right`` or ``riemann_middle``.

    Returns:
        ``(alphas, weights)``, float64 ``(steps,)`` each; ``sum(weights) == 1``.
        Every method gives captum's points and weights except
        ``riemann_trapezoid``, where captum weighs every point ``1/n`` and
        halves both ends, so its weights sum to ``(n-1)/n`` and its attributions
        are ``(n-1)/n`` of the integral's; convlens uses the trapezoid rule's
        weights (``1/(n-1)``, ends halved), which integrate a constant exactly.
    """
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1.0 + x), 0.5 * w
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs at least 2 steps")
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), w
    starts = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if method not in starts:
        raise ValueError(f"unknown integration method {method!r}")
    return (np.arange(steps) + starts[method]) / steps, np.full(steps, 1.0 / steps)


def gauss_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``(N, H, W, C)`` images on H and W (reflected borders, 3-sigma kernel)."""
    x = np.asarray(images, np.float32)
    if sigma <= 0:
        return x.copy()
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):
        r = min(radius, x.shape[axis] - 1)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        padded = np.pad(x, pad, mode="reflect" if r > 0 else "edge")
        k = kernel[radius - r : radius + r + 1]
        k = k / k.sum()
        out = np.zeros_like(x, dtype=np.float64)
        for j, kj in enumerate(k):
            out += kj * np.take(padded, np.arange(j, j + x.shape[axis]), axis=axis)
        x = out.astype(np.float32)
    return x


def occlusion_windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each occluding window on one axis, placed as captum's ``Occlusion``.

    The first window starts at 0, the next ones every ``stride``, until the
    axis is covered; the last one may be cut off by the border.
    """
    count = math.ceil((size - window) / stride) + 1 if size > window else 1
    return [(i * stride, min(i * stride + window, size)) for i in range(count)]
