"""How an error about the input size says which size to pick."""

from __future__ import annotations

from convlens.core.layers import LayerInfo
from convlens.core.sizes import nearest_multiple, size_hint, size_multiple, total_stride


def _row(index: int, jump: tuple[int, int] | None) -> LayerInfo:
    return LayerInfo(index=index, name=f"l{index}", type="Conv", kind="conv", output_shape=None, rf_jump=jump)


def test_total_stride_is_the_largest_jump():
    assert total_stride([_row(0, (1, 1)), _row(1, (4, 4)), _row(2, (32, 32)), _row(3, (8, 8))]) == (32, 32)
    assert total_stride([_row(0, (1, 1)), _row(1, (2, 4))]) == (2, 4)
    assert total_stride([_row(0, (1, 1)), _row(1, None)]) is None
    assert total_stride([]) is None


def test_nearest_multiple_is_at_least_the_multiple():
    assert nearest_multiple(100, 32) == 96
    assert nearest_multiple(150, 32) == 160
    assert nearest_multiple(3, 32) == 32
    assert nearest_multiple(64, 32) == 64
    assert nearest_multiple(7, 1) == 7


def test_hint_from_the_table():
    hint = size_hint([_row(0, (1, 1)), _row(1, (32, 32))], 100, 150)
    assert hint == ("its layers downsample by 32 in all, so it may need sides that are multiples of 32: "
                    "try --size 96x160 (size=(96, 160) in Python)")
    assert "multiples of 8x16: try --size 96x144" in size_hint([_row(1, (8, 16))], 100, 150)


def test_hint_without_a_known_stride_suggests_32():
    hint = size_hint([_row(0, (1, 1))], 300, 451)
    assert hint == ("if it needs another input size, pass --size HxW (size=(H, W) in Python); if it needs "
                    "sides that are multiples of 32, as detectors often do, try --size with a multiple of 32 "
                    "such as 288x448")


# --------------------------------------------------------------------------- the size multiple from the graph


def _table(*rows: tuple) -> list[LayerInfo]:
    """Rows ``(kind, output_shape, stride, upsample, parents)`` with their receptive fields computed."""
    from convlens.core.receptive import with_receptive_fields

    table = []
    for i, (kind, shape, stride, up, parents) in enumerate(rows):
        window = (stride[0], stride[0]) if stride else ((2, 2) if up else None)
        table.append(LayerInfo(index=i, name=f"r{i}", type=kind, kind=kind, output_shape=shape,
                               kernel_size=window, stride=stride, padding=(0, 0) if window else None,
                               upsample=up, parents=parents))
    return with_receptive_fields(table)


def test_unet_needs_the_jump_of_its_deepest_upsampled_map():
    # a U-Net: two stride-2 stages down (jump 4), a x2 upsampling concatenated with the jump-2 skip,
    # another concatenated with the full-resolution skip
    table = _table(("input", (None, None, 3), None, None, ()),
                   ("conv", (None, None, 8), None, None, (0,)),
                   ("pool", (None, None, 8), (2, 2), None, (1,)),        # jump 2
                   ("pool", (None, None, 8), (2, 2), None, (2,)),        # jump 4
                   ("conv", (None, None, 8), None, None, (3,)),
                   ("other", (None, None, 8), None, (2.0, 2.0), (4,)),   # up to jump 2
                   ("merge", (None, None, 16), None, None, (2, 5)),
                   ("other", (None, None, 16), None, (2.0, 2.0), (6,)),  # up to jump 1
                   ("conv", (None, None, 8), None, None, (7,)),
                   ("merge", (None, None, 16), None, None, (1, 8)))
    assert [r.rf_jump for r in table][3:6] == [(4, 4), (4, 4), (2, 2)]
    assert size_multiple(table) == ((4, 4), True)
    assert "merges them with another path's, so it needs sides that are multiples of 4: try --size 100x152" \
        in size_hint(table, 101, 150)


def test_maps_downsampled_further_and_never_merged_do_not_count():
    # RetinaNet-like: jump 4 upsampled and merged, then two more stride-2 stages (jumps 8, 16) for the head
    table = _table(("input", (None, None, 3), None, None, ()),
                   ("conv", (None, None, 8), (2, 2), None, (0,)),       # jump 2
                   ("conv", (None, None, 8), (2, 2), None, (1,)),       # jump 4
                   ("other", (None, None, 8), None, (2.0, 2.0), (2,)),
                   ("conv", (None, None, 8), None, None, (3,)),         # a 1x1 conv between: the same map
                   ("merge", (None, None, 8), None, None, (1, 4)),
                   ("conv", (None, None, 8), (2, 2), None, (2,)),       # P6: jump 8
                   ("conv", (None, None, 8), (2, 2), None, (6,)))       # P7: jump 16
    assert total_stride(table) == (16, 16)
    assert size_multiple(table) == ((4, 4), True)


def test_an_upsampling_that_is_not_merged_constrains_nothing():
    # a segmentation head: downsample by 8, upsample back to the input's size, no skip
    table = _table(("input", (None, None, 3), None, None, ()),
                   ("conv", (None, None, 8), (8, 8), None, (0,)),
                   ("other", (None, None, 8), None, (8.0, 8.0), (1,)))
    assert size_multiple(table) == ((8, 8), False)  # the total stride, a guess
    assert "its layers downsample by 8 in all, so it may need sides that are multiples of 8" \
        in size_hint(table, 100, 150)


def test_classifier_with_global_pooling_counts_its_map_rows_only():
    table = _table(("input", (None, None, 3), None, None, ()),
                   ("conv", (None, None, 8), (2, 2), None, (0,)),
                   ("pool", (None, None, 8), (2, 2), None, (1,)),
                   ("pool", (8,), None, None, (2,)),                    # global pooling: a vector
                   ("dense", (10,), None, None, (3,)))
    assert table[3].global_rf and table[4].global_rf
    assert total_stride(table) == (4, 4)
    assert size_multiple(table) == ((4, 4), False)


def test_rows_past_a_flatten_into_a_sequence_do_not_count():
    # a jump kept by a row whose output is (positions, channels) is not a map of the image
    rows = [LayerInfo(index=0, name="in", type="Input", kind="input", output_shape=(None, None, 3), rf_jump=(1, 1)),
            LayerInfo(index=1, name="c", type="Conv", kind="conv", output_shape=(None, None, 8), rf_jump=(32, 32)),
            LayerInfo(index=2, name="seq", type="Reshape", kind="reshape", output_shape=(None, 8), rf_jump=(128, 128))]
    assert total_stride(rows) == (32, 32)


def test_no_geometry_gives_the_general_phrase():
    rows = [LayerInfo(index=0, name="in", type="Input", kind="input", output_shape=(None, None, 3)),
            LayerInfo(index=1, name="x", type="Custom", kind="other", output_shape=(None, None, 8))]
    assert total_stride(rows) is None and size_multiple(rows) is None
    assert size_hint(rows, 300, 451).startswith("if it needs another input size, pass --size HxW")
