"""A subclassed Keras model built once at one size is not locked to that size.

A fully convolutional subclassed model (it reads the input size with
``keras.ops.shape`` and resizes its side output to it) built by one call on a
64x64 tensor records (64, 64, 3) as its build shape, yet runs at any size.
Whether a dimension is free comes from a second probe at another size; a model
that really is tied to its build size (a Flatten into a Dense) stays fixed.
Runs on both Keras backends.
"""

from __future__ import annotations

import numpy as np
import pytest

from convlens import BadArgument, Lens

pytestmark = pytest.mark.keras


def _fully_convolutional(keras):
    L = keras.layers

    class SideOutputNet(keras.Model):
        def __init__(self):
            super().__init__(name="side_output_net")
            self.c1 = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")
            self.pool = L.MaxPooling2D(2, name="pool")
            self.c2 = L.Conv2D(4, 3, padding="same", activation="relu", name="c2")
            self.head = L.Conv2D(2, 1, name="head")

        def call(self, x):
            a = self.c1(x)
            side = self.c2(self.pool(a))
            size = keras.ops.shape(x)
            side = keras.ops.image.resize(side, (size[1], size[2]))  # back to the input's size
            return self.head(a + side)

    model = SideOutputNet()
    model(np.zeros((1, 64, 64, 3), "float32"))  # built once, at 64x64
    return model


def _fixed(keras):
    L = keras.layers

    class Classifier(keras.Model):
        def __init__(self):
            super().__init__(name="flat_classifier")
            self.conv = L.Conv2D(2, 3, name="conv")
            self.flat = L.Flatten()
            self.fc = L.Dense(3, name="fc")

        def call(self, x):
            return self.fc(self.flat(self.conv(x)))

    model = Classifier()
    model(np.zeros((1, 32, 32, 3), "float32"))
    return model


def test_a_model_built_at_64x64_takes_any_size(keras):
    model = _fully_convolutional(keras)
    lens = Lens(model, preprocess="unit")
    assert lens.input_shape == (None, None, 3)
    shapes = {row.name: row.output_shape for row in lens.layers()}
    assert shapes == {"input": (None, None, 3), "c1": (None, None, 4), "pool": (None, None, 4),
                      "c2": (None, None, 4), "head": (None, None, 2)}
    image = np.random.default_rng(0).integers(0, 256, size=(100, 150, 3), dtype=np.uint8)
    maps = lens.feature_maps(image, "all", size=(320, 480))  # refused before: "a fixed input of 64x64"
    assert maps["c1"].shape == (1, 320, 480, 4)
    assert maps["pool"].shape == (1, 160, 240, 4)
    assert maps["head"].shape == (1, 320, 480, 2)
    expected = keras.ops.convert_to_numpy(model(maps.inputs))
    np.testing.assert_allclose(maps.output, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["head"], expected, rtol=1e-5, atol=1e-5)
    # and at the image's own size when none is asked for
    assert lens.feature_maps(image, "c1")["c1"].shape == (1, 100, 150, 4)


def test_a_model_tied_to_its_build_size_stays_fixed(keras):
    lens = Lens(_fixed(keras), preprocess="unit")
    assert lens.input_shape == (32, 32, 3)
    assert lens.layers()[-1].output_shape == (3,)
    image = np.zeros((50, 40, 3), np.uint8)
    assert lens.feature_maps(image, "conv")["conv"].shape == (1, 30, 30, 2)
    with pytest.raises(BadArgument, match="fixed input of 32x32"):
        lens.feature_maps(image, "conv", size=(64, 64))


def test_an_input_shape_given_by_the_user_still_wins(keras):
    lens = Lens(_fully_convolutional(keras), input_shape=(40, 48, 3))
    assert lens.input_shape == (40, 48, 3)
    assert lens.layers()[1].output_shape == (40, 48, 4)
