"""PNG encoding."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from convlens import BadArgument
from convlens.core.normalize import normalize_channels
from convlens.render import png
from convlens.render.colormap import lut
from convlens.render.grid import tile
from convlens.render.png import encode_png


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------- encode_png


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (64, 48, 3), (5, 6), (5, 6, 4),
                                   (300, 200, 3)])
def test_roundtrip_is_lossless(shape):
    rgb = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(decode(encode_png(rgb)), rgb)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_every_compress_level_decodes(level):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[10:20] = (200, 10, 30)
    assert np.array_equal(decode(encode_png(rgb, compress_level=level)), rgb)


def test_plain_zlib_fallback_decodes(monkeypatch):
    monkeypatch.setattr(png, "_isal", None)
    rgb = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode_png(rgb)), rgb)


def test_non_contiguous_input():
    rgb = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)[::2, ::3]
    assert np.array_equal(decode(encode_png(rgb)), rgb)


def test_encode_rejects_bad_pictures():
    with pytest.raises(BadArgument):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(BadArgument):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(BadArgument):
        encode_png(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(BadArgument):
        encode_png(np.zeros((4, 4, 3), np.uint8), compress_level=10)


def test_vgg_block1_layer_renders_quickly():
    # VGG16 block1_conv1 for one 224x224 image: (64, 224, 224) float32.
    x = np.maximum(np.random.default_rng(0).standard_normal((64, 224, 224)), 0).astype(np.float32)
    table = lut("viridis")

    def run() -> float:
        t = time.perf_counter()
        data = encode_png(tile(normalize_channels(x)[0], table))
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        return time.perf_counter() - t

    run()
    assert min(run() for _ in range(2)) < 1.0  # ~45 ms with isal; generous for slow CI machines


def test_every_chunk_crc_is_zlibs():
    """The CRC-32s (ISA-L's when installed) are the standard ones over each chunk's tag and data."""
    import struct
    import zlib

    rng = np.random.default_rng(5)
    data = encode_png(rng.integers(0, 256, (300, 400), dtype=np.uint8),
                      palette=rng.integers(0, 256, (256, 3), dtype=np.uint8))
    pos, tags = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(tag + body)
        tags.append(tag)
        pos += 12 + length
    assert tags == [b"IHDR", b"PLTE", b"IDAT", b"IEND"] and pos == len(data)
