"""The ``convlens`` command: a thin layer over :class:`convlens.Lens`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ._errors import BadArgument, ConvlensError
from ._version import __version__
from .adapters import AUTO, DEVICE_CHOICES, is_out_of_memory, out_of_memory, parse_device
from .images import PRESET_NAMES
from .selection import DEFAULT_FILTER_SELECTION, DEFAULT_SELECTION

EXAMPLES = """\
examples:
  convlens demo --out demo-output
  convlens layers vgg16 --weights none
  convlens maps vgg16 --weights none cat.jpg --layers blocks --out out/
  convlens maps model.keras a.png b.png --layers 'conv,re:dense.*' --norm layer --cmap magma --out out/
  convlens filters model.h5 --layers block1_conv1 --out filters/
  convlens maps torchvision:resnet18 --weights none cat.jpg --layers blocks --out out/
  convlens layers model.onnx
  convlens maps model_int8.tflite cat.jpg --out out/
  convlens stats vgg16 --weights none cat.jpg dog.jpg --layers conv,act,pool --json
  convlens report vgg16 --weights none cat.jpg dog.jpg --out report.html
  convlens heatmap vgg16 --weights none cat.jpg --method gradcam,scorecam --out heat/
  convlens dataset demo digits/ --layers conv --k 9 --out ds/   (per channel its top images)
  convlens timeline runs/1 --out timeline.html   (a run recorded by LensCallback/LensRecorder)

Models: a .keras or legacy .h5 file, a .pt2 torch.export program, a .onnx or .tflite
file, 'demo' (the built-in MNIST CNN), a keras.applications name (vgg16 vgg19 resnet50
mobilenet_v2 efficientnet_b0 ...) or torchvision:NAME (torchvision:resnet18).
Pickled PyTorch modules (.pt/.pth) load only with --trust.
Layers (--layers, comma-separated, union): kinds conv pool act dense norm merge all;
blocks (last conv of each resolution stage); names; globs 'block*_conv1';
regular expressions 're:conv[12]$'; indexes 7, -1 and ranges 3-9.
"""


HEATMAP_EXAMPLES = """\
examples:
  convlens heatmap vgg16 cat.jpg --out heat/
  convlens heatmap torchvision:resnet18 cat.jpg --method gradcam,scorecam,ig --class 281,tiger --out heat/
  convlens heatmap model_int8.tflite cat.jpg --method scorecam,eigencam,occlusion --out heat/
  convlens heatmap demo digit.png --method gradcam --layer conv2 --out heat/

Writes heatmaps/IMAGE/METHOD_CLASS.png (the map blended on the image as given, with a colour
bar and the class and its score), the map as .npy at the image's resolution, and index.json.
"""


class BarProgress:
    """A one-line progress bar on stderr, shown only on a terminal and after a moment."""

    def __init__(self, stream: TextIO = sys.stderr, delay: float = 0.5) -> None:
        self.stream, self.delay = stream, delay
        self.total, self.done, self.label, self.t0, self.drawn = 0, 0, "", 0.0, False

    def start(self, total: int, label: str) -> None:
        self.total, self.done, self.label, self.t0, self.drawn = total, 0, label, time.monotonic(), False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.stream.isatty() or time.monotonic() - self.t0 < self.delay:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write H,W,C such as 224,224,3") from None
    if len(parts) not in (2, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write H,W,C such as 224,224,3")
    return parts


def _size_arg(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write 320 or 240x320 (HxW)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write 320 or 240x320 (HxW)")
    return parts[0], parts[1]


def _count_or_all(what: str) -> Callable[[str], int | None]:
    """An argparse type for ``--max-channels``/``--max-filters``: a count of ``what``, at least 1, or 'all'.

    argparse names the option in front of the message ("argument --max-filters: ..."), so the
    message itself names only what is counted.
    """

    def parse(text: str) -> int | None:
        if text.lower() == "all":
            return None
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give a number of {what} or 'all'") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least 1 {what[:-1]} (or 'all')")
        return n

    parse.__name__ = f"{what}_count"  # argparse shows it if anything else goes wrong
    return parse


_channels_arg = _count_or_all("channels")
_filters_arg = _count_or_all("filters")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive(text: str) -> int:
    n = _whole(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="imagenet|default|none|PATH",
                   help="zoo models (vgg16, torchvision:resnet18): imagenet or default = pretrained (the "
                        "default), none = random, PATH = a weights file (torchvision: a state dict)")
    p.add_argument("--input-shape", type=_shape_arg, metavar="H,W,C",
                   help="input shape for models that do not know theirs (unbuilt or subclassed)")
    p.add_argument("--trust", action="store_true",
                   help="allow model files that run code when loaded (Lambda layers); only for files you trust")
    p.add_argument("--image-input", metavar="NAME",
                   help="a model with several inputs: the input the images fill (default: the first that "
                        "looks like an image; `convlens layers` lists them)")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME=FILE.npy",
                   help="a model with several inputs: hold input NAME at this array (one item, no batch axis, "
                        "the model's own layout) for every image; repeat for more; not given: zeros")
    _device_option(p)


def _device_arg(text: str) -> str:
    try:
        return str(parse_device(text))
    except BadArgument:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose {DEVICE_CHOICES} (cuda, not gpu)"
                                         ) from None


def _gpu_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a share of a GPU such as 0.5, or 1"
                                         ) from None
    if not (0 < value <= 1 or value == int(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a fraction of one GPU (0.25, 0.5) or a whole number")
    return value


def _device_option(p: argparse.ArgumentParser) -> None:
    """THE ``--device`` flag of every command that runs a model (one definition, one help text)."""
    p.add_argument("--device", type=_device_arg, default=AUTO, metavar="auto|cpu|cuda|cuda:N|mps",
                   help="where the model runs: auto (default: a CUDA or Apple GPU when there is one, else "
                        "the CPU), cpu, cuda, cuda:N (the N-th GPU) or mps; TFLite models run on the CPU")


def _render_options(p: argparse.ArgumentParser, *, tile_size: int = 256, where: str = "") -> None:
    p.add_argument("--norm", default="standardize", choices=("standardize", "minmax", "layer", "global"),
                   help="per-channel standardize (default, as the tutorials), per-channel minmax, "
                        "one scale per layer, or one scale for all layers")
    p.add_argument("--cmap", default="viridis", help="any matplotlib colormap, or gray (default viridis)")
    p.add_argument("--max-channels", type=_channels_arg, default=64, metavar="N|all",
                   help="channels drawn per layer (default 64)")
    p.add_argument("--columns", type=_positive, help="grid columns (default: near-square)")
    p.add_argument("--numbers", action="store_true", help="stamp channel numbers on the tiles")
    p.add_argument("--tile-size", type=_positive, default=tile_size,
                   help=f"larger maps are averaged down to this many pixels per tile (default {tile_size}{where})")


def _image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=_size_arg, metavar="HxW",
                   help="input size for models that accept any size (default: the image's own)")
    p.add_argument("--preprocess", choices=PRESET_NAMES,
                   help="preprocessing preset (default: the model's own; unit = x/255)")
    p.add_argument("--max-pixels", type=_positive, help="refuse images larger than this (default 100M)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"convlens: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``convlens``."""
    parser = _Parser(
        prog="convlens", description="See what a convolutional network sees: layers, filters, feature maps.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"convlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("layers", help="print the layer table (shapes, params, kernels, receptive fields)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    _model_options(p)

    p = sub.add_parser("maps", help="write a feature-map grid per layer and per image",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--layers", default=None, help=f"layer selection (default {DEFAULT_SELECTION})")
    p.add_argument("--out", required=True, help="output folder")
    _model_options(p)
    _image_options(p)
    _render_options(p)

    p = sub.add_parser("filters", help="write filter atlases of conv layers",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--layers", default=DEFAULT_FILTER_SELECTION,
                   help=f"layer selection (default {DEFAULT_FILTER_SELECTION})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cmap", default="gray", help="colormap of the filter grids (default gray)")
    p.add_argument("--max-filters", type=_filters_arg, default=64, metavar="N|all",
                   help="filters drawn per layer (default 64)")
    p.add_argument("--max-inputs", type=_positive, default=16,
                   help="input channels drawn per filter (default 16)")
    _model_options(p)

    p = sub.add_parser("stats", help="channel health: per-channel mean, std, min, max, zeros; dead, "
                                     "constant and non-finite channels",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--layers", default=None,
                   help=f"layer selection (default {DEFAULT_SELECTION}; add act for separate activation layers)")
    p.add_argument("--json", action="store_true", help="print every number as JSON")
    p.add_argument("--channels", action="store_true", help="also print one row per channel")
    _model_options(p)
    _image_options(p)

    p = sub.add_parser("report", help="write one self-contained HTML page: layers, predictions, feature "
                                      "maps, channel health, filters",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    p.add_argument("--layers", default=None, help=f"layer selection (default {DEFAULT_SELECTION})")
    p.add_argument("--labels", metavar="FILE", help="class names for the top-5 predictions, one per line; "
                                                  "imagenet: the built-in ImageNet-1k names")
    p.add_argument("--sections", help="comma-separated sections to include (default all: inputs, "
                                      "predictions, layers, maps, heatmaps, stats, filters; add visualize "
                                      "for feature visualisations, which take minutes)")
    p.add_argument("--heatmap-methods", metavar="M[,M...]",
                   help="the heatmaps section's methods, the first shown first (default gradcam, or "
                        "scorecam for models without gradients such as TFLite)")
    p.add_argument("--heatmap-top", type=_positive, metavar="K",
                   help="the heatmaps section's classes per image (default 3)")
    p.add_argument("--visualize-layer", metavar="L", help="visualize section: the layer (default the last "
                                                          "selected conv layer)")
    p.add_argument("--visualize-channels", metavar="0-15|all", help="visualize section: the channels "
                                                                    "(default the first 16)")
    p.add_argument("--visualize-steps", type=int, metavar="N", help="visualize section: optimisation steps "
                                                                    "(default 128)")
    p.add_argument("--dataset", metavar="DIR", help="add the dataset examples section: each channel's map "
                                                    "beside its top crops from DIR, a convlens dataset output")
    p.add_argument("--dataset-channels", metavar="N|all", help="dataset section: channels per layer, the "
                                                               "most active for the images first (default 16)")
    _model_options(p)
    _image_options(p)
    from .report import REPORT_TILE_SIZE

    # the report's own default: small tiles keep the page small enough to mail
    _render_options(p, tile_size=REPORT_TILE_SIZE, where=" in reports")

    p = sub.add_parser("heatmap", help="where the network looks when it decides: Grad-CAM, Score-CAM, "
                                       "saliency, Integrated Gradients... as overlays and arrays",
                       epilog=HEATMAP_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--method", default="gradcam", metavar="M[,M...]",
                   help="comma-separated methods (default gradcam): gradcam gradcam++ xgradcam layercam "
                        "hirescam scorecam eigencam (maps of a layer), saliency smoothgrad ig occlusion "
                        "(attributions to the pixels); scorecam, eigencam and occlusion need no gradients")
    p.add_argument("--layer", help="CAM methods: the layer (default: the output of the last conv layer)")
    p.add_argument("--class", dest="classes", action="append", metavar="C",
                   help="the class to explain, by index or name; repeatable or comma-separated "
                        "(default: each image's top class)")
    p.add_argument("--top", type=_positive, default=1, metavar="K",
                   help="without --class: each image's K top classes, or a detector's K best "
                        "detections (default 1, at most 10)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, or imagenet for the built-in "
                                                  "ImageNet-1k names (default: the model's own)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=_positive, help="ig: integration steps (default 50)")
    p.add_argument("--samples", type=_positive, help="smoothgrad: noisy samples (default 25)")
    p.add_argument("--window", type=_positive, help="occlusion: patch side in input pixels "
                                                    "(default 1/8 of the input)")
    p.add_argument("--stride", type=_positive, help="occlusion: patch step (default half the window)")
    p.add_argument("--baseline", choices=("zero", "black", "blur"),
                   help="ig and occlusion: the reference input (default zero, after preprocessing)")
    _target_options(p)
    _model_options(p)
    _image_options(p)

    _evaluate_parser(sub)

    p = sub.add_parser("timeline", help="write one self-contained HTML page of a run recorded during "
                                        "training (convlens.keras.LensCallback, convlens.torch.LensRecorder)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR", help="the run folder (out= of the callback or recorder)")
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. timeline.html")
    p.add_argument("--max-checkpoints", type=_positive, default=100, metavar="N",
                   help="checkpoints whose pictures go into the page, evenly spread (default 100); "
                        "the charts show every one")

    p = sub.add_parser("visualize", help="feature visualisation: the image each channel, neuron or class "
                                         "responds to most (an atlas, one PNG each, index.json)",
                       epilog=VISUALIZE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--layer", help="the layer whose channels to visualise (a name or index; not used "
                                   "with --objective class)")
    p.add_argument("--channels", metavar="0-31|all", help="channels (or classes): all, a range, or a "
                                                          "comma-separated list (default: the first --batch-size)")
    p.add_argument("--objective", default="channel", choices=("channel", "neuron", "class"),
                   help="channel: mean of its map (default); neuron: the centre unit; class: a logit")
    p.add_argument("--negative", action="store_true", help="the image the objective likes least")
    p.add_argument("--steps", type=int, default=512, help="optimisation steps (default 512, as Lucid)")
    p.add_argument("--size", type=int, metavar="PX",
                   help="image side in pixels (default 128, as Lucid; at most a fixed input's side)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same images (default 0)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images optimised together (default 32)")
    p.add_argument("--batch", dest="batch_size", type=int, help=argparse.SUPPRESS)  # the old name, kept working
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05, as Lucid)")
    p.add_argument("--copies", type=int, default=1, help="images per channel (default 1)")
    p.add_argument("--diversity", type=float, default=0.0, metavar="W",
                   help="push the copies of a channel apart (Gram-matrix penalty, e.g. 100 with --copies 4)")
    p.add_argument("--preprocess", choices=PRESET_NAMES,
                   help="preprocessing preset (default: the model's own; unit = x/255)")
    p.add_argument("--out", required=True, help="output folder")
    _model_options(p)

    p = sub.add_parser("dataset", help="what each channel responds to across a data set: its top-k "
                                       "images and receptive-field crops, channel health, class "
                                       "selectivity",
                       epilog=DATASET_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data", metavar="DATA", help="a folder (DATA/<class>/<image> gives labels), a glob, "
                                                "a text file of image paths, or a Parquet file or folder")
    p.add_argument("--layers", default=None, help=f"layer selection (default {DEFAULT_SELECTION})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=_positive, default=9, help="images kept per channel (default 9)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default: this process) or ray (a Ray cluster; pip install "
                        "'convlens[ray]')")
    p.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                   help="images per forward pass (default 32)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint (kept beside --out)")
    p.add_argument("--checkpoint-every", type=_positive, default=1000, metavar="N",
                   help="local engine: save a checkpoint every N images (default 1000)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="ray engine: an existing cluster, e.g. ray://head:10001 (default: a local one)")
    p.add_argument("--workers", type=_positive, metavar="N", help="ray engine: model actors (default: one per "
                                                                   "CPU, or with GPUs one per --gpus-per-worker)")
    p.add_argument("--gpus-per-worker", type=_gpu_share, metavar="F",
                   help="ray engine on GPUs: the GPUs each model actor reserves (default 1; 0.5 puts two "
                        "actors on each GPU)")
    p.add_argument("--size", type=_size_arg, metavar="HxW",
                   help="input size for models that accept any size (default 224x224)")
    p.add_argument("--preprocess", choices=PRESET_NAMES,
                   help="preprocessing preset (default: the model's own; unit = x/255)")
    p.add_argument("--max-pixels", type=_positive, help="refuse images larger than this (default 100M)")
    _model_options(p)

    p = sub.add_parser("compare", help="where two networks part ways, layer by layer: an export, a "
                                       "quantisation, two checkpoints or two architectures",
                       epilog=COMPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_a", metavar="MODEL_A", help="the reference network")
    p.add_argument("model_b", metavar="MODEL_B", help="the network compared with it")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="output folder: index.json, compare.html, PNG charts")
    p.add_argument("--pairs", metavar="FILE", help="CSV of 'a,b' layer names, one pair a line: replaces the "
                                                   "automatic pairing")
    p.add_argument("--layers", default=None, help="layers of A whose pairs to keep (default: every pair; "
                                                  "conv for the CKA matrix of two architectures)")
    p.add_argument("--metric", default="rel", choices=("rel", "max_abs", "cosine", "sqnr", "cka"),
                   help="the figure that decides divergence (default rel: relative error)")
    p.add_argument("--tolerance", type=float, help="divergence threshold of --metric (defaults: rel 1e-3, "
                                                   "max_abs 1e-3, cosine 0.9999, sqnr 40 dB, cka 0.99)")
    p.add_argument("--weights-a", metavar="imagenet|default|none|PATH", help="zoo model A's weights")
    p.add_argument("--weights-b", metavar="imagenet|default|none|PATH", help="zoo model B's weights")
    p.add_argument("--batch-size", type=_positive, help="images per forward pass (default from memory, 4-32)")
    p.add_argument("--cka", action="store_true", help="compute each pair's CKA also for two forms of one network")
    p.add_argument("--dataset-a", metavar="DIR", help="a `convlens dataset` folder of MODEL_A (with --dataset-b, "
                                                      "B's over the same data): how much of each channel's "
                                                      "top-k image set B kept")
    p.add_argument("--dataset-b", metavar="DIR", help="the `convlens dataset` folder of MODEL_B (see --dataset-a)")
    p.add_argument("--heatmaps", action="store_true", help="compare Grad-CAM maps per image also when the two "
                                                           "are not two checkpoints (default: checkpoints only)")
    p.add_argument("--trust", action="store_true",
                   help="allow model files that run code when loaded; only for files you trust")
    _image_options(p)
    _device_option(p)

    p = sub.add_parser("demo", help="run everything on the built-in MNIST CNN and a digit")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    _device_option(p)
    return parser


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="which heatmap method can be trusted for this model on these images: "
                                        "randomisation, random-logit, deletion/insertion, pointing, stability")
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="at least 2 images")
    p.add_argument("--out", required=True, help="output folder (index.json, evaluate.html, evaluate/*.png)")
    p.add_argument("--method", metavar="M[,M...]",
                   help="comma-separated methods (default gradcam,gradcam++,layercam,scorecam,saliency,"
                        "smoothgrad,ig; the gradient ones are left out on a forward-only model)")
    p.add_argument("--metrics", metavar="M[,M...]",
                   help="randomisation, random-logit, deletion, insertion, pointing, stability (default: all "
                        "that apply; the cost is always measured)")
    p.add_argument("--layer", help="CAM methods: the layer (default: the output of the last conv layer)")
    p.add_argument("--class", dest="classes", metavar="C",
                   help="the class to explain for every image (default: each image's top class)")
    p.add_argument("--boxes", metavar="FILE",
                   help="JSON of object boxes per image, {\"image\": [[x, y, w, h], ...]} or COCO annotations, "
                        "for the pointing game")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: the model's own)")
    p.add_argument("--steps", type=_positive, default=20, help="points of the deletion/insertion curves (default 20)")
    p.add_argument("--replace", choices=("blur", "mean"), default="blur",
                   help="what a deleted pixel becomes (default blur)")
    p.add_argument("--patch", type=_positive,
                   help="deletion superpixel side in pixels (default 1 up to 64 px, else side / 56)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="randomisation and random-logit pass below this similarity (default 0.5)")
    p.add_argument("--samples", type=_positive, default=8, help="noisy copies for stability (default 8)")
    p.add_argument("--noise", type=float, default=0.05,
                   help="stability noise half-width, a fraction of the input range (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    _model_options(p)
    _image_options(p)


def _cmd_evaluate(lens: Any, args: argparse.Namespace, stdout: TextIO) -> None:
    result = lens.evaluate(args.images, args.method, metrics=args.metrics, layer=args.layer, target=args.classes,
                           boxes=args.boxes, steps=args.steps, replace=args.replace, patch=args.patch,
                           threshold=args.threshold, samples=args.samples, noise=args.noise, seed=args.seed,
                           size=args.size, preprocess=args.preprocess, labels=args.labels,
                           progress=BarProgress())
    path = result.save(args.out)
    stdout.write(result.summary() + "\n")
    stdout.write(f"wrote {Path(args.out) / 'evaluate.html'} and {path}\n")


def _lens(args: argparse.Namespace) -> Any:
    from .adapters import read_input_files
    from .lens import Lens

    return Lens(args.model, weights=args.weights, input_shape=args.input_shape, trust=args.trust,
                preprocess=getattr(args, "preprocess", None), device=args.device,
                image_input=args.image_input, inputs=read_input_files(args.inputs))


def _render_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"norm": args.norm, "cmap": args.cmap, "max_channels": args.max_channels,
            "columns": args.columns, "numbers": args.numbers, "tile_size": args.tile_size}


def _notes(stderr: TextIO, notes: Any) -> None:
    """Notes go to stderr, one ``note:`` line each: stdout is left to what a command reports (tables,
    JSON, what it wrote), so that it can be piped or parsed."""
    stderr.writelines(f"note: {note}\n" for note in notes if note)


def _summary(path: Path, key: str, out: str, stdout: TextIO, stderr: TextIO) -> None:
    index = json.loads(path.read_text(encoding="utf-8"))
    _notes(stderr, index.get("notes", []) if key == "maps" else [])
    files = [e for e in index.get(key, [])]
    flagged = sum(len(e.get("flags", {}).get("dead", [])) for e in files)
    stdout.write(f"wrote {len(files)} {key} pictures to {out} (index: {Path(out) / 'index.json'})\n")
    if flagged:
        _notes(stderr, [f"{flagged} drawn channels are zero everywhere (marked with an X); "
                        "see 'flags' in index.json"])


def _cmd_stats(lens: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
    stats = lens.channel_stats(args.images, args.layers, size=args.size, preprocess=args.preprocess,
                               progress=BarProgress())
    if args.json:
        stdout.write(json.dumps(stats.to_json(), allow_nan=False) + "\n")
        return
    _notes(stderr, stats.notes)
    stdout.write(stats.text(channels=args.channels) + "\n")


def _cmd_report(lens: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
    sections = [s.strip() for s in args.sections.split(",") if s.strip()] if args.sections else None
    heatmap = {key: value for key, value in (("methods", args.heatmap_methods), ("top", args.heatmap_top))
               if value is not None}
    if heatmap:
        if sections is not None and "heatmaps" not in sections:
            raise BadArgument("--heatmap-methods and --heatmap-top set the heatmaps section, which --sections "
                              "leaves out; add heatmaps to --sections")
        from .heatmaps import parse_methods

        if "methods" in heatmap:
            heatmap["methods"] = parse_methods(heatmap["methods"])  # an unknown name fails before any pass
    vis = {key: value for key, value in (("layer", args.visualize_layer), ("channels", args.visualize_channels),
                                         ("steps", args.visualize_steps)) if value is not None}
    if vis and "visualize" not in (sections or []):
        raise BadArgument("--visualize-layer, --visualize-channels and --visualize-steps set up the "
                          "visualize section: add it with --sections ...,visualize")
    data = {"channels": args.dataset_channels} if args.dataset_channels is not None else {}
    if data and args.dataset is None:
        raise BadArgument("--dataset-channels sets up the dataset section: add --dataset DIR")
    options = {key: value for key, value in (("heatmaps", heatmap), ("visualize", vis), ("dataset", data))
               if value}
    report = lens.report(args.images, args.layers, labels=args.labels, out=args.out, size=args.size,
                         preprocess=args.preprocess, sections=sections, progress=BarProgress(),
                         section_options=options or None, dataset=args.dataset, **_render_kwargs(args))
    _notes(stderr, report.notes)
    stats = list(report.stats.values())
    flagged = sum(s.flagged for s in stats)
    if flagged:
        layers = sum(1 for s in stats if s.flagged)
        channels = sum(s.channels for s in stats)
        stdout.write(f"channel health: {flagged:,} of {channels:,} channels are dead, constant or non-finite "
                     f"in {layers} of {len(stats)} layers (see the report)\n")
    stdout.write(f"wrote {args.out} ({report.nbytes / 1e6:.1f} MB; {len(stats)} layers, "
                 f"{len(report.predictions)} image{'s' if len(report.predictions) != 1 else ''})\n")


def _target_options(p: argparse.ArgumentParser) -> None:
    """heatmap: what to explain beyond a classifier's class (detectors, segmenters, regression, embeddings)."""
    p.add_argument("--box", metavar="X0,Y0,X1,Y1",
                   help="a detector: explain the detection of --class that best overlaps this box; a "
                        "segmenter: the class's score summed over it (pixels of the image as given)")
    p.add_argument("--mask", metavar="FILE|predicted",
                   help="a segmenter: the class's score summed over the non-zero pixels of this image "
                        "(resized to the output), or over the pixels predicted as the class")
    p.add_argument("--output", dest="which_output", metavar="NAME|INDEX",
                   help="which model output to explain (default the first)")
    p.add_argument("--output-index", type=_non_negative, metavar="I",
                   help="explain one raw value of the output, signed (a regression output, raw scores): "
                        "a flat index into one image's output, channels last")
    p.add_argument("--reference", metavar="IMAGE",
                   help="an embedding model: explain the cosine similarity with this image's embedding")


def _non_negative(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give a whole number from 0")
    return value


def _parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    parts = [t for t in text.replace(" ", ",").split(",") if t]
    try:
        x0, y0, x1, y1 = (float(t) for t in parts)
    except ValueError:
        raise BadArgument(f"--box {text!r}: give four numbers X0,Y0,X1,Y1 in pixels of the image") from None
    return x0, y0, x1, y1


def _cmd_heatmap(lens: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
    options = {key: getattr(args, key) for key in ("steps", "samples", "window", "stride", "baseline")
               if getattr(args, key) is not None}
    result = lens.heatmaps(args.images, args.method, layer=args.layer, target=args.classes, top=args.top,
                           size=args.size, preprocess=args.preprocess, labels=args.labels,
                           progress=BarProgress(), method_options=options, box=_parse_box(args.box),
                           mask=args.mask, output=args.which_output, output_index=args.output_index,
                           reference=args.reference)
    result.save(args.out)
    _notes(stderr, result.notes)
    stdout.writelines(f"{result.images[e.image].name}: {e.caption()}\n" for e in result.entries[:40])
    if len(result.entries) > 40:
        stdout.write(f"... and {len(result.entries) - 40} more (see index.json)\n")
    stdout.write(f"wrote {len(result.entries)} heatmaps ({len(result.images)} image"
                 f"{'s' if len(result.images) != 1 else ''} x {', '.join(result.methods)}) to {args.out} "
                 f"(index: {Path(args.out) / 'index.json'})\n")


def _cmd_timeline(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from .timeline import read_run, save_timeline

    path = save_timeline(args.run, args.out, max_checkpoints=args.max_checkpoints)
    index = read_run(args.run)
    n = len(index.get("checkpoints", []))
    shown = min(n, args.max_checkpoints)
    which = f"{n} checkpoints" if shown == n else f"pictures of {shown} of {n} checkpoints"
    stderr.writelines(f"warning: layer {w.get('layer')}: {w.get('dead')} of {w.get('channels')} channels dead "
                      f"at step {w.get('step')}\n" for w in index.get("warnings", []))
    if index.get("error"):
        _notes(stderr, [f"recording stopped early: {index['error']}"])
    stdout.write(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; {which})\n")
    return 0

VISUALIZE_EXAMPLES = """\
examples:
  convlens visualize demo --objective class --channels all --out vis/
  convlens visualize vgg16 --weights none --layer block4_conv3 --channels 0-31 --out vis/
  convlens visualize torchvision:resnet18 --weights none --layer layer4.1.conv2 --steps 256 --out vis/
"""


def _cmd_visualize(lens: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
    from ._errors import OutputError

    if Path(args.out).exists() and not Path(args.out).is_dir():  # before minutes of optimisation
        raise OutputError(f"cannot write to {args.out}: it is a file, not a folder; choose another --out")
    result = lens.visualize(args.layer, args.channels, objective=args.objective, negative=args.negative,
                            steps=args.steps, size=args.size, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                            copies=args.copies, diversity=args.diversity, preprocess=args.preprocess,
                            progress=BarProgress())
    index = result.save(args.out)
    _visualize_notes(result, stderr)
    acts = result.activations
    stdout.write(f"wrote {len(result)} images and an atlas of {result.layer_name} to "
                 f"{Path(args.out) / result.folder()} (index: {index}); "
                 f"{result.objective} {'minimised' if result.negative else 'maximised'}, activation "
                 f"reached {float(acts.min()):.4g} to {float(acts.max()):.4g}\n")


def _visualize_notes(result: Any, stderr: TextIO) -> None:
    """A guessed preprocessing, and the dead channels (zero on the probe photos), one line each."""
    _notes(stderr, (result.settings.get("preprocess_note"), *result.settings.get("input_notes", ()),
                    result.dead_note()))


DATASET_EXAMPLES = """\
examples:
  convlens dataset demo digits/ --layers conv --out ds/
  convlens dataset torchvision:resnet18 --weights none photos/ --layers blocks --k 16 --out ds/
  convlens dataset model.keras 'data/**/*.jpg' --batch-size 64 --out ds/ --resume
  convlens dataset model.onnx train.parquet --engine ray --workers 4 --out ds/

Writes index.json (per channel its top-k images, scores, positions and crop boxes), channels.csv
and channels.json (dataset-wide health and class selectivity), a mosaic per channel and an atlas
per layer under layers/. A checkpoint is kept beside --out (.OUT.convlens-resume) while the run
lasts; after an interrupt, the same command with --resume continues it.
"""


class _RateProgress(BarProgress):
    """The progress bar with images per second (the dataset view)."""

    def advance(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.monotonic() - self.t0
        if not self.stream.isatty() or elapsed < self.delay:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{self.done}/{self.total} {self.done / elapsed:.0f} images/s")
        self.stream.flush()
        self.drawn = True


def _cmd_dataset(lens: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from ._errors import OutputError
    from .dataset.engine import default_checkpoint_folder

    if Path(args.out).exists() and not Path(args.out).is_dir():  # before the whole data set runs
        raise OutputError(f"cannot write to {args.out}: it is a file, not a folder; choose another --out")
    progress = _RateProgress()
    try:
        result = lens.dataset(args.data, args.layers, k=args.k, engine=args.engine,
                              batch_size=args.batch_size, size=args.size, preprocess=args.preprocess,
                              out=args.out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                              ray_address=args.ray_address, workers=args.workers,
                              gpus_per_worker=args.gpus_per_worker, progress=progress)
    except KeyboardInterrupt:
        folder = default_checkpoint_folder(args.out)
        hint = (f"; a checkpoint is kept in {folder}: run the same command with --resume to continue"
                if (folder / "state.npz").is_file() else "")
        end_bar = "\n" if progress.drawn else ""
        stderr.write(f"{end_bar}convlens: interrupted; nothing was written{hint}\n")
        return 130
    _notes(stderr, result.notes)
    failed = f", {len(result.failures)} could not be read (listed in index.json)" if result.failures else ""
    rate = result.images / result.seconds if result.seconds > 0 else 0.0
    channels = sum(ex.stats.channels for ex in result.layers)
    dead = sum(int(ex.stats.dead.sum()) for ex in result.layers)
    stdout.write(f"wrote {args.out}: {result.images} images{failed}; {len(result.layers)} layers, "
                 f"{channels} channels ({dead} dead over the whole data set), top {result.k} each; "
                 f"{result.seconds:.1f} s, {rate:.0f} images/s\n")
    return 0


def _cmd_demo(args: argparse.Namespace, stdout: TextIO) -> int:
    import shutil
    import tempfile

    from . import DEMO_IMAGE
    from .lens import Lens
    from .output import OutputDir

    lens = Lens("demo", device=args.device)
    table = lens.layers()
    scratch = Path(tempfile.mkdtemp(prefix="convlens-demo-"))
    try:  # build the whole demo aside, then publish it as one transaction: all of it or nothing
        lens.save_maps(DEMO_IMAGE, scratch, layers="all", progress=BarProgress(), numbers=True)
        index = json.loads(lens.save_filters(scratch, progress=BarProgress()).read_text(encoding="utf-8"))
        (scratch / "layers.txt").write_text(str(table) + "\n")
        (scratch / "stats.txt").write_text(lens.channel_stats(DEMO_IMAGE, layers="all").text() + "\n")
        lens.report(DEMO_IMAGE, layers="all", out=scratch / "report.html")
        with OutputDir(Path(args.out)) as out:
            for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
                out.write_bytes(path.relative_to(scratch).as_posix(), path.read_bytes())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = json.loads((Path(__file__).parent / "data" / "demo_cnn.json").read_text())
    stdout.write(str(table) + "\n\n")
    stdout.write(f"demo model: {meta.get('dataset')}, held-out accuracy {meta.get('test_accuracy')}\n")
    stdout.write(f"wrote {len(index.get('maps', []))} feature-map grids, {len(index.get('filters', []))} "
                 f"filter atlases, layers.txt, stats.txt and report.html to {args.out}\n")
    return 0


COMPARE_EXAMPLES = """\
examples:
  convlens compare model.pt2 model.onnx a.jpg b.jpg --out cmp/          (an export: first divergent layer)
  convlens compare model.keras model_int8.tflite digits/*.png --out cmp/  (SQNR per layer, worst layer)
  convlens compare torchvision:resnet18 torchvision:vgg16 --weights-a none --weights-b none \\
      photos/*.jpg --out cmp/                                            (CKA matrix of two architectures)
  convlens compare epoch1.keras epoch50.keras digits/*.png --out cmp/ \
      --dataset-a ds1/ --dataset-b ds50/        (checkpoints: drift, Grad-CAM differences, top-k images kept)

Writes index.json, compare.html and PNG charts; prints the pairs, the first divergence and the top-1 flips.
"""


def _cmd_compare(args: argparse.Namespace, stdout: TextIO) -> int:
    from .compare import compare
    from .model import Model

    if (args.dataset_a is None) != (args.dataset_b is None):
        raise BadArgument("--dataset-a and --dataset-b go together: give each model's `convlens dataset` "
                          "folder over the same data")
    datasets = (args.dataset_a, args.dataset_b) if args.dataset_a is not None else None

    models = [Model.open(m, weights=w, trust=args.trust, preprocess=args.preprocess, device=args.device)
              for m, w in ((args.model_a, args.weights_a), (args.model_b, args.weights_b))]
    result = compare(models[0], models[1], args.images, layers=args.layers, pairs=args.pairs, size=args.size,
                     preprocess=args.preprocess, metric=args.metric, tolerance=args.tolerance,
                     batch_size=args.batch_size, cka=True if args.cka else None, datasets=datasets,
                     heatmaps=True if args.heatmaps else None)
    index = result.save(args.out)
    stdout.write(result.summary() + "\n")
    stdout.write(f"wrote {Path(args.out) / 'compare.html'}, {len(result.pictures)} PNG charts (index: {index})\n")
    return 0


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run ``convlens`` with ``argv``; returns the exit status (0 ok, 2 user error)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:  # usage errors, --help and --version end in SystemExit: a status here, on these streams
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(stdout)
        return 2
    saved_max_pixels = None
    try:
        if getattr(args, "max_pixels", None):
            from . import images

            # for this run only: an in-process caller's next run has the default again
            saved_max_pixels, images.MAX_PIXELS = images.MAX_PIXELS, args.max_pixels
        if args.command == "demo":
            return _cmd_demo(args, stdout)
        if args.command == "timeline":
            return _cmd_timeline(args, stdout, stderr)
        if args.command == "compare":
            return _cmd_compare(args, stdout)
        lens = _lens(args)
        if lens.model.device_note:
            _notes(stderr, [lens.model.device_note])
        held = lens.model.held_inputs
        if held is not None and args.command in ("layers", "filters"):  # views of images: in their notes
            _notes(stderr, [held.summary(), *held.notes])
        if args.command == "layers":
            table = lens.layers()
            stdout.write((json.dumps(table.to_json(), indent=2) if args.json else str(table)) + "\n")
        elif args.command == "maps":
            path = lens.save_maps(args.images, args.out, args.layers, size=args.size,
                                  preprocess=args.preprocess, progress=BarProgress(),
                                  **_render_kwargs(args))
            _summary(path, "maps", args.out, stdout, stderr)
        elif args.command == "filters":
            path = lens.save_filters(args.out, args.layers, cmap=args.cmap, max_filters=args.max_filters,
                                     max_inputs=args.max_inputs, progress=BarProgress())
            _summary(path, "filters", args.out, stdout, stderr)
        elif args.command == "stats":
            _cmd_stats(lens, args, stdout, stderr)
        elif args.command == "report":
            _cmd_report(lens, args, stdout, stderr)
        elif args.command == "heatmap":
            _cmd_heatmap(lens, args, stdout, stderr)
        elif args.command == "evaluate":
            _cmd_evaluate(lens, args, stdout)

        elif args.command == "visualize":
            _cmd_visualize(lens, args, stdout, stderr)
        elif args.command == "dataset":
            return _cmd_dataset(lens, args, stdout, stderr)
        else:  # pragma: no cover - argparse rejects unknown commands
            raise BadArgument(f"unknown command {args.command}")
    except ConvlensError as exc:
        stderr.write(f"convlens: error: {' '.join(str(exc).split())}\n")
        return 2
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError outside a guarded forward pass (a backward)
        if not is_out_of_memory(exc):
            raise
        stderr.write(f"convlens: error: {out_of_memory(getattr(args, 'device', 'the device'))}\n")
        return 2
    except KeyboardInterrupt:
        stderr.write("convlens: interrupted; nothing was written\n")
        return 130
    finally:
        if saved_max_pixels is not None:
            from . import images

            images.MAX_PIXELS = saved_max_pixels
    return 0


def run() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
