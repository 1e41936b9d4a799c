"""Tests of convlens.images: loading, orientation, modes, guards, presets, prepare.

Every test image is built on the fly with PIL in ``tmp_path``, with pixel
values chosen so that the expected results are exact numbers.
"""

from __future__ import annotations

import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest

import convlens
from convlens import images
from convlens._errors import BadArgument, BadImage, ConvlensError
from convlens.images import (
    MAX_PIXELS,
    PRESETS,
    Image,
    apply_preset,
    load_image,
    load_images,
    prepare,
)

DATA = Path(convlens.__file__).parent / "data"


def raises(error_type: type[Exception], *phrases: str):
    """``pytest.raises`` that also checks the message says what to do (``phrases``)."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(error_type)
            self._info = self._ctx.__enter__()
            return self._info

        def __exit__(self, *exc):
            suppressed = self._ctx.__exit__(*exc)
            assert isinstance(self._info.value, ConvlensError)
            message = str(self._info.value)
            for phrase in phrases:
                assert phrase in message, f"{phrase!r} not in {message!r}"
            return suppressed

    return _Check()


def save(tmp_path: Path, filename: str, im: PIL.Image.Image, **params) -> Path:
    path = tmp_path / filename
    im.save(path, **params)
    return path


def rgb_array() -> np.ndarray:
    """A 2x3 RGB image with distinct values: shape (2, 3, 3) uint8."""
    return np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 14


def png_bytes(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG that is only a signature, an IHDR saying ``width`` x ``height``, and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- files and modes


def test_rgb_png_loads_exactly(tmp_path):
    path = save(tmp_path, "cat.png", PIL.Image.fromarray(rgb_array()))
    image = load_image(path)
    assert isinstance(image, Image)
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(image.pixels, rgb_array().astype(np.float32))
    assert image.name == "cat"
    assert image.source == str(path)
    assert image.original_size == (3, 2)
    assert image.mode == "RGB"
    assert image.notes == []


def test_path_given_as_str_and_name_overrides_stem(tmp_path):
    path = save(tmp_path, "cat.png", PIL.Image.fromarray(rgb_array()))
    image = load_image(str(path), name="kitty")
    assert image.name == "kitty"
    assert image.source == str(path)


def test_grayscale_stays_one_channel(tmp_path):
    gray = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.uint8)
    image = load_image(save(tmp_path, "g.png", PIL.Image.fromarray(gray)))
    assert image.mode == "L"
    assert image.pixels.shape == (2, 3, 1)
    np.testing.assert_array_equal(image.pixels[..., 0], gray.astype(np.float32))


def test_one_bit_image_becomes_0_and_255(tmp_path):
    im = PIL.Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    image = load_image(save(tmp_path, "bits.png", im))
    assert image.mode == "1"
    np.testing.assert_array_equal(image.pixels[..., 0], [[0.0, 255.0]])


def test_rgba_is_composited_on_white_exactly(tmp_path):
    rgba = np.array(
        [[[255, 0, 0, 0], [0, 0, 0, 128], [200, 100, 0, 51], [10, 20, 30, 255]]], dtype=np.uint8
    )
    image = load_image(save(tmp_path, "t.png", PIL.Image.fromarray(rgba)))
    assert image.mode == "RGBA"
    assert image.pixels.shape == (1, 4, 3)
    # (c * a + 255 * (255 - a)) / 255: 255*127/255 = 127; 200*51/255 + 204 = 244; ...
    expected = [[[255, 255, 255], [127, 127, 127], [244, 224, 204], [10, 20, 30]]]
    np.testing.assert_array_equal(image.pixels, np.array(expected, dtype=np.float32))
    assert any("on white" in note for note in image.notes)


def test_opaque_rgba_has_no_transparency_note(tmp_path):
    rgba = np.full((2, 2, 4), 255, dtype=np.uint8)
    rgba[..., 0] = 7
    image = load_image(save(tmp_path, "o.png", PIL.Image.fromarray(rgba)))
    np.testing.assert_array_equal(image.pixels[..., 0], 7.0)
    assert image.notes == []


def test_gray_with_alpha_is_composited_and_stays_gray(tmp_path):
    la = PIL.Image.fromarray(np.array([[[0, 0], [0, 255], [100, 51]]], dtype=np.uint8), "LA")
    image = load_image(save(tmp_path, "la.png", la))
    assert image.mode == "LA"
    np.testing.assert_array_equal(image.pixels[..., 0], [[255.0, 0.0, 224.0]])


def test_palette_without_transparency_expands_to_rgb(tmp_path):
    im = PIL.Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 150, 100] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 1)
    im.putpixel((1, 0), 0)
    image = load_image(save(tmp_path, "p.png", im))
    assert image.mode == "P"
    np.testing.assert_array_equal(image.pixels, [[[200, 150, 100], [10, 20, 30]]])


def test_palette_transparency_becomes_white(tmp_path):
    im = PIL.Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 150, 100] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 1)
    im.putpixel((1, 0), 0)
    image = load_image(save(tmp_path, "p.png", im, transparency=0))
    assert image.mode == "P"
    np.testing.assert_array_equal(image.pixels, [[[200, 150, 100], [255, 255, 255]]])
    assert any("on white" in note for note in image.notes)


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ([[10, 20]], 20, [[[10.0], [255.0]]]),
        ([[[10, 20, 30], [1, 2, 3]]], (1, 2, 3), [[[10.0, 20.0, 30.0], [255.0, 255.0, 255.0]]]),
    ],
)
def test_colour_key_transparency_becomes_white(tmp_path, data, key, expected):
    im = PIL.Image.fromarray(np.array(data, dtype=np.uint8))
    image = load_image(save(tmp_path, "key.png", im, transparency=key))
    assert image.mode == im.mode
    np.testing.assert_array_equal(image.pixels, np.float32(expected))


def test_16_bit_png_is_scaled_to_0_255_exactly(tmp_path):
    values = np.array([[0, 257, 65535, 1000]], dtype=np.uint16)
    path = save(tmp_path, "deep.png", PIL.Image.fromarray(values))
    image = load_image(path)
    assert image.mode == "I;16"
    assert image.pixels.shape == (1, 4, 1)
    expected = (values.astype(np.float64) * 255.0 / 65535.0).astype(np.float32)
    np.testing.assert_array_equal(image.pixels[..., 0], expected)
    assert image.pixels[0, 1, 0] == 1.0 and image.pixels[0, 2, 0] == 255.0


def test_16_bit_big_endian_pil_image():
    im = PIL.Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 65535, 514))
    image = load_image(im)
    assert image.mode == "I;16B"
    np.testing.assert_array_equal(image.pixels[..., 0], [[255.0, 2.0]])


@pytest.mark.parametrize(
    ("values", "expected", "noted"),
    [
        ([[0, 255]], [[0.0, 255.0]], False),  # 8-bit data stored as 32-bit
        ([[0, 65535, 514]], [[0.0, 255.0, 2.0]], True),  # 16-bit data, as I;16
        ([[-100, 0, 100]], [[0.0, 127.5, 255.0]], True),  # anything else: stretched
    ],
)
def test_32_bit_integer_mode(values, expected, noted):
    im = PIL.Image.fromarray(np.array(values, dtype=np.int32))
    assert im.mode == "I"
    image = load_image(im)
    np.testing.assert_array_equal(image.pixels[..., 0], np.array(expected, dtype=np.float32))
    assert bool(image.notes) == noted


def test_float_mode_follows_the_array_rule_or_stretches(tmp_path):
    unit = load_image(PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    assert unit.mode == "F"
    np.testing.assert_array_equal(unit.pixels[..., 0], [[0.0, 127.5, 255.0]])
    assert any("0..1" in note for note in unit.notes)
    odd = load_image(PIL.Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)))
    np.testing.assert_array_equal(odd.pixels[..., 0], [[0.0, 127.5, 255.0]])
    assert any("stretched" in note for note in odd.notes)


def test_cmyk_is_converted_to_rgb():
    image = load_image(PIL.Image.new("CMYK", (1, 1), (0, 0, 0, 0)))
    assert image.mode == "CMYK"
    np.testing.assert_array_equal(image.pixels, [[[255.0, 255.0, 255.0]]])
    assert any("CMYK to RGB" in note for note in image.notes)


def test_multi_frame_gif_uses_first_frame(tmp_path):
    first = PIL.Image.new("RGB", (4, 4), (255, 0, 0))
    second = PIL.Image.new("RGB", (4, 4), (0, 0, 255))
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second])
    image = load_image(path)
    assert image.pixels.shape == (4, 4, 3)
    assert image.pixels[0, 0, 0] > 200 and image.pixels[0, 0, 2] < 50
    assert any("first frame" in note for note in image.notes)


# --------------------------------------------------------------------------- EXIF


def _marked_landscape() -> PIL.Image.Image:
    """32 wide, 16 high, blue, with a red 8x8 block in the top-left corner."""
    data = np.zeros((16, 32, 3), dtype=np.uint8)
    data[..., 2] = 255
    data[:8, :8] = (255, 0, 0)
    return PIL.Image.fromarray(data)


def test_exif_orientation_6_is_applied(tmp_path):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path, "phone.jpg", _marked_landscape(), exif=exif.tobytes(), quality=95)
    image = load_image(path)
    # Orientation 6: turn 90 degrees clockwise; the top-left corner goes to the top-right.
    assert image.pixels.shape == (32, 16, 3)
    assert image.original_size == (16, 32)
    red = image.pixels[..., 0] > 200
    assert red[:6, -6:].all()
    assert not red[:6, :6].any()
    assert not red[-6:, :].any()
    assert any("EXIF orientation 6" in note for note in image.notes)
    array, notes = prepare(image, size=None, channels=None, preprocess="raw")
    assert any("EXIF orientation 6" in note for note in notes)


def test_no_exif_means_no_rotation(tmp_path):
    image = load_image(save(tmp_path, "plain.jpg", _marked_landscape(), quality=95))
    assert image.pixels.shape == (16, 32, 3)
    assert image.pixels[2, 2, 0] > 200
    assert image.notes == []


# --------------------------------------------------------------------------- broken, hostile files


def test_missing_path(tmp_path):
    with raises(BadImage, "image not found", "check the path"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    with raises(BadImage, "is a directory", "image file inside it"):
        load_image(tmp_path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with raises(BadImage, "not an image PIL can read", "text file", "JPEG, PNG"):
        load_image(path)


def test_model_archive_given_as_image(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    with raises(BadImage, "not an image PIL can read", "zip archive", "JPEG, PNG"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with raises(BadImage, "not an image", "empty", "JPEG, PNG"):
        load_image(path)


_PIL_OWN_OPEN = PIL.Image.open  # kept in the module's globals, as ultralytics keeps it


def _open_like_ultralytics(fp, *args, **kwargs):
    """What ``import ultralytics`` makes of ``PIL.Image.open``: an unidentified file sends it after pi-heif."""
    try:
        return _PIL_OWN_OPEN(fp, *args, **kwargs)
    except PIL.UnidentifiedImageError:
        raise ModuleNotFoundError("No module named 'pi_heif'") from None


@pytest.mark.parametrize("found_at_import", [True, False])
def test_a_replaced_pil_open_does_not_hide_what_the_file_is(tmp_path, monkeypatch, found_at_import):
    # ultralytics replaces PIL.Image.open on import; a text file was then "truncated or corrupt
    # (ModuleNotFoundError: No module named 'pi_heif')", and opening it tried to pip-install pi-heif
    from convlens.images import decode

    calls = []

    def replaced(*args, **kwargs):
        calls.append(args)
        return _open_like_ultralytics(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", replaced)
    if not found_at_import:  # convlens imported after the package that replaced it
        monkeypatch.setattr(decode, "_PIL_OPEN", None)
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with raises(BadImage, "not an image PIL can read", "text file", "JPEG, PNG"):
        load_image(path)
    good = save(tmp_path, "good.png", PIL.Image.new("RGB", (3, 2), (10, 20, 30)))
    np.testing.assert_allclose(load_image(good).pixels[0, 0], [10, 20, 30])
    assert not calls


def test_a_format_plugin_missing_its_module_does_not_hide_what_the_file_is(tmp_path, monkeypatch):
    # a third-party plugin registered with PIL whose module is not installed raises ImportError
    # when PIL tries it on a file no other format claims
    def accept(prefix):
        raise ModuleNotFoundError("No module named 'pi_heif'")

    PIL.Image.init()
    monkeypatch.setattr(PIL.Image, "ID", [*PIL.Image.ID, "FAKEHEIF"])
    monkeypatch.setattr(PIL.Image, "OPEN", {**PIL.Image.OPEN, "FAKEHEIF": (PIL.ImageFile.ImageFile, accept)})
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with raises(BadImage, "not an image PIL can read", "text file", "JPEG, PNG"):
        load_image(path)
    with raises(BadImage, "not an image", "JPEG, PNG"):
        images.load_image_bytes(b"this is not a picture either", name="blob")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = save(tmp_path, f"full.{fmt.lower()}", PIL.Image.fromarray(noise), format=fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES is False
    with raises(BadImage, "truncated or corrupt", "export it again"):
        load_image(cut)
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_header(tmp_path):
    full = save(tmp_path, "full.jpg", PIL.Image.new("RGB", (8, 8)))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:40])
    with raises(BadImage, "truncated or corrupt", "export it again"):
        load_image(cut)


def test_truncated_lazy_pil_image_is_decoded_inside_the_guard(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = save(tmp_path, "full.jpg", PIL.Image.fromarray(noise))
    cut = tmp_path / "cut.jpg"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with PIL.Image.open(cut) as lazy, raises(BadImage, "truncated or corrupt"):
        load_image(lazy)


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000))  # 400 M pixels in 45 bytes
    assert path.stat().st_size < 100
    with raises(BadImage, "400,000,000 pixels", "100,000,000", "max_pixels=", "--max-pixels"):
        load_image(path)


@pytest.mark.parametrize("limit", [1000, 500])  # PIL's warning range, and its error range
def test_max_pixels_argument(tmp_path, limit):
    path = save(tmp_path, "small.png", PIL.Image.new("RGB", (40, 30)))  # 1200 pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with raises(BadImage, f"{limit:,}", "max_pixels=", "--max-pixels"):
            load_image(path, max_pixels=limit)
    assert not [w for w in caught if issubclass(w.category, PIL.Image.DecompressionBombWarning)]
    assert load_image(path, max_pixels=1200).pixels.shape == (30, 40, 3)


def test_max_pixels_is_authoritative_over_pils_own_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    path = save(tmp_path, "small.png", PIL.Image.new("RGB", (40, 30)))
    assert load_image(path).pixels.shape == (30, 40, 3)
    assert PIL.Image.MAX_IMAGE_PIXELS == 100  # restored


def test_module_max_pixels_is_read_at_call_time(tmp_path, monkeypatch):
    # The CLI's --max-pixels sets convlens.images.MAX_PIXELS.
    path = save(tmp_path, "small.png", PIL.Image.new("RGB", (40, 30)))
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with raises(BadImage, "max_pixels="):
        load_image(path)
    with raises(BadImage, "max_pixels="):
        load_images([path])


def test_max_pixels_applies_to_arrays_and_pil_images():
    with raises(BadImage, "40x30", "max_pixels="):
        load_image(np.zeros((30, 40), np.uint8), max_pixels=1000)
    with raises(BadImage, "40x30", "max_pixels="):
        load_image(PIL.Image.new("L", (40, 30)), max_pixels=1000)


@pytest.mark.parametrize("bad", [0, -5, 1.5, "100", True])
def test_bad_max_pixels(bad):
    with raises(BadArgument, "positive integer"):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=bad)


def test_default_limit():
    assert MAX_PIXELS == 100_000_000


def test_unsupported_source_type():
    with raises(BadImage, "cannot read an image from a int", "file path", "numpy array"):
        load_image(42)


# --------------------------------------------------------------------------- arrays and PIL objects


@pytest.mark.parametrize(
    ("shape", "channels", "mode"),
    [((2, 3), 1, "L"), ((2, 3, 1), 1, "L"), ((2, 3, 3), 3, "RGB")],
)
def test_array_shapes(shape, channels, mode):
    data = (np.arange(np.prod(shape)) * 13 % 256).astype(np.uint8).reshape(shape)
    image = load_image(data)
    assert image.pixels.shape == (2, 3, channels)
    np.testing.assert_array_equal(image.pixels.reshape(shape), data.astype(np.float32))
    assert image.name == "array0" and image.source == "<array>"
    assert image.mode == mode
    assert image.original_size == (3, 2)
    assert image.notes == []


def test_rgba_array_is_composited_on_white():
    data = np.array([[[0, 0, 0, 128], [200, 100, 0, 51]]], dtype=np.uint8)
    image = load_image(data)
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(image.pixels, [[[127, 127, 127], [244, 224, 204]]])


def test_batch_of_one_is_squeezed_with_a_note():
    image = load_image(rgb_array()[None])
    np.testing.assert_array_equal(image.pixels, rgb_array().astype(np.float32))
    assert any("batch of one" in note for note in image.notes)


def test_float_arrays_0_1_are_scaled_and_0_255_kept():
    unit = load_image(np.array([[0.0, 0.2, 1.0]], dtype=np.float64))
    np.testing.assert_array_equal(unit.pixels[..., 0], np.float32([[0.0, 51.0, 255.0]]))
    assert any("0..1 to 0..255" in note for note in unit.notes)
    full = load_image(np.array([[0.0, 2.0, 255.0]], dtype=np.float32))
    np.testing.assert_array_equal(full.pixels[..., 0], [[0.0, 2.0, 255.0]])
    assert full.notes == []


def test_other_integer_dtypes():
    np.testing.assert_array_equal(load_image(np.array([[True, False]])).pixels[..., 0], [[255, 0]])
    np.testing.assert_array_equal(load_image(np.array([[0, 200]])).pixels[..., 0], [[0, 200]])
    sixteen = load_image(np.array([[65535, 257]], dtype=np.uint16))
    np.testing.assert_array_equal(sixteen.pixels[..., 0], [[255.0, 1.0]])
    assert any("16-bit" in note for note in sixteen.notes)


def test_array_is_copied_not_shared():
    data = rgb_array()
    image = load_image(data)
    image.pixels[...] = 0
    np.testing.assert_array_equal(data, rgb_array())


@pytest.mark.parametrize(
    ("shape", "hint"),
    [
        ((2, 3, 2), "1 (gray), 3 (RGB) or 4 (RGBA) channels"),
        ((3, 20, 30), "np.moveaxis"),
        ((2, 4, 4, 3), "load_images(list(batch))"),
        ((1, 3, 20, 30), "np.moveaxis"),
        ((5,), "the last axis"),
        ((0, 4, 3), "empty"),
    ],
)
def test_bad_array_shapes(shape, hint):
    with raises(BadImage, "(H, W), (H, W, 1), (H, W, 3), (H, W, 4)", hint):
        load_image(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (np.array([[-1.0, 0.5, 1.0]]), "preprocess="),  # already preprocessed to [-1, 1]
        (np.array([[0.0, 300.0]]), "0..1 or 0..255"),
        (np.array([[np.nan, 1.0]]), "finite"),
        (np.array([[0, 300]], dtype=np.int64), "uint8"),
        (np.array([["a", "b"]]), "uint8"),
    ],
)
def test_bad_array_values(data, hint):
    with raises(BadImage, hint):
        load_image(data)


def test_pil_image_object():
    image = load_image(PIL.Image.fromarray(rgb_array()))
    assert image.name == "image0" and image.source == "<PIL.Image>"
    np.testing.assert_array_equal(image.pixels, rgb_array().astype(np.float32))


def test_bad_name():
    with raises(BadArgument, "non-empty string"):
        load_image(rgb_array(), name="")


# --------------------------------------------------------------------------- load_images


def test_load_images_makes_names_unique(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    im = PIL.Image.fromarray(rgb_array())
    paths = [
        save(tmp_path / "a", "cat.png", im),
        save(tmp_path / "b", "cat.png", im),
        save(tmp_path, "Cat.jpg", im),
        save(tmp_path, "cat-2.png", im),  # has this name on its own: keeps it
    ]
    names = [image.name for image in load_images(paths)]
    assert names == ["cat", "cat-3", "Cat-4", "cat-2"]


def test_load_images_single_and_in_memory(tmp_path):
    path = save(tmp_path, "dog.png", PIL.Image.fromarray(rgb_array()))
    assert [i.name for i in load_images(str(path))] == ["dog"]
    assert [i.name for i in load_images(rgb_array())] == ["array0"]
    mixed = load_images([rgb_array(), PIL.Image.fromarray(rgb_array()), rgb_array()])
    assert [i.name for i in mixed] == ["array0", "image1", "array2"]


def test_load_images_empty():
    with raises(BadArgument, "at least one"):
        load_images([])


# --------------------------------------------------------------------------- presets


def test_presets_are_documented():
    assert set(PRESETS) == {"unit", "caffe", "torch", "tf", "raw"}
    assert all(isinstance(text, str) and text for text in PRESETS.values())


def test_caffe_flips_to_bgr_and_subtracts_means():
    out = apply_preset(np.array([[[255.0, 0.0, 0.0]]], dtype=np.float32), "caffe")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32([[[-103.939, -116.779, 131.32]]]))


def test_caffe_on_one_channel_subtracts_the_mean_of_the_means():
    out = apply_preset(np.array([[255.0]]), "caffe")
    np.testing.assert_array_equal(out, np.float32([[255.0 - (103.939 + 116.779 + 123.68) / 3]]))


def test_torch_preset():
    out = apply_preset(np.array([255.0, 0.0, 51.0]), "torch")
    expected = np.float32([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225])
    np.testing.assert_array_equal(out, expected)
    gray = apply_preset(np.array([[255.0]]), "torch")
    np.testing.assert_array_equal(gray, np.float32([[(1 - 0.449) / 0.226]]))


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("unit", [0.0, 0.2, 1.0]),
        ("tf", [-1.0, -0.6, 1.0]),
        ("raw", [0.0, 51.0, 255.0]),
    ],
)
def test_simple_presets(preset, expected):
    out = apply_preset(np.array([0.0, 51.0, 255.0]), preset)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32(expected))


def test_apply_preset_returns_a_new_array():
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    out = apply_preset(x, "raw")
    out[...] = 0
    np.testing.assert_array_equal(x, [[1.0, 2.0, 3.0]])


def test_unknown_preset_lists_the_presets():
    with raises(BadArgument, "unknown preprocessing preset", *PRESETS):
        apply_preset(np.zeros((1, 3)), "imagenet")
    with raises(BadArgument, "choose one of", *PRESETS):
        prepare(load_image(rgb_array()), size=None, channels=None, preprocess="imagenet")


def test_caffe_needs_one_or_three_channels():
    with raises(BadArgument, "1 or 3 channels", "'unit'"):
        apply_preset(np.zeros((2, 2, 4)), "caffe")


# --------------------------------------------------------------------------- prepare


def test_prepare_keeps_size_and_channels_by_default():
    image = load_image(rgb_array())
    array, notes = prepare(image, size=None, channels=None)
    assert array.dtype == np.float32 and array.flags.c_contiguous
    np.testing.assert_array_equal(array, rgb_array().astype(np.float32) / np.float32(255))
    assert notes == []
    array[...] = -1  # the caller may write to it without touching the image
    assert image.pixels.min() >= 0


def test_prepare_resizes_with_a_note(tmp_path):
    path = save(tmp_path, "wide.png", PIL.Image.new("RGB", (40, 30), (100, 150, 200)))
    array, notes = prepare(load_image(path), size=(20, 20), channels=3, preprocess="raw")
    assert array.shape == (20, 20, 3)
    np.testing.assert_allclose(array[..., 0], 100.0, atol=1e-4)
    np.testing.assert_allclose(array[..., 2], 200.0, atol=1e-4)
    assert notes == [
        "resized wide.png from 40x30 to 20x20, changing its aspect ratio from 1.33 to 1.00"
    ]


def test_prepare_same_size_has_no_note():
    _, notes = prepare(load_image(np.zeros((20, 30, 3), np.uint8)), size=(20, 30), channels=3)
    assert notes == []


def test_resize_is_antialiased():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    array, _ = prepare(load_image(checker), size=(16, 16), channels=1, preprocess="raw")
    # Nearest-neighbour or non-antialiased sampling would give 0s and 255s.
    assert np.abs(array - 127.5).max() < 10


def test_resize_keeps_a_side_given_as_none():
    array, notes = prepare(load_image(np.zeros((20, 30), np.uint8)), size=(None, 15), channels=1)
    assert array.shape == (20, 15, 1)
    assert notes == [
        "resized array0 from 30x20 to 15x20, changing its aspect ratio from 1.50 to 0.75"
    ]


@pytest.mark.parametrize("size", [(0, 10), (10,), "224", (10.5, 3), (True, 4)])
def test_bad_size(size):
    with raises(BadArgument, "(height, width)", "positive integers"):
        prepare(load_image(rgb_array()), size=size, channels=None)


def test_prepare_rgb_to_gray_uses_601_luminance():
    data = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    array, notes = prepare(load_image(data), size=None, channels=1, preprocess="raw")
    assert array.shape == (1, 4, 1)
    np.testing.assert_allclose(array[0, :, 0], [76.245, 149.685, 29.07, 255.0], rtol=1e-6)
    assert notes == [
        "converted array0 from RGB to grayscale (ITU-R 601 luminance) because the model "
        "takes 1 channel"
    ]


def test_prepare_gray_to_rgb_replicates():
    gray = np.array([[10, 200]], dtype=np.uint8)
    array, notes = prepare(load_image(gray), size=None, channels=3, preprocess="raw")
    np.testing.assert_array_equal(array, [[[10, 10, 10], [200, 200, 200]]])
    assert any("grayscale to 3 channels" in note for note in notes)


@pytest.mark.parametrize("channels", [2, 4, 0, True])
def test_bad_channels(channels):
    with raises(BadArgument, "1, 3 or None"):
        prepare(load_image(rgb_array()), size=None, channels=channels)


def test_prepare_needs_an_image():
    with raises(BadArgument, "load_image"):
        prepare(rgb_array(), size=None, channels=None)


def test_prepare_full_pipeline_order():
    # gray -> 3 channels -> resize -> caffe, on a constant image: exact values survive.
    image = load_image(np.full((8, 8), 255, dtype=np.uint8))
    array, _ = prepare(image, size=(4, 4), channels=3, preprocess="caffe")
    np.testing.assert_allclose(
        array, np.broadcast_to(np.float32([151.061, 138.221, 131.32]), (4, 4, 3)), atol=1e-4
    )


# --------------------------------------------------------------------------- the shipped photo


def test_shipped_photo_loads():
    path = DATA / "photo.jpg"
    assert path.stat().st_size < 100_000
    image = load_image(path)
    assert image.pixels.shape == (300, 451, 3)
    assert image.mode == "RGB" and image.name == "photo"
    assert image.notes == []
    licence = (DATA / "PHOTO_LICENSE.txt").read_text()
    assert "CC0" in licence and "chelsea" in licence


def test_shipped_photo_is_scikit_images_chelsea():
    data = pytest.importorskip("skimage.data")
    original = data.chelsea().astype(np.float32)
    photo = load_image(DATA / "photo.jpg").pixels
    assert np.abs(photo - original).mean() < 3.0  # JPEG quality 90
