"""Feature visualisation that starts: redirected gradients through zero-gated units, dead = zero on photos.

The network's last batch norm has its biases set negative by hand, so that
every channel is zero on a grey image (where the optimisation starts) but
fires on ordinary photos. Without the redirected gradient such channels never
move; with it, each channel live on the probe photos gets a picture with
contrast and a positive activation.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from convlens.adapters import open_model
from convlens.adapters.base import Target
from convlens.adapters.redirect import redirected_gradients
from convlens.model import Model
from convlens.visualize import optimize, visualize
from convlens.visualize.probe import probe_channels, probe_photos

SIZE = 32
CHANNELS = 4
STEPS = 128


def _grey_dead_net() -> torch.nn.Module:
    """conv-BN-ReLU, max-pool, conv-BN-ReLU6; the last BN's biases put each channel's grey value
    below zero, 30% of the way to its peak on the probe photos. Channel 3 is dead on the photos too."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(OrderedDict(
        conv1=torch.nn.Conv2d(3, 8, 3, padding=1), bn1=torch.nn.BatchNorm2d(8), relu=torch.nn.ReLU(inplace=True),
        pool=torch.nn.MaxPool2d(2),
        conv2=torch.nn.Conv2d(8, CHANNELS, 3, padding=1), bn2=torch.nn.BatchNorm2d(CHANNELS), relu6=torch.nn.ReLU6(),
    )).eval()
    with torch.no_grad():  # contrast on photos well above the float noise
        net[0].weight.mul_(4)
        net[4].weight.mul_(4)
    photos, _ = probe_photos()
    prepared = Model.open(net, input_shape=(None, None, 3), preprocess="unit").prepare(photos, size=224)
    with torch.no_grad():
        head = net[:5]
        grey = head(torch.full((1, 3, SIZE, SIZE), 0.5))
        peak = torch.stack([head(torch.from_numpy(a).permute(2, 0, 1)[None]).amax(dim=(0, 2, 3))
                            for a in prepared.arrays]).amax(0)
        assert bool(torch.all(peak[:-1] > grey.amax(dim=(0, 2, 3))[:-1] + 0.2))
        top_grey = grey.amax(dim=(0, 2, 3))
        bias = -(top_grey + 0.3 * (peak - top_grey))
        bias[CHANNELS - 1] = -1e4
        net[5].bias.copy_(bias)
    return net


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.open(_grey_dead_net(), input_shape=(None, None, 3), preprocess="unit")


def test_the_channels_are_zero_on_grey_and_live_on_photos(model):
    grey = np.full((1, SIZE, SIZE, 3), 0.5, np.float32)
    got: list[np.ndarray] = []
    model.adapter.run(grey, [7], lambda _r, a: got.append(a))
    assert np.all(got[0] == 0)
    probe = probe_channels(model, 7, preprocess="unit", size=None, channels=CHANNELS)
    assert probe is not None
    assert probe.dead.tolist() == [False] * (CHANNELS - 1) + [True]
    assert np.all(probe.peak[:-1] > 0)
    assert probe.images[0].startswith("scikit-image chelsea")


def test_a_redirected_pass_gives_a_gradient_where_the_plain_one_gives_none(model):
    grey = np.full((2, SIZE, SIZE, 3), 0.5, np.float32)
    target = Target(layer=7, channels=(1,), reduce="mean")
    plain = model.adapter.gradients(grey, target, wrt_input=True, need_output=False)
    with redirected_gradients():
        redirected = model.adapter.gradients(grey, target, wrt_input=True, need_output=False)
    assert np.abs(plain.input_grad).max() == 0
    assert np.abs(redirected.input_grad).max() > 0
    # outside the block, the pass is the plain one again
    again = model.adapter.gradients(grey, target, wrt_input=True, need_output=False)
    assert np.abs(again.input_grad).max() == 0


def test_the_redirect_leaves_a_live_gradient_alone():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(4, 2, 3), torch.nn.Hardswish()).eval()
    adapter = open_model(net, input_shape=(None, None, 3))
    x = np.random.default_rng(0).uniform(0, 1, (2, 20, 20, 3)).astype(np.float32)
    target = Target(layer=5, channels=(0,), reduce="mean")
    plain = adapter.gradients(x, target, wrt_input=True, need_output=False)
    assert np.abs(plain.input_grad).max() > 0
    # ReLU and hard-swish gradients are unchanged where something gets through; max-pool spreads
    net_no_pool = torch.nn.Sequential(net[0], net[1], net[3], net[4]).eval()
    a2 = open_model(net_no_pool, input_shape=(None, None, 3))
    t2 = Target(layer=4, channels=(0,), reduce="mean")
    p2 = a2.gradients(x, t2, wrt_input=True, need_output=False)
    with redirected_gradients():
        r2 = a2.gradients(x, t2, wrt_input=True, need_output=False)
    np.testing.assert_allclose(r2.input_grad, p2.input_grad, rtol=1e-5, atol=1e-7)


def test_every_channel_live_on_photos_gets_a_picture_and_a_positive_activation(model):
    vis = visualize(model, "relu6", "all", steps=STEPS, size=SIZE, batch_size=CHANNELS)
    live = [c for c, d in zip(vis.channels, vis.dead) if not d]
    assert live == list(range(CHANNELS - 1)) and vis.dead[-1]
    for i, c in enumerate(vis.channels[:-1]):
        contrast = float(vis.images[i].std())
        assert contrast > 0.02, f"channel {c}: flat picture (std {contrast:.4f})"
        assert vis.activations[i] > 0, f"channel {c}: activation {vis.activations[i]}"
    record = vis.to_json()
    assert record["dead_channels"] == [CHANNELS - 1]
    assert record["probe_images"][0] == "scikit-image chelsea"
    assert record["images"][-1]["dead_on_probe_images"] is True
    assert "dead (zero on the probe photos scikit-image chelsea" in vis.dead_note()


def test_without_the_redirect_the_channels_stay_grey(model, monkeypatch):
    """The failure this fixes: every live channel's picture stays flat without the redirected gradient."""
    monkeypatch.setattr(optimize, "redirect_steps", lambda steps, adapter=None: 0)
    vis = visualize(model, "relu6", "0-1", steps=32, size=SIZE, batch_size=CHANNELS)
    assert np.all(vis.activations == 0)
    assert all(float(img.std()) < 0.02 for img in vis.images)


def test_the_atlas_crosses_out_dead_channels_only(model):
    vis = visualize(model, "relu6", "2-3", steps=2, size=SIZE)
    crossed = vis.atlas(title=False, numbers=False)
    vis.dead = [False] * len(vis.channels)
    plain = vis.atlas(title=False, numbers=False)
    diff = np.any(crossed != plain, axis=-1)
    ys, xs = np.nonzero(diff)
    assert diff.any() and xs.min() > plain.shape[1] // 2  # only the second tile (channel 3) changed


def _dead_on_grey_twins(keras):
    """A Keras net (conv-ReLU, max-pool, conv-ReLU6, hard-swish conv) and its PyTorch twin, the last
    biases so negative that every unit is zero on grey."""
    rng = np.random.default_rng(0)
    k1, k2 = rng.normal(size=(3, 3, 3, 4)).astype(np.float32), rng.normal(size=(3, 3, 4, 3)).astype(np.float32)
    b2 = np.full(3, -50.0, np.float32)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(3, 3, name="c2")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x)
    kmodel = keras.Model(inputs, x)
    kmodel.get_layer("c1").set_weights([k1, np.zeros(4, np.float32)])
    kmodel.get_layer("c2").set_weights([k2, b2])
    twin = torch.nn.Sequential(OrderedDict(c1=torch.nn.Conv2d(3, 4, 3), r1=torch.nn.ReLU(), pool=torch.nn.MaxPool2d(2),
                                           c2=torch.nn.Conv2d(4, 3, 3), relu6=torch.nn.ReLU6())).eval()
    with torch.no_grad():
        twin.c1.weight.copy_(torch.from_numpy(k1.transpose(3, 2, 0, 1)))
        twin.c1.bias.zero_()
        twin.c2.weight.copy_(torch.from_numpy(k2.transpose(3, 2, 0, 1)))
        twin.c2.bias.copy_(torch.from_numpy(b2))
    return Model.open(kmodel, preprocess="unit"), Model.open(twin, input_shape=(16, 16, 3), preprocess="unit")


@pytest.mark.keras
def test_keras_redirects_as_pytorch_does(keras):
    kmodel, tmodel = _dead_on_grey_twins(keras)
    grey = np.full((2, 16, 16, 3), 0.5, np.float32)
    grey[1] += np.random.default_rng(1).uniform(-0.1, 0.1, (16, 16, 3)).astype(np.float32)
    got = {}
    for name, model in (("keras", kmodel), ("torch", tmodel)):
        row = next(layer.index for layer in model.layers() if layer.name == "relu6")
        target = Target(layer=row, channels=(1,), reduce="mean")
        plain = model.adapter.gradients(grey, target, wrt_input=True, need_output=False)
        assert np.abs(plain.input_grad).max() == 0, name
        with redirected_gradients():
            got[name] = model.adapter.gradients(grey, target, wrt_input=True, need_output=False).input_grad
        assert np.abs(got[name]).max() > 0, name
    np.testing.assert_allclose(got["keras"], got["torch"], rtol=1e-4, atol=1e-6)
