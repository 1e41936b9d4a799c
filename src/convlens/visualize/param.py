"""Image parameterisations for feature visualisation: Lucid's ``optvis/param`` in numpy.

An optimisation does not move pixels directly. It moves parameters that an
image is drawn from, chosen so that plain gradient steps become well
conditioned (Olah et al., "Feature Visualization", Distill 2017,
https://distill.pub/2017/feature-visualization/, section "Preconditioning and
Parameterization"):

1. :class:`FourierImage`: the image is the inverse real FFT of a spectrum
   whose coefficients are scaled by ``1 / max(f, 1 / max(h, w))`` (``f`` the
   frequency in cycles per pixel), so that every frequency moves about
   equally fast instead of the high ones dominating (natural images have a
   1/f spectrum);
2. :class:`ColorDecorrelation`: the three channels it gives are decorrelated
   colours, mixed into RGB by Lucid's fixed matrix (:data:`COLOR_CORRELATION`);
3. :class:`Sigmoid`: squashed to valid pixels in ``(0, 1)``;
4. after the random transforms (:mod:`.transform`), :class:`PresetMap`: the
   model's own preprocessing preset (:func:`convlens.images.apply_preset`).

Every step is a function of numpy arrays with an explicit ``forward`` and an
explicit ``adjoint`` (the transpose of its Jacobian, applied to the gradient
that comes back), so the whole chain runs without a framework's autograd; the
framework only gives the gradient with respect to its input. Arrays are
``(N, H, W, C)`` channels last, float64 for the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..images import apply_preset

__all__ = [
    "COLOR_CORRELATION",
    "COLOR_CORRELATION_SVD_SQRT",
    "ColorDecorrelation",
    "FourierImage",
    "ImageParam",
    "PixelImage",
    "PresetMap",
    "Sigmoid",
    "fft_frequencies",
]

#: Lucid's square root of the colour correlation of ImageNet pixels (rows: R, G,
#: B; columns: the decorrelated components, brightness first), from
#: ``lucid/optvis/param/color.py``.
COLOR_CORRELATION_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]])

#: :data:`COLOR_CORRELATION_SVD_SQRT` divided by its largest column norm (0.4620, the first),
#: as Lucid normalises it: a decorrelated pixel ``t`` becomes RGB ``t @ M.T``.
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))


def fft_frequencies(height: int, width: int) -> np.ndarray:
    """``(height, width // 2 + 1)`` frequency magnitudes of a real 2-D FFT, in cycles per pixel.

    The layout of :func:`numpy.fft.rfft2`: rows ``fftfreq(height)``, columns the
    non-negative ``fftfreq(width)`` (``rfftfreq``), 0 to 0.5.
    """
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def _normal(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal ``shape``, item ``n`` of the first axis drawn from ``rngs[n]``.

    One generator per image makes an image independent of the batch it is in.
    """
    if len(rngs) != shape[0]:
        raise ValueError(f"{len(rngs)} generators for {shape[0]} images")
    return np.stack([rng.standard_normal(shape[1:]) for rng in rngs])


class FourierImage:
    """An image drawn from a scaled spectrum: Lucid's ``fft_image``.

    The parameters ``p`` have shape ``(N, C, h, w // 2 + 1, 2)`` (real and
    imaginary parts). The image is
    ``irfft2((p[..., 0] + 1j * p[..., 1]) * scale, norm="ortho") / 4`` with
    ``scale = 1 / max(f, 1 / max(h, w)) ** decay_power``; the orthonormal FFT
    keeps step sizes comparable with pixel-space optimisation, and 4 is
    Lucid's constant ("increasing this seems to reduce saturation").

    Args:
        shape: ``(N, h, w, C)`` of the images.
        decay_power: exponent of the 1/f scaling (Lucid's default 1).
        sd: standard deviation of the initial coefficients (Lucid's 0.01).
    """

    magic = 4.0

    def __init__(self, shape: tuple[int, int, int, int], *, decay_power: float = 1.0,
                 sd: float = 0.01) -> None:
        self.shape = tuple(int(d) for d in shape)
        n, h, w, c = self.shape
        freqs = fft_frequencies(h, w)
        self.scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
        self.sd = float(sd)
        self.param_shape = (n, c, h, w // 2 + 1, 2)
        # irfft2 counts each column of the half spectrum twice (it and its mirror),
        # except the DC column and, for an even width, the Nyquist column: the adjoint
        # multiplies the rfft2 of the gradient by these counts.
        self._counts = np.full(w // 2 + 1, 2.0)
        self._counts[0] = 1.0
        if w % 2 == 0:
            self._counts[-1] = 1.0

    def init(self, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """Initial parameters, normal with standard deviation ``sd``; image ``n`` from ``rngs[n]``."""
        return _normal(rngs, self.param_shape) * self.sd

    def forward(self, p: np.ndarray) -> np.ndarray:
        """Parameters -> ``(N, h, w, C)`` float64 images (unbounded; around 0)."""
        h, w = self.shape[1:3]
        spectrum = (p[..., 0] + 1j * p[..., 1]) * self.scale
        img = np.fft.irfft2(spectrum, s=(h, w), norm="ortho") / self.magic
        return img.transpose(0, 2, 3, 1)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """d loss / d image ``(N, h, w, C)`` -> d loss / d parameters."""
        spec = np.fft.rfft2(np.asarray(g, np.float64).transpose(0, 3, 1, 2), norm="ortho")
        spec *= self._counts * self.scale / self.magic
        return np.stack([spec.real, spec.imag], axis=-1)


class PixelImage:
    """The image is the parameters: ``(N, h, w, C)``, for the naive baseline.

    Args:
        shape: ``(N, h, w, C)``.
        sd: standard deviation of the initial values (Lucid's 0.01).
    """

    def __init__(self, shape: tuple[int, int, int, int], *, sd: float = 0.01) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.param_shape = self.shape
        self.sd = float(sd)

    def init(self, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        return _normal(rngs, self.param_shape) * self.sd

    def forward(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p, np.float64)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        return np.asarray(g, np.float64)


class ColorDecorrelation:
    """Decorrelated colour components -> RGB: ``rgb = t @ COLOR_CORRELATION.T`` per pixel.

    The identity for images that are not three-channel (a gray MNIST model has
    no colours to decorrelate).
    """

    def __init__(self, channels: int) -> None:
        self.matrix = COLOR_CORRELATION if channels == 3 else None

    def forward(self, t: np.ndarray) -> np.ndarray:
        return t if self.matrix is None else t @ self.matrix.T

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        return g if self.matrix is None else g @ self.matrix


class Sigmoid:
    """``x = 1 / (1 + exp(-z))``: any real number -> a valid pixel in ``(0, 1)``."""

    @staticmethod
    def forward(z: np.ndarray) -> np.ndarray:
        # tanh form: no overflow warning for large |z|
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    @staticmethod
    def adjoint(g: np.ndarray, x: np.ndarray) -> np.ndarray:
        """d loss / d x -> d loss / d z, given the forward output ``x``."""
        return g * x * (1.0 - x)


@dataclass
class ImageParam:
    """The chain parameters -> pixels in ``(0, 1)``: Fourier (or pixel) image, colour, sigmoid.

    ``forward`` remembers the pixels it returned, for ``backward``.

    Args:
        shape: ``(N, h, w, C)``.
        fourier: Fourier-space image with 1/f scaling (Lucid's default);
            ``False``: pixel space.
        decorrelate: mix decorrelated colour components into RGB (3 channels only).
        decay_power: see :class:`FourierImage`.
        sd: initial standard deviation.
    """

    shape: tuple[int, int, int, int]
    fourier: bool = True
    decorrelate: bool = True
    decay_power: float = 1.0
    sd: float = 0.01
    _pixels: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.image: FourierImage | PixelImage = (
            FourierImage(self.shape, decay_power=self.decay_power, sd=self.sd) if self.fourier
            else PixelImage(self.shape, sd=self.sd))
        self.color = ColorDecorrelation(self.shape[-1] if self.decorrelate else 0)

    def init(self, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """Initial parameters; image ``n`` drawn from ``rngs[n]`` alone (see :class:`FourierImage`)."""
        return self.image.init(rngs)

    def forward(self, p: np.ndarray) -> np.ndarray:
        """Parameters -> ``(N, h, w, C)`` float64 pixels in ``(0, 1)``."""
        self._pixels = Sigmoid.forward(self.color.forward(self.image.forward(p)))
        return self._pixels

    def backward(self, g: np.ndarray) -> np.ndarray:
        """d loss / d pixels (of the last ``forward``) -> d loss / d parameters."""
        if self._pixels is None:
            raise RuntimeError("ImageParam.backward before forward")
        return self.image.adjoint(self.color.adjoint(Sigmoid.adjoint(g, self._pixels)))


class PresetMap:
    """A preprocessing preset as the affine map it is: ``pre = (255 * x) @ A + b`` per pixel.

    Every preset of :data:`convlens.images.PRESETS` is affine per pixel
    (a scale, a shift, and for ``caffe`` a flip of the channel order), so its
    Jacobian is the constant ``(C, C)`` matrix ``255 * A``. ``A`` and ``b`` are
    read from :func:`convlens.images.apply_preset` itself, so the map cannot
    drift from the presets.

    Args:
        preset: a key of :data:`convlens.images.PRESETS`.
        channels: ``C`` of the model's input.
    """

    def __init__(self, preset: str, channels: int) -> None:
        self.preset = preset
        eye = np.vstack([np.zeros((1, channels)), 255.0 * np.eye(channels)])
        out = apply_preset(eye, preset).astype(np.float64)
        self.offset = out[0]
        self.matrix = (out[1:] - out[0]) / 255.0  # d pre / d (255 x), row c: input channel c

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(..., C)`` pixels in 0..1 -> the model's preprocessed float32 input."""
        return ((255.0 * x) @ self.matrix + self.offset).astype(np.float32)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """d loss / d preprocessed input -> d loss / d pixels in 0..1."""
        return 255.0 * (np.asarray(g, np.float64) @ self.matrix.T)

    def inverse(self, pre: np.ndarray) -> np.ndarray:
        """Preprocessed input -> pixels in 0..1 (the matrix is invertible for every preset)."""
        return (np.asarray(pre, np.float64) - self.offset) @ np.linalg.inv(self.matrix) / 255.0
