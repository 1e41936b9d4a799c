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


def test_indexed_frames_keep_their_colours_exactly():
    pal_a = np.array([[10, 20, 30], [250, 250, 250], [0, 128, 0]], np.uint8)
    pal_b = np.array([[200, 0, 0], [0, 0, 200]], np.uint8)
    a = (np.array([[0, 2, 0], [2, 0, 2]], np.uint8), pal_a)
    b = (np.array([[1, 0], [0, 1], [1, 1]], np.uint8), pal_b)
    padded_a, padded_b = pad_frames([a, b])
    assert padded_a[0].shape == (3, 3) and (padded_a[0][2] == 1).all()  # pal_a's whitest colour
    assert (padded_b[0][:, 2] == 0).all()  # pal_b has no white: its brightest (200, 0, 0) counts as such
    gif = Image.open(io.BytesIO(encode_gif([a, b])))
    assert gif.n_frames == 2
    first = np.asarray(gif.convert("RGB"))
    assert first[:2].tolist() == [[[10, 20, 30], [0, 128, 0], [10, 20, 30]],
                                  [[0, 128, 0], [10, 20, 30], [0, 128, 0]]]
    gif.seek(1)
    second = np.asarray(gif.convert("RGB"))
    assert second[:, :2].tolist() == [[[0, 0, 200], [200, 0, 0]], [[200, 0, 0], [0, 0, 200]],
                                      [[0, 0, 200], [0, 0, 200]]]


def test_bad_frames_are_refused():
    with pytest.raises(BadArgument):
        encode_gif([])
    with pytest.raises(BadArgument):
        encode_gif([np.zeros((4, 4), np.uint8)])
    with pytest.raises(BadArgument):
        encode_gif(_frames(), duration_ms=5)
    with pytest.raises(BadArgument):
        encode_gif([(np.zeros((2, 2), np.uint8), np.zeros((300, 3), np.uint8))])
