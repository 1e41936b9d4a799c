"""The zoo sweep: real architectures with random weights, through the ``convlens`` command.

Every ``keras.applications`` name convlens lists, torchvision models across
families (classification and segmentation; every conv module they call must be
a conv row), two PyTorch models written as the codebases people bring write
them (an EfficientNet-Lite of ``nn.Conv2d`` subclasses owning a ``ZeroPad2d``,
a U-Net with ``F.interpolate`` and ``torch.cat``; with CAMs), and some of them exported to ONNX
and converted to TFLite, each run through ``layers``, ``maps --layers blocks``,
``stats`` and ``report`` in-process (``convlens.cli.main``). Each run must end
with status 0 and write nothing on stderr (no traceback, no framework log), each
grid must show something (not one colour), and every convolution must have a
finite receptive field (or see the whole input, after a global pooling), and no
receptive field shrinks along the graph except at an upsampling.

Inputs are small (64 px where the architecture allows) so that the sweep takes
minutes; sizes are chosen so that the last block still has a map of 2x2 or more.
Each model is opened once (the first command goes through convlens's own
``open_model``) and the four commands share that adapter, as one Python session
reusing a model would: building and probing the model again for each command
tested nothing the first build had not, and took about half of the sweep.
"""

from __future__ import annotations

import gc
import inspect
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import convlens
from convlens.adapters.keras import ZOO
from convlens.cli import main
from convlens.render.grid import PALETTE_LEVELS

pytestmark = pytest.mark.slow

#: Input sizes that differ from 64 px: the architecture's minimum, or a size whose last
#: block is still 2x2 or larger (a 1x1 map is one colour per channel, whatever its weights).
KERAS_SIZES = {"inception_v3": 107, "xception": 71}
TORCHVISION = {
    "resnet18": 64,
    "resnet50": 64,
    "densenet121": 64,
    "efficientnet_b0": 64,
    "efficientnet_v2_s": 64,
    "mobilenet_v3_small": 64,
    "mobilenet_v3_large": 64,
    "convnext_tiny": 64,
    "regnet_y_400mf": 64,
    "inception_v3": 107,
    "googlenet": 64,
    "squeezenet1_1": 64,
    "shufflenet_v2_x0_5": 64,
    "mnasnet0_5": 64,
    "alexnet": 64,
    "vgg11_bn": 64,
    "vit_b_16": 224,
    "swin_t": 64,
    "fcn_resnet50": 64,
    "deeplabv3_mobilenet_v3_large": 64,
    "lraspp_mobilenet_v3_large": 64,
}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    """The shipped photo at 80x60: a real picture, so activations are not degenerate."""
    path = tmp_path_factory.mktemp("zoo_input") / "cat.png"
    PIL.Image.open(convlens.SAMPLE_PHOTO).convert("RGB").resize((80, 60)).save(path)
    return str(path)


class OpenedOnce:
    """Stands in for ``convlens.model.open_model``: the first call per model opens it, later ones reuse it."""

    def __init__(self, real) -> None:
        self.real = real
        self.adapters: dict[tuple, object] = {}
        self.reused = 0

    def __call__(self, source, **options):
        key = (os.fspath(source), tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key in self.adapters:
            self.reused += 1
        else:
            self.adapters[key] = self.real(source, **options)
        return self.adapters[key]


@pytest.fixture
def opened(monkeypatch) -> OpenedOnce:
    """One model build per test, shared by its four commands (each test starts from a clean Keras)."""
    import convlens.model

    keras = sys.modules.get("keras")
    if keras is not None:  # the last test cleared it and collected: only a test before the sweep's first
        keras.backend.clear_session(free_memory=False)
    cache = OpenedOnce(convlens.model.open_model)
    monkeypatch.setattr(convlens.model, "open_model", cache)
    yield cache
    cache.adapters.clear()
    if keras is not None:
        keras.backend.clear_session()  # the next model starts from a clean graph; collects garbage
    else:
        gc.collect()


def cli(capfd, *argv: str) -> str:
    """Run ``convlens ARGV`` in-process; status 0, nothing on stderr; returns stdout.

    Python warnings count as stderr: the console shows them (Python's default filters,
    which pytest would otherwise replace with its own capture).
    """
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for category in (
            DeprecationWarning,
            PendingDeprecationWarning,
            ImportWarning,
            ResourceWarning,
        ):
            warnings.simplefilter("ignore", category)
        status = main(list(argv), stdout=out, stderr=err)
    native = capfd.readouterr()  # what frameworks wrote on file descriptors 1 and 2
    stderr = (
        err.getvalue()
        + native.err
        + "".join(
            warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught
        )
    )
    assert status == 0, f"{' '.join(argv)}: status {status}: {stderr}"
    # the CLI's own notes go to stderr (stdout holds the results); anything else there is a leak
    leaked = "\n".join(line for line in stderr.splitlines() if not line.startswith("note: "))
    assert not leaked.strip(), f"{' '.join(argv)} wrote on stderr: {leaked}"
    return out.getvalue() + native.out


def not_blank(png: Path, entry: dict) -> bool:
    """A grid shows at least two colormap levels (palette entries 0-239; the rest is chrome).

    Unless every drawn channel is constant, and flagged so: a conv after a 3x3 max pool on
    a 2x2 map (GoogLeNet's last pool branch) sees the same window at every pixel.
    """
    with PIL.Image.open(png) as im:
        assert im.mode == "P"
        pixels = np.asarray(im)
    if np.unique(pixels[pixels < PALETTE_LEVELS]).size >= 2:
        return True
    return len(set(entry["flags"]["constant"])) == entry["channels_shown"]


def unseen_input(table: list[dict], row: dict) -> bool:
    """Whether a conv's map is larger than that of every row the table says feeds it.

    Then its real input was made by plain code the table has no row for (a
    concatenation or an upsampling in ``forward``), and the receptive field is
    rightly ``?``: computed from the named input it would be a wrong number.
    """
    shape = row["output_shape"]
    feeding = [table[p]["output_shape"] for p in row["parents"]] or [table[row["index"] - 1]["output_shape"]]
    if shape is None or len(shape) != 3 or any(f is None or len(f) != 3 for f in feeding):
        return False
    return all(None not in (shape[a], f[a]) and shape[a] > f[a] + 2 for f in feeding for a in (0, 1)) or all(
        any(None not in (shape[a], f[a]) and shape[a] > f[a] + 2 for a in (0, 1)) for f in feeding)


def assert_fields_never_shrink(model: str, table: list[dict]) -> None:
    """Along every edge of the graph without upsampling, a receptive field never gets smaller.

    A layer sees at least what each of its inputs saw (a window only adds, a
    merge is a union); only an upsampling (whose boxes are finer) may report
    less. Global and unknown (``?``) fields are left out: neither is a number.
    """
    for row in table:
        if row["upsample"] is not None or row["global_rf"] or row["rf_size"] is None:
            continue
        for p in row["parents"]:
            before = table[p]
            if before["global_rf"] or before["rf_size"] is None:
                continue
            assert all(a >= b for a, b in zip(row["rf_size"], before["rf_size"])), (
                f"{model}: {row['name']} sees {row['rf_size']}, less than its input {before['name']} "
                f"({before['rf_size']})")


def sweep(capfd, opened: OpenedOnce, model: str, photo: str, out: Path, *extra: str,
          size: str | None = None) -> dict:
    """``layers``, ``maps --layers blocks``, ``stats`` and ``report`` on one model.

    ``extra`` goes to every command, ``--size`` (models that take any size) to the three
    that read the photo. The model is built by the first command and reused by the others.
    """
    table = json.loads(cli(capfd, "layers", model, *extra, "--json"))
    convs = [row for row in table if row["kind"] == "conv"]
    assert convs, f"{model}: no convolution in {[row['type'] for row in table]}"
    for row in convs:
        if not row["global_rf"]:  # convs after a global pooling (squeeze-excitation) see everything
            rf, jump = row["rf_size"], row["rf_jump"]
            if rf is None and (unseen_input(table, row) or any(
                    table[p]["rf_size"] is None and not table[p]["global_rf"]
                    for p in row["parents"] or [row["index"] - 1])):
                continue  # "?": an input this conv cannot have read (see unseen_input), or fed by a "?"
            assert rf is not None and jump is not None, (
                f"{model}: {row['name']} has no receptive field"
            )
            assert all(isinstance(v, int) and 1 <= v < 100_000 for v in (*rf, *jump)), row

    assert_fields_never_shrink(model, table)

    extra_run = (*extra, "--size", size) if size else extra
    cli(capfd, "maps", model, photo, *extra_run, "--layers", "blocks", "--out", str(out / "maps"))
    index = json.loads((out / "maps" / "index.json").read_text())
    grids = [entry for entry in index["maps"] if entry["layout"] == "grid"]
    assert grids, f"{model}: no grid drawn"
    blank = [
        entry["layer"] for entry in grids if not not_blank(out / "maps" / entry["file"], entry)
    ]
    assert not blank, f"{model}: blank grids for {blank}"

    stats = json.loads(
        cli(capfd, "stats", model, photo, *extra_run, "--layers", "blocks", "--json")
    )
    # the same model object: the same layers, by index and by name, in both
    assert {(layer["index"], layer["name"]) for layer in stats["layers"]} == {
        (entry["index"], entry["layer"]) for entry in index["maps"]
    }

    report = out / "report.html"
    cli(capfd, "report", model, photo, *extra_run, "--layers", "blocks", "--out", str(report))
    page = report.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in page
    # every layer the maps drew as a grid has its grid PNG in the page's data (the script makes the
    # data: URI; a block row such as a U-Net's Up has no filter picture to add one of its own)
    data = re.search(r'<script type="application/json" id="cl-data">(.*?)</script>', page, re.DOTALL)
    assert data is not None, f"{model}: the report has no data block"
    drawn = {layer["name"] for layer in json.loads(data.group(1))["layers"]
             if any(g.startswith("iVBORw0KGgo") for g in layer.get("grids") or [])}  # base64 of a PNG header
    assert {entry["layer"] for entry in grids} <= drawn, sorted({entry["layer"] for entry in grids} - drawn)
    # the four commands shared one build (if this fails, Lens no longer opens models through
    # convlens.model.open_model: point OpenedOnce at the new place, or each command builds again)
    assert (len(opened.adapters), opened.reused) == (1, 3), (list(opened.adapters), opened.reused)
    return {"layers": table, "maps": index, "stats": stats}


# --------------------------------------------------------------------------- keras.applications


# Not marked keras: the sweep runs once, on the TensorFlow backend (a second run of 16 zoo models on
# Keras's torch backend would double the suite's longest part; the torch backend's keras tests cover it).
@pytest.mark.parametrize("name", sorted(ZOO))
def test_keras_applications(name, keras, opened, photo, tmp_path, capfd):
    size = KERAS_SIZES.get(name, 64)
    sweep(
        capfd, opened, name, photo, tmp_path, "--weights", "none", "--input-shape",
        f"{size},{size},3",
    )


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision(name, opened, photo, tmp_path, capfd):
    import torchvision

    size = TORCHVISION[name]
    result = sweep(
        capfd,
        opened,
        f"torchvision:{name}",
        photo,
        tmp_path,
        "--weights",
        "none",
        "--input-shape",
        f"{size},{size},3",
    )
    assert result["layers"][0]["output_shape"] == [size, size, 3]
    # detection/segmentation builders download ImageNet backbone weights unless told not to
    builder = inspect.signature(torchvision.models.get_model_builder(name)).parameters
    no_download = {"weights_backbone": None} if "weights_backbone" in builder else {}
    _every_conv_is_a_row(result["layers"], torchvision.models.get_model(name, weights=None, **no_download), size)


def _every_conv_is_a_row(table: list[dict], model, size: int) -> None:
    """Every conv module the model calls (subclasses included) is a conv row with its kernel."""
    import torch

    called: set[str] = set()
    names = {id(m): n for n, m in model.named_modules()}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    handles = [m.register_forward_hook(lambda m, a, o: called.add(names[id(m)])) for m in convs]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    rows = {row["name"].split("#")[0] for row in table if row["kind"] == "conv" and row["kernel_shape"]}
    assert called and called <= rows, sorted(called - rows)


# --------------------------------------------------------------------------- written as people write them


@pytest.fixture(scope="module")
def people_models(tmp_path_factory) -> dict[str, Path]:
    """tests/torch_models.py's EfficientNet-Lite (static-same-padding conv subclasses) and U-Net
    (F.interpolate, torch.cat), pickled whole (opened with --trust)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch_models

    root = tmp_path_factory.mktemp("zoo_people")
    torch.manual_seed(0)
    files = {"efficientnet_lite": root / "efficientnet_lite.pt", "unet": root / "unet.pt"}
    torch.save(torch_models.EfficientNetLite(64).eval(), files["efficientnet_lite"])
    torch.save(torch_models.SmallUNet().eval(), files["unet"])
    return files


@pytest.mark.parametrize("name", ["efficientnet_lite", "unet"])
def test_models_written_as_people_write_them(name, people_models, opened, photo, tmp_path, capfd):
    import torch

    path = str(people_models[name])
    result = sweep(capfd, opened, path, photo, tmp_path, "--trust", "--input-shape", "64,64,3")
    table = result["layers"]
    _every_conv_is_a_row(table, torch.load(path, weights_only=False), 64)
    kinds = {row["type"]: row["kind"] for row in table}
    if name == "unet":
        assert kinds["interpolate"] == "reshape" and kinds["cat"] == "merge"
    else:
        assert kinds["Conv2dStaticSamePadding"] == "conv" and kinds["add"] == "merge"
    # CAMs: the default layer (the classifier) or a class of the segmentation, summed over its pixels
    cls = ["--class", "1"] if name == "unet" else []
    cli(capfd, "heatmap", path, photo, "--trust", "--input-shape", "64,64,3", *cls, "--method",
        "gradcam,gradcam++", "--out", str(tmp_path / "cams"))
    index = json.loads((tmp_path / "cams" / "index.json").read_text())
    entries = index["heatmaps"]
    assert len(entries) == 2, index
    for entry in entries:
        assert not_blank_png(tmp_path / "cams" / entry["file"])


def not_blank_png(png: Path) -> bool:
    with PIL.Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    return pixels.reshape(-1, 3).std(axis=0).max() > 1


# --------------------------------------------------------------------------- exported files


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    """torchvision models exported both ways: the dynamo exporter and the TorchScript one."""
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("zoo_onnx")
    files = {}
    x = torch.zeros(1, 3, 64, 64)
    for name, dynamo, free in (
        ("resnet18", True, False),
        ("mobilenet_v3_small", False, True),
        ("squeezenet1_1", False, False),
        ("efficientnet_b0", False, False),
    ):
        model = torchvision.models.get_model(name, weights=None).eval()
        files[name] = root / f"{name}.onnx"
        axes = {"image": {2: "height", 3: "width"}} if free else None
        torch.onnx.export(
            model, (x,), str(files[name]), input_names=["image"], dynamo=dynamo, dynamic_axes=axes
        )
    return files


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "efficientnet_b0"]
)
def test_onnx_exports(name, onnx_files, opened, photo, tmp_path, capfd):
    path = onnx_files[name]
    free = name == "mobilenet_v3_small"  # exported with free height and width: --size picks them
    result = sweep(capfd, opened, str(path), photo, tmp_path, size="72x96" if free else None)
    assert result["layers"][0]["output_shape"] == ([None, None, 3] if free else [64, 64, 3])


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory) -> dict[str, Path]:
    """Keras models converted to TFLite: float MobileNetV2, MobileNetV3Small with int8 weights."""
    import os

    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.fail("TFLite conversion needs KERAS_BACKEND=tensorflow")  # make test runs it there
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("zoo_tflite")
    files = {}
    for name, ctor, quantise in (
        ("mobilenet_v2", "MobileNetV2", False),
        ("mobilenet_v3_small_int8_weights", "MobileNetV3Small", True),
    ):
        model = getattr(keras.applications, ctor)(weights=None, input_shape=(64, 64, 3))
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantise:  # dynamic-range quantisation: int8 weights, float activations
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        files[name] = root / f"{name}.tflite"
        files[name].write_bytes(converter.convert())
        keras.backend.clear_session()
    return files


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small_int8_weights"])
def test_tflite_conversions(name, tflite_files, opened, photo, tmp_path, capfd):
    result = sweep(capfd, opened, str(tflite_files[name]), photo, tmp_path)
    assert result["layers"][0]["output_shape"] == [64, 64, 3]
