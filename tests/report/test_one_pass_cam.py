"""The report's one pass serves its Grad-CAM: the same maps as ``heatmaps()``, and ONE forward per batch.

The report runs each batch of images once through the model
(:class:`convlens.methods.RecordedForward`: the adapter's ``run_ranked``
records the CAM layer's gradients of each image's top classes in that pass),
and the heatmaps section computes Grad-CAM from them
(:meth:`convlens.methods.GradientCam.from_gradients`). Checked on the trained
demo CNN (Keras) and on a small PyTorch CNN ending in a softmax (the logit
branch), against ``heatmaps(..., method="gradcam")``, which runs its own
gradient passes; and by counting the adapter's passes during a report.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convlens
from convlens import Lens
from convlens.heatmaps import compute_heatmaps
from convlens.images import prepare_batch
from convlens.methods import GradCAM, RecordedForward, resolve_layer
from convlens.passes import run_pass

TOL = 1e-5


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("digits")
    flipped = d / "flipped.png"
    Image.open(convlens.DEMO_IMAGE).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    return [Path(convlens.DEMO_IMAGE), flipped]


def _torch_lens() -> Lens:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 10), nn.Softmax(dim=1),
    ).eval()
    return Lens(net, input_shape=(32, 32, 3))


def _photos(tmp_path: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]


def _one_pass(lens: Lens, images, top: int):
    """The report's way: one recorded pass, then Grad-CAM from what it recorded."""
    model = lens.model
    prepared = prepare_batch(images, model.input_shape, size=None, preprocess=model.preprocess, model_name=model.name)
    forward = RecordedForward(model.adapter, resolve_layer(model.adapter.layers(), None), top)
    assert forward.unavailable is None
    layers = lens.select("conv")
    result = run_pass(model, layers, prepared.arrays, [], forward=forward)
    got = compute_heatmaps(model, prepared, [GradCAM()], top=top, class_names=model.class_names()[0],
                           outputs=result.outputs, recorded=forward)
    return got, forward


def _compare(lens: Lens, images, top: int) -> None:
    got, forward = _one_pass(lens, images, top)
    for i in range(len(images)):
        assert forward.recorded(i) is not None  # every image's CAM came from the one pass
    want = lens.heatmaps(images, method="gradcam", top=top)
    assert len(got.entries) == len(want.entries) == len(images) * top
    for a, b in zip(got.entries, want.entries):
        assert (a.image, a.class_index, a.label, a.layer, a.flat) == (b.image, b.class_index, b.label, b.layer, b.flat)
        assert a.score == pytest.approx(b.score, rel=TOL, abs=TOL)
        assert a.probability == pytest.approx(b.probability, rel=TOL, abs=TOL)
        np.testing.assert_allclose(a.map, b.map, rtol=0, atol=TOL)
    for a, b in zip(got.results["gradcam"], want.results["gradcam"]):
        np.testing.assert_allclose(a.raw, b.raw, rtol=TOL, atol=TOL * float(np.abs(b.raw).max()))


@pytest.mark.keras
def test_one_pass_gradcam_equals_heatmaps_on_the_demo_cnn(keras, digits):
    _compare(Lens("demo"), digits, top=3)
    _compare(Lens("demo"), digits, top=1)  # top-1: both images in one batch


def test_one_pass_gradcam_equals_heatmaps_on_a_torch_cnn_with_a_softmax(tmp_path):
    lens = _torch_lens()
    _compare(lens, _photos(tmp_path), top=3)
    got, forward = _one_pass(lens, _photos(tmp_path), 2)
    assert forward._images[0][0].logits  # the score is the softmax's input, as in gradients()


class _Counting:
    """Wraps an adapter's pass methods and counts their calls."""

    def __init__(self, adapter, monkeypatch) -> None:
        self.calls: list[tuple[str, int]] = []
        for name in ("run", "gradients", "run_ranked"):
            original = getattr(adapter, name, None)
            if original is None:
                continue

            def counted(batch, *args, __name=name, __original=original, **kwargs):
                self.calls.append((__name, len(batch)))
                return __original(batch, *args, **kwargs)

            monkeypatch.setattr(adapter, name, counted)


def _figures(page: str) -> list[tuple[str, np.ndarray]]:
    body = re.search(r'<section class="cl-section" id="cl-heatmaps">(.*?)</section>', page, re.DOTALL).group(1)
    uris = re.findall(r'data-src="data:image/(?:jpeg|png);base64,([^"]+)"', body)
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", body)
    assert len(uris) == len(captions) > 0
    return [(c, np.asarray(Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB"), np.int16))
            for c, u in zip(captions, uris)]


@pytest.mark.keras
@pytest.mark.parametrize("which", ["demo", "torch"])
def test_the_report_runs_one_forward_pass_per_batch_and_its_section_is_unchanged(keras, digits, which,
                                                                               monkeypatch, tmp_path):
    lens = Lens("demo") if which == "demo" else _torch_lens()
    images = digits if which == "demo" else _photos(tmp_path)
    sections = ["maps", "stats", "predictions", "heatmaps"]
    counter = _Counting(lens.model.adapter, monkeypatch)
    report = lens.report(images, sections=sections)
    # the demo's two digits (and the two photos) share one batch: one pass, the recording one
    assert counter.calls == [("run_ranked", 2)]
    assert "heatmaps" in report.sections

    # the section as it was before: the plain forward pass, then Grad-CAM's own gradient passes
    monkeypatch.setattr("convlens.report.build.recorded_forward", lambda model, options: None)
    counter.calls.clear()
    before = lens.report(images, sections=sections)
    assert counter.calls[0] == ("run", 2) and {name for name, _ in counter.calls[1:]} == {"gradients"}
    now, then = _figures(report.html), _figures(before.html)
    assert [c for c, _ in now] == [c for c, _ in then]  # classes, names, probabilities
    for (_, a), (_, b) in zip(now, then):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 2  # maps within 1e-5: a colour step at most, after JPEG
