"""A Keras model with two outputs (a class head and a box head): ``Target.output`` picks the output that
holds the score, on every Keras backend, as it does for PyTorch and ONNX; ``--output NAME|INDEX`` works
on the command line.

The network is linear up to its heads, so each gradient is known in closed form: a 1x1 conv, a global
average pool, then ``cls`` (softmax over ``x @ W_CLS``) and ``box`` (``x @ W_BOX``).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from convlens import BadArgument
from convlens.adapters.base import Target
from convlens.cli import main

H, W, C_IN, C_MID = 5, 4, 2, 3
W_CONV = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]], np.float32)
W_CLS = np.array([[1.0, 0.0, -1.0, 2.0, 0.5], [0.5, -0.5, 1.0, 0.0, 1.0], [-2.0, 1.0, 0.0, 3.0, -1.0]], np.float32)
W_BOX = np.array([[0.3, -1.0, 2.0, 0.0], [1.0, 0.5, -0.5, 1.5], [0.0, 2.0, 1.0, -1.0]], np.float32)


def _two_heads(keras, shape=(H, W, C_IN), w_conv=W_CONV):
    x = keras.Input(shape)
    conv = keras.layers.Conv2D(C_MID, 1, use_bias=False, name="conv")
    g = keras.layers.GlobalAveragePooling2D(name="gap")(conv(x))
    cls = keras.layers.Dense(5, activation="softmax", use_bias=False, name="cls")
    box = keras.layers.Dense(4, use_bias=False, name="box")
    model = keras.Model(x, [cls(g), box(g)], name="two_heads")
    conv.set_weights([w_conv.reshape(1, 1, *w_conv.shape)])
    cls.set_weights([W_CLS])
    box.set_weights([W_BOX])
    return model


def _batch(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, H, W, C_IN)).astype(np.float32)


def _adapter(keras):
    from convlens.adapters.keras import KerasAdapter

    adapter = KerasAdapter(_two_heads(keras))
    conv_row = next(i for i, t in enumerate(adapter.layers()) if t.name == "conv")
    return adapter, conv_row


@pytest.mark.keras
def test_outputs_lists_both_heads_by_name(keras):
    adapter, _ = _adapter(keras)
    x = _batch()
    got = adapter.outputs(x)
    assert [n for n, _ in got] == ["cls", "box"]
    mean = (x @ W_CONV).mean(axis=(1, 2))
    np.testing.assert_allclose(got[1][1], mean @ W_BOX, rtol=1e-5, atol=1e-6)
    logits = mean @ W_CLS
    soft = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(got[0][1], soft / soft.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.keras
@pytest.mark.gradients
def test_target_output_picks_the_head(keras):
    adapter, conv_row = _adapter(keras)
    x = _batch()
    mean = (x @ W_CONV).mean(axis=(1, 2))
    for j in (0, 3):  # one box coordinate: its score and gradient, exactly
        g = adapter.gradients(x, Target(channels=(j,), output=1), layers=[conv_row], wrt_input=True)
        np.testing.assert_allclose(g.score, mean @ W_BOX[:, j], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.output, mean @ W_BOX, rtol=1e-5, atol=1e-6)  # the picked output
        np.testing.assert_allclose(g.grads[conv_row], np.broadcast_to(W_BOX[:, j] / (H * W), (2, H, W, C_MID)),
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g.input_grad, np.broadcast_to(W_CONV @ W_BOX[:, j] / (H * W), x.shape),
                                   rtol=1e-5, atol=1e-7)
        assert not g.logits
    # the class head, by position and as the default: the logit before its softmax
    for target in (Target(channels=(3,), output=0), Target(channels=(3,))):
        g = adapter.gradients(x, target, layers=[conv_row])
        assert g.logits and g.output.shape == (2, 5)
        np.testing.assert_allclose(g.score, mean @ W_CLS[:, 3], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.grads[conv_row], np.broadcast_to(W_CLS[:, 3] / (H * W), (2, H, W, C_MID)),
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(BadArgument, match=r"output 2 does not exist: two_heads has 2 output\(s\) \(0: cls, 1: box\)"):
        adapter.gradients(x, Target(channels=(0,), output=2), layers=[conv_row])


@pytest.mark.keras
@pytest.mark.gradients
@pytest.mark.parametrize("which", ["box", "1"])
def test_cli_heatmap_of_the_box_head(keras, tmp_path, which):
    path = tmp_path / "two.keras"
    w_rgb = np.random.default_rng(2).normal(size=(3, C_MID)).astype(np.float32)
    _two_heads(keras, (None, None, 3), w_rgb).save(path)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(image)
    out, err = io.StringIO(), io.StringIO()
    code = main(["heatmap", str(path), str(image), "--output", which, "--output-index", "2", "--layer", "conv",
                 "--out", str(tmp_path / "out")], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert "output 2" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()  # a class of the class head, named
    assert main(["heatmap", str(path), str(image), "--output", "cls", "--class", "3", "--layer", "conv",
                 "--out", str(tmp_path / "cls")], stdout=out, stderr=err) == 0, err.getvalue()
    assert "Grad-CAM · 3 · " in out.getvalue()
    err = io.StringIO()
    assert main(["heatmap", str(path), str(image), "--output", "cls", "--class", "7", "--layer", "conv",
                 "--out", str(tmp_path / "bad")], stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue() == "convlens: error: class 7 is out of range: the output 'cls' has 5 classes (0-4)\n"
    assert not (tmp_path / "bad").exists()
