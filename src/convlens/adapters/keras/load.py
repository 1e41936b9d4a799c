"""Loading Keras models, and their safety: ``.keras``/``.h5`` files (Lambda layers and damaged HDF5
refused unless trusted), the ``keras.applications`` zoo, and importing Keras itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..._errors import BadArgument, BadModel, MissingDependency, UnsafeModel, UnsupportedModel, WeightsUnavailable
from ..._stderr import native_stderr_silenced
from .._device import AUTO, parse_device, resolve_torch_device
from .._files import is_zip
from ..base import first_line as _first_line

#: keras.applications names: (constructor, preprocessing preset, default input size).
ZOO: dict[str, tuple[str, str, int]] = {
    "vgg16": ("VGG16", "caffe", 224),
    "vgg19": ("VGG19", "caffe", 224),
    "resnet50": ("ResNet50", "caffe", 224),
    "resnet101": ("ResNet101", "caffe", 224),
    "resnet50_v2": ("ResNet50V2", "tf", 224),
    "mobilenet": ("MobileNet", "tf", 224),
    "mobilenet_v2": ("MobileNetV2", "tf", 224),
    "mobilenet_v3_small": ("MobileNetV3Small", "raw", 224),
    "mobilenet_v3_large": ("MobileNetV3Large", "raw", 224),
    "efficientnet_b0": ("EfficientNetB0", "raw", 224),
    "efficientnet_b1": ("EfficientNetB1", "raw", 240),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "raw", 224),
    "densenet121": ("DenseNet121", "torch", 224),
    "inception_v3": ("InceptionV3", "tf", 299),
    "xception": ("Xception", "tf", 299),
    "convnext_tiny": ("ConvNeXtTiny", "raw", 224),
}


_KERAS: Any = None


def load_triton_before_tensorflow() -> None:
    """Import triton, if installed, before TensorFlow is.

    triton (which torch imports as soon as ``torch.export`` or ``torch.compile``
    runs) crashes the process with SIGSEGV when it is loaded after TensorFlow:
    both carry their own LLVM. Loaded first, both work, so a session that reads
    a Keras model and then a ``.pt2`` program survives. Costs ~0.3 s, and only
    where torch's CUDA build (which brings triton) is installed.
    """
    import importlib.util

    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    try:
        if importlib.util.find_spec("triton") is not None:
            import triton  # noqa: F401
    except Exception:  # a broken triton is torch's problem, not a reason to fail here
        pass


def import_keras(device: str | None = None) -> Any:
    """Import Keras 3, quietly, or say which extra to install.

    On the TensorFlow backend, TensorFlow is told to grow its GPU memory as
    needed (it takes every GPU's whole memory at its first operation otherwise,
    starving PyTorch in the same process) and, when ``device`` is given on this
    first import, which GPUs it may see: both before its first operation.
    """
    global _KERAS
    if _KERAS is not None:
        return _KERAS
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    load_triton_before_tensorflow()
    try:
        with native_stderr_silenced():
            import keras

            if keras.backend.backend() == "tensorflow":  # device discovery logs once, here
                _tf_before_first_op(device)
                keras.ops.convert_to_numpy(keras.ops.zeros((1,)))
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            f"Keras is not installed ({exc}); run: pip install 'convlens[keras]'"
        ) from None
    if not hasattr(keras, "ops"):  # pragma: no cover
        raise MissingDependency("convlens needs Keras 3; run: pip install -U 'convlens[keras]'")
    _KERAS = keras
    return keras


def _tf_before_first_op(device: str | None) -> None:
    """Memory growth on every GPU, and the GPUs ``device`` asks for made the only visible ones."""
    import tensorflow as tf

    try:
        gpus = tf.config.list_physical_devices("GPU")
    except Exception:
        return
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # TensorFlow already started elsewhere in this process
            pass
    spec = parse_device(device)
    if not gpus or spec in (None, AUTO, "mps"):
        return
    index = int(spec.split(":")[1]) if ":" in spec else 0
    chosen = [] if spec == "cpu" else gpus[index:index + 1]
    try:
        tf.config.set_visible_devices(chosen, "GPU")
    except (RuntimeError, ValueError):
        pass  # checked by use_keras_device


def use_keras_device(device: Any) -> str:
    """Put Keras on ``device`` and say where it runs (``"cpu"``, ``"cuda:0"``, ``"mps"``).

    On the torch backend the device new variables and tensors go to is set for
    the process (``None`` keeps Keras's own choice); call this before the model
    is built or loaded. On TensorFlow, GPUs can only be hidden before its first
    operation, so a device that disagrees with a TensorFlow already started in
    this process is an error. On JAX, ``cpu`` makes the CPU the default device.

    Raises:
        BadArgument: a device this machine or this backend does not have.
    """
    spec = parse_device(device)
    keras = import_keras(spec)
    backend = keras.backend.backend()
    if backend == "torch":
        if spec is None:
            return str(keras.src.backend.torch.core.get_device())
        where = resolve_torch_device(spec)
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("torch_device", where)
        return where
    if backend == "jax":
        import jax

        platform = jax.default_backend()
        if spec in (None, AUTO):
            return "cuda:0" if platform == "gpu" else "cpu"
        if spec == "cpu":
            jax.config.update("jax_default_device", jax.devices("cpu")[0])
            return "cpu"
        if spec == "mps" or platform != "gpu":
            raise BadArgument(f"--device {spec}: JAX has no such device here (its backend is {platform}); "
                              "use --device cpu or auto")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        count = len(jax.devices("gpu"))
        if index >= count:
            raise BadArgument(f"--device {spec}: JAX sees {count} GPU(s) (cuda:0 to cuda:{count - 1}); pick one")
        jax.config.update("jax_default_device", jax.devices("gpu")[index])
        return f"cuda:{index}"
    if backend != "tensorflow":
        return "cpu"
    import tensorflow as tf

    physical = tf.config.list_physical_devices("GPU")
    visible = tf.config.get_visible_devices("GPU")
    if spec in (None, AUTO):
        return ("mps" if sys.platform == "darwin" else "cuda:0") if visible else "cpu"
    if spec == "mps":
        if sys.platform != "darwin" or not visible:
            raise BadArgument(f"--device {spec}: MPS is Apple's Metal GPU, only on macOS (with tensorflow-metal "
                              "for TensorFlow); use --device cuda, cpu or auto")
        return "mps"
    if spec == "cpu":
        if visible:
            raise BadArgument("--device cpu: TensorFlow already started on the GPU in this process, and can no "
                              "longer hide it; choose the device before the first Keras model is opened, or "
                              "start with CUDA_VISIBLE_DEVICES= to hide the GPUs")
        return "cpu"
    if not physical:
        raise BadArgument(f"--device {spec}: TensorFlow finds no GPU on this machine (a CPU-only TensorFlow, "
                          "no CUDA driver, or CUDA_VISIBLE_DEVICES hides them); use --device cpu or auto")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= len(physical):
        raise BadArgument(f"--device {spec}: TensorFlow sees {len(physical)} GPU(s) (cuda:0 to "
                          f"cuda:{len(physical) - 1}); pick one of those")
    if physical[index] not in visible:
        raise BadArgument(f"--device {spec}: TensorFlow already started in this process without that GPU; "
                          "choose the device before the first Keras model is opened")
    return f"cuda:{visible.index(physical[index])}"


def _h5_magic(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def _h5_has_lambda(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    if config is None:
        return False
    if isinstance(config, bytes):
        config = config.decode("utf-8", "replace")
    return '"class_name": "Lambda"' in str(config)


#: Reads every attribute and dataset of an HDF5 file, then says whether its model config has a Lambda.
_H5_PROBE = """
import sys
import h5py
lam = False
def visit(name, obj):
    global lam
    for key in obj.attrs:
        value = obj.attrs[key]
        if key == "model_config":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            lam = lam or '"class_name": "Lambda"' in text
    if isinstance(obj, h5py.Dataset):
        obj[()]
try:
    with h5py.File(sys.argv[1], "r") as f:
        visit("/", f)
        f.visititems(visit)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
print("lambda" if lam else "ok")
"""


#: Files the child process read completely, by (path, size, mtime): whether they hold a Lambda layer.
_H5_READABLE: dict[tuple[str, int, int], bool] = {}


def _h5_has_lambda_or_damaged(path: Path) -> bool:
    """Whether a legacy .h5 file holds a Lambda layer, read in a separate process first.

    A damaged HDF5 file can make the HDF5 library loop for ever (a bit flip
    in a global heap) or crash, inside h5py while it holds the GIL, where no
    timeout in this process can reach. So a child process reads every
    attribute and dataset first, under a time limit that grows with the
    file's size; Keras then reads a file known to be readable.

    Raises:
        BadModel: the child failed, crashed or did not finish in time.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _H5_READABLE:  # read before, unchanged since: the child's answer stands
        return _H5_READABLE[key]
    limit = 10 + stat.st_size / 50e6  # seconds: 1 s per 50 MB read on top of start-up
    try:
        proc = subprocess.run([sys.executable, "-c", _H5_PROBE, str(path)], capture_output=True, text=True,
                              timeout=limit, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise BadModel(f"cannot read Keras model {path}: reading it does not finish within {limit:.0f} s; "
                       "the file is damaged (is it a complete file saved by model.save()?)") from None
    except OSError:  # no interpreter to start (an embedded Python): read it here, unguarded
        try:
            return _h5_has_lambda(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read it is a damaged file
            raise BadModel(f"cannot read Keras model {path}: {type(exc).__name__}: {_first_line(str(exc))}; "
                           "is it a complete file saved by model.save()?") from None
    answer = proc.stdout.strip()
    if proc.returncode == 0 and answer in ("ok", "lambda"):
        _H5_READABLE[key] = answer == "lambda"
        return answer == "lambda"
    why = (_first_line(answer) if proc.returncode == 3 else
           f"the HDF5 library crashed reading it (signal {-proc.returncode})" if proc.returncode < 0 else
           _first_line(proc.stderr) or f"exit status {proc.returncode}")
    raise BadModel(f"cannot read Keras model {path}: {why}; is it a complete file saved by model.save()?")


def load_keras_file(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load a ``.keras`` or legacy ``.h5`` file.

    Args:
        path: the model file.
        trust: allow code stored in the file (Lambda layers) to run. Off by
            default: Keras ``safe_mode=True``.

    Raises:
        BadModel: the file is missing, corrupt or not a Keras model.
        UnsafeModel: the file holds code (a Lambda layer) and ``trust`` is off.
    """
    p = Path(path)
    if not p.is_file():
        raise BadModel(f"model file not found: {p}; check the path, or name a zoo model "
                       f"such as vgg16 ({', '.join(sorted(ZOO))})")
    keras = import_keras()
    suffix = p.suffix.lower()
    if suffix == ".keras" and not is_zip(p):
        raise BadModel(f"{p} is not a .keras file (a .keras file is a zip archive); "
                       "re-save the model with model.save('model.keras')")
    if suffix in (".h5", ".hdf5") and not _h5_magic(p):
        raise BadModel(f"{p} is not an HDF5 file; legacy Keras models are saved with "
                       "model.save('model.h5')")
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise BadModel(f"{p}: unknown model file type {suffix or '(none)'}; convlens reads "
                       ".keras and .h5 files and zoo names such as vgg16")
    if suffix in (".h5", ".hdf5") and _h5_has_lambda_or_damaged(p) and not trust:
        # Keras 3 does not apply safe_mode to legacy h5 files: check ourselves.
        raise UnsafeModel(f"{p} holds a Lambda layer, whose code would run on loading; "
                          "pass --trust (trust=True) only if you trust the file's author")
    try:
        # Quiet: on the torch backend, reading a legacy .h5 imports TensorFlow, whose C++
        # start-up logs would land here; Keras's UserWarnings advise the model's author
        # (e.g. "Do not pass an input_shape"), not our user.
        with native_stderr_silenced(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"keras\.")
            model = keras.saving.load_model(p, compile=False, safe_mode=not trust)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text or "lambda" in text:
            raise UnsafeModel(f"{p} holds code (a Lambda layer) that would run on loading; "
                              "pass --trust (trust=True) only if you trust the file's author") from None
        raise BadModel(f"cannot read Keras model {p}: {_first_line(text)}") from None
    except Exception as exc:  # corrupt archives, h5 without a model config, unknown layers
        raise BadModel(f"cannot read Keras model {p}: {type(exc).__name__}: "
                       f"{_first_line(str(exc))}; is it a complete file saved by model.save()?") from None
    if not isinstance(model, keras.Model):
        raise BadModel(f"{p} does not hold a Keras model")
    return model


def load_zoo_model(name: str, *, weights: str | None = "imagenet", input_shape: Sequence[int | None] | None = None,
                   trust: bool = False) -> tuple[Any, str]:
    """Build a ``keras.applications`` model by its convlens name.

    Args:
        name: a key of :data:`ZOO`, e.g. ``vgg16``.
        weights: ``imagenet`` (downloaded once into ``~/.keras``), ``none`` for
            random weights, or the path of a weights file.
        input_shape: ``(H, W, C)``; defaults to the model's usual size.

    Returns:
        The model and its preprocessing preset.
    """
    keras = import_keras()
    ctor_name, preset, size = ZOO[name]
    ctor = getattr(keras.applications, ctor_name)
    shape = tuple(input_shape) if input_shape else (size, size, 3)
    w = (weights or "none").strip()
    local: Path | None = None
    if w.lower() == "none":
        kw_weights: str | None = None
    elif w.lower() == "imagenet":
        kw_weights = "imagenet"
    else:
        local = Path(w)
        if not local.is_file():
            raise WeightsUnavailable(f"weights file not found: {local}; use --weights imagenet, "
                                     "--weights none, or the path of a weights file")
        kw_weights = None
    try:
        model = ctor(weights=kw_weights, input_shape=shape)
    except Exception as exc:
        if kw_weights == "imagenet":
            raise WeightsUnavailable(
                f"could not download the ImageNet weights of {name} ({type(exc).__name__}: "
                f"{_first_line(str(exc))}); use --weights none for random weights or "
                "--weights PATH for a local weights file"
            ) from None
        raise UnsupportedModel(f"cannot build {name} for input {shape}: {_first_line(str(exc))}") from None
    if local is not None:
        try:
            if local.suffix == ".keras":
                model = load_keras_file(local, trust=trust)
            else:
                model.load_weights(str(local))
        except (BadModel, UnsafeModel):
            raise
        except Exception as exc:
            raise WeightsUnavailable(f"cannot load weights {local} into {name}: "
                                     f"{_first_line(str(exc))}") from None
    return model, preset

