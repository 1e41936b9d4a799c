"""Properties of convlens.images: any image PIL can hold, any array, any preparation.

The oracle for a decoded picture is written here in numpy from the rules in
:func:`convlens.images.load_image`'s documentation (gray modes stay one
channel, palettes expand, transparency is composited on white, 16-bit data is
divided by 257, float data in 0..1 is multiplied by 255...), and EXIF
orientations are undone with numpy flips and transposes, not with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convlens._errors import BadArgument, BadImage
from convlens.images import PRESETS, Image, load_image, prepare

# EXIF orientation -> what makes the stored pixels upright (numpy, (H, W, C)).
UPRIGHT = {
    1: lambda x: x,
    2: lambda x: x[:, ::-1],
    3: lambda x: x[::-1, ::-1],
    4: lambda x: x[::-1],
    5: lambda x: x.transpose(1, 0, 2),
    6: lambda x: np.rot90(x, -1),
    7: lambda x: np.rot90(x, 2).transpose(1, 0, 2),
    8: lambda x: np.rot90(x, 1),
}

# Modes the loader documents, and the formats that store each one without loss
# ("memory" hands the PIL image over without a file).
LOSSLESS = {
    "1": ("PNG", "TIFF", "BMP", "memory"),
    "L": ("PNG", "TIFF", "BMP", "GIF", "memory"),
    "LA": ("PNG", "TIFF", "memory"),
    "P": ("PNG", "TIFF", "GIF", "memory"),
    "PA": ("TIFF", "memory"),
    "RGB": ("PNG", "TIFF", "BMP", "WEBP", "memory"),
    "RGBA": ("PNG", "TIFF", "WEBP", "memory"),
    "I;16": ("PNG", "TIFF", "memory"),
    "I;16B": ("memory",),
    "I": ("TIFF", "memory"),
    "F": ("TIFF", "memory"),
    "CMYK": ("TIFF", "memory"),
    "YCbCr": ("TIFF", "memory"),
    "LAB": ("TIFF", "memory"),
    "HSV": ("memory",),
    "RGBX": ("memory",),
    "La": ("memory",),
    "RGBa": ("memory",),
}
# Lossy encodings: only the invariants are checked, not the values.
LOSSY = {"L": ("JPEG",), "RGB": ("JPEG", "WEBP-lossy"), "CMYK": ("JPEG",)}
EXIF_FORMATS = ("memory", "PNG", "JPEG", "WEBP", "WEBP-lossy")
GRAY_MODES = {"1", "L", "LA", "La", "I;16", "I;16B", "I", "F"}
BANDS = {
    "LA": 2,
    "La": 2,
    "PA": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
}

sides = st.integers(1, 20)
_F32_BIG = float(np.float32(1e30))


def _u8(draw, shape):
    return draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))


@st.composite
def pil_images(draw, modes=tuple(LOSSLESS)) -> PIL.Image.Image:
    """A PIL image of any documented mode, 1x1 and up, values anywhere in the mode's range."""
    mode = draw(st.sampled_from(modes))
    h, w = draw(sides), draw(sides)
    if mode == "1":
        return PIL.Image.fromarray(draw(hnp.arrays(np.bool_, (h, w))))
    if mode in ("L", "P"):
        im = PIL.Image.frombytes("L", (w, h), _u8(draw, (h, w)).tobytes())
        if mode == "P":
            im = im.convert("P")  # keeps the indices, gives a grey palette to replace
            entries = draw(st.integers(1, 256))
            im.putdata([int(v) % entries for v in np.asarray(im).ravel()])
            kind = draw(st.sampled_from(["opaque", "key", "alpha"]))
            if kind == "alpha":
                im.putpalette(_u8(draw, (entries * 4,)).tobytes(), "RGBA")
            else:
                im.putpalette(_u8(draw, (entries * 3,)).tobytes(), "RGB")
                if kind == "key":
                    im.info["transparency"] = draw(st.integers(0, entries - 1))
        return im
    if mode in ("I;16", "I;16B"):
        data = draw(hnp.arrays(np.uint16, (h, w), elements=st.integers(0, 65535)))
        return PIL.Image.frombytes(
            mode, (w, h), data.astype("<u2" if mode == "I;16" else ">u2").tobytes()
        )
    if mode == "I":
        top = draw(st.sampled_from([255, 65535, 2**31 - 1]))
        low = draw(st.sampled_from([0, -(2**31)]))
        data = draw(hnp.arrays(np.int32, (h, w), elements=st.integers(low, top)))
        return PIL.Image.frombytes("I", (w, h), data.tobytes())
    if mode == "F":
        scale = draw(
            st.sampled_from([(0.0, 1.0), (0.0, 255.0), (-_F32_BIG, _F32_BIG), (-3.0, 300.0)])
        )
        data = draw(
            hnp.arrays(
                np.float32,
                (h, w),
                elements=st.floats(*scale, allow_nan=False, allow_infinity=False, width=32),
            )
        )
        return PIL.Image.frombytes("F", (w, h), data.tobytes())
    if mode == "PA":
        rgba = PIL.Image.frombytes("RGBA", (w, h), _u8(draw, (h, w, 4)).tobytes())
        return rgba.convert("PA")
    return PIL.Image.frombytes(mode, (w, h), _u8(draw, (h, w, BANDS[mode])).tobytes())


def _encode(im: PIL.Image.Image, fmt: str, orientation: int, tmp: Path) -> Path | PIL.Image.Image:
    """``im`` saved as ``fmt`` with an EXIF orientation (or ``im`` itself for ``memory``)."""
    exif = PIL.Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    if fmt == "memory":
        im = im.copy()
        if orientation != 1:
            im.getexif()[0x0112] = orientation
        return im
    kwargs: dict = {"exif": exif} if fmt in EXIF_FORMATS and orientation != 1 else {}
    suffix = fmt.split("-")[0].lower()
    if fmt == "WEBP":
        kwargs["lossless"] = True
    path = tmp / f"image.{suffix}"
    if "transparency" in im.info and fmt in ("PNG", "GIF", "TIFF"):
        kwargs["transparency"] = im.info["transparency"]
    im.save(path, fmt.split("-")[0], **kwargs)
    return path


def _composite(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None]
    return (color.astype(np.float64) * a + 255.0 * (255.0 - a)) / 255.0


def expected_pixels(im: PIL.Image.Image) -> np.ndarray:
    """The documented result of loading ``im`` (decoded, not yet upright): (H, W, C) float64."""
    mode = im.mode
    if mode in ("La", "RGBa"):
        im, mode = im.convert(mode.upper()), mode.upper()
    if mode == "P":
        pal = im.palette
        indices = np.asarray(im)
        raw = np.frombuffer(pal.tobytes(), np.uint8)
        bands = 4 if pal.mode == "RGBA" else 3
        table = np.zeros((256, bands), np.uint8)
        table[: len(raw) // bands] = raw[: len(raw) // bands * bands].reshape(-1, bands)
        colors = table[indices]
        if bands == 4:
            return _composite(colors[..., :3], colors[..., 3])
        key = im.info.get("transparency")
        if isinstance(key, bytes):  # PNG tRNS: one alpha byte per palette entry, 255 after them
            alphas = np.full(256, 255, np.uint8)
            alphas[: len(key)] = np.frombuffer(key, np.uint8)[:256]
            return _composite(colors, alphas[indices])
        if key is not None:  # one fully transparent entry
            return _composite(colors, np.where(indices == key, 0, 255))
        return colors.astype(np.float64)
    if mode == "PA":
        return expected_pixels(im.convert("RGBA"))
    a = np.asarray(im)
    if mode == "1":
        return np.where(a, 255.0, 0.0)[..., None]
    if mode in ("L", "RGB") and "transparency" in im.info:
        return expected_pixels(im.convert(mode + "A"))
    if mode == "L":
        return a.astype(np.float64)[..., None]
    if mode == "RGB":
        return a.astype(np.float64)
    if mode in ("LA", "RGBA"):
        out = _composite(a[..., :-1], a[..., -1])
        return out
    if mode.startswith("I;16"):
        return (a.astype(np.float64) / 257.0)[..., None]
    if mode in ("I", "F"):
        x = a.astype(np.float64)
        lo, hi = x.min(), x.max()
        if mode == "I" and lo >= 0 and hi <= 255:
            return x[..., None]
        if mode == "I" and lo >= 0 and hi <= 65535:
            return (x / 257.0)[..., None]
        if mode == "F":
            y = x * 255.0 if hi <= 1.0 else x
            if y.min() >= -0.5 and y.max() <= 255.5:
                return np.clip(y, 0, 255)[..., None]
        return ((x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x))[..., None]
    return np.asarray(im.convert("RGB")).astype(np.float64)


def check_image(loaded: Image, channels: int) -> None:
    """What every loaded image is: (H, W, C) float32 0..255, C-contiguous, C 1 or 3."""
    px = loaded.pixels
    assert px.dtype == np.float32 and px.ndim == 3 and px.flags.c_contiguous
    assert px.shape[2] == channels
    assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 255.0
    assert loaded.original_size == (px.shape[1], px.shape[0])
    assert all(isinstance(note, str) and note for note in loaded.notes)


def _load_and_check(im: PIL.Image.Image, fmt: str, orientation: int, tmp: Path) -> None:
    """Save ``im`` as ``fmt`` with ``orientation``, load it, compare with the documented result."""
    src = _encode(im, fmt, orientation, tmp)
    if isinstance(src, Path):
        with PIL.Image.open(src) as decoded:
            decoded.load()
            truth, mode = expected_pixels(decoded), decoded.mode
            stored_orientation = decoded.getexif().get(0x0112, 1)
    else:
        truth, mode, stored_orientation = expected_pixels(src), src.mode, orientation
    assert stored_orientation == orientation  # the format kept what the test wrote
    truth = np.ascontiguousarray(UPRIGHT[orientation](truth))

    loaded = load_image(src)

    check_image(loaded, truth.shape[2])
    assert (loaded.channels == 1) == (mode in GRAY_MODES)
    np.testing.assert_allclose(loaded.pixels, truth, rtol=0, atol=2e-3 * max(1.0, truth.max()))
    rotated = any("EXIF orientation" in note for note in loaded.notes)
    assert rotated == (orientation != 1)


@pytest.mark.parametrize("mode,fmt", [(m, f) for m, formats in LOSSLESS.items() for f in formats])
@settings(max_examples=8)
@given(data=st.data())
def test_any_mode_in_any_lossless_format_loads_as_documented(tmp_path_factory, mode, fmt, data):
    im = data.draw(pil_images(modes=(mode,)), label="image")
    _load_and_check(im, fmt, 1, tmp_path_factory.mktemp("img"))


@pytest.mark.parametrize("orientation", range(1, 9))
@settings(max_examples=10)
@given(
    im=pil_images(modes=("1", "L", "LA", "P", "RGB", "RGBA", "I;16")),
    fmt=st.sampled_from(["PNG", "memory", "WEBP"]),
)
@example(im=PIL.Image.new("1", (1, 1)), fmt="PNG")
@example(im=PIL.Image.new("RGB", (1, 2)), fmt="memory")
def test_every_exif_orientation_is_undone(tmp_path_factory, orientation, im, fmt):
    if fmt == "WEBP":  # WebP holds colour only: take the RGB(A) version of the picture
        im = im.convert("RGBA" if im.mode in ("LA", "RGBA") or "transparency" in im.info else "RGB")
    _load_and_check(im, fmt, orientation, tmp_path_factory.mktemp("img"))


@pytest.mark.parametrize("mode,fmt", [(m, f) for m, formats in LOSSY.items() for f in formats])
@settings(max_examples=10)
@given(im_data=st.data(), orientation=st.integers(1, 8))
def test_lossy_files_load_upright(tmp_path_factory, mode, fmt, im_data, orientation):
    im = im_data.draw(pil_images(modes=(mode,)), label="image")
    src = _encode(im, fmt, orientation, tmp_path_factory.mktemp("img"))
    loaded = load_image(src)
    h, w = (im.height, im.width) if orientation < 5 else (im.width, im.height)
    assert loaded.pixels.shape[:2] == (h, w)
    check_image(loaded, 1 if (mode == "L" and fmt == "JPEG") else 3)
    assert any("EXIF orientation" in note for note in loaded.notes) == (orientation != 1)


@st.composite
def animations(draw):
    fmt = draw(st.sampled_from(["GIF", "PNG", "WEBP"]))
    n = draw(st.integers(2, 4))
    h, w = draw(sides), draw(sides)
    mode = {"GIF": "P", "PNG": draw(st.sampled_from(["RGB", "RGBA"])), "WEBP": "RGBA"}[fmt]
    frames = []
    for k in range(n):
        pixels = _u8(draw, (h, w, 3 if mode == "P" else len(mode)))
        pixels.flat[0] = k * 60  # frames differ, so no encoder merges them
        frame = PIL.Image.frombytes("RGB" if mode == "P" else mode, (w, h), pixels.tobytes())
        frames.append(frame.quantize(colors=16) if mode == "P" else frame)
    return fmt, frames


@settings(max_examples=30)
@given(anim=animations())
def test_animations_use_their_first_frame(tmp_path_factory, anim):
    fmt, frames = anim
    path = tmp_path_factory.mktemp("anim") / f"a.{fmt.lower()}"
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, **extra)
    with PIL.Image.open(path) as decoded:
        several = getattr(decoded, "n_frames", 1) > 1
        decoded.seek(0)
        decoded.load()
        truth = expected_pixels(decoded)
    loaded = load_image(path)
    check_image(loaded, 3)
    np.testing.assert_allclose(loaded.pixels, truth, rtol=0, atol=2e-3 * 255)
    assert several == any("first frame" in note for note in loaded.notes)


# --------------------------------------------------------------------------- arrays

DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
]


@st.composite
def any_arrays(draw):
    """Arrays of any dtype and of shapes that make sense, and of some that do not."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    shape = draw(
        st.sampled_from(
            [
                (h, w),
                (h, w, 1),
                (h, w, 3),
                (h, w, 4),
                (1, h, w, 3),
                (1, h, w, 1),  # images
                (3, h, w),
                (2, h, w, 3),
                (h, w, 2),
                (h,),
                (1, 1, h, w, 3),
                (0, w, 3),
                (h, 0),
            ]
        )
    )  # not images
    if dtype.kind == "f":
        elements = draw(
            st.sampled_from(
                [
                    st.floats(0, 1, width=min(dtype.itemsize * 8, 64)),
                    st.floats(0, 255, width=min(dtype.itemsize * 8, 64)),
                    st.floats(width=min(dtype.itemsize * 8, 64)),  # NaN, inf, huge, denormals
                ]
            )
        )
        return draw(hnp.arrays(dtype, shape, elements=elements))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        top = draw(st.sampled_from([min(255, int(info.max)), int(info.max)]))
        return draw(
            hnp.arrays(
                dtype,
                shape,
                elements=st.integers(max(int(info.min), -5) if top == 255 else int(info.min), top),
            )
        )
    return draw(hnp.arrays(dtype, shape))


def expected_array(a: np.ndarray) -> np.ndarray | None:
    """The documented (H, W, C) result for an array, or None when it must be refused."""
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or 0 in a.shape:
        return None
    if a.dtype == np.bool_:
        x = a * 255.0
    elif a.dtype == np.uint8:
        x = a.astype(np.float64)
    elif a.dtype == np.uint16:
        x = a / 257.0
    elif a.dtype.kind in "iu":
        if a.min() < 0 or a.max() > 255:
            return None
        x = a.astype(np.float64)
    elif a.dtype.kind == "f":
        x = a.astype(np.float32).astype(np.float64)  # what float32 can hold
        if not np.isfinite(x).all():
            return None
        if x.max() <= 1.0:
            x = x * 255.0
        if x.min() < -0.5 or x.max() > 255.5:
            return None
        x = np.clip(x, 0, 255)
    else:
        return None
    if x.shape[-1] == 4:
        x = _composite(x[..., :3], x[..., 3])
    return x


@settings(max_examples=200)
@given(a=any_arrays())
@example(a=np.full((2, 2, 3), 0.5, np.float16))
@example(a=np.array([[np.nan]], np.float64))
@example(a=np.zeros((3, 5, 7), np.uint8))
def test_any_array_loads_as_documented_or_is_refused(a):
    before = a.copy()
    truth = expected_array(a)
    if truth is None:
        with pytest.raises(BadImage):
            load_image(a)
    else:
        loaded = load_image(a)
        check_image(loaded, 1 if truth.shape[-1] == 1 else 3)
        np.testing.assert_allclose(loaded.pixels, truth, rtol=1e-6, atol=1e-3)
        assert not np.shares_memory(loaded.pixels, a)
    np.testing.assert_array_equal(a, before)  # never modified


# --------------------------------------------------------------------------- prepare

# The range of each preset for pixels in 0..255, per channel (RGB order of the input).
PRESET_RANGE = {
    "unit": (0.0, 1.0),
    "tf": (-1.0, 1.0),
    "raw": (0.0, 255.0),
    "caffe": (-123.68, 255.0 - 103.939),
    "torch": ((0 - 0.485) / 0.229, (1 - 0.406) / 0.225),
}


@settings(max_examples=120)
@given(
    im=pil_images(modes=("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "F", "CMYK")),
    size=st.one_of(
        st.none(),
        st.tuples(
            st.one_of(st.none(), st.integers(1, 40)), st.one_of(st.none(), st.integers(1, 40))
        ),
    ),
    channels=st.sampled_from([None, 1, 3]),
    preset=st.sampled_from(sorted(PRESETS)),
)
@example(im=PIL.Image.new("L", (1, 1), 255), size=(40, 1), channels=3, preset="caffe")
def test_prepare_gives_the_asked_shape_in_the_presets_range(im, size, channels, preset):
    image = load_image(im)
    pixels_before = image.pixels.copy()
    out, notes = prepare(image, size=size, channels=channels, preprocess=preset)
    h = image.height if size is None or size[0] is None else size[0]
    w = image.width if size is None or size[1] is None else size[1]
    c = image.channels if channels is None else channels
    assert out.shape == (h, w, c) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.isfinite(out).all()
    lo, hi = PRESET_RANGE[preset]
    slack = 1e-3 * max(1.0, hi - lo)
    assert out.min() >= lo - slack and out.max() <= hi + slack
    assert not np.shares_memory(out, image.pixels)
    np.testing.assert_array_equal(image.pixels, pixels_before)
    assert all(isinstance(n, str) for n in notes)
    assert any(n.startswith("resized") for n in notes) == ((h, w) != (image.height, image.width))


@settings(max_examples=60)
@given(
    size=st.one_of(
        st.integers(-3, 0),
        st.floats(allow_nan=True),
        st.text(max_size=3),
        st.tuples(st.integers(-2, 3), st.integers(-2, 3)),
        st.lists(st.integers(1, 3), max_size=4),
        st.booleans(),
    ),
    channels=st.one_of(st.integers(-1, 5), st.booleans(), st.text(max_size=2)),
    preset=st.one_of(st.sampled_from(sorted(PRESETS)), st.text(max_size=6)),
)
def test_prepare_refuses_bad_arguments_with_its_own_error(size, channels, preset):
    image = load_image(np.zeros((3, 4, 3), np.uint8))
    try:
        out, _ = prepare(image, size=size, channels=channels, preprocess=preset)
    except BadArgument:
        return
    # accepted: then every argument was a usable one
    assert preset in PRESETS and channels in (None, 1, 3) and not isinstance(channels, bool)
    assert out.ndim == 3 and out.shape[2] == channels


def test_a_one_pixel_png_round_trips(tmp_path):
    path = tmp_path / "one.png"
    PIL.Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    loaded = load_image(path)
    assert loaded.pixels.tolist() == [[[10.0, 20.0, 30.0]]]
    out, _ = prepare(loaded, size=(2, 3), channels=None, preprocess="raw")
    np.testing.assert_allclose(out, np.broadcast_to([10.0, 20.0, 30.0], (2, 3, 3)), atol=1e-4)
