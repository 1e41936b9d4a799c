"""Random transforms for robust feature visualisation: Lucid's ``optvis/transform`` in numpy.

Optimising an image through small random jitters, scalings and rotations
keeps it from exploiting pixel-exact patterns that only one alignment of the
network responds to (Olah et al., "Feature Visualization", Distill 2017,
https://distill.pub/2017/feature-visualization/, "Transformation
robustness"; Mordvintsev et al., "Inceptionism", 2015).

Every transform here is a geometric map: it says, for each pixel of its
output, which point of its input it shows, as a 3x3 affine matrix on
homogeneous ``(row, col, 1)`` pixel coordinates (pixel centres at integers).
:func:`compose` draws one step's transforms from one
:class:`numpy.random.Generator`, multiplies their matrices, and samples the
input once, bilinearly, through a :class:`Warp`: a ``scipy.sparse`` matrix
with at most four weights per output pixel, whose transpose is the exact
adjoint. One interpolation instead of one per transform (as Lucid chains
``resize_bilinear`` and ``rotate``) blurs less and costs one sparse product.

Points outside the input show the fill value (0.5, Lucid's grey padding), so
a warp is affine: ``y = M (x - fill) + fill``.

Differences from Lucid, so that the network's input keeps one shape every
step (a traced TensorFlow function or a fixed-size model needs that): jitter
crops ``d`` pixels as Lucid's does, but scaling zooms about the centre of a
canvas of fixed size instead of resizing the canvas, and a final
:class:`Resize` brings the canvas to the model's input size when the model has
a fixed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # imported where a warp is built: ``import convlens`` needs no scipy
    import scipy.sparse as sp

__all__ = [
    "Jitter",
    "Pad",
    "RandomRotate",
    "RandomScale",
    "Resize",
    "Transform",
    "Warp",
    "compose",
    "standard_transforms",
]

Size = tuple[int, int]


class Transform(Protocol):
    """One geometric transform: draws its parameters and returns its map."""

    def draw(self, rng: np.random.Generator, size: Size) -> tuple[Size, np.ndarray]:
        """``(output size, 3x3 matrix from output to input coordinates)`` for an input of ``size``."""
        ...


def _translate(dy: float, dx: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dy], [0.0, 1.0, dx], [0.0, 0.0, 1.0]])


def _about_centre(linear: np.ndarray, size: Size) -> np.ndarray:
    """A 2x2 map applied about the centre of a canvas of ``size`` (output and input alike)."""
    cy, cx = (size[0] - 1) / 2.0, (size[1] - 1) / 2.0
    m = np.eye(3)
    m[:2, :2] = linear
    return _translate(cy, cx) @ m @ _translate(-cy, -cx)


@dataclass(frozen=True)
class Pad:
    """Lucid's ``pad(w, mode="constant", constant_value=0.5)``: a border of ``width`` fill pixels."""

    width: int

    def draw(self, rng: np.random.Generator, size: Size) -> tuple[Size, np.ndarray]:
        w = self.width
        return (size[0] + 2 * w, size[1] + 2 * w), _translate(-w, -w)


@dataclass(frozen=True)
class Jitter:
    """Lucid's ``jitter(d)``: a random crop ``d`` pixels smaller, offsets uniform in ``0..d``."""

    d: int

    def draw(self, rng: np.random.Generator, size: Size) -> tuple[Size, np.ndarray]:
        dy, dx = rng.integers(0, self.d + 1, size=2)
        return (size[0] - self.d, size[1] - self.d), _translate(float(dy), float(dx))


@dataclass(frozen=True)
class RandomScale:
    """Lucid's ``random_scale(scales)``: a zoom by one of ``scales``, about the centre."""

    scales: tuple[float, ...]

    def draw(self, rng: np.random.Generator, size: Size) -> tuple[Size, np.ndarray]:
        s = float(self.scales[int(rng.integers(len(self.scales)))])
        return size, _about_centre(np.eye(2) / s, size)


@dataclass(frozen=True)
class RandomRotate:
    """Lucid's ``random_rotate(angles)``: a rotation by one of ``angles`` (degrees), about the centre."""

    angles: tuple[float, ...]

    def draw(self, rng: np.random.Generator, size: Size) -> tuple[Size, np.ndarray]:
        a = np.deg2rad(float(self.angles[int(rng.integers(len(self.angles)))]))
        # output -> input is the inverse rotation; on (row, col) axes
        inverse = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        return size, _about_centre(inverse, size)


@dataclass(frozen=True)
class Resize:
    """Stretch the canvas to ``size`` ``(h, w)`` (half-pixel centres, as ``align_corners=False``)."""

    size: Size

    def draw(self, rng: np.random.Generator, size: Size) -> tuple[Size, np.ndarray]:
        fy, fx = size[0] / self.size[0], size[1] / self.size[1]
        m = np.array([[fy, 0.0, 0.5 * fy - 0.5], [0.0, fx, 0.5 * fx - 0.5], [0.0, 0.0, 1.0]])
        return self.size, m


def standard_transforms(size: int = 128) -> list[Transform]:
    """Lucid's ``standard_transforms``, their pixel amounts scaled from 128 pixels to ``size``.

    At 128 pixels exactly Lucid's: pad 12, jitter 8, scale by one of
    ``1 + (i - 5) / 50`` for ``i`` in 0..10, rotate by one of -10..10 degrees
    (0 five times more often), jitter 4. A 28-pixel image gets pad 3, jitter
    2 and 1: the same share of the picture.
    """
    f = size / 128.0
    return [
        Pad(max(1, round(12 * f))),
        Jitter(max(1, round(8 * f))),
        RandomScale(tuple(1 + (i - 5) / 50.0 for i in range(11))),
        RandomRotate(tuple(float(a) for a in [*range(-10, 11), 0, 0, 0, 0, 0])),
        Jitter(max(1, round(4 * f))),
    ]


class Warp:
    """One drawn geometric map as a linear operator on ``(N, h, w, C)`` images.

    Attributes:
        in_size: ``(h, w)`` of the input.
        out_size: ``(h', w')`` of the output.
        matrix: ``(3, 3)`` output -> input coordinates.
        fill: the value shown where the map leaves the input.
        operator: ``(h' * w', h * w)`` CSR bilinear weights, row-major pixels.
    """

    def __init__(self, in_size: Size, out_size: Size, matrix: np.ndarray, fill: float = 0.5) -> None:
        self.in_size, self.out_size = in_size, out_size
        self.matrix = np.asarray(matrix, np.float64)
        self.fill = float(fill)
        self.operator = _bilinear(in_size, out_size, self.matrix)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(N, h, w, C)`` -> ``(N, h', w', C)``: ``M (x - fill) + fill`` per image and channel."""
        n, h, w, c = x.shape
        cols = (x - self.fill).transpose(1, 2, 0, 3).reshape(h * w, n * c)
        y = self.operator @ cols
        return y.reshape(*self.out_size, n, c).transpose(2, 0, 1, 3) + self.fill

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """d loss / d output ``(N, h', w', C)`` -> d loss / d input ``(N, h, w, C)``: ``M.T g``."""
        n, ho, wo, c = g.shape
        cols = np.asarray(g).transpose(1, 2, 0, 3).reshape(ho * wo, n * c)
        x = self.operator.T @ cols
        return x.reshape(*self.in_size, n, c).transpose(2, 0, 1, 3)


def _bilinear(in_size: Size, out_size: Size, matrix: np.ndarray) -> sp.csr_matrix:
    """The ``(h' * w', h * w)`` sparse matrix that samples the input bilinearly at ``matrix @ (r, c, 1)``."""
    (h, w), (ho, wo) = in_size, out_size
    rr, cc = np.meshgrid(np.arange(ho, dtype=np.float64), np.arange(wo, dtype=np.float64), indexing="ij")
    sy = matrix[0, 0] * rr + matrix[0, 1] * cc + matrix[0, 2]
    sx = matrix[1, 0] * rr + matrix[1, 1] * cc + matrix[1, 2]
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    out_index = np.arange(ho * wo).reshape(ho, wo)
    rows, cols, vals = [], [], []
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx, wt = y0 + dy, x0 + dx, wy * wx
            keep = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w) & (wt > 0)
            rows.append(out_index[keep])
            cols.append(yy[keep] * w + xx[keep])
            vals.append(wt[keep])
    import scipy.sparse as sp

    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(ho * wo, h * w))


def compose(transforms: Sequence[Transform], rng: np.random.Generator, size: Size, *,
            out_size: Size | None = None, fill: float = 0.5) -> Warp:
    """Draw one step's transforms, in order, and fold them into one :class:`Warp`.

    Args:
        transforms: applied first to last to an image of ``size``.
        rng: the one generator every random choice is drawn from, in order.
        size: ``(h, w)`` of the input image.
        out_size: a final :class:`Resize` to this size (a model's fixed input);
            ``None``: the size the transforms give.
        fill: the value shown outside the input (Lucid pads with 0.5).
    """
    matrix = np.eye(3)
    current = (int(size[0]), int(size[1]))
    chain = list(transforms) + ([Resize(out_size)] if out_size is not None else [])
    for t in chain:
        current, m = t.draw(rng, current)
        if min(current) < 1:
            raise ValueError(f"the transforms leave no pixels of a {size[0]}x{size[1]} image")
        matrix = matrix @ m
    return Warp((int(size[0]), int(size[1])), current, matrix, fill)
