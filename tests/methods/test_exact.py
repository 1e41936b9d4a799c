"""Every method on tiny hand-set networks whose maps are worked out by hand.

The CAM network (conftest ``tiny``): a 2x2 one-channel image
``x = [[1, 2], [3, 4]]``; a 1x1 conv with weights ``[1, -1]`` and biases
``[0, 5]`` gives channel 0 = ``x`` and channel 1 = ``5 - x = [[4, 3], [2, 1]]``
(both positive, so the ReLU keeps them); global average pooling; a dense
layer ``[[1, -1], [2, 1]]``: logit 0 = mean0 + 2 mean1 = 2.5 + 5 = 7.5, logit 1
= mean1 - mean0 = 0. The gradient of logit k at every position of channel c is
``w2[c, k] / 4``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from convlens import methods
from convlens.core.cam import minmax, resize_bilinear

CH0 = np.array([[1.0, 2.0], [3.0, 4.0]])
CH1 = 5.0 - CH0


def _run(name, adapter, x, **kw):
    opts = kw.pop("options", {})
    return methods.create(name, **opts).compute(adapter, x, **kw)


@pytest.mark.parametrize("name", ["gradcam", "hirescam", "xgradcam"])
def test_gap_network_class_0(tiny, name):
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    r = _run(name, tiny, x)
    # Weights 1/4 and 2/4 (uniform gradients: HiResCAM and XGrad-CAM give Grad-CAM's map).
    expected = 0.25 * CH0 + 0.5 * CH1  # [[2.25, 2.0], [1.75, 1.5]]
    np.testing.assert_allclose(r.raw[0], expected, rtol=1e-6)
    np.testing.assert_allclose(r.raw[0], [[2.25, 2.0], [1.75, 1.5]], rtol=1e-6)
    assert r.raw[0].sum() == pytest.approx(7.5)  # a GAP network's CAM sums to the logit (bias 0)
    np.testing.assert_allclose(r.maps[0], [[1, 2 / 3], [1 / 3, 0]], atol=1e-6)
    assert r.classes.tolist() == [0] and r.labels == ["0"] and r.scores[0] == pytest.approx(7.5)
    assert r.layer.name == "relu" and r.kind == "cam" and not r.signed


def test_gap_network_class_1_relu_and_layercam(tiny):
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    r = _run("gradcam", tiny, x, target=1)
    np.testing.assert_allclose(
        r.raw[0], 0.25 * (CH1 - CH0), rtol=1e-6
    )  # [[.75, .25], [-.25, -.75]]
    np.testing.assert_allclose(r.maps[0], [[1, 1 / 3], [0, 0]], atol=1e-6)
    lc = _run("layercam", tiny, x, target=1)
    # Only channel 1 has a positive gradient (1/4): LayerCAM = ch1 / 4.
    np.testing.assert_allclose(lc.raw[0], CH1 / 4, rtol=1e-6)


def test_grad_cam_plus_plus_alphas(tiny):
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    r = _run("gradcam++", tiny, x)
    # alpha = g^2 / (2 g^2 + sum(A) g^3), sum(A) = 10 in both channels:
    # g = 1/4: alpha = (1/16) / (1/8 + 10/64) = 2/9, weight = 4 * g * alpha = 2/9
    # g = 1/2: alpha = (1/4) / (1/2 + 10/8) = 1/7, weight = 4 * g * alpha = 2/7
    np.testing.assert_allclose(r.raw[0], 2 / 9 * CH0 + 2 / 7 * CH1, rtol=1e-5)


def test_eigen_cam_of_rank_one_activations(cam_net):
    u = np.array([[1.0, 2.0], [3.0, 4.0]])
    net = cam_net(
        [[1.0, 2.0]], [0.0, 0.0], [[1.0], [1.0]], [0.0]
    )  # A[p, c] = u[p] * v[c], v = (1, 2)
    r = _run("eigencam", net, u.reshape(1, 2, 2, 1).astype(np.float32))
    # Centred A = (u - 2.5) v^T: rank one, first component v/|v|, projection (u - 2.5) |v|,
    # oriented to agree with the mean activation 1.5 u.
    np.testing.assert_allclose(r.raw[0], (u - 2.5) * math.sqrt(5), rtol=1e-5)
    # Before the ReLU (layer "conv") with v = (-1, -2): the layer is most active where u is
    # smallest, and the sign convention points the map there.
    neg = cam_net([[-1.0, -2.0]], [0.0, 0.0], [[1.0], [1.0]], [0.0])
    r = _run("eigencam", neg, u.reshape(1, 2, 2, 1).astype(np.float32), layer="conv")
    np.testing.assert_allclose(r.raw[0], -(u - 2.5) * math.sqrt(5), rtol=1e-5)
    assert r.maps[0, 0, 0] == pytest.approx(1.0, abs=1e-6)


def test_score_cam_by_hand(tiny):
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    r = _run("scorecam", tiny, x)
    # Channel 0's mask (x - 1) / 3 gives the input [[0, 2/3], [2, 4]]: logit 0 = 5/3 + 20/3 = 25/3.
    # Channel 1's mask (ch1 - 1) / 3 gives [[1, 4/3], [1, 0]]: logit 0 = 5/6 + 50/6 = 55/6.
    w1 = 1 / (1 + math.exp(-(55 / 6 - 25 / 3)))
    np.testing.assert_allclose(r.raw[0], (1 - w1) * CH0 + w1 * CH1, rtol=1e-5)


def test_score_cam_skips_constant_channels_without_changing_the_map(cam_net):
    # A third channel that the ReLU zeroes everywhere, and a fourth that is constant (3).
    net = cam_net(
        [[1.0, -1.0, 1.0, 0.0]],
        [0.0, 5.0, -100.0, 3.0],
        [[1.0, -1.0], [2.0, 1.0], [4.0, 0.0], [0.5, 0.0]],
        [0.0, 0.0],
    )
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    r = _run("scorecam", net, x)
    # Every channel scored on its own, as pytorch-grad-cam does: a constant channel's mask is 0.
    acts = net.forward(x.astype(float))[2][0]
    scores = []
    for c in range(4):
        a = acts[..., c]
        mask = (a - a.min()) / (a.max() - a.min() + 1e-8)
        scores.append(net.forward(x.astype(float) * mask[None, :, :, None])[-1][0, 0])
    w = np.exp(scores - np.max(scores))
    w /= w.sum()
    np.testing.assert_allclose(r.raw[0], np.einsum("hwc,c->hw", acts, w), rtol=1e-5)
    # One forward for the activations, two for the varying channels, one for both constant ones.
    assert net.items_run == 1 + 2 + 1


def test_segmentation_target_sums_over_the_box(cam_net):
    net = cam_net([[1.0, -1.0]], [0.0, 5.0], [[1.0, -1.0], [2.0, 1.0]], [0.0, 0.0], seg=True)
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    # Class 0's score at each pixel is ch0 + 2 ch1 = 10 - x: summed, 30; in the left column, 16.
    r = _run("gradcam", net, x, target=0)
    assert r.scores[0] == pytest.approx(30.0)
    # Without a box the gradient is (1, 2) at every position: Grad-CAM = ch0 + 2 ch1.
    np.testing.assert_allclose(r.raw[0], CH0 + 2 * CH1, rtol=1e-6)
    boxed = _run("gradcam", net, x, target=0, box=(0, 0, 2, 1))
    assert boxed.scores[0] == pytest.approx(16.0)
    # Gradient 1 (channel 0) and 2 (channel 1) in the left column, 0 elsewhere: mean 1/2 and 1.
    np.testing.assert_allclose(boxed.raw[0], 0.5 * CH0 + 1.0 * CH1, rtol=1e-6)
    hires = _run("hirescam", net, x, target=0, box=(0, 0, 2, 1))
    np.testing.assert_allclose(hires.raw[0], [[1 + 8, 0], [3 + 4, 0]], rtol=1e-6)


def test_several_classes_at_once_are_image_major(tiny):
    x = np.concatenate([np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)] * 2)
    x[1] *= 2
    r = _run("gradcam", tiny, x, target=[1, 0])
    assert r.images.tolist() == [0, 0, 1, 1] and r.classes.tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(r.raw[1], 0.25 * CH0 + 0.5 * CH1, rtol=1e-6)
    assert tiny.items_grad == 4 and tiny.items_run == 0  # named classes: no extra forward pass


def test_cam_maps_are_the_raw_maps_relu_upsampled_and_scaled(cam_net):
    rng = np.random.default_rng(0)
    net = cam_net(
        rng.normal(size=(3, 5)),
        rng.normal(size=5),
        rng.normal(size=(5, 4)),
        np.zeros(4),
        size=(6, 6),
    )
    x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    for name in ("gradcam", "eigencam", "scorecam"):
        r = _run(name, net, x)
        np.testing.assert_allclose(
            r.maps, minmax(resize_bilinear(np.maximum(r.raw, 0), (6, 6))), atol=1e-7
        )


# --------------------------------------------------------------------------- input attributions


def _z():
    return np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)


def test_occlusion_of_a_linear_model(linear_net):
    net = linear_net(np.ones((3, 3, 1, 1)))
    r = _run("occlusion", net, _z(), options={"window": 2, "stride": 1})
    # Windows start at rows/cols 0 and 1: sums 12, 16, 24, 28; a pixel averages those over it.
    np.testing.assert_allclose(
        r.raw[0, ..., 0], [[12, 14, 16], [18, 20, 22], [24, 26, 28]], rtol=1e-6
    )
    np.testing.assert_allclose(
        r.maps[0], np.array([[12, 14, 16], [18, 20, 22], [24, 26, 28]]) / 28, rtol=1e-6
    )
    assert r.signed and r.extra == {"window": 2, "stride": 1}
    one = _run("occlusion", net, _z(), options={"window": 1, "stride": 1})
    np.testing.assert_allclose(one.raw[0, ..., 0], _z()[0, ..., 0], rtol=1e-6)  # w * x


def test_occlusion_windows_cut_at_the_border(linear_net):
    net = linear_net(np.ones((3, 3, 1, 1)))
    r = _run("occlusion", net, _z(), options={"window": 2, "stride": 2})
    # Windows [0, 2) and [2, 3) along each axis: sums 12, 9 (3+6), 15 (7+8), 9.
    np.testing.assert_allclose(r.raw[0, ..., 0], [[12, 12, 9], [12, 12, 9], [15, 15, 9]], rtol=1e-6)


def test_saliency_smoothgrad_and_ig_of_a_linear_model(linear_net):
    w = np.zeros((2, 2, 2, 2))
    w[..., 0, 0] = [[1, -3], [0.5, 2]]
    w[..., 1, 0] = [[-2, 1], [1, -1]]
    w[..., :, 1] = 1.0
    net = linear_net(w, b=[1.0, 0.0])
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2) / 8
    sal = _run("saliency", net, x, target=0)
    np.testing.assert_allclose(sal.raw[0], np.abs(w[..., 0]), rtol=1e-6)
    np.testing.assert_allclose(sal.maps[0], [[2 / 3, 1], [1 / 3, 2 / 3]], rtol=1e-6)
    sg = _run("smoothgrad", net, x, target=0, options={"samples": 7})
    np.testing.assert_allclose(
        sg.raw, sal.raw, rtol=1e-6
    )  # the gradient does not depend on the noise
    ig = _run("ig", net, x, target=0, options={"steps": 5, "baseline": "blur"})
    base = ig.extra
    from convlens.core.cam import gauss_blur

    b = gauss_blur(x, 1.0)
    np.testing.assert_allclose(ig.raw[0], (x - b)[0] * w[..., 0], rtol=1e-5, atol=1e-7)
    assert abs(base["completeness_gap"][0]) < 1e-6
    assert base["score_difference"][0] == pytest.approx(
        float(((x - b)[0] * w[..., 0]).sum()), rel=1e-6
    )
    assert ig.maps.min() >= -1 and ig.maps.max() <= 1 and ig.signed


def test_smoothgrad_noise_level_and_batches(cam_net):
    rng = np.random.default_rng(1)
    net = cam_net(
        rng.normal(size=(1, 3)),
        rng.normal(size=3),
        rng.normal(size=(3, 2)),
        np.zeros(2),
        size=(8, 8),
    )
    x = rng.uniform(0, 2, size=(1, 8, 8, 1)).astype(np.float32)
    spread = float(x.max() - x.min())
    r = _run(
        "smoothgrad", net, x, target=1, options={"samples": 40, "noise": 0.2, "batch_size": 16}
    )
    assert [len(b) for b in net.batches] == [16, 16, 8]
    noise = np.concatenate(net.batches) - x
    assert np.std(noise) == pytest.approx(0.2 * spread, rel=0.05)
    again = _run("smoothgrad", net, x, target=1, options={"samples": 40, "noise": 0.2})
    np.testing.assert_allclose(r.raw, again.raw, rtol=1e-6)  # seeded, whatever the batches


def test_integrated_gradients_steps_go_in_batches(cam_net):
    rng = np.random.default_rng(2)
    net = cam_net(
        rng.normal(size=(2, 4)),
        rng.normal(size=4),
        rng.normal(size=(4, 3)),
        np.zeros(3),
        size=(5, 5),
    )
    x = rng.normal(size=(2, 5, 5, 2)).astype(np.float32)
    r = _run("ig", net, x, options={"steps": 64, "batch_size": 10})
    # 2 images x 64 points, plus each image and its baseline for the completeness gap.
    assert net.items_grad == 2 * 64 + 4 and max(len(b) for b in net.batches) == 10
    # ReLU networks are piecewise linear: 64 Gauss-Legendre points leave a small gap.
    assert np.all(
        np.abs(r.extra["completeness_gap"]) < 0.05 * np.abs(r.extra["score_difference"]) + 1e-3
    )
