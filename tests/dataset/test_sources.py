"""Data sources of the dataset view: every kind of DATA, labels, order, unreadable images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from convlens._errors import BadArgument, BadImage
from convlens.dataset.sources import Record, open_source, read_batch, read_original
from convlens.images import Image, load_image_bytes


def _png(value: int, size: tuple[int, int] = (6, 5), mode: str = "L") -> bytes:
    """A small PNG whose every pixel is ``value`` (width, height = size)."""
    buf = io.BytesIO()
    PIL.Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buf, "PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _value(image: Image) -> float:
    return float(image.pixels[0, 0, 0])


# --------------------------------------------------------------------------- folders


def test_image_folder_gives_sorted_records_labels_and_class_names(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write(root / "dog" / "b.png", _png(20))
    _write(root / "dog" / "a.png", _png(10))
    _write(root / "cat" / "deep" / "z.jpg", _png(30))  # recursive below the class folder
    _write(root / "cat" / "c.PNG", _png(40))            # extensions are case-insensitive
    _write(root / "cat" / ".hidden.png", _png(50))      # hidden: skipped
    _write(root / ".cache" / "x.png", _png(60))          # hidden folder: skipped
    _write(root / "cat" / "notes.txt", b"not an image")  # not an image: skipped

    source = open_source(root)

    assert source.kind == "folder"
    assert source.class_names == ("cat", "dog")
    assert [r.name for r in source.records] == ["cat/c.PNG", "cat/deep/z.jpg", "dog/a.png", "dog/b.png"]
    assert [r.id for r in source.records] == [0, 1, 2, 3]
    assert [r.label for r in source.records] == [0, 0, 1, 1]
    assert all(r.row == -1 and Path(r.path).is_absolute() for r in source.records)
    assert "4 images" in source.description and "2 classes" in source.description
    assert any("2 hidden" in n for n in source.notes) and any("1 file" in n for n in source.notes)
    images = read_batch(source, source.records)
    assert [_value(i) for i in images] == [40.0, 30.0, 10.0, 20.0]  # type: ignore[arg-type]
    assert images[2].name == "dog/a.png"  # type: ignore[union-attr]


def test_listing_is_deterministic_and_ids_are_positions(tmp_path: Path) -> None:
    for name in ["b10.png", "b2.png", "a/x.png", "a-b/y.png", "B.png"]:
        _write(tmp_path / name, _png(1))
    first = open_source(tmp_path)
    again = open_source(str(tmp_path))
    assert first.records == again.records
    # component-wise order: the folder "a" before "a-b", whatever '/' sorts as
    assert [r.name for r in first.records] == ["B.png", "a/x.png", "a-b/y.png", "b10.png", "b2.png"]
    assert first.class_names is None  # images directly in the root: no ImageFolder labels
    assert all(r.label == -1 for r in first.records)


def test_a_single_subfolder_is_not_taken_as_one_class(tmp_path: Path) -> None:
    _write(tmp_path / "2024" / "a.png", _png(1))
    _write(tmp_path / "2024" / "b.png", _png(2))
    source = open_source(tmp_path)
    assert source.class_names is None and {r.label for r in source.records} == {-1}


def test_empty_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadArgument, match=r"holds no image file \(it is empty\)"):
        open_source(tmp_path / "empty")


def test_folder_without_images_counts_what_it_has(tmp_path: Path) -> None:
    _write(tmp_path / "readme.txt", b"hello")
    _write(tmp_path / ".DS_Store", b"x")
    with pytest.raises(BadArgument, match=r"1 other file and 1 hidden") as info:
        open_source(tmp_path)
    assert "jpg" in str(info.value)  # says which extensions are read


def test_missing_data_is_reported_with_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(BadArgument, match=r"not found.*a Parquet file"):
        open_source(tmp_path / "nope")


# --------------------------------------------------------------------------- globs and lists


def test_glob_matches_images_only_with_names_relative_to_its_fixed_part(tmp_path: Path) -> None:
    _write(tmp_path / "photos" / "x" / "1.png", _png(1))
    _write(tmp_path / "photos" / "y" / "2.png", _png(2))
    _write(tmp_path / "photos" / "y" / "3.txt", b"text")
    source = open_source(str(tmp_path / "photos" / "**" / "*"))
    assert source.kind == "glob"
    assert source.root == str((tmp_path / "photos").resolve())
    assert [r.name for r in source.records] == ["x/1.png", "y/2.png"]
    assert [_value(i) for i in read_batch(source, source.records)] == [1.0, 2.0]  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match=r"matches 1 file but no image"):
        open_source(str(tmp_path / "photos" / "*" / "*.txt"))
    with pytest.raises(BadArgument, match=r"matches 2 folders but no image file \(to look inside"):
        open_source(str(tmp_path / "photos" / "*"))
    with pytest.raises(BadArgument, match=r"matches nothing"):
        open_source(str(tmp_path / "photos" / "*.gif"))


def test_list_file_paths_are_relative_to_it_comments_and_repeats_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "imgs" / "a.png", _png(7))
    _write(tmp_path / "other" / "b.png", _png(8))
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text(f"# my images\n\nb_missing.png\na.png\n  a.png  \n{tmp_path / 'other' / 'b.png'}\n")

    source = open_source(listing)

    assert source.kind == "list"
    assert [r.name for r in source.records][:2] == ["b_missing.png", "a.png"]  # the file's order
    assert len(source.records) == 3
    assert source.notes == ("skipped 1 repeated entry of the list",)
    got = read_batch(source, source.records)
    assert isinstance(got[0], BadImage) and "not found" in str(got[0])  # counted, not raised
    assert [_value(i) for i in got[1:]] == [7.0, 8.0]  # type: ignore[arg-type]


def test_empty_list_and_binary_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("# nothing\n\n")
    with pytest.raises(BadArgument, match="names no image"):
        open_source(tmp_path / "l.txt")
    (tmp_path / "model.bin").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(BadArgument, match="neither an image"):
        open_source(tmp_path / "model.bin")


def test_unreadable_images_come_back_as_bad_image_objects(tmp_path: Path) -> None:
    _write(tmp_path / "good.png", _png(3))
    _write(tmp_path / "text.jpg", b"this is text, not a JPEG")
    _write(tmp_path / "truncated.png", _png(4, size=(64, 64))[:60])
    _write(tmp_path / "zero.png", b"")
    source = open_source(tmp_path)
    got = read_batch(source, source.records)
    kinds = {r.name: type(g).__name__ for r, g in zip(source.records, got)}
    assert kinds == {"good.png": "Image", "text.jpg": "BadImage", "truncated.png": "BadImage",
                     "zero.png": "BadImage"}
    assert sum(isinstance(g, BadImage) for g in got) == 3
    with pytest.raises(BadImage, match="text.jpg"):
        read_original(source, source.records[1])
    assert _value(read_original(source, source.records[0])) == 3.0


# --------------------------------------------------------------------------- parquet


def _hf_parquet(path: Path, values: list[int], labels: list[int], names: list[str], *,
                row_group_size: int = 3) -> None:
    """A Parquet file as Hugging Face datasets writes an Image + ClassLabel data set."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": _png(v), "path": f"img{v}.png"} for v in values], type=image_type)
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=row_group_size)


def test_hugging_face_parquet_gives_labels_names_and_pixels_by_row_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = [10, 20, 30, 40, 50, 60, 70]
    _hf_parquet(tmp_path / "train.parquet", values, [2, 0, 1, 2, 0, 1, 2], ["zero", "one", "two"])

    source = open_source(tmp_path / "train.parquet")

    assert source.kind == "parquet"
    assert source.image_column == "image" and source.label_column == "label"
    assert source.class_names == ("zero", "one", "two")
    assert [r.label for r in source.records] == [2, 0, 1, 2, 0, 1, 2]
    assert [r.name for r in source.records][:2] == ["train.parquet#0", "train.parquet#1"]
    assert [r.row for r in source.records] == list(range(7))
    assert pq.ParquetFile(tmp_path / "train.parquet").num_row_groups == 3

    # Never the whole file: only row-group reads are allowed.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read a whole parquet file")
    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    order = [source.records[i] for i in (6, 0, 3, 4)]
    got = read_batch(source, order)
    assert [_value(i) for i in got] == [70.0, 10.0, 40.0, 50.0]  # type: ignore[arg-type]
    assert got[0].name == "train.parquet#6"  # type: ignore[union-attr]


def test_ray_data_binary_layout_and_a_folder_of_parquet_files(tmp_path: Path) -> None:
    # ray.data.read_binary_files(...).write_parquet(...) writes columns "bytes" (binary) and "path".
    (tmp_path / "ds").mkdir()
    for part, vals in (("part-1.parquet", [1, 2]), ("part-0.parquet", [3, 4, 5])):
        table = pa.table({"path": pa.array([f"/x/{v}.png" for v in vals]),
                          "bytes": pa.array([_png(v) for v in vals], pa.large_binary())})
        pq.write_table(table, tmp_path / "ds" / part, row_group_size=2)
    (tmp_path / "ds" / "_SUCCESS").write_bytes(b"")

    source = open_source(tmp_path / "ds")

    assert source.kind == "parquet" and source.image_column == "bytes"
    assert source.class_names is None and source.label_column is None
    assert [r.name for r in source.records] == ["part-0.parquet#0", "part-0.parquet#1",
                                                "part-0.parquet#2", "part-1.parquet#0",
                                                "part-1.parquet#1"]
    got = read_batch(source, source.records)
    assert [_value(i) for i in got] == [3.0, 4.0, 5.0, 1.0, 2.0]  # type: ignore[arg-type]


def test_plain_integer_and_string_label_columns(tmp_path: Path) -> None:
    table = pa.table({"img": pa.array([_png(1), _png(2), _png(3)]), "target": pa.array([1, 3, -1])})
    pq.write_table(table, tmp_path / "a.parquet")
    source = open_source(tmp_path / "a.parquet")
    assert source.image_column == "img" and source.label_column == "target"
    assert source.class_names == ("0", "1", "2", "3")
    assert [r.label for r in source.records] == [1, 3, -1]

    table = pa.table({"jpg": pa.array([_png(1), _png(2)]), "class": pa.array(["dog", "cat"])})
    pq.write_table(table, tmp_path / "b.parquet")
    source = open_source(tmp_path / "b.parquet")
    assert source.class_names == ("cat", "dog") and [r.label for r in source.records] == [1, 0]


def test_parquet_without_image_column_names_its_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"pixels": pa.array([[1.0, 2.0]]), "label": pa.array([0])}),
                   tmp_path / "t.parquet")
    with pytest.raises(BadArgument, match=r"no image column \(its columns: pixels: list<element: "
                                          r"double>, label: int64\)"):
        open_source(tmp_path / "t.parquet")


def test_bad_parquet_cells_are_counted_not_fatal(tmp_path: Path) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    _write(tmp_path / "linked.png", _png(99))
    cells = [{"bytes": _png(5), "path": None}, {"bytes": b"garbage", "path": None},
             {"bytes": None, "path": None}, {"bytes": None, "path": "linked.png"}]
    table = pa.table({"image": pa.array(cells, type=image_type)})
    features = {"image": {"_type": "Image"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "d.parquet")

    source = open_source(tmp_path / "d.parquet")
    got = read_batch(source, source.records)

    assert _value(got[0]) == 5.0  # type: ignore[arg-type]
    assert isinstance(got[1], BadImage) and "d.parquet#1 is not an image PIL can read" in str(got[1])
    assert isinstance(got[2], BadImage) and "null cell" in str(got[2])
    assert _value(got[3]) == 99.0  # type: ignore[arg-type]  # bytes null: read from its path
    stale = Record(id=9, name="d.parquet#9", path=source.records[0].path, row=9)
    assert "row 9 is not in" in str(read_batch(source, [stale])[0])


def test_bytes_obey_the_pixel_limit_like_files() -> None:
    with pytest.raises(BadImage, match="more than the limit of 20"):
        load_image_bytes(_png(1, size=(6, 5)), name="x", max_pixels=20)
    assert load_image_bytes(_png(1, size=(6, 5), mode="RGB"), name="x").pixels.shape == (5, 6, 3)


def test_streaming_batches_reads_each_row_group_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hf_parquet(tmp_path / "t.parquet", list(range(0, 200, 10)), [0] * 20, ["x"], row_group_size=8)
    source = open_source(tmp_path / "t.parquet")
    groups: list[int] = []
    real = pq.ParquetFile.read_row_group

    def counting(self: pq.ParquetFile, i: int, *args: object, **kwargs: object) -> pa.Table:
        groups.append(i)
        return real(self, i, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    values = []
    for start in range(0, 20, 3):  # batches of 3 across row groups of 8
        values += [_value(i) for i in read_batch(source, source.records[start:start + 3])]  # type: ignore[arg-type]
    assert values == [float(v) for v in range(0, 200, 10)]
    assert groups == [0, 1, 2]
    # A file replaced meanwhile is read again, not served from the cache.
    _hf_parquet(tmp_path / "t.parquet", list(range(5, 215, 10)), [0] * 21, ["x"], row_group_size=8)
    assert _value(read_batch(source, source.records[:1])[0]) == 5.0  # type: ignore[arg-type]


def _ray_tensor_table(arrays: list[np.ndarray], name: str, meta: bytes) -> pa.Table:
    """A table laid out as Ray Data's write_parquet lays out pixel arrays (read without Ray)."""
    column = pa.array([a.ravel() for a in arrays], pa.large_list(pa.uint8()))
    field = pa.field("image", column.type, metadata={b"ARROW:extension:name": name.encode(),
                                                     b"ARROW:extension:metadata": meta})
    schema = pa.schema([field, ("label", pa.int64())])
    return pa.Table.from_arrays([column, pa.array(range(len(arrays)))], schema=schema)


def test_ray_data_pixel_arrays_fixed_and_variable_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    fixed = [rng.integers(0, 256, (6, 5, 3)).astype(np.uint8) for _ in range(3)]
    pq.write_table(_ray_tensor_table(fixed, "ray.data.arrow_tensor_v2", b"[6, 5, 3]"), tmp_path / "f.parquet",
                   row_group_size=2)
    source = open_source(tmp_path / "f.parquet")
    assert source.image_column == "image" and source.class_names == ("0", "1", "2")
    got = read_batch(source, source.records)
    for image, want in zip(got, fixed):
        np.testing.assert_array_equal(image.pixels, want)  # type: ignore[union-attr]

    shapes = [(3, 4, 3), (5, 2, 3)]
    struct = pa.array([{"data": np.full(s, i + 1, np.uint8).ravel(), "shape": list(s)} for i, s in enumerate(shapes)],
                      pa.struct([("data", pa.large_list(pa.uint8())), ("shape", pa.list_(pa.int64()))]))
    field = pa.field("image", struct.type, metadata={b"ARROW:extension:name": b"ray.data.arrow_variable_shaped_tensor",
                                                     b"ARROW:extension:metadata": b"3"})
    pq.write_table(pa.Table.from_arrays([struct], schema=pa.schema([field])), tmp_path / "v.parquet")
    got = read_batch(open_source(tmp_path / "v.parquet"), open_source(tmp_path / "v.parquet").records)
    assert [g.pixels.shape for g in got] == shapes  # type: ignore[union-attr]
    assert [float(g.pixels.max()) for g in got] == [1.0, 2.0]  # type: ignore[union-attr]


def test_arrow_fixed_shape_tensors_and_pickled_shapes(tmp_path: Path) -> None:
    arrays = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)  # two 4x3 gray images
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(arrays)
    pq.write_table(pa.table({"pixels": tensor}), tmp_path / "n.parquet")
    got = read_batch(open_source(tmp_path / "n.parquet"), open_source(tmp_path / "n.parquet").records)
    np.testing.assert_array_equal(got[1].pixels[..., 0], arrays[1])  # type: ignore[union-attr]
    # Ray 2.49-2.54 pickled the shape: never unpickled, so there is no image column to read.
    pq.write_table(_ray_tensor_table([arrays[0]], "ray.data.arrow_tensor", b"\x80\x05K\x04K\x03\x86\x94."),
                   tmp_path / "p.parquet")
    with pytest.raises(BadArgument, match=r"no image column \(its columns: image: large_list"):
        open_source(tmp_path / "p.parquet")
    # A cell whose values do not fit the shape its column declares is counted, not fatal.
    pq.write_table(_ray_tensor_table([arrays[0]], "ray.data.arrow_tensor", b"[5, 3]"), tmp_path / "w.parquet")
    bad = read_batch(open_source(tmp_path / "w.parquet"), open_source(tmp_path / "w.parquet").records)[0]
    assert isinstance(bad, BadImage) and "not the (5, 3)" in str(bad)
