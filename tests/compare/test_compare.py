"""convlens.compare on real networks: planted divergence, exports, conversions, quantisation, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import convlens
from convlens import Comparison, Model, compare

from .shared import fine_tune_one_epoch


def test_planted_divergence_is_found_at_the_perturbed_layer(resnets, tmp_path, images):
    a, b = resnets
    r = compare(a, b, images(4, 64), preprocess="torch")
    assert isinstance(r, Comparison) and r.case == "checkpoints"
    assert not r.unpaired_a and not r.unpaired_b and all(p.how == "name" for p in r.pairs)
    assert r.divergent is not None and r.divergent.a == "layer3.0.conv1"
    names = [p.a for p in r.pairs]
    first = names.index("layer3.0.conv1")
    for p in r.pairs[:first]:  # every earlier pair agrees
        assert p.max_abs is not None and p.max_abs <= 1e-6, p
        assert p.weight_change in (None, 0.0), p
    assert r.pair("layer3.0.conv1").weight_change == pytest.approx(0.05, rel=0.2)
    changed = [p.a for p in r.pairs if p.weight_change]
    assert changed == ["layer3.0.conv1"]
    assert r.pair("layer3.0.downsample.0").max_abs == 0.0  # the shortcut does not see the change
    assert r.output is not None and r.output["rel_error"] > 1e-3
    assert r.top1_agreement is not None and len(r.flips) <= 4
    index = json.loads(r.save(tmp_path / "out").read_text())
    assert index["first_divergence"] == "layer3.0.conv1" and index["case"] == "checkpoints"
    assert {"errors.png", "maps_first_divergence.png", "maps_output.png"} <= set(index["pictures"])
    assert (tmp_path / "out" / "compare.html").is_file()
    assert "first divergence: layer3.0.conv1" in r.summary()


def test_a_network_compared_with_itself_has_cka_one(agree, images):
    r = compare(agree["torch"], agree["torch"], images(8), preprocess="unit", batch_size=4, cka=True)
    assert r.case == "forms" and r.first_divergence is None
    assert len(r.pairs) == 10  # nine modules and forward()'s torch.flatten
    for p in r.pairs:
        assert p.cka == pytest.approx(1.0, abs=1e-6), p
        assert p.max_abs == 0.0 and p.sqnr_db == math.inf
    assert r.flips == [] and r.top1_agreement == 1.0
    # two forms of one network: no CKA unless asked for (a Gram matrix per layer and batch)
    plain = compare(agree["torch"], agree["torch"], images(8), preprocess="unit")
    assert all(p.cka is None for p in plain.pairs) and any("cka=True" in n for n in plain.notes)


def test_pytorch_and_its_onnx_export_pair_every_layer(agree, images):
    r = compare(agree["torch"], agree["onnx"], images(4), preprocess="unit")
    assert r.case == "forms" and r.pairing == "automatic"
    # torch.flatten in forward() is a functional row, the export's Flatten node its partner
    assert [p.a for p in r.pairs] == ["conv1", "relu1", "pool1", "dw", "relu2", "conv2", "relu3", "gap", "flatten",
                                      "fc"]
    assert [p.b for p in r.pairs][-2] == "/Flatten"
    assert r.unpaired_a == [] and r.unpaired_b == []
    for p in r.pairs:
        assert p.rel_error is not None and p.rel_error < 1e-4, p
        assert p.max_abs is not None and p.max_abs < 1e-4 * max(p.__dict__.get("max_a", 1.0), 1.0), p
        assert p.cosine == pytest.approx(1.0, abs=1e-6)
    assert [p.weight_change for p in r.pairs if p.kind == "conv"] == [pytest.approx(0, abs=1e-6)] * 3
    assert r.first_divergence is None and r.flips == []


def test_keras_and_its_float_tflite_pair_through_fused_activations(agree, images):
    r = compare(agree["keras"], agree["tflite"], images(4), preprocess="unit")
    assert r.case == "forms" and r.unpaired_b == []
    # TFLite computes conv + ReLU in one operator: its conv pairs with Keras's ReLU
    assert [(p.a, p.kind) for p in r.pairs] == [("relu1", "act"), ("pool1", "pool"), ("relu2", "act"),
                                                ("relu3", "act"), ("gap", "pool"), ("fc", "dense")]
    assert [p.b.split("/")[-1] for p in r.pairs] == ["conv1_1", "pool1_1", "dw_1", "conv2_1", "gap_1", "fc_1"]
    assert all(p.fused for p in r.pairs if p.kind == "act")
    for p in r.pairs:
        assert p.rel_error is not None and p.rel_error < 1e-4, p
    assert r.unpaired_a == ["conv1", "dw", "conv2"]  # pre-activation outputs TFLite never has


def test_int8_tflite_reports_an_sqnr_per_layer_and_the_worst(agree, tmp_path, images):
    r = compare(agree["keras"], agree["int8"], images(8), preprocess="unit")
    assert r.case == "forms" and len(r.pairs) == 6
    sqnr = [p.sqnr_db for p in r.pairs]
    assert all(s is not None and 15 < s < 80 for s in sqnr), sqnr  # quantised: tens of dB, not 130
    assert r.worst is not None and r.pairs[r.worst].sqnr_db == min(sqnr)
    assert r.first_divergence == 0  # int8 differs from the first layer on, beyond 1e-3
    assert f"worst layer: {r.pairs[r.worst].label}" in r.summary()
    assert all(p.worst_channels for p in r.pairs)
    index = json.loads(r.save(tmp_path / "q").read_text())
    assert index["worst"] == r.pairs[r.worst].a and all(p["sqnr_db"] for p in index["pairs"])
    html = r._repr_html_()
    assert html.startswith("<div>") and "data:image/png;base64," in html


def test_two_architectures_get_a_cka_matrix(agree, images):
    import torch
    from torch import nn

    torch.manual_seed(0)
    other = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2), nn.ReLU(),
                          nn.Conv2d(5, 7, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(7, 4)).eval()
    r = compare(agree["torch"], other, images(8), preprocess="unit")
    assert r.case == "architectures" and r.cka_matrix is not None
    m = np.array(r.cka_matrix.values, dtype=float)
    assert m.shape == (3, 3) and r.cka_matrix.layers_a == ["conv1", "dw", "conv2"]
    assert np.all(m < 1.0 + 1e-6)  # the unbiased estimator may dip below 0 for unrelated layers
    # the two first convs both see raw pixels: the most similar pair of the row
    assert m[0, 0] > 0.3 and m[0, 0] == m[0].max()
    best = r.cka_matrix.best_match()
    assert [b[0] for b in best] == ["conv1", "dw", "conv2"] and all(b[1] in ("0", "2", "4") for b in best)
    assert best[0][1] == "0"
    assert "cka.png" in r.pictures and "CKA best match" in r.summary()
    assert r.output_note is not None and "cannot be compared" in r.output_note  # 10 vs 4 classes


def test_fine_tuning_changes_the_trainable_layer_most(images):
    """One epoch on a shifted task (labels of two classes swapped) with only conv3 trainable."""
    import copy

    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    tuned = copy.deepcopy(net)
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in tuned[4].parameters():
        p.requires_grad_(True)
    fine_tune_one_epoch(net, tuned, [p for p in tuned.parameters() if p.requires_grad])
    r = compare(net, tuned, images(8, 24, seed=5), preprocess="unit")
    assert r.case == "checkpoints"
    change = {p.a: p.weight_change for p in r.pairs if p.weight_change is not None}
    assert change["0"] == 0 and change["2"] == 0 and change["4"] > 1e-3
    drift = {p.a: 1 - p.cka for p in r.pairs if p.cka is not None}
    assert drift["0"] == pytest.approx(0, abs=1e-9) and drift["2"] == pytest.approx(0, abs=1e-9)
    assert drift["4"] > 1e-4 and drift["4"] == max(drift[k] for k in ("0", "1", "2", "3", "4"))
    assert r.pair("4").role_change and r.pair("4").role_change[0]["correlation"] < 1
    assert r.divergent is not None and r.divergent.a == "4"


def test_compare_is_exported_and_takes_models():
    assert convlens.compare is compare and "compare" in convlens.__all__ and "Comparison" in convlens.__all__
    demo = Model.open("demo")
    r = compare(demo, demo, [np.full((28, 28, 1), 7, np.uint8), np.eye(28, dtype=np.uint8)[..., None] * 255],
                cka=True)
    assert r.first_divergence is None and "CKA needs at least 4 images" in " ".join(r.notes)


def test_batchnorm_folded_by_the_onnx_export_is_paired_with_its_output(images, tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():  # statistics that make the folding visible
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    net.eval()
    path = tmp_path / "bn.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False)
    r = compare(net, path, images(4), preprocess="unit")
    convs = [p for p in r.pairs if p.b.endswith("Conv")]
    assert [(p.a, p.kind) for p in convs] == [("1", "norm"), ("4", "norm")]  # the BatchNorm's output
    assert all(p.fused and p.rel_error is not None and p.rel_error < 1e-4 for p in convs)
    assert r.unpaired_a == ["0", "3"] and r.first_divergence is None
    # the exported kernels hold the BatchNorm: no weight change reported, and not two checkpoints
    assert r.case == "forms" and all(p.weight_change is None and "folded" in p.fused for p in convs)
