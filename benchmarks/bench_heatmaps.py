"""Speed of every heatmap method against the plain forward pass, pytorch-grad-cam and captum.

Side by side in one process per network (random weights, one 224x224 image, class 7):

* PyTorch VGG16 and ResNet-50 (torchvision): the plain forward pass (under
  ``inference_mode``); one forward + backward to the input (parameters frozen:
  the unit of the IG/SmoothGrad target); each convlens method at its defaults
  (``convlens.methods``, through the PyTorch adapter, CAMs on the default
  layer: VGG16 ``features.29``, ResNet-50 the output of ``layer4``);
  pytorch-grad-cam 1.5.7 ``GradCAM`` and ``ScoreCAM`` and captum 0.9.0
  ``LayerGradCam``, ``Saliency``, ``IntegratedGradients`` (n_steps=50),
  ``NoiseTunnel`` SmoothGrad (25 samples, the same noise level) and
  ``Occlusion``, on the same model and layer. Occlusion runs with a 56-pixel
  window and a 28-pixel stride in both (49 patches; convlens's default, 28
  and 14, makes 225 passes, which this benchmark cannot afford twice). captum's batched methods get 8 images per pass (its
  default, all at once, needs several GB on VGG16).
* Keras VGG16 (Keras 3 on TensorFlow): the forward pass against convlens Grad-CAM.
* Score-CAM across frameworks: one small CNN at 224x224 (4 conv stages, 128
  channels at the CAM layer) built in Keras, its weights copied into PyTorch,
  exported to ONNX and converted to TFLite (float), so that all three run the
  same arithmetic; each framework timed in its own process.

Fast cases run once to warm up, then 5 times, interleaved (medians); the slow
ones (Score-CAM, IG, SmoothGrad, occlusion) run once, each right before its
reference.
Score-CAM on ResNet-50 (2048 channels: 2048 forward passes each for convlens
and pytorch-grad-cam) runs only with ``--full``. The machine may be shared:
read the ratios, which are taken in one process, more than the seconds. Run:

    make benchmark-heatmaps   # or: .venv/bin/python benchmarks/bench_heatmaps.py [--only vgg16,...] [--full]
    # the input-gradient methods on ResNet-50 only, for main's convlens then this checkout's:
    .venv/bin/python benchmarks/bench_heatmaps.py --only resnet50 --methods saliency,smoothgrad,ig --src MAIN/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
# --src DIR times another checkout's convlens (e.g. main's, for a before/after table) with this script
_SRC = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv[:-1] else str(ROOT / "src")
sys.path.insert(0, _SRC)

import numpy as np  # noqa: E402

SIZE = 224
CLASS = 7
SECTIONS = ("vgg16", "resnet50", "keras-vgg16", "frameworks")
CONVLENS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "saliency",
            "smoothgrad", "ig", "occlusion", "scorecam")
#: options of the convlens methods here (the others run at their defaults)
OPTIONS = {"occlusion": {"window": 56, "stride": 28}}
SLOW = {"smoothgrad", "ig", "occlusion", "scorecam", "pgc ScoreCAM", "captum IntegratedGradients",
        "captum NoiseTunnel", "captum Occlusion"}
#: each slow reference and the convlens method it is timed against
PAIRS = {"captum NoiseTunnel": "smoothgrad", "captum IntegratedGradients": "ig", "captum Occlusion": "occlusion",
         "pgc ScoreCAM": "scorecam"}


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32)


def _time(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per case: fast cases warmed up once and run ``repeats`` times interleaved."""
    fast = {k: v for k, v in cases.items() if k not in SLOW}
    for run in fast.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for key, run in fast.items():
            t = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t)
    # each slow method right before its reference, so that the machine's load hits both alike
    slow = sorted((k for k in cases if k in SLOW), key=lambda k: (PAIRS.get(k, k), k not in PAIRS.values()))
    for key in slow:
        t = time.perf_counter()
        cases[key]()
        times[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items() if v}


def _convlens_cases(adapter, x: np.ndarray, names: tuple[str, ...]) -> dict[str, Callable[[], object]]:
    from convlens import methods

    return {n: (lambda n=n: methods.create(n, **OPTIONS.get(n, {})).compute(adapter, x, target=CLASS))
            for n in names}


def measure_torch(arch: str, repeats: int, full: bool, methods_chosen: set[str] | None = None) -> dict[str, float]:
    import torch
    import torchvision
    from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Occlusion, Saliency
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from convlens.adapters import open_model
    from convlens.methods import default_layer

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    layer = model.features[29] if arch == "vgg16" else model.layer4[-1]
    adapter = open_model(model, input_shape=(SIZE, SIZE, 3), preprocess="raw")
    chosen = default_layer(adapter.layers()).name
    expected = "features.29" if arch == "vgg16" else "layer4"
    if not chosen.startswith(expected):
        raise SystemExit(f"convlens's default layer {chosen} is not {expected}: the comparison would be unfair")
    x = _image()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    sigma = 0.15 * float(x.max() - x.min())  # convlens SmoothGrad's default noise level

    def forward() -> object:
        with torch.inference_mode():
            return model(xt)

    def forward_backward() -> object:
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            leaf = xt.clone().requires_grad_(True)
            model(leaf)[0, CLASS].backward()
            return leaf.grad
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)

    names = CONVLENS if (arch == "vgg16" or full) else tuple(n for n in CONVLENS if n != "scorecam")
    names = tuple(n for n in names if methods_chosen is None or n in methods_chosen)
    cases: dict[str, Callable[[], object]] = {"forward": forward, "forward+backward": forward_backward}
    cases.update(_convlens_cases(adapter, x, names))
    target = [ClassifierOutputTarget(CLASS)]
    refs: dict[str, Callable[[], object]] = {}
    if "gradcam" in names:
        pgc_gradcam = GradCAM(model=model, target_layers=[layer])
        refs["pgc GradCAM"] = lambda: pgc_gradcam(input_tensor=xt, targets=target)
        refs["captum LayerGradCam"] = lambda: LayerGradCam(model, layer).attribute(xt, target=CLASS)
    if "scorecam" in names:
        pgc_scorecam = ScoreCAM(model=model, target_layers=[layer])
        refs["pgc ScoreCAM"] = lambda: pgc_scorecam(input_tensor=xt, targets=target)
    if "saliency" in names:
        refs["captum Saliency"] = lambda: Saliency(model).attribute(xt, target=CLASS)
    if "ig" in names:
        refs["captum IntegratedGradients"] = lambda: IntegratedGradients(model).attribute(
            xt, target=CLASS, n_steps=50, internal_batch_size=8)
    if "smoothgrad" in names:
        refs["captum NoiseTunnel"] = lambda: NoiseTunnel(Saliency(model)).attribute(
            xt, nt_type="smoothgrad", nt_samples=25, nt_samples_batch_size=8, stdevs=sigma, target=CLASS)
    if "occlusion" in names:
        refs["captum Occlusion"] = lambda: Occlusion(model).attribute(
            xt, sliding_window_shapes=(3, 56, 56), strides=(3, 28, 28), target=CLASS, baselines=0,
            perturbations_per_eval=8)
    cases.update(refs)
    return _time(cases, repeats)


def measure_keras(repeats: int) -> dict[str, float]:
    import keras

    from convlens.adapters import open_model

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None)
    adapter = open_model(model, preprocess="raw")
    x = _image()
    cases: dict[str, Callable[[], object]] = {"forward": lambda: model.predict_on_batch(x)}
    cases.update(_convlens_cases(adapter, x, ("gradcam", "saliency")))
    return _time(cases, repeats)


WIDTHS = (16, 32, 64, 128)


def _torch_twin():
    from torch import nn

    layers: list = []
    cin = 3
    for i, w in enumerate(WIDTHS):
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU()]
        if i < len(WIDTHS) - 1:
            layers += [nn.MaxPool2d(2)]
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)).eval()


def build_twins(tmp: Path) -> None:
    """One small CNN in Keras; its weights in PyTorch (a state dict), ONNX (from torch), TFLite (from Keras)."""
    import keras
    import tensorflow as tf
    import torch

    L = keras.layers
    keras.utils.set_random_seed(0)
    k_layers: list = [keras.Input((SIZE, SIZE, 3))]
    for i, w in enumerate(WIDTHS):
        k_layers += [L.Conv2D(w, 3, padding="same", activation="relu", name=f"conv{i}")]
        if i < len(WIDTHS) - 1:
            k_layers += [L.MaxPooling2D(2)]
    k_layers += [L.GlobalAveragePooling2D(), L.Dense(10, name="fc")]
    kmodel = keras.Sequential(k_layers, name="twin")
    tmodel = _torch_twin()
    convs = [m for m in tmodel if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            w, b = kmodel.get_layer(f"conv{i}").get_weights()
            conv.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(b))
        w, b = kmodel.get_layer("fc").get_weights()
        tmodel[-1].weight.copy_(torch.from_numpy(w.T.copy()))
        tmodel[-1].bias.copy_(torch.from_numpy(b))
    torch.save(tmodel.state_dict(), tmp / "twin.pth")
    torch.onnx.export(tmodel, (torch.zeros(1, 3, SIZE, SIZE),), str(tmp / "twin.onnx"), input_names=["image"],
                      dynamo=False)
    kmodel.export(str(tmp / "twin.savedmodel"), format="tf_saved_model", verbose=False)
    (tmp / "twin.tflite").write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp / "twin.savedmodel")).convert())


def measure_framework(framework: str, tmp: Path, repeats: int) -> dict[str, float]:
    """Score-CAM and the forward pass of the twin in one framework (this process loads only it)."""
    from convlens import methods
    from convlens.adapters import open_model

    if framework == "torch":
        import torch

        model = _torch_twin()
        model.load_state_dict(torch.load(tmp / "twin.pth", weights_only=True))
        adapter = open_model(model, input_shape=(SIZE, SIZE, 3), preprocess="raw")
    else:
        adapter = open_model(tmp / f"twin.{framework}", preprocess="raw")
    x = _image()
    maps = []
    cases: dict[str, Callable[[], object]] = {
        "forward": lambda: adapter.run(x, [], lambda i, a: None),
        "scorecam": lambda: maps.append(methods.create("scorecam").compute(adapter, x, target=CLASS).maps[0]),
    }
    out = _time(cases, repeats)
    np.save(tmp / f"map-{framework}.npy", maps[-1])
    return out


def measure_frameworks(repeats: int) -> dict[str, float]:
    """Build the twins, then time each framework in its own process (no two thread pools at once)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-heatmaps-") as tmp:
        _subprocess(["--build-twins", tmp])
        maps = {}
        for name in ("torch", "onnx", "tflite"):
            r = _subprocess(["--twin", name, tmp, "--repeats", str(repeats)])
            out[f"forward {name}"], out[f"scorecam {name}"] = r["forward"], r["scorecam"]
            maps[name] = np.load(Path(tmp) / f"map-{name}.npy")
        # the three maps must agree, or the timing compares different work
        for name in ("onnx", "tflite"):
            out[f"max |map - torch map| {name}"] = float(np.abs(maps[name] - maps["torch"]).max())
    return out


def _subprocess(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _run(section: str, repeats: int, full: bool, methods_chosen: set[str] | None = None) -> dict[str, float]:
    if section in ("vgg16", "resnet50"):
        return measure_torch(section, repeats, full, methods_chosen)
    if section == "keras-vgg16":
        return measure_keras(repeats)
    return measure_frameworks(repeats)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _print_torch(arch: str, r: dict[str, float]) -> None:
    fwd, fb = r["forward"], r["forward+backward"]
    label = {"vgg16": "VGG16", "resnet50": "ResNet-50"}[arch]
    print(f"\nPyTorch {label}: forward {fwd:.3f} s, forward+backward to the input {fb:.3f} s "
          f"({fb / fwd:.2f}x forward)")
    print(f"{'method':<12}{'convlens s':>11}{'x fwd':>8}   {'reference':<28}{'s':>8}{'x fwd':>8}"
          f"{'convlens/ref':>14}   target")
    refs = {"gradcam": "pgc GradCAM", "scorecam": "pgc ScoreCAM", "saliency": "captum Saliency",
            "ig": "captum IntegratedGradients", "smoothgrad": "captum NoiseTunnel",
            "occlusion": "captum Occlusion"}
    samples = {"ig": 50, "smoothgrad": 25}
    for name in CONVLENS:
        if name not in r:
            continue
        t = r[name]
        target = ""
        if name in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"):
            target = f"<= 1.2x fwd: {'met' if t <= 1.2 * fwd else 'NOT met'}"
        elif name == "saliency":
            target = f"<= 2.2x fwd: {'met' if t <= 2.2 * fwd else 'NOT met'}"
        elif name in samples:
            bound = 1.1 * samples[name] * fb
            ok = t <= bound and t <= r[refs[name]]
            target = (f"<= 1.1 x {samples[name]} x fwd+bwd ({t / (samples[name] * fb):.2f}x) and <= captum: "
                      f"{'met' if ok else 'NOT met'}")
        elif name == "scorecam":
            target = f"<= pytorch-grad-cam: {'met' if t <= r['pgc ScoreCAM'] else 'NOT met'}"
        ref = refs.get(name)
        ref_t = r.get(ref) if ref else None
        print(f"{name:<12}{t:>11.3f}{t / fwd:>8.2f}   {ref or '':<28}"
              f"{(f'{ref_t:.3f}' if ref_t is not None else ''):>8}{(_ratio(ref_t, fwd) if ref_t else ''):>8}"
              f"{(_ratio(t, ref_t) if ref_t else ''):>14}   {target}")
    if "captum LayerGradCam" in r:
        print(f"{'':<12}{'':>11}{'':>8}   {'captum LayerGradCam':<28}{r['captum LayerGradCam']:>8.3f}"
              f"{_ratio(r['captum LayerGradCam'], fwd):>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each fast case")
    parser.add_argument("--full", action="store_true", help="also Score-CAM on ResNet-50 (slow)")
    parser.add_argument("--methods", help=f"comma-separated convlens methods on the PyTorch networks (and only "
                        f"their references); default all of {', '.join(CONVLENS)}")
    parser.add_argument("--src", help="the convlens source folder to time (default: this checkout's src/), "
                        "e.g. another branch's for a before/after table")
    parser.add_argument("--one", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--build-twins", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--twin", nargs=2, metavar=("FRAMEWORK", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_twins:
        build_twins(Path(args.build_twins))
        return
    if args.twin:
        print(json.dumps(measure_framework(args.twin[0], Path(args.twin[1]), args.repeats)))
        return
    chosen = None
    if args.methods:
        chosen = {m.strip() for m in args.methods.split(",") if m.strip()}
        if chosen - set(CONVLENS):
            parser.error(f"unknown methods {', '.join(sorted(chosen - set(CONVLENS)))}; use {', '.join(CONVLENS)}")
    if args.one:
        print(json.dumps(_run(args.one, args.repeats, args.full, chosen)))
        return
    results = {}
    for section in args.only.split(","):
        # one process per section: torch and TensorFlow each keep their own thread pools
        cmd = [sys.executable, __file__, "--one", section, "--repeats", str(args.repeats), "--src", _SRC]
        cmd += ["--methods", args.methods] if args.methods else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + (["--full"] if args.full else []), capture_output=True, text=True,
                              check=False)
        if proc.returncode:
            sys.exit(f"{section} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[section] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[section]["_wall"] = time.perf_counter() - t0
    print(f"convlens from {_SRC}")
    print(f"Heatmap methods, one {SIZE}x{SIZE} image, class {CLASS}, random weights; medians of {args.repeats} "
          "runs after a warm-up (slow methods: one run); seconds are noisy on a shared machine, ratios "
          "are taken in one process")
    for arch in ("vgg16", "resnet50"):
        if arch in results:
            _print_torch(arch, results[arch])
    if "keras-vgg16" in results:
        r = results["keras-vgg16"]
        print(f"\nKeras 3 VGG16 (TensorFlow): forward {r['forward']:.3f} s; convlens Grad-CAM {r['gradcam']:.3f} s "
              f"({r['gradcam'] / r['forward']:.2f}x, target <= 1.2x: "
              f"{'met' if r['gradcam'] <= 1.2 * r['forward'] else 'NOT met'}); saliency {r['saliency']:.3f} s "
              f"({r['saliency'] / r['forward']:.2f}x, target <= 2.2x)")
    if "frameworks" in results:
        r = results["frameworks"]
        print("\nScore-CAM on the same small CNN (224x224, 128 channels at the CAM layer) in each framework")
        print(f"{'framework':<10}{'forward s':>10}{'scorecam s':>12}{'x torch':>9}{'max |map diff|':>16}   target")
        for name in ("torch", "onnx", "tflite"):
            t = r[f"scorecam {name}"]
            ratio = t / r["scorecam torch"]
            diff = r.get(f"max |map - torch map| {name}", 0.0)
            target = "" if name == "torch" else f"<= 1.5x torch: {'met' if ratio <= 1.5 else 'NOT met'}"
            print(f"{name:<10}{r[f'forward {name}']:>10.4f}{t:>12.3f}{ratio:>9.2f}{diff:>16.2e}   {target}")
    walls = ", ".join(f"{k} {v['_wall']:.0f} s" for k, v in results.items())
    print(f"\nwall time per section: {walls}")


if __name__ == "__main__":
    main()
