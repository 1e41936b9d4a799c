"""Receptive fields and kinds, on hand-made tables with known answers."""

from __future__ import annotations

from convlens.core.kinds import kind_of
from convlens.core.layers import LayerInfo
from convlens.core.receptive import unit_box, with_receptive_fields


def L(i, kind, k=None, s=None, d=None, parents=None, shape=None, typ="Conv2D", p=None, up=None, **more):
    return LayerInfo(index=i, name=f"l{i}", type=typ, kind=kind, output_shape=shape,
                     kernel_size=(k, k) if k else None, stride=(s, s) if s else None,
                     dilation=(d, d) if d else None, padding=(p, p) if p is not None else None,
                     upsample=(up, up) if up else None,
                     parents=tuple(parents if parents is not None else ([i - 1] if i else [])), **more)


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


def test_branches_merge_to_the_union_and_vectors_are_global():
    rows = with_receptive_fields([
        L(0, "input", typ="InputLayer"),
        L(1, "conv", 3, 1, parents=[0], p=1),   # 3 at -1
        L(2, "conv", 5, 1, parents=[0], p=0),   # 5 at 0: the union is [-1, 5)
        L(3, "merge", parents=[1, 2], typ="Add"),
        L(4, "pool", 2, 2, parents=[3], p=0),   # 7, jump 2
        L(5, "pool", typ="GlobalAveragePooling2D", shape=(1,), parents=[4]),
        L(6, "dense", typ="Dense", shape=(3,), parents=[5]),
    ])
    assert (rows[3].rf_size, rows[3].rf_offset) == ((6, 6), (-1, -1))
    assert (rows[4].rf_size, rows[4].rf_jump, rows[4].rf_offset) == ((7, 7), (2, 2), (-1, -1))
    assert rows[5].global_rf and rows[6].global_rf and rows[6].rf_size is None


def test_kinds_across_frameworks():
    assert [kind_of(t) for t in ("Conv2D", "Conv2d", "DepthwiseConv2D", "Conv2DTranspose", "MaxPooling2D",
                                 "MaxPool2d", "GlobalAveragePooling2D", "ReLU", "Activation", "Dense",
                                 "Linear", "BatchNormalization", "BatchNorm2d", "Add", "Concatenate",
                                 "Flatten", "InputLayer", "Lambda")] == [
        "conv", "conv", "conv", "conv", "pool", "pool", "pool", "act", "act", "dense", "dense", "norm",
        "norm", "merge", "merge", "reshape", "input", "other"]


def _axis(row):
    """(size, jump, offset) along the height axis."""
    return (row.rf_size[0], row.rf_jump[0], row.rf_offset[0] if row.rf_offset else None)


def test_padding_places_every_box_and_unit_box_reads_it():
    rows = with_receptive_fields([
        L(0, "input", typ="InputLayer"),
        L(1, "conv", 3, 2, p=1),                 # unit i reads pixels 2i-1 .. 2i+1
        L(2, "other", typ="ZeroPadding2D", p=2),  # a pad row: a 1x1 window with padding
        L(3, "conv", 3, 1, d=2, p=0),            # dilated: reads pad units i, i+2, i+4
        L(4, "other", typ="Cropping2D", p=-1),   # a crop is negative padding
    ])
    assert [_axis(r) for r in rows] == [(1, 1, 0), (3, 2, -1), (3, 2, -5), (11, 2, -5), (11, 2, -3)]
    assert unit_box(rows[1], 0, 3) == (-1.0, 5.0, 2.0, 8.0)
    assert unit_box(rows[3], 2, 0) == (-1.0, -5.0, 10.0, 6.0)
    # a padding the adapter could not read: size and jump stay, the box is unknown
    blind = with_receptive_fields([L(0, "input"), L(1, "conv", 3, 2)])[1]
    assert (blind.rf_size, blind.rf_jump, blind.rf_offset, unit_box(blind, 0, 0)) == ((3, 3), (2, 2), None, None)


def test_upsampling_divides_the_jump_and_keeps_an_envelope_of_every_box():
    base = [L(0, "input"), L(1, "conv", 3, 2, p=1)]  # 3, jump 2, at -1
    nearest = with_receptive_fields([*base, L(2, "other", k=1, up=2, p=0, typ="UpSampling2D")])[2]
    # outputs 2m and 2m+1 both read unit m: [-1 + 2m, 2 + 2m) -> boxes of 4 every 1 from -2 hold both
    assert _axis(nearest) == (4, 1, -2)
    bilinear = with_receptive_fields([*base, L(2, "other", k=2, up=2, p=0, typ="Resize")])[2]
    # half-pixel: output 2m reads units m-1, m; output 2m+1 reads m, m+1
    assert _axis(bilinear) == (6, 1, -3)
    # ConvTranspose2d(k=4, s=2, padding=1): the conv on the stuffed input pads 4 - 1 - 1 = 2
    transposed = with_receptive_fields([L(0, "input"), L(1, "conv", 4, up=2, p=2, typ="ConvTranspose2d")])[1]
    assert _axis(transposed) == (2.5, 0.5, -1)
    # taps not given: unknown, never the input's field carried on
    blind = with_receptive_fields([*base, L(2, "other", up=2, typ="Upsample")])[2]
    assert blind.rf_size is None and not blind.global_rf


def test_what_cannot_be_derived_is_unknown_and_what_is_global_stays_global():
    rows = with_receptive_fields([
        L(0, "input", shape=(8, 8, 3)),
        L(1, "conv", 2, 2, p=0, shape=(4, 4, 3)),
        L(2, "other", typ="PixelShuffle", shape=(8, 8, 1)),        # changes the map, says not how
        L(3, "act", typ="ReLU", shape=(8, 8, 1)),                  # fed by an unknown field
        L(4, "merge", typ="Add", parents=[0, 1], shape=(8, 8, 3)),  # jumps 1 and 2: no union
        L(5, "pool", typ="GlobalAveragePooling2D", parents=[1], shape=(1, 1, 3), extra={"global": True}),
        L(6, "merge", typ="Multiply", parents=[1, 5], shape=(4, 4, 3)),  # a squeeze-excitation gate
    ])
    assert [r.rf_size for r in rows[2:5]] == [None, None, None]
    assert not any(r.global_rf for r in rows[2:5])
    assert rows[5].global_rf and rows[6].global_rf


def test_a_container_row_takes_the_field_of_the_last_row_nested_in_it():
    rows = with_receptive_fields([
        L(0, "input"),
        L(1, "conv", 3, 1, p=1, parent=3),
        L(2, "conv", 3, 2, p=1, parent=3),
        L(3, "block", typ="BasicBlock", parents=[0]),  # its data input is the block's input
        L(4, "other", typ="ZeroPad2d", p=1, parent=5),
        L(5, "conv", 3, 1, p=0, parents=[3], typ="Conv2dStaticSamePadding"),  # a conv subclass with a pad child
    ])
    assert _axis(rows[3]) == _axis(rows[2]) == (5, 2, -2)
    assert _axis(rows[5]) == (9, 2, -4)  # the pad child, then the 3x3 window


def test_a_window_whose_map_outgrows_its_named_input_is_unknown():
    # an upsampling in plain code the table does not see: the conv cannot make 64 rows of 32
    rows = with_receptive_fields([
        L(0, "input", shape=(64, 64, 3)),
        L(1, "conv", 3, 2, p=1, shape=(32, 32, 4)),
        L(2, "conv", 5, 1, p=2, shape=(64, 64, 4)),
    ])
    assert rows[1].rf_size == (3, 3) and rows[2].rf_size is None and not rows[2].global_rf
