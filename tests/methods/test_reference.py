"""Agreement with the reference implementations on torchvision ResNet-18.

Random weights, seed 0, eval mode.

pytorch-grad-cam 1.5.7 for every CAM method it has, captum 0.9.0 for saliency,
Integrated Gradients and occlusion. Both are test-only dependencies.

convlens follows pytorch-grad-cam's choices on purpose (same epsilons; CAMs
ReLU'd, upsampled with OpenCV's half-pixel bilinear ``cv2.resize`` and
min-max scaled; Score-CAM's masks upsampled corner-aligned and min-max scaled,
its scores the raw outputs softmaxed over channels), except Eigen-CAM's sign,
which pytorch-grad-cam leaves to LAPACK and convlens fixes (the map agrees
with the mean activation): the reference below applies the same rule to
pytorch-grad-cam's own projection.

Sizes: the gradient CAMs, Eigen-CAM and saliency use one 224x224 image on
layer4, as the issue asks. Score-CAM (one forward per channel) runs on a 64x64
image and layer1 (64 channels, 16x16 maps; layer4's 512 channels would cost
1024 forwards between the two libraries), IG (16 steps) and occlusion (36
patches) on a 64x64 image, to keep the test in seconds.

Integrated Gradients is compared with Gauss-Legendre (captum's default) and
the midpoint rule; captum's ``riemann_trapezoid`` weights sum to (n-1)/n, not
1, and convlens uses the trapezoid rule's own weights (tests/core/test_cam.py
checks both against captum's builders).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients, Occlusion, Saliency
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from convlens import methods
from convlens.adapters import open_model

LAYER = "layer4.1"  # torchvision's layer4[-1]: its last block, whose output is its final ReLU's


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return model, open_model(model)


def _image(size: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    x = np.random.default_rng(seed).normal(size=(1, size, size, 3)).astype(np.float32)
    return x, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def image224(resnet):
    x, t = _image(224)
    with torch.no_grad():
        top = int(resnet[0](t).argmax())
    return x, t, top


def test_the_default_layer_is_pytorch_grad_cams_layer4(resnet):
    assert methods.default_layer(resnet[1].layers()).name == LAYER


@pytest.mark.parametrize(
    "name, reference",
    [
        ("gradcam", GradCAM),
        ("gradcam++", GradCAMPlusPlus),
        ("xgradcam", XGradCAM),
        ("layercam", LayerCAM),
        ("hirescam", HiResCAM),
    ],
)
def test_gradient_cams_match_pytorch_grad_cam(resnet, image224, name, reference):
    model, adapter = resnet
    x, t, top = image224
    with reference(model, [model.layer4]) as cam:
        expected = cam(t, targets=[ClassifierOutputTarget(top)])
    got = methods.create(name).compute(adapter, x, target=top)
    assert got.maps.shape == expected.shape == (1, 224, 224)
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    assert got.maps.std() > 0.05  # a real map, not two blank ones


def test_grad_cam_top1_default(resnet, image224):
    model, adapter = resnet
    x, t, top = image224
    with GradCAM(model, [model.layer4]) as cam:
        expected = cam(t, targets=None)
    got = methods.create("gradcam").compute(adapter, x)
    assert got.classes.tolist() == [top] and got.layer.name == LAYER
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    with torch.no_grad():
        assert got.scores[0] == pytest.approx(float(model(t)[0, top]), rel=1e-4)


def test_eigen_cam_matches_pytorch_grad_cam_with_the_sign_fixed(resnet, image224):
    model, adapter = resnet
    x, t, _ = image224
    with EigenCAM(model, [model.layer4]) as cam:
        library = cam(t, targets=None)
    acts = {}

    def keep(module, args, output) -> None:
        acts["a"] = output.detach().numpy()

    handle = model.layer4.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(t)
    finally:
        handle.remove()
    projection = get_2d_projection(acts["a"])
    flipped = float((projection * acts["a"].mean(axis=1)).sum()) < 0
    if flipped:
        projection = -projection
    expected = scale_cam_image(scale_cam_image(np.maximum(projection, 0), (224, 224)))
    got = methods.create("eigencam").compute(adapter, x)
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    if not flipped:  # LAPACK chose convlens's sign: the library's own output agrees too
        np.testing.assert_allclose(got.maps, library, atol=1e-4)


def test_score_cam_matches_pytorch_grad_cam(resnet):
    model, adapter = resnet
    x, t = _image(64, seed=1)
    with torch.no_grad():
        top = int(model(t).argmax())
    # On layer1 (64 channels, 16x16 maps): layer4's 512 channels would cost 1024 forwards here.
    with ScoreCAM(model, [model.layer1]) as cam:
        cam.batch_size = 64
        expected = cam(t, targets=[ClassifierOutputTarget(top)])
    got = methods.create("scorecam").compute(adapter, x, target=top, layer="layer1.1.relu#2")
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    assert got.maps.std() > 0.05


def test_saliency_matches_captum(resnet, image224):
    model, adapter = resnet
    x, t, top = image224
    expected = Saliency(model).attribute(t.clone().requires_grad_(), target=top, abs=True)
    expected = expected.detach().permute(0, 2, 3, 1).numpy()
    got = methods.create("saliency").compute(adapter, x, target=top)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got.raw / scale, expected / scale, atol=1e-4)
    np.testing.assert_allclose(got.maps[0], expected[0].max(axis=-1) / expected.max(), atol=1e-4)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_integrated_gradients_matches_captum(resnet, method):
    model, adapter = resnet
    x, t = _image(64, seed=2)
    with torch.no_grad():
        top = int(model(t).argmax())
    attr, delta = IntegratedGradients(model).attribute(
        t, baselines=0.0, target=top, n_steps=16, method=method, return_convergence_delta=True
    )
    expected = attr.detach().permute(0, 2, 3, 1).numpy()
    got = methods.create("ig", steps=16, method=method, baseline="zero").compute(
        adapter, x, target=top
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got.raw / scale, expected / scale, atol=1e-4)
    gap, difference = got.extra["completeness_gap"][0], got.extra["score_difference"][0]
    assert abs(gap - float(delta[0])) < 1e-4 * abs(difference) + 1e-4
    summed = expected[0].sum(axis=-1)
    np.testing.assert_allclose(got.maps[0], summed / np.abs(summed).max(), atol=1e-4)


def test_occlusion_matches_captum(resnet):
    model, adapter = resnet
    x, t = _image(64, seed=3)
    with torch.no_grad():
        top = int(model(t).argmax())
    # 16x16 windows every 10 pixels: 6 x 6 patches, the last ones cut by the border at 64.
    expected = Occlusion(model).attribute(
        t,
        sliding_window_shapes=(3, 16, 16),
        strides=(3, 10, 10),
        baselines=0.0,
        target=top,
        perturbations_per_eval=36,
    )
    expected = expected.permute(0, 2, 3, 1).numpy()
    got = methods.create("occlusion", window=16, stride=10).compute(adapter, x, target=top)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got.raw / scale, expected / scale, atol=1e-4)
