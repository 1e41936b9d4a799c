"""The dataset view's result: files, round trip, crops, memory-bounded cutting, notebook view."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from convlens._errors import BadArgument, LayerNotFound, OutputError
from convlens.core.layers import LayerInfo
from convlens.dataset import result as result_module
from convlens.dataset.accumulate import DatasetAccumulator
from convlens.dataset.crops import PAD_DARK, PAD_LIGHT
from convlens.dataset.result import DatasetResult, LayerExamples, Ranking
from convlens.dataset.sources import Record, Source, open_source, read_batch
from convlens.images import Image
from convlens.lens import Lens

SIZE = 32
DIAGONAL = (np.eye(3) * 255).astype(np.uint8)


def _pattern_net() -> nn.Sequential:
    """As in test_crops: conv1 fires (value 255) only on a centred 3x3 "\\" stroke; conv2 peaks on it (510).

    Integer weights on raw 0/255 pixels: every value is an integer below 2**24, so the float32
    convolutions are exact on any CPU (oneDNN, AVX-512, AMX and ARM kernels round only inexact sums)."""
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(np.where(np.eye(3) > 0, 1.0, -1.0)).view(1, 1, 3, 3))
        net[0].bias.fill_(-510.0)
        k2 = torch.ones(2, 1, 3, 3)
        k2[0, 0, 1, 1] = 2.0
        k2[1] = -k2[0]  # channel 1 is minus channel 0: it goes negative, never positive
        net[3].weight.copy_(k2)
        net[3].bias.zero_()
        net[6].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        net[6].bias.zero_()
    return net.eval()


def _image(centre: tuple[int, int] | None) -> np.ndarray:
    img = np.zeros((SIZE, SIZE), np.uint8)
    img[25, 3:6] = 255  # a "-" distractor: conv1 stays silent
    if centre is not None:
        y, x = centre
        img[y - 1:y + 2, x - 1:x + 2] = np.maximum(img[y - 1:y + 2, x - 1:x + 2], DIAGONAL)
    return img


STROKES = {"stroke/a.png": (12, 17), "stroke/b.png": (1, 1), "stroke/c.png": (21, 30)}
BLANKS = ["blank/d.png", "blank/e.png"]


@pytest.fixture(scope="module")
def lens() -> Lens:
    return Lens(_pattern_net(), input_shape=(SIZE, SIZE, 1))


def _folder(root: Path) -> Path:
    for name, centre in {**STROKES, **{b: None for b in BLANKS}}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(_image(centre)).save(root / name)
    return root


def _run(lens: Lens, source: Source, k: int, layers: str = "conv2,dense") -> DatasetResult:
    """What the engine does, by hand: read, one forward pass, fold into an accumulator."""
    table = {layer.name: layer for layer in lens.layers()}
    chosen = [table[{"conv2": "3", "dense": "6"}[n]] for n in layers.split(",")]
    acc = DatasetAccumulator(chosen, k, classes=len(source.class_names or ()))
    got = read_batch(source, source.records)
    good = [(r, im) for r, im in zip(source.records, got) if isinstance(im, Image)]
    bad = [(r, str(im)) for r, im in zip(source.records, got) if not isinstance(im, Image)]
    maps = lens.feature_maps([im.pixels for _, im in good], layers=[str(c.index) for c in chosen],
                             preprocess="raw")
    ids = np.array([r.id for r, _ in good])
    labels = np.array([r.label for r, _ in good])
    acc.add_batch({c.name: maps[c.name] for c in chosen}, ids, labels if source.class_names else None)
    if bad:
        acc.add_failures(np.array([r.id for r, _ in bad]), [r.name for r, _ in bad], [m for _, m in bad])
    return DatasetResult(model="pattern", source=source, input_size=(SIZE, SIZE), k=k, engine="local",
                         layers=acc.results(), images=acc.images,
                         failures=[(n, m) for _, n, m in acc.failures], seconds=0.5,
                         notes=["a hand-set network"])


@pytest.fixture(scope="module")
def saved(lens: Lens, tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetResult, Path, dict]:
    data = _folder(tmp_path_factory.mktemp("data"))
    (data / "stroke" / "broken.png").write_bytes(b"not a png")
    result = _run(lens, open_source(data), k=4)
    out = tmp_path_factory.mktemp("out") / "view"
    index = _index(result.save(out))
    return result, out, index


def _index(path: Path) -> dict:
    """What ``save`` wrote: it returns the path of ``index.json``."""
    assert path.name == "index.json" and path.is_file()
    return json.loads(path.read_text())


def _png(path: Path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def test_save_writes_exactly_the_listed_files(saved) -> None:  # type: ignore[no-untyped-def]
    _, out, index = saved
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["channels.csv", "channels.json", "index.json",
                     "layers/004_3/atlas.png", "layers/004_3/c0000.png", "layers/004_3/c0001.png",
                     "layers/007_6/atlas.png", "layers/007_6/c0000.png", "layers/007_6/c0001.png"]
    assert json.loads((out / "index.json").read_text()) == json.loads(json.dumps(index))
    for layer in index["layers"]:
        assert (out / layer["atlas"]).is_file()
        assert all((out / ch["mosaic"]).is_file() for ch in layer["channels_info"])


def test_index_ranks_the_stroke_images_with_boxes_that_hold_the_stroke(saved) -> None:  # type: ignore[no-untyped-def]
    result, out, index = saved
    assert index["convlens"] == "dataset" and index["version"] == 1
    assert index["images"] == 5 and index["k"] == 4 and index["input_size"] == [32, 32]
    assert index["class_names"] == ["blank", "stroke"]
    assert index["failed"][0]["name"] == "stroke/broken.png" and "not an image" in index["failed"][0]["reason"]
    conv = index["layers"][0]
    assert (conv["name"], conv["map_hw"], conv["rf_size"], conv["rf_jump"]) == ("3", [16, 16], [8, 8], [2, 2])
    # Under its top row, each channel shows what drives it down: channel 1 goes below zero.
    assert [ch["second_row"] for ch in conv["channels_info"]] == ["bottom", "negative"]
    assert conv["second_row"] == "bottom"  # the layer's most common (a tie: bottom)
    bottom = conv["channels_info"][0]["bottom"]  # lowest means: the blanks, as whole images
    assert [e["name"] for e in bottom[:2]] == ["blank/d.png", "blank/e.png"]
    assert all(e["box"] == [0.0, 0.0, 32.0, 32.0] for e in bottom)
    top = conv["channels_info"][0]["top"]
    # Every stroke gives conv2 the same peak (510, exactly); ties go to the smaller id: a, b, c; then a blank.
    assert [e["name"] for e in top] == ["stroke/a.png", "stroke/b.png", "stroke/c.png", "blank/d.png"]
    assert [e["score"] for e in top[:3]] == [510.0, 510.0, 510.0] and top[3]["score"] == 0.0
    for entry in top[:3]:
        cy, cx = STROKES[entry["name"]]
        assert entry["position"] == [cy // 2, cx // 2]
        t, l_, b, r = entry["box"]
        assert (b - t, r - l_) == (8.0, 8.0)
        assert t <= cy - 1 and b >= cy + 2 and l_ <= cx - 1 and r >= cx + 2  # ORIGINAL pixels (32x32 here)
        assert entry["label"] == 1
    assert conv["channels_info"][0]["best_class"] == 1
    assert conv["channels_info"][0]["best_class_name"] == "stroke"
    assert conv["channels_info"][0]["selectivity"] == pytest.approx(1.0)
    negative = conv["channels_info"][1]["negative"]
    assert [e["name"] for e in negative[:3]] == ["stroke/a.png", "stroke/b.png", "stroke/c.png"]
    assert [e["score"] for e in negative[:3]] == [-510.0, -510.0, -510.0]  # the minimum, as people read it
    dense = index["layers"][1]
    assert dense["map_hw"] is None and dense["rf_size"] is None
    assert all(e["box"] == [0.0, 0.0, 32.0, 32.0] for e in dense["channels_info"][0]["top"])
    assert index["ranked_by_dead"][0]["name"] in ("3", "6")


def test_crops_hold_the_stroke_and_are_padded_at_the_border(saved) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = saved
    crops = result.crops("3", 0, "top", size=8)
    assert len(crops) == 4 and all(c.shape == (8, 8, 3) for c in crops)
    for crop, name in zip(crops[:3], ["stroke/a.png", "stroke/b.png", "stroke/c.png"]):
        cy, cx = STROKES[name]
        oy, ox = cy - 1 - (2 * (cy // 2) - 3), cx - 1 - (2 * (cx // 2) - 3)
        np.testing.assert_array_equal(crop[oy:oy + 3, ox:ox + 3, 0], DIAGONAL)
    corner = crops[1]  # b.png: stroke in the top-left corner, the box starts at (-3, -3)
    assert all(tuple(p) in (PAD_LIGHT, PAD_DARK) for p in corner[:3].reshape(-1, 3))
    whole = result.crops("6", 0, "top", size=32)
    assert len(whole) == 4
    np.testing.assert_array_equal(whole[0][..., 0], _image(STROKES["stroke/a.png"]))
    with pytest.raises(LayerNotFound, match="'nope' is not among this result's layers"):
        result.crops("nope", 0)
    with pytest.raises(BadArgument, match="channel must be 0..1"):
        result.crops("3", 2)


def test_mosaic_and_atlas_show_the_crops(saved) -> None:  # type: ignore[no-untyped-def]
    result, out, _ = saved
    mosaic = _png(out / "layers/004_3/c0000.png")
    atlas = _png(out / "layers/004_3/atlas.png")
    # Two rows of 4 crops of 64 px (enlarged x8 from the 8 px field: nearest neighbour) with titles.
    assert mosaic.shape[1] >= 4 * 65 and mosaic.shape[0] > 2 * 65
    assert atlas.shape[1] >= 2 * 65
    # The strongest crop (a.png) is in the atlas's first tile: find its stroke, 8x8 white blocks.
    top = result.crops("3", 0, "top", size=64)[0]
    ys, xs = np.nonzero(np.all(atlas == 255, axis=-1))
    found = False
    for y0 in range(atlas.shape[0] - 64):
        if np.array_equal(atlas[y0:y0 + 64, 1:65][:, :, 0][20:, 20:], top[20:, 20:, 0]):
            found = True
            break
    assert found and ys.size  # the crop appears verbatim (labels stamp only the top-left corner)


def test_csv_and_channels_json(saved) -> None:  # type: ignore[no-untyped-def]
    result, out, _ = saved
    rows = list(csv.DictReader(io.StringIO((out / "channels.csv").read_text())))
    assert [(r["layer"], r["channel"]) for r in rows] == [("3", "0"), ("3", "1"), ("6", "0"), ("6", "1")]
    assert rows[0]["best_class_name"] == "stroke" and float(rows[0]["selectivity"]) == pytest.approx(1.0)
    assert float(rows[0]["max"]) == 510.0 and float(rows[1]["min"]) == -510.0 and rows[0]["dead"] == "false"
    stats = json.loads((out / "channels.json").read_text())
    layer = stats["layers"][0]
    assert layer["name"] == "3" and layer["images"] == 5 and layer["max"][0] == 510.0
    assert layer["selectivity"]["counts"] == [2, 3] and layer["selectivity"]["best"][0] == 1


def test_load_reads_back_what_was_saved(saved) -> None:  # type: ignore[no-untyped-def]
    result, out, index = saved
    back = DatasetResult.load(out)
    assert (back.model, back.k, back.images, back.engine, back.input_size) == ("pattern", 4, 5, "local", (32, 32))
    assert back.failures == result.failures and back.source.class_names == ("blank", "stroke")
    for a, b in zip(result.layers, back.layers):
        assert (a.layer.name, a.layer.rf_size, a.layer.rf_jump, a.map_hw) == \
            (b.layer.name, b.layer.rf_size, b.layer.rf_jump, b.map_hw)
        for which in ("top", "bottom", "negative"):
            ra, rb = a.ranking(which), b.ranking(which)
            np.testing.assert_array_equal(ra.ids, rb.ids)
            np.testing.assert_array_equal(ra.positions[ra.ids >= 0], rb.positions[rb.ids >= 0])
            np.testing.assert_array_equal(ra.scores, rb.scores)
        for field in ("mean", "std", "min", "max", "zero_fraction", "dead", "constant", "count"):
            np.testing.assert_array_equal(getattr(a.stats, field), getattr(b.stats, field))
        np.testing.assert_array_equal(a.selectivity.index, b.selectivity.index)  # type: ignore[union-attr]
        np.testing.assert_array_equal(a.selectivity.means, b.selectivity.means)  # type: ignore[union-attr]
    for got, want in zip(back.crops("3", 0), result.crops("3", 0)):
        np.testing.assert_array_equal(got, want)  # the loaded result finds the original files again
    again = _index(back.save(out.parent / "again"))
    assert again == {**index, "layers": again["layers"]} and again["layers"] == index["layers"]


def test_notebook_view_escapes_everything(lens: Lens, saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = saved
    page = result._repr_html_()
    assert "data:image/png;base64," in page and "channel 0: class stroke (1.00)" in page
    evil = DatasetResult(model="<script>alert(1)</script>", source=result.source, input_size=(32, 32), k=4,
                         engine="local", layers=result.layers, images=5,
                         failures=[("<b>x.png", "<img src=x>")], notes=["<i>note</i>"])
    page = evil._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x>" not in page and "<i>" not in page and "&lt;b&gt;x.png" in page


def test_each_image_is_read_once_and_a_small_budget_gives_the_same_files(
        saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    result, out, index = saved
    reads: list[int] = []
    real = result_module.read_batch

    def counting(source: Source, records: list[Record]) -> list:
        reads.extend(r.id for r in records)
        return real(source, records)

    monkeypatch.setattr(result_module, "read_batch", counting)
    result.save(tmp_path / "one")
    assert len(reads) == len(set(reads))  # one pass: every image read once
    reads.clear()
    small = _index(result.save(tmp_path / "small", crop_budget=1))  # one channel per pass
    assert len(reads) > len(set(reads))
    assert small["layers"] == index["layers"]
    for rel in ["layers/004_3/c0000.png", "layers/004_3/c0001.png", "layers/004_3/atlas.png",
                "layers/007_6/atlas.png"]:
        assert (tmp_path / "small" / rel).read_bytes() == (out / rel).read_bytes()


def test_an_image_gone_since_the_run_gives_a_grey_crop_and_a_null_box(lens: Lens, tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    result = _run(lens, open_source(data), k=2, layers="conv2")
    (data / "stroke" / "a.png").unlink()
    index = _index(result.save(tmp_path / "out"))
    top = index["layers"][0]["channels_info"][0]["top"]
    assert top[0]["name"] == "stroke/a.png" and top[0]["box"] is None and top[1]["box"] is not None
    assert any("could not be read again" in n and "stroke/a.png" in n for n in index["notes"])
    assert np.all(result.crops("3", 0)[0] == 235)


def test_k_larger_than_the_images_leaves_empty_slots(lens: Lens, tmp_path: Path) -> None:
    data = tmp_path / "few"
    data.mkdir()
    PIL.Image.fromarray(_image((10, 10))).save(data / "only.png")
    PIL.Image.fromarray(_image(None)).save(data / "other.png")
    result = _run(lens, open_source(data), k=5, layers="conv2")
    index = _index(result.save(tmp_path / "out"))
    assert [e["name"] for e in index["layers"][0]["channels_info"][0]["top"]] == ["only.png", "other.png"]
    assert len(result.crops("3", 0)) == 2
    back = DatasetResult.load(tmp_path / "out")
    assert back.layers[0].top.ids[0].tolist() == [0, 1, -1, -1, -1]
    assert np.isneginf(back.layers[0].top.scores[0, 2:]).all()


def test_parquet_data_round_trip_cuts_crops_from_the_rows(lens: Lens, tmp_path: Path) -> None:
    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        PIL.Image.fromarray(a).save(buf, "PNG")
        return buf.getvalue()

    table = pa.table({"bytes": [png(_image(None)), png(_image((9, 20))), png(_image((30, 2)))]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    result = _run(lens, open_source(tmp_path / "d.parquet"), k=2, layers="conv2")
    index = _index(result.save(tmp_path / "out"))
    assert [e["name"] for e in index["layers"][0]["channels_info"][0]["top"]] == ["d.parquet#1", "d.parquet#2"]
    back = DatasetResult.load(tmp_path / "out")
    record = {r.id: r for r in back.source.records}[1]
    assert (record.name, record.row, record.path) == ("d.parquet#1", 1, str(tmp_path / "d.parquet"))
    got = back.crops("3", 0, size=8)
    np.testing.assert_array_equal(got[0][3:6, 2:5, 0], DIAGONAL)  # stroke at (9, 20): box from (5, 17)


def test_boxes_are_in_original_pixels_for_images_of_another_size(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        PIL.Image.new("RGB", (96, 64), (10, 20, 30)).save(tmp_path / name)  # W 96, H 64
    source = open_source(tmp_path)
    layer = LayerInfo(4, "conv", "Conv2D", "conv", (16, 16, 3), rf_size=(8, 8), rf_jump=(2, 2))
    stats_acc = DatasetAccumulator([layer], 1)
    stats_acc.add_batch({"conv": np.ones((2, 16, 16, 3), np.float32)}, np.array([0, 1]), None)
    ex = stats_acc.results()[0]
    ranking = Ranking(np.ones((3, 1)), np.array([[1], [0], [-1]]), np.array([[[0, 3]], [[15, 15]], [[-1, -1]]]))
    ex = LayerExamples(layer=layer, map_hw=(16, 16), stats=ex.stats, top=ranking, bottom=ranking,
                       negative=ranking, selectivity=None)
    result = DatasetResult(model="m", source=source, input_size=(32, 32), k=1, engine="local", layers=[ex],
                           images=2)
    index = _index(result.save(tmp_path / "out"))
    info = index["layers"][0]["channels_info"]
    # Input box (-3, 3, 5, 11) in a 32x32 input; the originals are 64x96: x2 down, x3 across.
    assert info[0]["top"] == [{"id": 1, "name": "b.png", "score": 1.0, "position": [0, 3],
                               "box": [-6.0, 9.0, 10.0, 33.0], "label": None}]
    assert info[1]["top"][0]["box"] == [54.0, 81.0, 70.0, 105.0]  # centre (31, 31) in the input
    assert info[2]["top"] == [] and info[0]["best_class"] is None and info[0]["selectivity"] is None
    crop = result.crops("conv", 0, size=16)[0]
    assert tuple(crop[15, 15]) == (10, 20, 30) and tuple(crop[0, 15]) in (PAD_LIGHT, PAD_DARK)


def test_save_is_atomic_and_load_refuses_other_folders(saved, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = saved

    def broken(*args: object) -> None:
        raise OutputError("disk full (simulated)")

    monkeypatch.setattr(result_module, "_atlas", broken)
    with pytest.raises(OutputError, match="simulated"):
        result.save(tmp_path / "never")
    assert not (tmp_path / "never").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(BadArgument, match="is not a convlens dataset folder .it has no index.json.; make one with"):
        DatasetResult.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"convlens": "0.1.0", "maps": []}))
    (tmp_path / "channels.json").write_text("{}")
    with pytest.raises(BadArgument, match="another command's"):
        DatasetResult.load(tmp_path)


def test_end_to_end_through_the_engine_matches_the_hand_run(lens: Lens, saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Lens.dataset (the local engine: prefetch, batches, fold thread) gives the files a hand run gives."""
    by_hand, hand_out, hand_index = saved
    data = Path(by_hand.source.root)
    result = lens.dataset(data, layers=["4", "7"], k=4, batch_size=2, preprocess="raw", out=tmp_path / "out")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["images"] == 5 and [f["name"] for f in index["failed"]] == ["stroke/broken.png"]
    assert index["layers"] == hand_index["layers"]
    for rel in ["layers/004_3/c0000.png", "layers/004_3/c0001.png", "layers/004_3/atlas.png"]:
        assert (tmp_path / "out" / rel).read_bytes() == (hand_out / rel).read_bytes()
    top = result.crops("3", 0, size=8)[0]
    np.testing.assert_array_equal(top[2:5, 3:6, 0], DIAGONAL)  # a.png: stroke at (12, 17), box from (9, 13)


def test_small_fields_are_shown_in_context_with_their_outline(lens: Lens, saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """conv1's 3x3 field is shown inside a quarter of the input (8 px), outlined; index boxes stay the field."""
    from convlens.dataset.crops import FIELD_COLOR

    data = Path(saved[0].source.root)
    result = lens.dataset(data, layers=["1"], k=2, preprocess="raw", out=tmp_path / "out")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    first = index["layers"][0]["channels_info"][0]["top"][0]
    assert first["name"] == "stroke/a.png" and first["position"] == [12, 17]
    assert first["box"] == [11.0, 16.0, 14.0, 19.0]  # the 3x3 field itself
    plain = result.crops("0", 0, size=3)[0]
    np.testing.assert_array_equal(plain[..., 0], DIAGONAL)
    wide = result.crops("0", 0, size=64, context=True)[0]  # view (8.5, 13.5)-(16.5, 21.5) -> pixels 8..16
    outline = np.all(wide == FIELD_COLOR, axis=-1)
    ys, xs = np.nonzero(outline)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (21, 42, 21, 42)  # 3 of 9 pixels, 7.1 px each
    assert np.all(wide[25:39, 25:39][np.eye(14, dtype=bool)] == 255)  # the stroke inside the outline
    atlas = _png(tmp_path / "out" / "layers/001_0/atlas.png")
    assert np.all(atlas == FIELD_COLOR, axis=-1).sum() == outline.sum()  # the atlas shows it so


def test_progress_counts_every_image_read(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = saved

    class Count:
        def __init__(self) -> None:
            self.total, self.done, self.finished = -1, 0, False

        def start(self, total: int, label: str) -> None:
            self.total = total

        def advance(self, n: int = 1) -> None:
            self.done += n

        def finish(self) -> None:
            self.finished = True

    for budget in (1 << 30, 1):
        count = Count()
        result.save(tmp_path / str(budget), progress=count, crop_budget=budget)
        assert count.finished and count.done == count.total > 0


def test_wide_layers_get_half_size_atlas_tiles_and_dead_channels_fade(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        PIL.Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / name)
    source = open_source(tmp_path)
    layer = LayerInfo(1, "wide", "Conv2D", "conv", (4, 4, 300), rf_size=(32, 32), rf_jump=(8, 8))
    acc = DatasetAccumulator([layer], 1)
    maps = np.zeros((2, 4, 4, 300), np.float32)
    maps[:, :, :, 1:] = 1.0  # channel 0 is dead
    acc.add_batch({"wide": maps}, np.array([0, 1]), None)
    result = DatasetResult(model="m", source=source, input_size=(32, 32), k=1, engine="local",
                           layers=acc.results(), images=2)
    result.save(tmp_path / "out", crop_size=64)
    atlas = _png(tmp_path / "out" / "layers/001_wide/atlas.png")
    # 300 tiles of 32 px (half of 64) in 18 columns: 18 * 33 + 1 = 595 px of grid, plus title padding
    assert atlas.shape[1] >= 595 and atlas.shape[1] < 18 * 65
    grid = atlas[atlas.shape[0] - (17 * 33 + 1):]  # 17 rows of 33 px
    tile1 = grid[1 + 20:33, 33 + 1 + 20:33 + 33]  # bottom-right of channel 1's tile: clear of its number
    tile0 = grid[1 + 20:33, 1 + 20:33]            # the dead channel 0: faded toward white
    assert np.all(tile1 == (200, 0, 0)) and np.all(tile0 == ((200 + 765) // 4, 191, 191))


def test_labelled_mosaics_name_each_image_class(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    result, out, _ = saved
    labelled = _png(out / "layers/004_3/c0000.png")
    plain = replace(result, source=replace(result.source, class_names=None), folder=None)
    plain.save(tmp_path / "plain")
    unlabelled = _png(tmp_path / "plain" / "layers/004_3/c0000.png")
    assert labelled.shape[0] == unlabelled.shape[0] + 2 * 14  # a 14 px strip under each row
    np.testing.assert_array_equal(labelled[:-14][-66:], unlabelled[-66:])  # the same second grid above it
    strip = labelled[-14:]
    assert np.mean(strip == 255) > 0.8  # white, with a few dark letters
    for col in range(4):  # each of the four ranked images is named under its tile
        assert np.any(np.all(strip[:, 1 + col * 65:1 + col * 65 + 64] < 128, axis=-1))
