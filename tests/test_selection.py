"""Layer selection on hand-made layer tables (no framework)."""

from __future__ import annotations

import pytest

from convlens import BadArgument, LayerNotFound
from convlens.core.layers import LayerInfo
from convlens.core.receptive import with_receptive_fields
from convlens.selection import blocks, select_indexes


def table():
    spec = [  # name, type, kind, kernel, stride
        ("input", "InputLayer", "input", None, None),
        ("block1_conv1", "Conv2D", "conv", 3, 1), ("block1_conv2", "Conv2D", "conv", 3, 1),
        ("block1_pool", "MaxPooling2D", "pool", 2, 2),
        ("block2_conv1", "Conv2D", "conv", 3, 1), ("block2_relu", "ReLU", "act", None, None),
        ("block2_pool", "MaxPooling2D", "pool", 2, 2),
        ("head/flatten", "Flatten", "reshape", None, None), ("head/fc1", "Dense", "dense", None, None),
        ("head/predictions", "Dense", "dense", None, None),
    ]
    rows = []
    for i, (name, typ, kind, k, s) in enumerate(spec):
        vector = kind in ("dense",) or typ == "Flatten"
        rows.append(LayerInfo(index=i, name=name, type=typ, kind=kind,
                              output_shape=(10,) if vector else (8, 8, 4),
                              kernel_size=(k, k) if k else None, stride=(s, s) if s else None,
                              parents=(i - 1,) if i else ()))
    return with_receptive_fields(rows)


def names(idx, layers=None):
    layers = layers or table()
    return [layers[i].name for i in idx]


def test_default_is_conv_and_pool():
    assert names(select_indexes(table())) == ["block1_conv1", "block1_conv2", "block1_pool", "block2_conv1", "block2_pool"]


def test_kinds_indexes_ranges_union_in_order():
    t = table()
    assert names(select_indexes(t, "act")) == ["block2_relu"]
    assert names(select_indexes(t, "dense,1")) == ["block1_conv1", "head/fc1", "head/predictions"]
    assert select_indexes(t, "-1") == [9]
    assert select_indexes(t, "2-4") == [2, 3, 4] == select_indexes(t, "2..4")
    assert select_indexes(t, ["pool", "conv"]) == [1, 2, 3, 4, 6]
    assert select_indexes(t, "all") == list(range(1, 10))


def test_names_globs_regexes():
    t = table()
    assert names(select_indexes(t, "block*_conv1")) == ["block1_conv1", "block2_conv1"]
    assert names(select_indexes(t, "re:conv[2]$")) == ["block1_conv2"]
    assert names(select_indexes(t, "fc1")) == ["head/fc1"]  # a short name of a nested layer
    assert names(select_indexes(t, "head/*")) == ["head/flatten", "head/fc1", "head/predictions"]


def test_blocks_last_conv_per_resolution_stage():
    assert names(blocks(table())) == ["block1_conv2", "block2_conv1"]
    assert select_indexes(table(), "blocks") == [2, 4]


def test_unknown_name_says_closest_and_how_to_list():
    with pytest.raises(LayerNotFound) as err:
        select_indexes(table(), "block1_conv3")
    msg = str(err.value)
    assert "block1_conv1" in msg and "convlens layers MODEL" in msg


def test_bad_terms():
    with pytest.raises(LayerNotFound, match="out of range"):
        select_indexes(table(), "42")
    with pytest.raises(BadArgument, match="backwards"):
        select_indexes(table(), "5-2")
    with pytest.raises(BadArgument, match="regular expression"):
        select_indexes(table(), "re:(")
    with pytest.raises(BadArgument, match="empty"):
        select_indexes(table(), " , ")


def test_ambiguous_short_name():
    t = [LayerInfo(0, "input", "InputLayer", "input", (4, 4, 1)),
         LayerInfo(1, "a/c1", "Conv2D", "conv", (4, 4, 1)), LayerInfo(2, "b/c1", "Conv2D", "conv", (4, 4, 1))]
    with pytest.raises(LayerNotFound, match="several"):
        select_indexes(t, "c1")
    assert select_indexes(t, "b/c1") == [2]
