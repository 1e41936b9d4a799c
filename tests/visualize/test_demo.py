"""On the trained demo model (MNIST): class images the model believes, better than naive pixels."""

from __future__ import annotations

import numpy as np
import pytest

from convlens import Lens
from convlens.visualize.objectives import Objective
from convlens.visualize.optimize import high_frequency_share, pixel_ascent, render
from convlens.visualize.param import PresetMap

pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def demo(keras):
    return Lens("demo")


def _probabilities(lens, images):
    out = lens.adapter.run(PresetMap("unit", 1).forward(images), [], lambda i, a: None)
    assert lens.adapter.final_activation == "softmax"  # the model's output are probabilities
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_digit_is_drawn_so_the_model_believes_it(demo, seed):
    vis = demo.visualize(None, "all", objective="class", steps=40, seed=seed)  # one batch of ten
    assert vis.images.shape == (10, 28, 28, 1)
    probs = _probabilities(demo, vis.images)
    assert np.all(probs.argmax(axis=1) == np.arange(10))
    assert probs[np.arange(10), np.arange(10)].min() >= 0.9
    # the logits reached are what the index reports
    assert np.all(vis.activations > 5)


def test_negative_class_images_are_not_that_class(demo):
    vis = demo.visualize(None, "0-2", objective="class", negative=True, steps=20)
    probs = _probabilities(demo, vis.images)
    assert probs[np.arange(3), np.arange(3)].max() < 0.01


def test_smoother_than_naive_pixel_ascent(demo):
    """The last conv layer: Lucid's images carry far less high-frequency energy at the same steps.

    Naive ascent reaches a higher raw activation on this small MNIST network (it
    optimises the exact untransformed image and saturates pixels freely; see
    benchmarks/bench_visualize.py), so only what the Distill article claims is
    asserted here: less high-frequency noise, and a real activation.
    """
    layer = next(row for row in demo.layers() if row.name == "conv3")
    live = [1, 3, 5, 9]  # channels that respond (12, 22, 26... are dead ReLUs)
    objectives = [Objective("channel", layer.index, c) for c in live]
    preset = PresetMap("unit", 1)
    ours = render(demo.adapter, objectives, preset=preset, size=28, steps=48, input_size=(28, 28))
    naive = pixel_ascent(demo.adapter, objectives, preset=preset, size=28, steps=48, step_size=0.03,
                         input_size=(28, 28))
    hf_ours, hf_naive = high_frequency_share(ours.images), high_frequency_share(naive.images)
    assert np.all(hf_ours < 0.8 * hf_naive)
    gray = render(demo.adapter, objectives, preset=preset, size=28, steps=1, lr=1e-9, input_size=(28, 28))
    assert np.all(ours.scores > gray.scores + 0.3)
