"""Receptive fields and kinds, on hand-made tables with known answers."""

from __future__ import annotations

from convlens.core.kinds import kind_of
from convlens.core.layers import LayerInfo
from convlens.core.receptive import with_receptive_fields


def L(i, kind, k=None, s=None, d=None, parents=None, shape=(8, 8, 1), typ="Conv2D"):
    return LayerInfo(index=i, name=f"l{i}", type=typ, kind=kind, output_shape=shape,
                     kernel_size=(k, k) if k else None, stride=(s, s) if s else None,
                     dilation=(d, d) if d else None, parents=tuple(parents if parents is not None else ([i - 1] if i else [])))


def test_chain_with_stride_and_dilation():
    rows = with_receptive_fields([
        L(0, "input", typ="InputLayer"),
        L(1, "conv", 7, 2),          # 7, jump 2
        L(2, "pool", 3, 2),          # 7 + 2*2 = 11, jump 4
        L(3, "conv", 3, 1, d=2),     # 11 + 2*2*4 = 27, jump 4
        L(4, "act", typ="ReLU"),     # unchanged
    ])
    assert [(r.rf_size, r.rf_jump) for r in rows] == [
        ((1, 1), (1, 1)), ((7, 7), (2, 2)), ((11, 11), (4, 4)), ((27, 27), (4, 4)), ((27, 27), (4, 4))]


def test_branches_merge_to_the_widest_and_vectors_are_global():
    rows = with_receptive_fields([
        L(0, "input", typ="InputLayer"),
        L(1, "conv", 3, 1, parents=[0]),   # 3
        L(2, "conv", 5, 1, parents=[0]),   # 5
        L(3, "merge", parents=[1, 2], typ="Add"),
        L(4, "pool", 2, 2, parents=[3]),   # 6, jump 2
        L(5, "pool", typ="GlobalAveragePooling2D", shape=(1,), parents=[4]),
        L(6, "dense", typ="Dense", shape=(3,), parents=[5]),
    ])
    assert rows[3].rf_size == (5, 5)
    assert (rows[4].rf_size, rows[4].rf_jump) == ((6, 6), (2, 2))
    assert rows[5].global_rf and rows[6].global_rf and rows[6].rf_size is None


def test_kinds_across_frameworks():
    assert [kind_of(t) for t in ("Conv2D", "Conv2d", "DepthwiseConv2D", "Conv2DTranspose", "MaxPooling2D",
                                 "MaxPool2d", "GlobalAveragePooling2D", "ReLU", "Activation", "Dense",
                                 "Linear", "BatchNormalization", "BatchNorm2d", "Add", "Concatenate",
                                 "Flatten", "InputLayer", "Lambda")] == [
        "conv", "conv", "conv", "conv", "pool", "pool", "pool", "act", "act", "dense", "dense", "norm",
        "norm", "merge", "merge", "reshape", "input", "other"]
