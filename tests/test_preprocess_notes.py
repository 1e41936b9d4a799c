"""Preprocessing you can trust: a guessed preset says so everywhere, and names the fix;
``--labels imagenet`` names any 1000-way model's classes; a 1000-way model without names gets a hint."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from convlens import Lens
from convlens._errors import BadArgument
from convlens.classes import IMAGENET_SOURCE, imagenet_class_names
from convlens.cli import main
from convlens.model import Model


def _classifier(classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, classes)).eval()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("notes") / "net1000.onnx"
    torch.onnx.export(_classifier(), (torch.zeros(1, 3, 32, 32),), str(path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def call(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_an_in_memory_model_gets_a_guessed_preset_that_every_preparation_notes(photo):
    model = Model.open(_classifier())
    assert model.preprocess == "unit" and model.preprocess_guessed
    note = model.preprocess_note()
    assert note is not None and "guessed" in note and "--preprocess" in note and "preprocess=" in note
    assert model.prepare(str(photo)).notes[0] == note
    assert note not in model.prepare(str(photo), preprocess="torch").notes  # the user chose
    assert Model.open(_classifier(), preprocess="unit").preprocess_note() is None


def test_heatmaps_and_maps_say_the_preset_was_guessed_and_hint_at_imagenet_names(photo, tmp_path):
    lens = Lens(_classifier())
    result = lens.heatmaps(str(photo), "gradcam")
    guess = lens.model.preprocess_note()
    assert guess in result.notes
    assert any("--labels imagenet" in n for n in result.notes)
    index = json.loads(result.save(tmp_path / "heat").read_text())
    assert guess in json.dumps(index)
    maps = lens.feature_maps(str(photo))
    assert guess in maps.notes


def test_labels_imagenet_names_a_1000_way_model(photo):
    lens = Lens(_classifier())
    names, source = lens.model.class_names("imagenet")
    assert names == imagenet_class_names() and source == IMAGENET_SOURCE
    result = lens.heatmaps(str(photo), "gradcam", labels="imagenet")
    assert result.entries[0].label in imagenet_class_names()
    assert not any("--labels imagenet" in n for n in result.notes)


def test_labels_imagenet_on_another_model_is_one_clear_error():
    with pytest.raises(BadArgument, match="--labels imagenet gives ImageNet's 1000 class names, but .* outputs 10"):
        Model.open(_classifier(10)).class_names("imagenet")


def test_the_cli_notes_the_guess_and_takes_labels_imagenet(onnx_file, photo, tmp_path):
    code, out, err = call("heatmap", str(onnx_file), str(photo), "--out", str(tmp_path / "a"))
    assert code == 0, err
    lines = err.splitlines()  # notes go to stderr: stdout is left to the results
    assert any(line.startswith("note: preprocessing unit was guessed") and "--preprocess" in line for line in lines)
    assert any(line.startswith("note: ") and "--labels imagenet" in line for line in lines)
    assert "note: " not in out
    code, out, err = call("heatmap", str(onnx_file), str(photo), "--labels", "imagenet", "--out", str(tmp_path / "b"))
    assert code == 0, err
    top = next(line for line in out.splitlines() if line.startswith("photo: "))
    assert any(f"{name} (" in top for name in imagenet_class_names())
    code, out, err = call("heatmap", str(onnx_file), str(photo), "--preprocess", "torch", "--out", str(tmp_path / "c"))
    assert code == 0 and "guessed" not in out + err


def test_the_report_header_says_the_preset_was_guessed(photo, tmp_path):
    lens = Lens(_classifier())
    report = lens.report(str(photo), "conv", out=tmp_path / "r.html", sections=["maps"])
    assert lens.model.preprocess_note() in report.notes
    html = (tmp_path / "r.html").read_text()
    assert "preprocessing unit (guessed: see the note)" in html


def test_the_notebook_view_of_heatmaps_shows_the_guess(photo):
    lens = Lens(_classifier())
    view = lens.heatmaps(str(photo), "gradcam")._repr_html_()
    assert "preprocessing unit was guessed" in view and "--preprocess" in view
