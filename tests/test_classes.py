"""Class names: the adapter knows them from where the model came from; --labels win; counts are checked."""

from __future__ import annotations

import pytest

from convlens import BadArgument, Lens
from convlens.classes import imagenet_class_names, read_labels


@pytest.fixture(scope="module")
def demo(keras):
    return Lens("demo")


@pytest.mark.keras
def test_the_demo_knows_its_digits(demo):
    assert demo.adapter.class_names == [str(d) for d in range(10)]
    assert demo.class_names() == ([str(d) for d in range(10)], "the demo model's digits")
    # the report's check: names that do not fit the output are not used
    assert demo.class_names(classes=3) == (None, "")
    assert demo.class_names(output_shape=(28, 28, 16)) == (None, "")


@pytest.mark.keras
def test_labels_win_and_are_checked(demo, tmp_path):
    names = [f"n{i}" for i in range(10)]
    assert demo.class_names(names) == (names, "--labels")
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(names) + "\n\n")
    assert demo.class_names(path) == (names, "--labels")
    with pytest.raises(BadArgument, match="the labels hold 2 names but demo_cnn outputs 10 classes"):
        demo.class_names(["a", "b"])
    with pytest.raises(BadArgument, match="is not a classifier .* shape \\(4, 4, 2\\)"):
        demo.class_names(names, output_shape=(4, 4, 2))
    with pytest.raises(BadArgument, match="labels file not found"):
        demo.class_names(tmp_path / "missing.txt")


@pytest.mark.keras
def test_a_model_object_has_no_names(keras):
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inp)))
    lens = Lens(keras.Model(inp, out))
    assert lens.adapter.class_names is None and lens.class_names() == (None, "")


@pytest.mark.keras
def test_keras_zoo_models_have_imagenet_names(keras):
    lens = Lens("mobilenet", weights="none", input_shape=(32, 32, 3))
    assert lens.adapter.class_names_source == "ImageNet class names"
    names, source = lens.class_names()
    assert source == "ImageNet class names" and len(names) == 1000 and names[0] == "tench"


def test_torchvision_classifiers_have_imagenet_names_and_others_do_not():
    assert Lens("torchvision:resnet18", weights="none").class_names(classes=1000) == (
        imagenet_class_names(), "ImageNet class names")
    seg = Lens("torchvision:fcn_resnet50", weights="none", input_shape=(32, 32, 3))
    assert seg.adapter.class_names is None


def test_read_labels():
    assert read_labels(["a", 1]) == ["a", "1"]
    with pytest.raises(BadArgument, match="holds no class names"):
        read_labels([])
