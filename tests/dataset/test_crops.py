"""Receptive-field crops, checked on a hand-built network that fires on one known pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens._errors import BadArgument
from convlens.core.layers import LayerInfo
from convlens.dataset.crops import PAD_DARK, PAD_LIGHT, cut, input_box, original_box, to_original
from convlens.lens import Lens

DIAGONAL = np.eye(3, dtype=np.float32) * 255  # the pattern: a 3x3 "\" stroke
SIZE = 32


def _pattern_net() -> nn.Sequential:
    """conv(3x3, same) fires only on the diagonal stroke, pool 2, conv(3x3, same) with a peaked kernel.

    conv1's kernel is +1 on the diagonal and -1 elsewhere (/255) with bias -2: exactly 1 where a
    stroke is centred, <= 0 for any other arrangement of strokes (a "/" or a "-" give -1, a
    half-overlapping stroke 0). conv2's centre weight is 2 and its others 1, so its maximum sits
    on the pooled cell holding the stroke. Receptive fields: conv1 3 (jump 1), pool 4 (jump 2),
    conv2 8 (jump 2).
    """
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(np.where(np.eye(3) > 0, 1.0, -1.0) / 255.0).view(1, 1, 3, 3))
        net[0].bias.fill_(-2.0)
        k2 = torch.ones(3, 3)
        k2[1, 1] = 2.0
        net[3].weight.copy_(k2.view(1, 1, 3, 3))
        net[3].bias.zero_()
    return net.eval()


def _image(centre: tuple[int, int]) -> np.ndarray:
    """A black 32x32 image with the stroke centred at ``centre`` and two distractor strokes."""
    img = np.zeros((SIZE, SIZE), np.float32)
    img[25, 3:6] = 255  # "-": conv1 gives -1 there
    img[np.array([2, 3, 4]), np.array([28, 27, 26])] = 255  # "/": conv1 gives -1
    y, x = centre
    img[y - 1:y + 2, x - 1:x + 2] = np.maximum(img[y - 1:y + 2, x - 1:x + 2], DIAGONAL)
    return img


@pytest.fixture(scope="module")
def maps() -> tuple[Lens, dict[str, np.ndarray], list[tuple[int, int]], list[np.ndarray]]:
    centres = [(12, 17), (21, 8), (1, 1), (30, 29), (15, 30)]  # the last three touch a border
    images = [_image(c) for c in centres]
    lens = Lens(_pattern_net(), input_shape=(SIZE, SIZE, 1))
    got = lens.feature_maps([i[..., None] for i in images], layers=["4", "8"], preprocess="raw")  # indexes of "3", "7"
    return lens, {name: got[name] for name in ("3", "7")}, centres, images


def _argmax(fmap: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(fmap[..., 0])), fmap.shape[:2])
    return int(y), int(x)


def test_the_crop_of_the_strongest_unit_holds_the_pattern(maps) -> None:  # type: ignore[no-untyped-def]
    lens, arrays, centres, images = maps
    layer = next(layer for layer in lens.layers() if layer.name == "3")
    assert layer.rf_size == (8, 8) and layer.rf_jump == (2, 2)
    conv2 = arrays["3"]
    for i, ((cy, cx), img) in enumerate(zip(centres, images)):
        position = _argmax(conv2[i])
        assert position == (cy // 2, cx // 2)  # the hand-set network finds the stroke
        box = input_box(layer, position, conv2.shape[1:3], (SIZE, SIZE))
        top, left, bottom, right = box
        assert (bottom - top, right - left) == (8.0, 8.0)
        assert top <= cy - 1 and bottom >= cy + 2 and left <= cx - 1 and right >= cx + 2
        crop = cut(img[..., None], box, 8)  # 8 px: the field itself, no resampling
        assert crop.shape == (8, 8, 3) and crop.dtype == np.uint8
        oy, ox = cy - 1 - int(top), cx - 1 - int(left)  # where the stroke sits in the crop
        np.testing.assert_array_equal(crop[oy:oy + 3, ox:ox + 3, 0], DIAGONAL.astype(np.uint8))
        np.testing.assert_array_equal(crop[oy:oy + 3, ox:ox + 3, 1], DIAGONAL.astype(np.uint8))


def test_boxes_leaving_the_image_are_padded_with_a_checkerboard(maps) -> None:  # type: ignore[no-untyped-def]
    lens, arrays, centres, images = maps
    layer = next(layer for layer in lens.layers() if layer.name == "3")
    conv2 = arrays["3"]
    i = centres.index((1, 1))  # the stroke in the top-left corner
    box = input_box(layer, _argmax(conv2[i]), conv2.shape[1:3], (SIZE, SIZE))
    assert box == (-3.0, -3.0, 5.0, 5.0)
    crop = cut(images[i][..., None], box, 8)
    outside = np.zeros((8, 8), bool)
    outside[:3, :] = outside[:, :3] = True
    pad = crop[outside]
    is_pad = np.all(pad == PAD_LIGHT, axis=1) | np.all(pad == PAD_DARK, axis=1)
    assert is_pad.all()
    assert {tuple(p) for p in pad} == {PAD_LIGHT, PAD_DARK}  # a checkerboard, not a flat colour
    np.testing.assert_array_equal(crop[3:6, 3:6, 0], DIAGONAL.astype(np.uint8))
    assert np.all(crop[6:, 6:] == 0)  # the black image inside

    # Enlarged 8x to a 64 px thumbnail: nearest neighbour, the stroke is 8x8 blocks of white.
    big = cut(images[i][..., None], box, 64)
    assert np.all(big[24:32, 24:32] == 255) and np.all(big[24:32, 32:40] == 0)
    assert np.all(big[32:40, 32:40] == 255) and np.all(big[:24, :].reshape(-1, 3)[:, 0] >= PAD_DARK[0])


def test_a_vector_layer_crop_is_the_whole_image(maps) -> None:  # type: ignore[no-untyped-def]
    lens, _, _, images = maps
    dense = next(layer for layer in lens.layers() if layer.name == "7")
    assert input_box(dense, (0, 0), None, (SIZE, SIZE)) == (0.0, 0.0, 32.0, 32.0)
    whole = cut(images[0][..., None], input_box(dense, (0, 0), None, (SIZE, SIZE)), SIZE)
    np.testing.assert_array_equal(whole[..., 0], images[0].astype(np.uint8))


def test_the_box_maps_to_the_stretched_original_per_axis() -> None:
    layer = LayerInfo(4, "c", "Conv2D", "conv", (16, 16, 1), rf_size=(8, 8), rf_jump=(2, 2))
    box = input_box(layer, (0, 3), (16, 16), (32, 32))
    assert box == (-3.0, 3.0, 5.0, 11.0)
    # A 64x96 original (H, W) was stretched to 32x32: x2 down, x3 across.
    assert to_original(box, (32, 32), (64, 96)) == (-6.0, 9.0, 10.0, 33.0)
    assert original_box(layer, (0, 3), (16, 16), (32, 32), (64, 96)) == (-6.0, 9.0, 10.0, 33.0)
    original = np.zeros((64, 96, 3), np.float32)
    original[0:10, 9:33] = (255, 0, 0)  # red fills the in-image part of the box
    original[:, 33:] = (0, 0, 255)      # blue starts right after it
    crop = cut(original, to_original(box, (32, 32), (64, 96)), 48)
    rows_inside = (np.arange(48) + 0.5) * 16 / 48 - 6 >= 0
    assert np.all(crop[rows_inside][:, :, 0] == 255) and not np.any(crop[rows_inside][:, :, 2])
    assert not np.any(np.all(crop[~rows_inside] == (255, 0, 0), axis=-1))  # padded rows hold no red


def test_centre_follows_the_map_to_input_scale_for_global_and_unknown_fields() -> None:
    conv = LayerInfo(1, "c", "Conv2D", "conv", (7, 7, 4), rf_size=(3, 3), rf_jump=(1, 1))
    # 7x7 map of a 28x28 input: unit (3, 6) centred at (3.5 * 4, 6.5 * 4) edge coordinates.
    assert input_box(conv, (3, 6), (7, 7), (28, 28)) == (12.5, 24.5, 15.5, 27.5)
    glob = LayerInfo(2, "g", "GlobalAveragePooling2D", "pool", (4,), global_rf=True)
    assert input_box(glob, (0, 0), (1, 1), (28, 28)) == (0.0, 0.0, 28.0, 28.0)
    unknown = LayerInfo(3, "u", "Custom", "other", (7, 7, 4))
    assert input_box(unknown, (1, 1), (7, 7), (28, 28)) == (0.0, 0.0, 28.0, 28.0)
    with pytest.raises(BadArgument, match="outside layer 'c'"):
        input_box(conv, (7, 0), (7, 7), (28, 28))


def test_cut_refuses_unusable_arguments() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(BadArgument, match="empty"):
        cut(img, (2, 2, 2, 3), 8)
    with pytest.raises(BadArgument, match="positive integer"):
        cut(img, (0, 0, 4, 4), 0)
    with pytest.raises(BadArgument, match="finite"):
        cut(img, (0, 0, float("nan"), 4), 8)
    with pytest.raises(BadArgument, match=r"\(H, W, 1\) or \(H, W, 3\)"):
        cut(np.zeros((4, 4, 2)), (0, 0, 4, 4), 8)
    gray = np.full((4, 4, 1), 100.4, np.float32)
    assert np.all(cut(gray, (0, 0, 4, 4), 4) == 100)  # gray repeated to RGB, rounded


def test_cut_agrees_with_a_plain_gather_for_boxes_anywhere() -> None:
    """Boxes inside, across every border and wholly outside: edge-repeated pixels, checkerboard outside."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (13, 17, 3)).astype(np.float32)
    for _ in range(300):
        side = int(rng.integers(1, 30))
        top, left = int(rng.integers(-40, 40)), int(rng.integers(-40, 40))
        got = cut(img, (top, left, top + side, left + side), side)  # no resampling: pixel for pixel
        rows = np.clip(np.arange(top, top + side), 0, 12)
        cols = np.clip(np.arange(left, left + side), 0, 16)
        want = img[rows[:, None], cols[None, :]].astype(np.uint8)
        outside = ((np.arange(top, top + side) < 0) | (np.arange(top, top + side) >= 13))[:, None] \
            | ((np.arange(left, left + side) < 0) | (np.arange(left, left + side) >= 17))[None, :]
        np.testing.assert_array_equal(got[~outside], want[~outside])
        pad = got[outside]
        assert (np.all(pad == PAD_LIGHT, axis=1) | np.all(pad == PAD_DARK, axis=1)).all()


def test_widen_keeps_the_centre_and_draw_field_outlines_the_field() -> None:
    from convlens.dataset.crops import FIELD_COLOR, draw_field, widen

    field = (12.5, 24.5, 15.5, 27.5)  # a 3x3 field
    assert widen(field, (7, 7)) == (10.5, 22.5, 17.5, 29.5)
    assert widen(field, (2, 9)) == field[:1] + (21.5,) + field[2:3] + (30.5,)  # never shrinks
    view = (10.0, 20.0, 17.0, 27.0)  # 7x7 pixels, drawn at 9 px a pixel
    crop = cut(np.zeros((40, 40, 3), np.uint8), view, 63)
    draw_field(crop, (12.0, 22.0, 15.0, 25.0), view)  # pixels 12..14 x 22..24 of the image
    ring = np.zeros((63, 63), bool)
    ring[18, 18:45] = ring[44, 18:45] = ring[18:45, 18] = ring[18:45, 44] = True
    assert np.array_equal(np.all(crop == FIELD_COLOR, axis=-1), ring)
    same = cut(np.zeros((40, 40, 3), np.uint8), view, 63)
    assert np.array_equal(draw_field(same.copy(), view, view), same)  # the field fills the view: nothing
