"""Animated GIFs: one frame per picture, padded to one size, timings and looping as asked."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from convlens import BadArgument
from convlens.render.animation import encode_gif, pad_frames


def _frames() -> list[np.ndarray]:
    a = np.zeros((4, 6, 3), np.uint8)
    a[..., 0] = 200
    b = np.zeros((5, 3, 3), np.uint8)
    b[..., 2] = 150
    return [a, b]


def test_frames_are_padded_with_white_at_the_bottom_right():
    a, b = pad_frames(_frames())
    assert a.shape == b.shape == (5, 6, 3)
    assert (a[:4, :, 0] == 200).all() and (a[4] == 255).all()
    assert (b[:, :3, 2] == 150).all() and (b[:, 3:] == 255).all()


def test_the_gif_plays_every_frame_in_order_and_loops():
    data = encode_gif(_frames(), duration_ms=300, last_ms=900)
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF" and gif.n_frames == 2 and gif.size == (6, 5) and gif.info["loop"] == 0
    colors, durations = [], []
    for i in range(2):
        gif.seek(i)
        durations.append(gif.info["duration"])
        colors.append(tuple(np.asarray(gif.convert("RGB"))[0, 0]))
    assert durations == [300, 900]
    assert colors == [(200, 0, 0), (0, 0, 150)]
    once = Image.open(io.BytesIO(encode_gif(_frames(), loop=False)))
    assert "loop" not in once.info


def test_bad_frames_are_refused():
    with pytest.raises(BadArgument):
        encode_gif([])
    with pytest.raises(BadArgument):
        encode_gif([np.zeros((4, 4), np.uint8)])
    with pytest.raises(BadArgument):
        encode_gif(_frames(), duration_ms=5)
