"""Token models: ViT's ``(N, 1 + h * w, C)`` outputs as ``(h, w, C)`` maps, Swin's ``(N, H, W, C)`` stages.

Grad-CAM agrees with pytorch-grad-cam run with its documented ``reshape_transform``
(class token dropped, tokens reshaped to the patch grid) on a small ViT and on
torchvision's ViT-B/16; feature maps, statistics, target-layer gradients and
feature visualisation work on token rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from convlens import methods
from convlens.adapters._tokens import TokenGrid, find_token_grids
from convlens.adapters.base import Target
from convlens.model import Model
from convlens.visualize import visualize

LAST_LN1 = "encoder.layers.encoder_layer_1.ln_1"


def _vit(image_size: int = 64, layers: int = 2, hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=image_size, patch_size=16, num_layers=layers,
                                                 num_heads=2, hidden_dim=hidden, mlp_dim=2 * hidden,
                                                 num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    return model


def _reshape_transform(grid: tuple[int, int]):
    def transform(tensor: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's ViT example
        result = tensor[:, 1:, :].reshape(tensor.size(0), grid[0], grid[1], tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return transform


def _image(size: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    x = np.random.default_rng(seed).normal(size=(1, size, size, 3)).astype(np.float32)
    return x, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def vit() -> tuple[torch.nn.Module, Model]:
    module = _vit()
    return module, Model.open(module)


def _row(model: Model, name: str):
    return next(layer for layer in model.layers() if layer.name == name)


def test_token_rows_are_maps_on_the_patch_grid(vit):
    _, model = vit
    assert model.input_shape == (64, 64, 3)  # read from the model's image_size
    table = model.layers()
    proj = _row(model, "conv_proj")
    assert proj.output_shape == (4, 4, 32) and "tokens" not in proj.extra
    tokens = [layer for layer in table if "tokens" in layer.extra]
    heads = [layer.name for layer in table if layer.name.split(".")[0] == "heads"]
    assert [layer.name for layer in tokens] == [layer.name for layer in table[2:] if layer.name not in heads]
    for layer in tokens:
        assert layer.extra["tokens"] == {"prefix": 1, "grid": (4, 4)}
        assert layer.output_shape[:2] == (4, 4)
    assert _row(model, "encoder.layers.encoder_layer_0.mlp.1").output_shape == (4, 4, 64)


def test_the_receptive_field_is_the_patch_before_attention_and_global_after(vit):
    _, model = vit
    before = _row(model, "encoder.layers.encoder_layer_0.ln_1")
    assert before.rf_size == (16, 16) and before.rf_jump == (16, 16) and not before.global_rf
    for name in ("encoder.layers.encoder_layer_0.self_attention", "encoder.layers.encoder_layer_0.mlp.3",
                 "encoder.ln"):
        layer = _row(model, name)
        assert layer.global_rf and layer.rf_size is None, name


def test_feature_maps_are_the_patch_tokens_on_their_grid(vit):
    module, model = vit
    x, t = _image(64)
    row = _row(model, "encoder.ln")
    got: list[np.ndarray] = []
    model.adapter.run(x, [row.index], lambda _r, a: got.append(a))
    kept = {}
    handle = module.encoder.ln.register_forward_hook(lambda m, a, out: kept.setdefault("t", out.detach()))
    try:
        with torch.no_grad():
            module(t)
    finally:
        handle.remove()
    expected = kept["t"][:, 1:].reshape(1, 4, 4, 32).numpy()
    assert got[0].shape == (1, 4, 4, 32)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-6)


def test_statistics_count_the_channels_of_a_token_row(vit):
    from convlens import Lens

    _, model = vit
    x, _ = _image(64)
    stats = Lens(model).channel_stats(np.clip(x[0] * 40 + 128, 0, 255).astype(np.uint8), [LAST_LN1])
    (layer,) = stats
    assert layer.channels == 32


def test_grad_cam_on_tokens_matches_pytorch_grad_cam_with_its_reshape_transform(vit):
    module, model = vit
    x, t = _image(64)
    with torch.no_grad():
        top = int(module(t).argmax())
    with GradCAM(module, [module.encoder.layers[-1].ln_1], reshape_transform=_reshape_transform((4, 4))) as cam:
        expected = cam(t, targets=[ClassifierOutputTarget(top)])
    got = methods.create("gradcam").compute(model.adapter, x, target=top, layer=LAST_LN1)
    assert got.maps.shape == expected.shape == (1, 64, 64)
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    assert got.maps.std() > 0.05


def test_grad_cam_on_vit_b_16_matches_pytorch_grad_cam():
    torch.manual_seed(0)
    module = torchvision.models.vit_b_16(weights=None).eval()
    torch.nn.init.normal_(module.heads.head.weight, std=0.02)
    model = Model.open(module)
    assert model.input_shape == (224, 224, 3)
    assert _row(model, "encoder.layers.encoder_layer_11.ln_1").output_shape == (14, 14, 768)
    x, t = _image(224, seed=3)
    with torch.no_grad():
        top = int(module(t).argmax())
    with GradCAM(module, [module.encoder.layers[-1].ln_1], reshape_transform=_reshape_transform((14, 14))) as cam:
        expected = cam(t, targets=[ClassifierOutputTarget(top)])
    got = methods.create("gradcam").compute(model.adapter, x, target=top,
                                            layer="encoder.layers.encoder_layer_11.ln_1")
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)
    assert got.maps.std() > 0.05


def test_a_score_at_a_token_row_is_read_on_its_grid(vit):
    """A target at a token row (feature visualisation's channel mean) takes its cotangent as a map;
    the class token gets none, and the input gradient is autograd's for the patch tokens' mean."""
    module, model = vit
    x, t = _image(64, seed=1)
    row = _row(model, LAST_LN1)
    g = model.adapter.gradients(x, Target(layer=row.index, channels=(5,), reduce="mean"), wrt_input=True)
    kept = {}
    handle = module.encoder.layers[-1].ln_1.register_forward_hook(lambda m, a, out: kept.setdefault("t", out))
    try:
        t = t.clone().requires_grad_()
        module(t)
    finally:
        handle.remove()
    score = kept["t"][:, 1:, 5].mean()
    (expected,) = torch.autograd.grad(score, t)
    assert g.score[0] == pytest.approx(float(score.detach()), rel=1e-4)
    np.testing.assert_allclose(g.input_grad, expected.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-6)


def test_feature_visualisation_runs_on_a_token_row(vit):
    _, model = vit
    vis = visualize(model, "encoder.layers.encoder_layer_1.mlp.1", "0-1", steps=4, size=32)
    assert vis.images.shape == (2, 32, 32, 3) and np.isfinite(vis.activations).all()


def test_swin_stages_are_maps_and_grad_cam_matches_pytorch_grad_cam():
    torch.manual_seed(0)
    module = torchvision.models.swin_t(weights=None).eval()
    model = Model.open(module, input_shape=(224, 224, 3))
    norm = _row(model, "norm")
    assert norm.output_shape == (7, 7, 768) and "tokens" not in norm.extra  # (N, H, W, C) already
    # the last stage's 7 x 7 windows cover its 7 x 7 grid: global; the first stage's do not
    assert _row(model, "features.7.0.attn").global_rf and norm.global_rf
    assert not _row(model, "features.1.0.attn").global_rf
    x, t = _image(224, seed=2)
    with torch.no_grad():
        top = int(module(t).argmax())
    with GradCAM(module, [module.norm], reshape_transform=lambda a: a.permute(0, 3, 1, 2)) as cam:
        expected = cam(t, targets=[ClassifierOutputTarget(top)])
    got = methods.create("gradcam").compute(model.adapter, x, target=top, layer=norm)  # "norm" is also a kind
    np.testing.assert_allclose(got.maps, expected, atol=1e-4)


def test_token_grids_need_a_patch_grid_and_a_small_prefix():
    rows = [((4, 4, 8), False, True), ((17, 8), True, False), ((16, 8), True, False), ((30, 8), True, False),
            ((8, 17), False, False)]
    assert find_token_grids(rows) == {1: TokenGrid(1, (4, 4)), 2: TokenGrid(0, (4, 4))}
    assert find_token_grids([((17, 8), True, False)]) == {}  # no convolution before: no grid
    grid = TokenGrid(2, (2, 3))
    tokens = np.arange(1 * 8 * 4, dtype=np.float32).reshape(1, 8, 4)
    back = grid.to_tokens(grid.to_grid(tokens))
    assert back[:, :2].sum() == 0 and np.array_equal(back[:, 2:], tokens[:, 2:])


def test_an_encoder_output_is_drawn_as_a_grid_not_a_strip(vit):
    from convlens.render.maps import RenderOptions, render_map

    _, model = vit
    x, _ = _image(64)
    got: list[np.ndarray] = []
    model.adapter.run(x, [_row(model, "encoder.ln").index], lambda _r, a: got.append(a))
    drawn = render_map(got[0][0], RenderOptions())
    assert drawn.layout == "grid" and drawn.channels_shown == 32


def test_dataset_examples_of_a_token_row_are_patches_and_global_rows_whole_images(tmp_path):
    from PIL import Image

    from convlens import Lens

    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / f"im{i}.png")
    lens = Lens(_vit(), preprocess="unit")
    result = lens.dataset(tmp_path, layers=f"encoder.layers.encoder_layer_0.ln_1,{LAST_LN1}", k=2)
    patch = result.layer("encoder.layers.encoder_layer_0.ln_1")
    assert patch.channels == 32
    crops = result.crops("encoder.layers.encoder_layer_0.ln_1", 3, size=16)
    assert len(crops) == 2 and crops[0].shape == (16, 16, 3)
    # a 16-pixel field: each crop is one of the images' 16 x 16 patches, exactly
    patches = [np.asarray(Image.open(tmp_path / f"im{i}.png"))[16 * r:16 * r + 16, 16 * c:16 * c + 16]
               for i in range(3) for r in range(4) for c in range(4)]
    assert all(any(np.array_equal(crop, p) for p in patches) for crop in crops)
    assert len(result.crops(LAST_LN1, 3, size=16)) == 2
