"""Loading PyTorch models, and their safety: ``torch.load`` (weights only unless trusted),
``torch.export`` programs (``.pt2``, checked for pickles and native code), torchvision by name.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import json
import logging
import os
import pickle
import socket
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..._errors import BadModel, ConvlensError, MissingDependency, UnsafeModel, UnsupportedModel, WeightsUnavailable
from .._files import is_zip
from ..base import first_line as _first_line

#: Spatial size of the probe pass for modules that do not know their input size.
PROBE_SIZE = 224
#: A second, different size: a module that also runs on it accepts any size.
SECOND_PROBE_SIZE = 160
#: Seconds a weights download may stall (connect or read) before it counts as offline.
DOWNLOAD_TIMEOUT = 20.0

SAVE_HINT = ("export it with torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2') "
              "and open the .pt2 file, or build the module in Python and pass it to convlens.Lens(module)")


def import_torch() -> Any:
    """Import PyTorch or say which extra to install."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(f"PyTorch is not installed ({exc}); run: pip install 'convlens[torch]'") from None
    return torch


def _import_torchvision() -> Any:
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(f"torchvision is not installed ({exc}); run: pip install 'convlens[torch]'") from None
    return torchvision


# --------------------------------------------------------------------------- files


def unflatten(ep: Any) -> Any:
    """An exported program as a module tree whose names follow the original ``named_modules()``."""
    torch = import_torch()
    try:
        return torch.export.unflatten(ep)
    except Exception as exc:
        raise UnsupportedModel(f"cannot rebuild the module tree of this exported program "
                               f"({type(exc).__name__}: {_first_line(str(exc))})") from None


def _check_pt2_safe(path: Path, names: list[str], zf: zipfile.ZipFile) -> None:
    """Refuse a ``.pt2`` whose loading would unpickle (run code): ``torch.export.load`` falls back
    to ``torch.load(weights_only=False)`` for pickled tensors, custom objects, legacy weights and
    sample inputs that are not plain tensors."""
    torch = import_torch()
    why = None
    for name in names:
        base = name.split("/", 1)[-1] if "/" in name else name
        if base.startswith("data/aotinductor/"):
            # an AOTInductor package: torch.export.load extracts and dlopens its shared library
            raise UnsafeModel(f"{path} holds an AOTInductor-compiled model ({base}), whose native code "
                              "torch.export.load would run; pass --trust (trust=True) only if you trust "
                              "its author, or save the program alone with torch.export.save")
        try:
            if base.endswith("_config.json") and base.startswith(("data/weights/", "data/constants/")):
                config = json.loads(zf.read(name)).get("config", {})
                for fqn, meta in config.items():
                    if meta.get("use_pickle"):
                        why = f"tensor {fqn} is stored as a pickle"
                    elif not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                        why = f"constant {fqn} is a pickled object"
            elif base.endswith(".pt") and base.startswith(("data/", "models/")):
                torch.load(io.BytesIO(zf.read(name)), weights_only=True)  # sample inputs, legacy weights
        except pickle.UnpicklingError:
            why = f"{base} holds pickled objects besides tensors"
        except Exception as exc:
            raise BadModel(f"cannot read {path}: {base} is damaged ({type(exc).__name__}); is it a complete "
                           "file written by torch.export.save?") from None
        if why:
            raise UnsafeModel(f"{path} cannot be loaded without unpickling ({why}), which runs code from the "
                              "file; pass --trust (trust=True) only if you trust its author")


class _Swallow(logging.Handler):
    """Keeps the exceptions that log records carry, prints nothing."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


@contextmanager
def _quiet_logger(name: str) -> Iterator[_Swallow]:
    """Keep a logger's warnings (and its children's) off stderr for the block; collect their exceptions."""
    logger = logging.getLogger(name)
    handler = _Swallow()
    saved = logger.handlers[:], logger.propagate  # torch puts its stderr handler on this logger itself
    logger.handlers, logger.propagate = [handler], False
    try:
        yield handler
    finally:
        logger.handlers, logger.propagate = saved


def _load_exported(path: Path, *, trust: bool) -> Any:
    """The ``torch.export.ExportedProgram`` in a ``.pt2`` file, checked for pickles first unless ``trust``."""
    torch = import_torch()
    if not is_zip(path):
        raise BadModel(f"{path} is not a .pt2 file (a .pt2 file is a zip archive written by torch.export.save)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith(".json") and "/models/" in f"/{n}" for n in names):
                raise BadModel(f"{path} holds no exported program (no models/*.json); write it with "
                               "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')")
            if not trust:
                _check_pt2_safe(path, names, zf)
    except zipfile.BadZipFile as exc:
        raise BadModel(f"cannot read {path}: {exc}") from None
    try:
        # torch logs a failed load's traceback as a warning on stderr; ours below is the one line
        with _quiet_logger("torch.export") as logged:
            ep = torch.export.load(path)
    except ConvlensError:
        raise
    except Exception as exc:
        cause = logged.errors[-1] if logged.errors else exc  # torch's own error is the one it logged
        raise BadModel(f"cannot read {path}: {type(cause).__name__}: {_first_line(str(cause))}; is it a "
                       "complete file written by torch.export.save?") from None
    return ep


def exported_input_shape(ep: Any, name: str | None = None) -> tuple[tuple[int | None, ...] | None,
                                                                    tuple[list[int], list[int]] | None]:
    """The canonical input shape of an exported program's image input ``name`` (default: its one input),
    dynamic dimensions ``None``.

    Also two probe shapes that respect the program's ranges for its dynamic
    dimensions: the example input's and another size within range.
    """
    node = _user_input(ep, name)
    val = node.meta.get("val") if node is not None else None
    if val is None or not hasattr(val, "shape"):
        return None, None
    dims: list[int | None] = []
    first: list[int] = []
    other: list[int] = []
    for d in val.shape:
        if isinstance(d, int):
            dims.append(int(d))
            first.append(int(d))
            other.append(int(d))
            continue
        dims.append(None)  # a SymInt: a dynamic dimension
        try:
            hint = int(d.node.hint)
            bounds = ep.range_constraints.get(d.node.expr)
            low = int(bounds.lower) if bounds is not None else 1
            high = int(bounds.upper) if bounds is not None and bounds.upper.is_finite else hint + 64
        except Exception:
            hint, low, high = PROBE_SIZE, 1, PROBE_SIZE + 64
        first.append(hint)
        # grow by the largest power of two dividing the example size (64 -> 128, 224 -> 256): a
        # dimension exported as a multiple (32 * h) stays one
        grown = hint + (hint & -hint)
        other.append(grown if grown <= high else hint - 8 if hint - 8 >= low else min(high, hint + 8))
    shapes = []
    for dd in (dims, first, other):
        dd = list(dd)
        if len(dd) >= 3:
            dd = [dd[0], *dd[2:], dd[1]]
        shapes.append(dd[1:])
    return tuple(shapes[0]), (shapes[1], shapes[2])  # type: ignore[return-value]  # probe sizes are all ints


def _user_input(ep: Any, name: str | None) -> Any:
    """The placeholder node of user input ``name`` (default the first) of an exported program, or ``None``."""
    user_inputs = [str(n) for n in ep.graph_signature.user_inputs]
    wanted = name if name is not None else (user_inputs[0] if user_inputs else None)
    return next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == wanted), None)


def exported_batch(ep: Any, name: str | None = None) -> int | None:
    """The batch size an exported program's image input ``name`` (default its first) is fixed to (its
    example's, often 1), ``None`` when dynamic."""
    node = _user_input(ep, name)
    val = node.meta.get("val") if node is not None else None
    shape = getattr(val, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    return int(shape[0]) if isinstance(shape[0], int) else None


def _torch_load(path: Path, *, trust: bool, what: str = "model") -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``trust``; our errors for every failure."""
    torch = import_torch()
    if is_zip(path):
        try:
            with zipfile.ZipFile(path) as zf:
                torchscript = any(n.endswith("constants.pkl") for n in zf.namelist())
        except zipfile.BadZipFile:
            torchscript = False
        if torchscript:
            raise UnsupportedModel(f"{path} is a TorchScript archive; convlens cannot hook the layers of "
                                   f"TorchScript modules: {SAVE_HINT}")
    try:
        with warnings.catch_warnings():  # a protocol above 2 is answered below, in our own words
            warnings.filterwarnings("ignore", message=r".*Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise BadModel(f"cannot read {path}: {_first_line(str(exc))}; is it a complete file written by "
                           "torch.save?") from None
        if not trust and "unsupported global" not in str(exc).lower():
            # not a class the file names (that is an object) but an opcode torch's safe loader lacks:
            # random bytes, or a pickle protocol above 2, which only full unpickling reads
            lines = [ln.strip() for ln in str(exc).splitlines()]
            reason = next((ln for ln in lines if ln.startswith("Unsupported")), "an unsupported instruction")
            raise UnsafeModel(
                f"{path} is not plain weights that torch's safe loader reads ({reason}): it is damaged, not "
                "written by torch.save, or pickled with features only full unpickling reads, which runs "
                "code from the file; check the file, and pass --trust (trust=True) only if you trust its "
                "author") from None
        if not trust:
            raise UnsafeModel(
                f"{path} holds pickled Python objects (such as a whole nn.Module), and unpickling runs code "
                f"from the file; pass --trust (trust=True) only if you trust its author, or save the "
                f"{what} as a state dict (torch.save(model.state_dict(), PATH)) or a .pt2 program") from None
    except Exception as exc:
        raise BadModel(f"cannot read {path}: {type(exc).__name__}: {_first_line(str(exc))}; is it a complete "
                       "file written by torch.save?") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise BadModel(f"cannot read {path} even trusted: {type(exc).__name__}: {_first_line(str(exc))} "
                       "(the classes it was pickled with must be importable)") from None


def load_torch_file(path: str | os.PathLike[str], *, trust: bool = False) -> tuple[Any, str]:
    """The module or exported program in a ``.pt2``/``.pt``/``.pth``/``.bin`` file, and its name (the stem).

    See :func:`convlens.adapters.torch.open_torch_file`, which opens it as an adapter.

    Raises:
        BadModel: missing, corrupt, or a state dict (weights without an architecture).
        UnsafeModel: loading would unpickle objects and ``trust`` is off.
        UnsupportedModel: a TorchScript archive.
    """
    torch = import_torch()
    p = Path(path)
    if not p.is_file():
        raise BadModel(f"model file not found: {p}; check the path")
    if p.suffix.lower() == ".pt2":
        return _load_exported(p, trust=trust), p.stem
    obj = _torch_load(p, trust=trust)
    if isinstance(obj, torch.nn.Module):
        return obj, p.stem
    if isinstance(obj, Mapping):
        raise BadModel(
            f"{p} is a state dict: it holds weights only, without the network that uses them; use "
            f"torchvision:NAME --weights {p} if it belongs to a torchvision model, or build the module in "
            "Python, load_state_dict() it and pass the module to convlens.Lens(module)")
    raise BadModel(f"{p} holds a {type(obj).__name__}, not a torch.nn.Module")


# --------------------------------------------------------------------------- torchvision


def load_state_dict_file(model: Any, path: str | os.PathLike[str], *, trust: bool = False,
                         label: str = "the model") -> None:
    """Load a state dict file into ``model``; names a few mismatching keys when it does not fit.

    Accepts a plain state dict, one wrapped as ``{"state_dict": ...}`` or
    ``{"model": ...}``, keys prefixed ``module.`` (DataParallel), or (trusted)
    a whole pickled module.

    Raises:
        WeightsUnavailable: the file is missing, unreadable or does not fit.
        UnsafeModel: the file holds pickled objects and ``trust`` is off.
    """
    torch = import_torch()
    p = Path(path)
    if not p.is_file():
        raise WeightsUnavailable(f"weights file not found: {p}; use --weights default, --weights none, or the "
                                 "path of a state dict saved with torch.save(model.state_dict(), PATH)")
    try:
        obj = _torch_load(p, trust=trust, what="weights")
    except (BadModel, UnsupportedModel) as exc:
        raise WeightsUnavailable(str(exc)) from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailable(f"{p} is not a state dict (a mapping of names to tensors); save one with "
                                 "torch.save(model.state_dict(), PATH)")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {', '.join(wrong[:3])})")
        raise WeightsUnavailable(f"{p} does not fit {label}: keys {'; '.join(parts)}; is it the state dict of "
                                 "this architecture?")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise WeightsUnavailable(f"cannot load {p} into {label}: {_first_line(str(exc))}") from None


def load_torchvision(name: str, *, weights: str | None = None, input_shape: Sequence[int | None] | None = None,
                     trust: bool = False) -> tuple[Any, tuple[int | None, ...], str]:
    """A torchvision model by name, its input shape and its key (see
    :func:`convlens.adapters.torch.open_torchvision`, which opens it as an adapter).

    Raises:
        BadModel: an unknown name.
        WeightsUnavailable: the download failed (offline) or the file does not fit.
    """
    tv = _import_torchvision()
    key = name.strip().lower()
    known = tv.models.list_models()
    if key not in known:
        classification = tv.models.list_models(module=tv.models)
        close = difflib.get_close_matches(key, known, n=4, cutoff=0.6)
        raise BadModel(f"unknown torchvision model {name!r}"
                       + (f" (closest: {', '.join(close)})" if close else "")
                       + f"; classification models include {', '.join(classification[:24])} ... "
                       f"(torchvision.models.list_models(module=torchvision.models) lists all {len(classification)})")
    w = "default" if weights is None else str(weights).strip()
    size = PROBE_SIZE
    try:
        default = tv.models.get_model_weights(key).DEFAULT
        size = int(getattr(default.transforms, "keywords", {}).get("crop_size", PROBE_SIZE))
    except Exception:
        default = None
    builder_args = set(inspect.signature(tv.models.get_model_builder(key)).parameters)
    random_kw: dict[str, Any] = {"weights": None}
    if "weights_backbone" in builder_args:  # detection/segmentation: no backbone download either
        random_kw["weights_backbone"] = None
    if w.lower() in ("default", "imagenet"):
        if default is None:
            raise WeightsUnavailable(f"torchvision:{key} has no pretrained weights; use --weights none")
        model = _download_model(tv, key, default)
    else:
        try:
            with warnings.catch_warnings():  # GoogLeNet's and Inception's notes to model authors
                warnings.simplefilter("ignore", FutureWarning)
                model = tv.models.get_model(key, **random_kw)
        except Exception as exc:
            raise UnsupportedModel(f"cannot build torchvision:{key}: {_first_line(str(exc))}") from None
        if w.lower() != "none":
            load_state_dict_file(model, w, trust=trust, label=f"torchvision:{key}")
    if input_shape is not None:
        dims = tuple(input_shape)
        shape: tuple[int | None, ...] = (*dims, 3) if len(dims) == 2 else dims
    else:
        shape = (size, size, 3)
    return model, shape, key


def _download_model(tv: Any, key: str, weights: Any) -> Any:
    """Build ``key`` with its pretrained weights; offline or a bad download is WeightsUnavailable.

    A socket timeout bounds every connect and read of the download, so a
    network that drops packets fails in :data:`DOWNLOAD_TIMEOUT` seconds
    instead of hanging.
    """
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        # torch.hub announces "Downloading: URL" on stdout even with progress=False; library code
        # does not print, and a failed download must stay one line of convlens's own.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return tv.models.get_model(key, weights=weights, progress=False)
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not get the pretrained weights of torchvision:{key} from {getattr(weights, 'url', '?')} "
            f"({type(exc).__name__}: {_first_line(str(exc))}); use --weights none for random weights or "
            "--weights PATH for a state dict file (torch.save(model.state_dict(), PATH))") from None
    finally:
        socket.setdefaulttimeout(old)

