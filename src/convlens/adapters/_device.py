"""Devices: what ``device=`` and ``--device`` accept, and how each framework is told.

One vocabulary for every framework: ``auto`` (the accelerator if there is one,
else the CPU), ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` (Apple's Metal). This
module parses it, checks it against the machine (one-line errors that say what
to pass instead), places PyTorch modules, reads a module's device and dtype at
each call, reduces hooked outputs on the device before one transfer, turns
TF32 and cuDNN autotuning off while an exactness check runs, and recognises
out-of-memory errors.

The adapters' ``device`` attribute is the resolved device as torch spells it:
``"cpu"``, ``"cuda:0"``, ``"mps"`` (a module built on ``meta`` says ``"meta"``).

Nothing here imports a framework at module level: torch, onnxruntime and
TensorFlow are imported (or only looked up in ``sys.modules``) where needed.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import BadArgument, OutOfMemory, UnsupportedModel

__all__ = ["AUTO", "DEVICE_CHOICES", "adapter_device", "cuda_device_count", "exact_kernels", "is_out_of_memory",
           "module_device", "module_placement", "onnx_providers", "out_of_memory", "parse_device",
           "place_module", "resolve_torch_device", "torch_reduce_channels"]

#: The default: the accelerator if there is one, else the CPU.
AUTO = "auto"
#: What ``--device`` accepts, in words.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"

_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def parse_device(device: Any) -> str | None:
    """``device`` checked and written one way (``"cuda:1"``), or ``None`` when not given.

    Accepts a string or a ``torch.device``; ``"gpu"`` is answered with a hint.

    Raises:
        BadArgument: anything else.
    """
    if device is None:
        return None
    text = str(device).strip().lower()
    if text == "cuda:":
        text = "cuda"
    if _PATTERN.match(text):
        return text
    if text.startswith("gpu"):
        raise BadArgument(f"--device {device}: write cuda (or cuda:N for the N-th GPU), as PyTorch does; "
                          f"choose {DEVICE_CHOICES}")
    raise BadArgument(f"--device {device!r} is not a device; choose {DEVICE_CHOICES}")


def adapter_device(adapter: Any) -> str:
    """The device an adapter runs on (``"cpu"`` for an adapter that does not say)."""
    return str(getattr(adapter, "device", "cpu") or "cpu")


# --------------------------------------------------------------------------- checking the machine


def _cuda_index(spec: str) -> int | None:
    return int(spec.split(":", 1)[1]) if ":" in spec else None


def _no_cuda_message(spec: str, why: str) -> str:
    return f"--device {spec}: {why}; use --device cpu, or --device auto to take a GPU only where there is one"


def _check_cuda_index(spec: str, count: int) -> None:
    index = _cuda_index(spec)
    if index is not None and index >= count:
        gpus = "1 CUDA GPU (cuda:0)" if count == 1 else f"{count} CUDA GPUs (cuda:0 to cuda:{count - 1})"
        raise BadArgument(f"--device {spec}: this machine has {gpus}; pick one of those, or --device cuda "
                          "for the current one")


def _check_mps(spec: str, available: bool | None) -> None:
    if sys.platform != "darwin":
        raise BadArgument(f"--device {spec}: MPS is Apple's Metal GPU and exists only on macOS; use --device "
                          "cuda for an NVIDIA GPU, cpu, or auto")
    if available is False:
        raise BadArgument(f"--device {spec}: Metal (MPS) is not available here (it needs macOS 12.3 or later on "
                          "Apple silicon or an AMD GPU, and a PyTorch built with it); use --device cpu or auto")


def cuda_device_count() -> int | None:
    """CUDA GPUs PyTorch sees, or ``None`` when PyTorch is not installed (the count is then unknown)."""
    try:
        import torch
    except ImportError:
        return None
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:
        return False


def resolve_torch_device(device: Any) -> str:
    """The torch device a ``device=`` value names on this machine: ``"cpu"``, ``"cuda:N"`` or ``"mps"``.

    ``auto`` is the current CUDA GPU, else MPS, else the CPU; ``cuda`` the current CUDA GPU.

    Raises:
        BadArgument: not a device, ``cuda`` without a CUDA GPU (or with a
            CPU-only PyTorch), ``cuda:N`` past the last GPU, ``mps`` off macOS or
            where Metal is not available.
    """
    import torch

    spec = parse_device(device) or AUTO
    cuda = bool(torch.cuda.is_available())
    if spec == AUTO:
        if cuda:
            return f"cuda:{torch.cuda.current_device()}"
        return "mps" if _mps_available(torch) else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "mps":
        _check_mps(spec, _mps_available(torch))
        return "mps"
    if not cuda:
        why = (f"this PyTorch ({torch.__version__}) is a CPU-only build; install a CUDA build of PyTorch"
               if getattr(torch.version, "cuda", None) is None else
               f"PyTorch {torch.__version__} finds no CUDA GPU on this machine (no driver, or "
               "CUDA_VISIBLE_DEVICES hides them)")
        raise BadArgument(_no_cuda_message(spec, why))
    _check_cuda_index(spec, int(torch.cuda.device_count()))
    index = _cuda_index(spec)
    return f"cuda:{torch.cuda.current_device() if index is None else index}"


# --------------------------------------------------------------------------- torch modules


def _tensors_of(module: Any) -> Iterator[Any]:
    yield from module.parameters()
    yield from module.buffers()


def _lazy(t: Any) -> bool:
    import torch

    return isinstance(t, torch.nn.parameter.UninitializedParameter)


def module_placement(module: Any, name: str = "the model") -> str | None:
    """The one device of a module's parameters and buffers (``None`` when it has none).

    Raises:
        UnsupportedModel: they sit on several devices (a model split over GPUs).
    """
    devices = {str(t.device) for t in _tensors_of(module) if not _lazy(t)}
    if len(devices) > 1:
        where = ", ".join(sorted(devices))
        raise UnsupportedModel(f"{name} has its parameters on several devices ({where}); convlens runs a model "
                               "on one device: move it there first (model.to('cuda:0')), or pass "
                               "device='cuda:0' (--device cuda:0) to put all of it on one GPU")
    return next(iter(devices), None)


def module_device(module: Any) -> tuple[Any, Any]:
    """``(device, dtype)`` a module's inputs must have, read now (not cached: ``model.double()`` or
    ``model.cuda()`` after the adapter was made are followed): its first floating-point parameter's,
    else its first floating-point buffer's, else the CPU and float32."""
    import torch

    for source in (module.parameters(), module.buffers()):
        for t in source:
            if t.is_floating_point() and not _lazy(t):
                return t.device, t.dtype
    for t in _tensors_of(module):
        if not _lazy(t):
            return t.device, torch.float32
    return torch.device("cpu"), torch.float32


def place_module(module: Any, device: Any, name: str = "the model") -> str:
    """Move a module to ``device`` (resolved with :func:`resolve_torch_device`), or leave it where it is
    when ``device`` is ``None``; the device it is on now.

    Raises:
        BadArgument: see :func:`resolve_torch_device`.
        UnsupportedModel: ``device`` is ``None`` and the module sits on several devices.
        OutOfMemory: the module does not fit on the GPU.
    """
    if device is None:
        return module_placement(module, name) or "cpu"
    target = resolve_torch_device(device)
    if module_placement_or_none(module) != target:
        try:
            module.to(target)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(target, f"moving {name}'s weights there") from None
            raise UnsupportedModel(f"cannot move {name} to {target}: {type(exc).__name__}: "
                                   f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}") from None
    return target


def module_placement_or_none(module: Any) -> str | None:
    """:func:`module_placement` without the several-devices error (``None`` then too)."""
    try:
        return module_placement(module)
    except UnsupportedModel:
        return None


# --------------------------------------------------------------------------- errors


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a framework's exception says the device ran out of memory (CUDA, MPS, cuDNN, onnxruntime, TF)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"OutOfMemoryError", "ResourceExhaustedError"}:
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "cudnn_status_alloc_failed", "cudaerrormemoryallocation",
                                   "failed to allocate memory"))


def out_of_memory(device: str, what: str = "the batch") -> OutOfMemory:
    """The one-line error for a device that ran out of memory."""
    return OutOfMemory(f"{device} ran out of memory for {what}; pass a smaller --batch-size (batch_size= in "
                       "Python), smaller images (--size), fewer layers (--layers), or --device cpu")


# --------------------------------------------------------------------------- exactness


@contextlib.contextmanager
def exact_kernels() -> Iterator[None]:
    """TF32 and cuDNN autotuning off for the block (exactness checks), restored after.

    TF32 rounds float32 matrix products to a 10-bit mantissa on Ampere and later
    GPUs, and cuDNN's autotuner may pick another algorithm per run: either can
    break a comparison with a CPU result or bit-identical reruns. Frameworks not
    imported yet are left alone (nothing is imported here).
    """
    torch = sys.modules.get("torch")
    tf = sys.modules.get("tensorflow")
    saved: list[tuple[Any, str, Any]] = []
    tf_saved = None
    try:
        if torch is not None:
            for obj, attr in ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
                              (torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "deterministic")):
                saved.append((obj, attr, getattr(obj, attr)))
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        if tf is not None and hasattr(tf, "config"):
            try:
                tf_saved = tf.config.experimental.tensor_float_32_execution_enabled()
                tf.config.experimental.enable_tensor_float_32_execution(False)
            except Exception:
                tf_saved = None
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
        if tf_saved is not None and tf is not None:
            tf.config.experimental.enable_tensor_float_32_execution(tf_saved)


# --------------------------------------------------------------------------- onnxruntime


def onnx_providers(device: Any, available: Sequence[str]) -> tuple[list[Any], str]:
    """The execution providers to ask onnxruntime for, and the device they run on.

    Args:
        device: a ``device=`` value; ``None`` means ``auto``.
        available: ``onnxruntime.get_available_providers()``.

    Returns:
        ``(providers, device)``: e.g. ``([("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider"], "cuda:1")``; the CPU provider always comes last, for
        the operators a GPU provider lacks.

    Raises:
        BadArgument: ``cuda`` without ``onnxruntime-gpu`` (or without a GPU), a
            GPU index past the last one, ``mps`` off macOS or without CoreML.
    """
    spec = parse_device(device) or AUTO
    have = set(available)
    cpu = "CPUExecutionProvider"
    if spec == "cpu":
        return [cpu], "cpu"
    if spec == "mps":
        _check_mps(spec, None)
        if "CoreMLExecutionProvider" not in have:
            raise BadArgument("--device mps: this onnxruntime has no CoreML provider; use --device cpu")
        return ["CoreMLExecutionProvider", cpu], "mps"
    gpus = "CUDAExecutionProvider" in have
    if spec == AUTO:
        if not gpus:
            return [cpu], "cpu"
        count = cuda_device_count()
        if count == 0:
            return [cpu], "cpu"
        spec = "cuda"
    if not gpus:
        raise BadArgument(_no_cuda_message(spec, "this onnxruntime has no CUDA provider (install onnxruntime-gpu: "
                                                 "pip install 'convlens[gpu]')"))
    count = cuda_device_count()
    if count == 0:
        raise BadArgument(_no_cuda_message(spec, "no CUDA GPU is visible on this machine"))
    if count is not None:
        _check_cuda_index(spec, count)
    index = _cuda_index(spec) or 0
    return [("CUDAExecutionProvider", {"device_id": index}), cpu], f"cuda:{index}"


# --------------------------------------------------------------------------- reductions on the device


def torch_reduce_channels(t: Any, ops: Sequence[str], channels_last: bool = False) -> dict[str, np.ndarray]:
    """:func:`convlens.core.reduce.reduce_channels` of a torch tensor, computed where the tensor is.

    The ops (and their dtypes and rules: finite values only, the first largest
    for ``argmax``) are those of :mod:`convlens.core.reduce`; sums are taken in
    float64 (float32 on MPS, which has no float64) whatever the tensor's dtype
    (float16 and bfloat16 maps included). Every result is stacked into one
    ``(ops, n, C)`` tensor and copied to the host once.

    Args:
        t: one layer's output for a batch, torch layout: ``(n, C, *spatial)``,
            ``(n, *spatial, C)`` when ``channels_last``, ``(n, C)`` or ``(n,)``.
        ops: names among :data:`convlens.core.reduce.REDUCTIONS`.
        channels_last: the tensor holds its channels last already.

    Returns:
        ``{op: (n, C) array}``: int64 for counts and ``argmax``, float64 otherwise.
    """
    import torch

    from ..core.reduce import REDUCTIONS

    wanted = tuple(dict.fromkeys(ops))
    unknown = [op for op in wanted if op not in REDUCTIONS]
    if unknown:
        raise BadArgument(f"unknown reduction {', '.join(map(repr, unknown))}; choose among {', '.join(REDUCTIONS)}")
    x = t.detach()
    if not x.is_floating_point():
        x = x.float()
    n = int(x.shape[0]) if x.ndim else 1
    dims = [int(d) for d in x.shape[1:]]
    if x.ndim >= 3 and not channels_last:
        dims = [*dims[1:], dims[0]]
    shape = np.asarray(dims or [1], np.int64)  # one image's canonical shape
    if x.ndim <= 1:
        x = x.reshape(n, 1, 1)
    elif x.ndim == 2:
        x = x.reshape(n, -1, 1)
    elif channels_last:
        x = x.reshape(n, -1, x.shape[-1]).transpose(1, 2)  # (n, C, positions), a view
    else:
        x = x.reshape(n, x.shape[1], -1)
    c, p = int(x.shape[1]), int(x.shape[2])
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    finite = torch.isfinite(x)
    count = finite.sum(dim=2)
    clean = bool(count.min() == p) if count.numel() else True
    out: dict[str, Any] = {}
    need = set(wanted) - {"shape"}
    per_channel = tuple(op for op in wanted if op != "shape")
    if "count" in need:
        out["count"] = count
    if "nonfinite" in need:
        out["nonfinite"] = p - count
    if "zeros" in need:
        out["zeros"] = (x == 0).sum(dim=2)
    if need & {"min", "max", "argmax", "argmin"}:
        lo_src = x if clean else torch.where(finite, x, torch.full((), float("inf"), dtype=x.dtype, device=x.device))
        hi_src = x if clean else torch.where(finite, x, torch.full((), float("-inf"), dtype=x.dtype,
                                                                    device=x.device))
        if p == 0:
            out["min"] = torch.full((n, c), float("inf"), dtype=acc, device=x.device)
            out["max"] = torch.full((n, c), float("-inf"), dtype=acc, device=x.device)
            out["argmax"] = torch.full((n, c), -1, dtype=torch.int64, device=x.device)
            out["argmin"] = out["argmax"]
        else:
            lo, lo_at = lo_src.min(dim=2)  # torch returns the first smallest (and largest)
            hi, hi_at = hi_src.max(dim=2)
            out["min"], out["max"] = lo, hi
            out["argmax"] = torch.where(count > 0, hi_at, torch.full_like(hi_at, -1))
            out["argmin"] = torch.where(count > 0, lo_at, torch.full_like(lo_at, -1))
    if need & {"sum", "sumsq", "m2"}:
        x64 = x.to(acc) if clean else torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)).to(acc)
        total = x64.sum(dim=2)
        out["sum"] = total
        if "sumsq" in need:
            out["sumsq"] = (x64 * x64).sum(dim=2)
        if "m2" in need:
            mean = torch.where(count > 0, total / count.clamp(min=1).to(acc), torch.zeros((), dtype=acc,
                                                                                          device=x.device))
            d = x64 - mean[:, :, None]
            if not clean:
                d = torch.where(finite, d, torch.zeros((), dtype=acc, device=x.device))
            out["m2"] = (d * d).sum(dim=2)
    # one transfer: every op as float64 (exact for counts and positions below 2**53) in one tensor
    stacked = (torch.stack([out[op].to(acc) for op in per_channel]).cpu().numpy() if per_channel
               else np.zeros((0, n, c)))
    ints = {"count", "nonfinite", "zeros", "argmax", "argmin"}
    got = {op: (stacked[i].astype(np.int64) if op in ints else stacked[i].astype(np.float64))
           for i, op in enumerate(per_channel)}
    got["shape"] = shape
    return {op: got[op] for op in wanted}


def by_layer_ops(reductions: Mapping[int, Sequence[str]]) -> dict[int, tuple[str, ...]]:
    """Reductions by row as tuples (the form adapters' ``run_reducing`` keeps)."""
    return {int(row): tuple(ops) for row, ops in reductions.items() if ops}
