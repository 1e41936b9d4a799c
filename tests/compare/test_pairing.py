"""Layer pairing on hand-built layer tables: names, structure, fused operations, --pairs files."""

from __future__ import annotations

import pytest

from convlens import BadArgument, LayerNotFound
from convlens.compare.pairing import name_key, pair_layers, pairs_from_names, read_pairs
from convlens.core.layers import LayerInfo


def _table(*rows: tuple[str, str, str, int, tuple[int, ...] | None]) -> list[LayerInfo]:
    """Rows (name, type, kind, channels, kernel) in a chain after an input."""
    table = [LayerInfo(0, "input", "Input", "input", (8, 8, 3))]
    for i, (name, type_, kind, channels, kernel) in enumerate(rows, 1):
        table.append(LayerInfo(i, name, type_, kind, (8, 8, channels), kernel_shape=kernel, parents=(i - 1,)))
    return table


def test_name_keys_survive_an_onnx_export():
    def key(name: str, type_: str) -> tuple[str, ...]:
        return name_key(LayerInfo(1, name, type_, "conv", None))

    assert key("/layer1/layer1.0/conv1/Conv", "Conv") == key("layer1.0.conv1", "Conv2d") == ("layer1", "0", "conv1")
    assert key("/features/features.0/Conv", "Conv") == key("features.0", "Conv2d")
    assert key("conv1", "Conv2D") != key("conv2", "Conv2D")


def test_names_win_and_structure_fills_in():
    a = _table(("conv1", "Conv2d", "conv", 4, (4, 3, 3, 3)), ("relu", "ReLU", "act", 4, None),
               ("conv2", "Conv2d", "conv", 4, (4, 4, 3, 3)), ("fc", "Linear", "dense", 2, None))
    b = _table(("m/x_1", "CONV_2D", "conv", 4, (4, 3, 3, 3)), ("/relu/Relu", "Relu", "act", 4, None),
               ("m/y_1", "CONV_2D", "conv", 4, (4, 4, 3, 3)), ("m/fc_1", "FULLY_CONNECTED", "dense", 2, None))
    p = pair_layers(a, b)
    assert [(x.a.name, x.b.name, x.how) for x in p.pairs] == [
        ("conv1", "m/x_1", "structure"), ("relu", "/relu/Relu", "name"), ("conv2", "m/y_1", "structure"),
        ("fc", "m/fc_1", "structure")]
    assert p.unpaired_a == [] and p.unpaired_b == [] and p.how == "automatic"


def test_a_fused_chain_gives_candidates():
    a = _table(("conv", "Conv2d", "conv", 4, (4, 3, 3, 3)), ("bn", "BatchNorm2d", "norm", 4, None),
               ("relu", "ReLU", "act", 4, None), ("pool", "MaxPool2d", "pool", 4, None))
    b = _table(("/conv/Conv", "Conv", "conv", 4, (4, 3, 3, 3)), ("/pool/MaxPool", "MaxPool", "pool", 4, None))
    p = pair_layers(a, b)
    conv = p.pairs[0]
    assert (conv.a.name, conv.b.name) == ("conv", "/conv/Conv")
    assert [(x.name, y.name) for x, y in conv.candidates] == [("conv", "/conv/Conv"), ("bn", "/conv/Conv"),
                                                            ("relu", "/conv/Conv")]
    assert [x.name for x in p.unpaired_a] == ["bn", "relu"] and p.pairs[1].candidates == ()


def test_incompatible_layers_do_not_pair():
    a = _table(("conv", "Conv2d", "conv", 4, (4, 3, 3, 3)))
    b = _table(("conv", "Conv2d", "conv", 4, (4, 3, 1, 1)), ("fc", "Linear", "dense", 4, None))
    p = pair_layers(a, b)
    assert p.pairs == [] and [x.name for x in p.unpaired_b] == ["conv", "fc"]


def test_pairs_files(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a,b\n# a comment\nconv1, /conv1/Conv\n\nfc,/fc/Gemm\n")
    assert read_pairs(path) == [("conv1", "/conv1/Conv"), ("fc", "/fc/Gemm")]
    assert read_pairs([("x", "y")]) == [("x", "y")]
    path.write_text("conv1,/conv1/Conv,extra\n")
    with pytest.raises(BadArgument, match="line 1 holds 3 cells"):
        read_pairs(path)
    path.write_text("a,b\n")
    with pytest.raises(BadArgument, match="holds no pair.*--pairs FILE"):
        read_pairs(path)
    with pytest.raises(BadArgument, match="cannot read the pairs file"):
        read_pairs(tmp_path / "missing.csv")
    a = _table(("conv1", "Conv2d", "conv", 4, (4, 3, 3, 3)))
    b = _table(("/conv1/Conv", "Conv", "conv", 4, (4, 3, 3, 3)))
    with pytest.raises(LayerNotFound, match=r"pair 1 \(conv1,nope\): B \(model B\) has no layer 'nope'"):
        pairs_from_names(a, b, [("conv1", "nope")], ("A", "B"))
    p = pairs_from_names(a, b, [("conv1", "/conv1/Conv")], ("A", "B"))
    assert p.how == "file" and p.pairs[0].how == "file" and p.unpaired_a == []
