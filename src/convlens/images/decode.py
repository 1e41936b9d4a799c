"""Decoding: paths, encoded bytes, PIL images and numpy arrays into an :class:`Image`.

:func:`load_image` / :func:`load_images` / :func:`load_image_bytes` read a
file, the bytes of an encoded file, a ``PIL.Image.Image`` or a numpy array
into an :class:`Image`: ``(H, W, C)`` float32 pixels in 0..255, ``C`` 1 (gray)
or 3 (colour), upright (EXIF orientation applied), transparency composited on
white.

Loading files is guarded against decompression bombs (:data:`MAX_PIXELS`) and
never accepts truncated files: this module never sets
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from convlens._errors import BadArgument, BadImage

__all__ = [
    "MAX_PIXELS",
    "Image",
    "ImageSource",
    "load_image",
    "load_image_bytes",
    "load_images",
]

#: Largest image (width * height) loaded unless ``max_pixels=`` says otherwise.
#: A guard against decompression bombs: a few KB of PNG can declare billions of
#: pixels. It also bounds memory: pixels are held as float32.
MAX_PIXELS = 100_000_000

#: What :func:`load_image` accepts.
ImageSource = Union[str, "os.PathLike[str]", PIL.Image.Image, np.ndarray]

_COMMON_FORMATS = "JPEG, PNG, BMP, GIF, TIFF or WebP"
_ARRAY_SHAPES = "(H, W), (H, W, 1), (H, W, 3), (H, W, 4) or a batch of one (1, H, W, C)"
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATIONS = {
    2: "mirrored left-right",
    3: "turned 180 degrees",
    4: "mirrored top-bottom",
    5: "mirrored along its main diagonal",
    6: "turned 90 degrees clockwise",
    7: "mirrored along its anti-diagonal",
    8: "turned 90 degrees counter-clockwise",
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# PIL's decompression-bomb limit is a module global; it is set to our limit
# while one of our loads runs, and warnings filters are process-global too, so
# loads that touch either are serialised.
_PIL_GLOBALS_LOCK = threading.Lock()


@dataclass(eq=False)
class Image:
    """An image as loaded, before any model's size, channels or preprocessing.

    Attributes:
        pixels: ``(H, W, C)`` float32 array in 0..255 (C-contiguous); ``C`` is
            1 for grayscale sources (modes ``1``, ``L``, ``LA``, ``I;16``,
            ``I``, ``F``) and 3 for colour ones; transparency is composited on
            white, palettes are expanded to RGB, 16-bit and float data are
            rescaled to 0..255.
        name: the file stem (``cat`` for ``cat.jpg``), ``imageN`` for a
            ``PIL.Image.Image`` and ``arrayN`` for a numpy array (``N`` its
            position in :func:`load_images`), unless the caller gave a name.
            :func:`load_images` makes names unique (``cat``, ``cat-2``, ...).
        source: the path as given (``~`` expanded), or ``"<PIL.Image>"`` /
            ``"<array>"`` for in-memory inputs.
        original_size: ``(width, height)`` after the EXIF orientation was
            applied, i.e. the size of ``pixels`` before :func:`prepare`.
        mode: the PIL mode as read (``"RGB"``, ``"L"``, ``"I;16"``, ``"P"``,
            ``"RGBA"``...); for arrays, the PIL mode that the channel count
            corresponds to (``"L"``, ``"RGB"`` or ``"RGBA"``).
        notes: sentences about what loading changed that the user should know
            (EXIF rotation, transparency, rescaled ranges, extra frames
            ignored); :func:`prepare` returns them first among its notes.
    """

    pixels: np.ndarray
    name: str
    source: str
    original_size: tuple[int, int]
    mode: str
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What an output's ``index.json`` says of the image: name, source and ``[width, height]``."""
        return {"name": self.name, "source": self.source, "size": list(self.original_size)}

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    def __repr__(self) -> str:
        return (
            f"Image(name={self.name!r}, source={self.source!r}, "
            f"pixels=<{self.height}x{self.width}x{self.channels} float32>, "
            f"original_size={self.original_size}, mode={self.mode!r})"
        )


# --------------------------------------------------------------------------- loading


def load_image(
    src: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
) -> Image:
    """Load one image from a path, a PIL image or a numpy array.

    Files are fully decoded here, so a truncated or corrupt file fails now
    with :class:`BadImage` rather than later inside a model. The EXIF
    orientation is applied (``PIL.ImageOps.exif_transpose``) and, for
    multi-frame files (GIF, TIFF), the first frame is used.

    Numpy arrays may be ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``,
    ``(H, W, 4)`` (RGBA) or a batch of one ``(1, H, W, C)``. ``uint8`` and
    ``bool`` arrays are taken as 0..255 (``True`` is 255); ``uint16`` as 16-bit
    (divided by 257); other integer arrays must hold 0..255; float arrays
    whose maximum is at most 1.0 are multiplied by 255 (with a note), other
    float arrays are taken as 0..255 and must lie in it (up to half a level of
    rounding, then clipped). Arrays are copied, never modified.

    Args:
        src: path (``str`` or ``os.PathLike``), ``PIL.Image.Image`` or array.
        name: name for the image; default: see :attr:`Image.name`.
        max_pixels: refuse images with more than this many pixels
            (width * height), checked from the file header before decoding;
            ``None`` uses the module's :data:`MAX_PIXELS` as it is at call time
            (so setting ``convlens.images.MAX_PIXELS`` changes the default).

    Returns:
        The loaded :class:`Image`.

    Raises:
        BadImage: the path is missing or a directory, the file is not an image
            PIL can read, is truncated or corrupt, is larger than
            ``max_pixels``, or the array has an unusable shape, dtype or range.
        BadArgument: ``name`` or ``max_pixels`` is not usable.
    """
    return _load(src, name=name, index=0, max_pixels=max_pixels)


def load_images(
    srcs: ImageSource | Sequence[ImageSource],
    *,
    max_pixels: int | None = None,
) -> list[Image]:
    """Load several images (or one) with :func:`load_image`, names made unique.

    Repeated names get a suffix: ``cat``, ``cat-2``, ``cat-3``. Names are
    compared case-insensitively (``Cat`` and ``cat`` would overwrite each
    other's output files on macOS and Windows), and a suffix never takes a
    name that another input has on its own.

    Args:
        srcs: one source or a sequence of sources, each as for :func:`load_image`.
            In-memory inputs are named by their position: ``array0``, ``image1``...
        max_pixels: as for :func:`load_image`, applied to each image; ``None``
            uses :data:`MAX_PIXELS` as it is at call time.

    Returns:
        The images, in the order given.

    Raises:
        BadImage: as for :func:`load_image`, for the first image that fails.
        BadArgument: no sources were given.
    """
    if isinstance(srcs, (str, os.PathLike, PIL.Image.Image, np.ndarray)):
        items: list[ImageSource] = [srcs]
    else:
        try:
            items = list(srcs)
        except TypeError:
            raise _unsupported_type(srcs) from None
    if not items:
        raise BadArgument("no images given; pass at least one image path, PIL image or array")
    images = [_load(src, name=None, index=i, max_pixels=max_pixels) for i, src in enumerate(items)]
    names = _unique_names([image.name for image in images])
    return [
        image if image.name == new else replace(image, name=new)
        for image, new in zip(images, names)
    ]


def _load(src: object, *, name: str | None, index: int, max_pixels: int | None) -> Image:
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise BadArgument(f"name must be a non-empty string, not {name!r}")
    if max_pixels is None:
        max_pixels = MAX_PIXELS
    _check_max_pixels_argument(max_pixels)
    if isinstance(src, np.ndarray):
        return _from_array(src, name=name or f"array{index}", max_pixels=max_pixels)
    if isinstance(src, PIL.Image.Image):
        return _from_pil(
            src,
            name=name or f"image{index}",
            source="<PIL.Image>",
            what="the given PIL image",
            max_pixels=max_pixels,
        )
    if isinstance(src, (str, os.PathLike)):
        return _from_path(src, name=name, max_pixels=max_pixels)
    raise _unsupported_type(src)


def _unsupported_type(src: object) -> BadImage:
    return BadImage(
        f"cannot read an image from a {type(src).__name__}; pass a file path, a "
        f"PIL.Image.Image or a numpy array shaped {_ARRAY_SHAPES} "
        "(for a torch tensor (C, H, W): tensor.permute(1, 2, 0).cpu().numpy())"
    )


def _check_max_pixels_argument(max_pixels: object) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise BadArgument(f"max_pixels must be a positive integer, not {max_pixels!r}")
    if max_pixels < 1:
        raise BadArgument(f"max_pixels must be a positive integer, not {max_pixels}")


def _too_large(what: str, pixels: int | None, size: tuple[int, int] | None, limit: int) -> BadImage:
    if size is not None:
        amount = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
    elif pixels is not None:
        amount = f"{pixels:,} pixels"
    else:
        amount = "too many pixels"
    return BadImage(
        f"{what} is {amount}, more than the limit of {limit:,} (a guard against "
        "decompression bombs and running out of memory); if you trust this image, raise "
        "the limit with max_pixels= (CLI: --max-pixels)"
    )


@contextmanager
def _pil_guard(max_pixels: int) -> Iterator[None]:
    """Make PIL enforce ``max_pixels`` exactly, with its warning as an error.

    PIL warns above ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 M by default) and
    refuses above twice that; both must follow ``max_pixels`` or a user who
    raised the limit would still be refused.
    """
    with _PIL_GLOBALS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        saved = PIL.Image.MAX_IMAGE_PIXELS
        PIL.Image.MAX_IMAGE_PIXELS = int(max_pixels)
        try:
            yield
        finally:
            PIL.Image.MAX_IMAGE_PIXELS = saved


def _corrupt(what: str, error: Exception) -> BadImage:
    return BadImage(
        f"{what} is truncated or corrupt ({type(error).__name__}: {error}); check that it "
        "opens in an image viewer, and download or export it again"
    )


def _bomb_pixels(error: Exception) -> int | None:
    match = re.search(r"\((\d+) pixels\)", str(error))
    return int(match.group(1)) if match else None


def _is_pil_open(func: Any) -> bool:
    return getattr(func, "__module__", None) == "PIL.Image" and getattr(func, "__name__", None) == "open"


def _find_pil_open() -> Callable[..., PIL.Image.Image] | None:
    """PIL's own ``Image.open``, also when another package has replaced it.

    Ultralytics replaces ``PIL.Image.open`` on import with a wrapper that, when
    PIL cannot identify a file, tries to pip-install ``pi-heif``, then raises
    ``ModuleNotFoundError`` when it cannot: a text file would then be called
    corrupt (and opening it would try the network). Such a wrapper keeps the
    original, in ``__wrapped__`` or among its module's globals.
    """
    func: Any = PIL.Image.open
    for _ in range(8):
        if _is_pil_open(func):
            return func  # type: ignore[no-any-return]
        inner = getattr(func, "__wrapped__", None)
        if inner is None:
            inner = next((v for v in getattr(func, "__globals__", {}).values() if _is_pil_open(v)), None)
        if inner is None:
            return None
        func = inner
    return None


#: Found at import (convlens is usually imported before a package that replaces it).
_PIL_OPEN = _find_pil_open()


def _open_pil(fp: Path | io.BytesIO, what: str, max_pixels: int,
              unreadable: Callable[[], str]) -> PIL.Image.Image:
    """``PIL.Image.open`` under the pixel limit, every failure as one :class:`BadImage`.

    Args:
        fp: a file path or the bytes of an encoded file.
        what: the image as messages name it (its path, or e.g. ``train.parquet#17``).
        max_pixels: the pixel limit, checked from the header before decoding.
        unreadable: the message when PIL does not recognise the format (built only then).
    """
    pil_open = _PIL_OPEN or _find_pil_open() or PIL.Image.open
    try:
        with _pil_guard(max_pixels):
            return pil_open(fp)
    except PIL.UnidentifiedImageError:
        raise BadImage(unreadable()) from None
    except ImportError:
        # a third-party format plugin registered with PIL whose module is missing: the file is in
        # none of the formats that can be read here
        raise BadImage(unreadable()) from None
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise _too_large(what, _bomb_pixels(error), None, max_pixels) from error
    except PermissionError:
        raise BadImage(f"cannot read {what}: permission denied; check the file's permissions") from None
    except MemoryError:
        raise
    except Exception as error:  # a damaged header: PIL raises OSError, ValueError, EOFError...
        raise _corrupt(what, error) from error


def _from_path(src: str | os.PathLike[str], *, name: str | None, max_pixels: int) -> Image:
    path = Path(os.fspath(src)).expanduser()
    if not path.exists():
        hint = "" if path.is_absolute() else f" (relative paths start from {Path.cwd()})"
        raise BadImage(f"image not found: {path}; check the path{hint}")
    if path.is_dir():
        raise BadImage(
            f"{path} is a directory, not an image; give the path of an image file inside it"
        )
    if not path.is_file():
        raise BadImage(f"{path} is not a regular file; give the path of an image file")
    opened = _open_pil(
        path, str(path), max_pixels,
        lambda: f"{path} is not an image PIL can read{_sniff(path)}; use a common image format "
                f"such as {_COMMON_FORMATS}",
    )
    with opened:
        return _from_pil(
            opened,
            name=name or path.stem,
            source=str(path),
            what=str(path),
            max_pixels=max_pixels,
        )


def _sniff(path: Path) -> str:
    """A hint of what a file that PIL cannot read is, from its first bytes."""
    try:
        with path.open("rb") as file:
            head = file.read(512)
    except OSError:
        return ""
    return _sniff_head(head)


def _sniff_head(head: bytes) -> str:
    """A hint of what bytes that PIL cannot read are, from the first 512 of them."""
    if not head:
        return " (the file is empty)"
    if head.startswith(b"PK\x03\x04"):
        return " (it is a zip archive, like a .keras or .pt model file)"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return " (it is an HDF5 file, like a .h5 model file)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A cut in the middle of a multi-byte character still counts as text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return ""
    if all(char.isprintable() or char in "\t\r\n" for char in text):
        return " (it is a text file)"
    return ""


def load_image_bytes(
    data: bytes | bytearray | memoryview,
    *,
    name: str,
    source: str | None = None,
    max_pixels: int | None = None,
) -> Image:
    """Load one image from the bytes of an encoded file (PNG, JPEG...), e.g. a Parquet cell.

    The same rules, limits and errors as :func:`load_image` for a path: the
    pixel limit is checked from the header before decoding, truncated or
    corrupt data fails now, the EXIF orientation is applied.

    Args:
        data: the encoded file's bytes.
        name: the image's name (see :attr:`Image.name`), also used in messages.
        source: what :attr:`Image.source` records, e.g. ``"train.parquet#17"``;
            default ``name``.
        max_pixels: as for :func:`load_image`.

    Raises:
        BadImage: the bytes are empty, not an image PIL can read, truncated or
            corrupt, or larger than ``max_pixels``.
        BadArgument: ``name`` or ``max_pixels`` is not usable.
    """
    if not isinstance(name, str) or not name.strip():
        raise BadArgument(f"name must be a non-empty string, not {name!r}")
    if max_pixels is None:
        max_pixels = MAX_PIXELS
    _check_max_pixels_argument(max_pixels)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadImage(f"{name}: expected the bytes of an image file, got a {type(data).__name__}")
    raw = bytes(data)
    what = source or name
    if not raw:
        raise BadImage(f"{what} holds no bytes (an empty image); export the data set again")
    opened = _open_pil(
        io.BytesIO(raw), what, max_pixels,
        lambda: f"{what} is not an image PIL can read{_sniff_head(raw[:512])}; store images in a "
                f"common format such as {_COMMON_FORMATS}",
    )
    with opened:
        return _from_pil(opened, name=name, source=what, what=what, max_pixels=max_pixels)


def _from_pil(
    im: PIL.Image.Image, *, name: str, source: str, what: str, max_pixels: int
) -> Image:
    mode = im.mode
    try:
        with _pil_guard(max_pixels):
            if im.width * im.height > max_pixels:
                raise _too_large(what, None, im.size, max_pixels)
            im.load()
            orientation = _orientation(im)
            upright = PIL.ImageOps.exif_transpose(im)
            several_frames = bool(getattr(im, "is_animated", False))
    except BadImage:
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise _too_large(what, _bomb_pixels(error), im.size, max_pixels) from error
    except MemoryError:
        raise
    except Exception as error:  # PIL reports damage as OSError, SyntaxError, ValueError...
        raise _corrupt(what, error) from error

    label = Path(source).name if not source.startswith("<") else name
    notes: list[str] = []
    if orientation in _ORIENTATIONS:
        notes.append(
            f"rotated {label} by EXIF orientation {orientation} "
            f"({_ORIENTATIONS[orientation]} to stand upright)"
        )
    if several_frames:
        notes.append(f"used the first frame of {label}, which holds several frames")
    pixels = _pil_pixels(upright, label, notes)
    return Image(
        pixels=pixels,
        name=name,
        source=source,
        original_size=(upright.width, upright.height),
        mode=mode,
        notes=notes,
    )


def _orientation(im: PIL.Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value)
    except (TypeError, ValueError):
        return 1


def _pil_pixels(im: PIL.Image.Image, label: str, notes: list[str]) -> np.ndarray:
    """Pixels of a loaded, upright PIL image as ``(H, W, C)`` float32 0..255."""
    mode = im.mode
    if mode in ("RGBa", "La"):  # premultiplied alpha
        im = im.convert(mode.upper())
        mode = im.mode
    has_key = "transparency" in im.info  # colour-key transparency (PNG tRNS, GIF)
    if mode == "P" and (has_key or (im.palette is not None and im.palette.mode == "RGBA")):
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "P":
        im, mode = im.convert("RGB"), "RGB"
    elif mode in ("L", "RGB") and has_key:
        im = im.convert(mode + "A")
        mode = im.mode

    if mode == "1":
        return _contiguous(np.asarray(im.convert("L"), dtype=np.float32)[..., None])
    if mode in ("L", "RGB"):
        data = np.asarray(im, dtype=np.float32)
        return _contiguous(data[..., None] if data.ndim == 2 else data)
    if mode in ("LA", "RGBA"):
        data = np.asarray(im, dtype=np.float32)
        return _composite_on_white(data[..., :-1], data[..., -1], label, notes)
    if mode in _SIXTEEN_BIT_MODES:
        return _contiguous((np.asarray(im).astype(np.float32) / 257.0)[..., None])
    if mode == "I":
        return _int_image(np.asarray(im), label, notes)[..., None]
    if mode == "F":
        return _float_image(np.asarray(im), label, notes)[..., None]
    # CMYK, YCbCr, LAB, HSV, RGBX, ...: PIL's own conversion, without colour management.
    notes.append(f"converted {label} from {mode} to RGB")
    return _contiguous(np.asarray(im.convert("RGB"), dtype=np.float32))


def _contiguous(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _composite_on_white(
    color: np.ndarray, alpha: np.ndarray, label: str, notes: list[str]
) -> np.ndarray:
    """``color`` (H, W, C) over white with ``alpha`` (H, W), both float32 0..255.

    Computed as ``(c * a + 255 * (255 - a)) / 255``: for 8-bit inputs the
    numerator is an exact float32 integer, so results are correctly rounded.
    """
    if np.all(alpha >= 255):
        return _contiguous(color)
    notes.append(f"composited the transparent parts of {label} on white")
    a = alpha[..., None]
    return _contiguous((color * a + 255.0 * (255.0 - a)) / 255.0)


def _int_image(data: np.ndarray, label: str, notes: list[str]) -> np.ndarray:
    """A 32-bit integer PIL image (mode ``I``) to float32 0..255.

    0..255 stays as is; 0..65535 is 16-bit data (older Pillows and some TIFFs
    store 16-bit images this way) and is scaled exactly like ``I;16``;
    anything else is stretched from its own minimum and maximum.
    """
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo >= 0 and hi <= 255:
        return _contiguous(data)
    if lo >= 0 and hi <= 65535:
        notes.append(f"scaled {label} from 16-bit (0..65535) to 0..255")
        return _contiguous(data.astype(np.float32) / 257.0)
    notes.append(f"stretched {label} from its range [{lo}, {hi}] to 0..255")
    return _stretch(data.astype(np.float64), lo, hi)


def _float_image(data: np.ndarray, label: str, notes: list[str]) -> np.ndarray:
    """A float PIL image (mode ``F``) to float32 0..255.

    The same rule as float arrays (0..1 is scaled by 255, 0..255 kept), so an
    array saved as a float TIFF loads as the array did; other ranges are
    stretched from their minimum and maximum, since a file cannot be fixed by
    the caller as easily as an array.
    """
    if not np.all(np.isfinite(data)):
        raise BadImage(
            f"{label} contains NaN or infinite values; export it again with finite pixel values"
        )
    scaled, note = _scale_float(data.astype(np.float32), label)
    if scaled is not None:
        if note:
            notes.append(note)
        return scaled
    lo, hi = float(data.min()), float(data.max())
    notes.append(f"stretched {label} from its range [{lo:g}, {hi:g}] to 0..255")
    return _stretch(data.astype(np.float64), lo, hi)


def _stretch(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.float32)
    return _contiguous((data - lo) * (255.0 / (hi - lo)))


def _scale_float(x: np.ndarray, label: str) -> tuple[np.ndarray | None, str | None]:
    """Float32 pixels to 0..255, or ``(None, None)`` when they fit neither 0..1 nor 0..255.

    Up to half a grey level outside the range is rounding noise and is clipped.
    """
    if x.size == 0:
        return _contiguous(x), None
    note = None
    if float(x.max()) <= 1.0:
        x = x * np.float32(255.0)
        note = f"scaled {label} from 0..1 to 0..255 (its maximum is at most 1.0)"
    if float(x.min()) < -0.5 or float(x.max()) > 255.5:
        return None, None
    return _contiguous(np.clip(x, 0.0, 255.0)), note


def _from_array(src: np.ndarray, *, name: str, max_pixels: int) -> Image:
    notes: list[str] = []
    a = src
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
        notes.append(f"took the only image of a batch of one shaped {src.shape}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or 0 in a.shape:
        raise BadImage(_bad_shape_message(src.shape))
    height, width = int(a.shape[0]), int(a.shape[1])
    if height * width > max_pixels:
        raise _too_large(f"the array {name}", None, (width, height), max_pixels)

    x = _array_values(a, name, notes)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[a.shape[-1]]
    if a.shape[-1] == 4:
        x = _composite_on_white(x[..., :3], x[..., 3], name, notes)
    return Image(
        pixels=_contiguous(x),
        name=name,
        source="<array>",
        original_size=(width, height),
        mode=mode,
        notes=notes,
    )


def _bad_shape_message(shape: tuple[int, ...]) -> str:
    message = f"an image array must be shaped {_ARRAY_SHAPES}, not {shape}"
    if len(shape) == 4 and shape[0] > 1:
        return message + (
            f"; this is a batch of {shape[0]} images: pass them as a list, "
            "load_images(list(batch))"
        )
    if 0 in shape:
        return message + "; the array is empty"
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return message + (
            "; it looks channels-first (C, H, W): pass np.moveaxis(array, 0, -1)"
        )
    if len(shape) == 4 and shape[0] == 1 and shape[1] in (1, 3, 4):
        return message + (
            "; it looks channels-first (1, C, H, W): pass np.moveaxis(array[0], 0, -1)"
        )
    return message + "; the last axis must hold 1 (gray), 3 (RGB) or 4 (RGBA) channels"


def _array_values(a: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Array values as float32 0..255 (see :func:`load_image` for the rules)."""
    kind = a.dtype.kind
    if a.dtype == np.bool_:
        return a.astype(np.float32) * np.float32(255.0)
    if a.dtype == np.uint8:
        return a.astype(np.float32)
    if a.dtype == np.uint16:
        notes.append(f"scaled {name} from 16-bit (0..65535) to 0..255")
        return a.astype(np.float32) / np.float32(257.0)
    if kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise BadImage(
                f"the {a.dtype} array {name} holds values from {lo} to {hi}; pass pixels as "
                "uint8 (0..255), uint16 (16-bit) or float (0..1 or 0..255)"
            )
        return a.astype(np.float32)
    if kind == "f":
        x = a.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise BadImage(
                f"the array {name} contains NaN or infinite values; pass finite pixel values"
            )
        scaled, note = _scale_float(x, name)
        if scaled is None:
            raise BadImage(
                f"the float array {name} holds values from {float(x.min()):g} to "
                f"{float(x.max()):g}; pass pixels in 0..1 or 0..255 (if the array is already "
                "preprocessed, pass the original image and choose preprocess= instead)"
            )
        if note:
            notes.append(note)
        return scaled
    raise BadImage(
        f"the array {name} has dtype {a.dtype}; pass pixels as uint8 (0..255), uint16 "
        "(16-bit) or float (0..1 or 0..255)"
    )


def _unique_names(names: list[str]) -> list[str]:
    """``cat, cat, Cat`` -> ``cat, cat-2, Cat-3``; case-insensitive, never stealing a given name."""
    given = {n.lower() for n in names}
    used: set[str] = set()
    out = []
    for n in names:
        candidate, k = n, 2
        while candidate.lower() in used:
            candidate = f"{n}-{k}"
            k += 1
            while candidate.lower() in given and candidate.lower() not in used:
                # Leave this name to the input that has it on its own.
                candidate = f"{n}-{k}"
                k += 1
        used.add(candidate.lower())
        out.append(candidate)
    return out
