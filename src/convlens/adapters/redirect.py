"""Redirected gradients through zero-gated units, so that feature visualisation starts.

A ReLU whose input is negative everywhere passes no gradient: a channel that is
zero on the starting image (a grey image, for a network whose batch norm
shifts it below zero) never moves, and its picture stays flat grey although
the channel fires on photos. Lucid's answer (``lucid/optvis/overrides/
redirected_relu_grad.py``) is used here: in a gradient pass run inside
:func:`redirected_gradients`, a gated unit whose true gradient is zero for a
whole image passes the incoming gradient where it would push its input back
into the live range, and drops it where it would push further out.

The gated units are ReLU, ReLU6 (and any hardtanh), hard-swish, and max-pool
(whose gradient then spreads over its window as an average pool's does, so
that a window of tied zeros is not reduced to one arbitrary element).

The caller climbs the score (feature visualisation does): "would push back"
means the incoming gradient of the score is positive below the live range.

Frameworks read the flag in their gradient pass: torch (and onnx2torch, and
Keras on torch) through :func:`torch_redirect_mode`, a ``__torch_function__``
mode that reaches functional calls and modules alike; Keras on TensorFlow
through :func:`keras_tf_gates`, which swaps the backend's ``relu``, ``relu6``,
``hard_silu`` and ``max_pool`` for gated twins while its pass runs. The twins
read the flag from a ``tf.Variable`` inside the graph, so a pass compiled
with ``tf.function`` follows the flag of each call, not of its tracing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

__all__ = ["keras_tf_gates", "redirect_unavailable", "redirected_gradients", "redirecting", "torch_redirect_mode"]

_REDIRECT: ContextVar[bool] = ContextVar("convlens_redirect_gradients", default=False)


@contextmanager
def redirected_gradients(on: bool = True) -> Iterator[None]:
    """Gradient passes inside the block redirect the gradient of zero-gated units (see the module docstring)."""
    token = _REDIRECT.set(bool(on))
    try:
        yield
    finally:
        _REDIRECT.reset(token)


def redirect_unavailable(adapter: Any) -> str | None:
    """Why an adapter's gradient passes cannot redirect, in words, or ``None`` when they can.

    Keras on its JAX backend traces the model's own ``relu`` into a jitted
    function that no switch reaches yet: its visualisations climb the true
    gradient from the first step.
    """
    if getattr(adapter, "framework", "") == "keras":
        import keras

        if keras.backend.backend() == "jax":
            return "Keras's JAX backend does not redirect the gradient of zero-gated units yet"
    return None


def redirecting() -> bool:
    """Whether the gradient pass now running should redirect (inside :func:`redirected_gradients`)."""
    return _REDIRECT.get()


def torch_redirect_mode() -> AbstractContextManager[Any]:
    """A ``__torch_function__`` mode redirecting ReLU, hardtanh, hard-swish and max-pool gradients,
    while :func:`redirecting`; otherwise a context that does nothing."""
    if not redirecting():
        return nullcontext()
    return _torch_mode()()


def _torch_mode() -> Any:
    """The mode class, built on first use (torch is imported lazily)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class Gate(torch.autograd.Function):
        """``y = op(x)``, with the redirected gradient of a unit live on ``[lo, hi]`` (``None``: unbounded)."""

        @staticmethod
        def forward(ctx: Any, x: Any, y: Any, lo: float, hi: float | None, swish: bool) -> Any:
            ctx.save_for_backward(x)
            ctx.lo, ctx.hi, ctx.swish = lo, hi, swish
            return y.clone()

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            (x,) = ctx.saved_tensors
            lo, hi = ctx.lo, ctx.hi
            below = x < lo
            above = x > hi if hi is not None else torch.zeros_like(below)
            if ctx.swish:  # d/dx x * relu6(x + 3) / 6, zero below -3
                slope = torch.where(x > 3, torch.ones_like(x), (2 * x + 3) / 6)
                true = torch.where(below, torch.zeros_like(g), g * slope)
            else:  # the op's own gradient: zero on the bounds too (a ReLU's at exactly 0)
                dead = (x <= lo) | (x >= hi) if hi is not None else x <= lo
                true = torch.where(dead, torch.zeros_like(g), g)
            # drop what would push a unit further out of its live range; pass the rest
            redirected = torch.where((below & (g < 0)) | (above & (g > 0)), torch.zeros_like(g), g)
            live = true.flatten(1).norm(dim=1) > 0 if true.ndim > 1 else true.norm() > 0
            live = live.reshape(-1, *([1] * (true.ndim - 1))) if true.ndim > 1 else live
            return torch.where(live, true, redirected), None, None, None, None

    def gate(x: Any, y: Any, lo: float, hi: float | None, swish: bool = False) -> Any:
        if not (isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()):
            return y
        return Gate.apply(x, y, lo, hi, swish)

    relus = {F.relu, torch.relu, torch.relu_, F.relu_, torch.nn.functional.relu6}
    hardtanhs = {F.hardtanh, F.hardtanh_, torch._C._nn.hardtanh, torch._C._nn.hardtanh_}
    swishes = {F.hardswish, torch._C._nn.hardswish, torch._C._nn.hardswish_}
    maxpools = {F.max_pool1d, F.max_pool2d, torch.max_pool1d, torch.max_pool2d}
    avgpool = {1: F.avg_pool1d, 2: F.avg_pool2d}

    def first(args: tuple, kwargs: dict, name: str, pos: int, default: Any) -> Any:
        return args[pos] if len(args) > pos else kwargs.get(name, default)

    class Redirect(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            kwargs = dict(kwargs or {})
            x: Any = args[0] if args else kwargs.get("input")
            if func in relus:
                y = torch.relu(x) if func is not F.relu6 else F.hardtanh(x, 0.0, 6.0)
                return gate(x, y, 0.0, None if func is not F.relu6 else 6.0)
            if func in hardtanhs:
                lo = float(first(args, kwargs, "min_val", 1, -1.0))
                hi = float(first(args, kwargs, "max_val", 2, 1.0))
                return gate(x, F.hardtanh(x, lo, hi), lo, hi)
            if func in swishes:
                return gate(x, F.hardswish(x), -3.0, None, swish=True)
            if func in maxpools and isinstance(x, torch.Tensor) and x.requires_grad:
                return _redirected_max_pool(func, args, kwargs, x)
            return func(*args, **kwargs)

    def _redirected_max_pool(func: Any, args: tuple, kwargs: dict, x: Any) -> Any:
        y = func(*args, **kwargs)
        kernel = first(args, kwargs, "kernel_size", 1, None)
        stride = first(args, kwargs, "stride", 2, None) or kernel
        padding = first(args, kwargs, "padding", 3, 0)
        dilation = first(args, kwargs, "dilation", 4, 1)
        ceil = bool(first(args, kwargs, "ceil_mode", 5, False))
        spatial = x.ndim - 2
        pool = avgpool.get(spatial)
        if isinstance(y, tuple) or pool is None or dilation not in (1, (1,) * spatial, [1] * spatial):
            return y  # with indices, or dilated: the plain max-pool
        spread = pool(x, kernel, stride, padding, ceil_mode=ceil, count_include_pad=False)
        if spread.shape != y.shape:
            return y
        # the max's value, the average's gradient
        return y.detach() + spread - spread.detach()

    return Redirect


# --------------------------------------------------------------------------- Keras on TensorFlow

_TF_FLAG: list[Any] = []  # the tf.Variable the gated twins read, made on first use


@contextmanager
def keras_tf_gates(keras: Any) -> Iterator[None]:
    """Keras's TensorFlow backend with gated ``relu``, ``relu6``, ``hard_silu`` and ``max_pool`` for the block.

    Outside :func:`redirected_gradients` the twins' gradients are the true ones.
    A no-op on other backends. Not thread-safe: it swaps module attributes.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn

    if not _TF_FLAG:
        _TF_FLAG.append(tf.Variable(False, trainable=False, name="convlens_redirect"))
    flag = _TF_FLAG[0]
    flag.assign(redirecting())
    saved = {name: getattr(nn, name) for name in ("relu", "relu6", "hard_silu", "hard_swish", "max_pool")
             if hasattr(nn, name)}
    twins = _tf_twins(tf, nn, saved, flag)
    try:
        for name, fn in twins.items():
            setattr(nn, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn, name, fn)


def _tf_twins(tf: Any, nn: Any, saved: dict[str, Any], flag: Any) -> dict[str, Any]:
    """The gated twins of the backend functions in ``saved`` (see :func:`keras_tf_gates`)."""

    def redirect(x: Any, g: Any, true: Any, lo: float, hi: float | None) -> Any:
        below = x < lo
        out = below & (g < 0)
        if hi is not None:
            out = out | ((x > hi) & (g > 0))
        redirected = tf.where(out, tf.zeros_like(g), g)
        axes = list(range(1, len(true.shape)))
        live = tf.reduce_any(tf.not_equal(true, 0), axis=axes, keepdims=True) if axes else tf.not_equal(true, 0)
        return tf.where(tf.logical_or(live, tf.logical_not(flag)), true, redirected)

    def gate(fn: Any, lo: float, hi: float | None, swish: bool = False) -> Any:
        @tf.custom_gradient
        def gated(x: Any) -> Any:
            x = tf.convert_to_tensor(x)
            y = fn(x)

            def grad(g: Any) -> Any:
                if swish:  # d/dx x * relu6(x + 3) / 6, zero below -3
                    slope = tf.where(x > 3, tf.ones_like(x), (2 * x + 3) / 6)
                    true = tf.where(x < lo, tf.zeros_like(g), g * slope)
                else:  # the op's own gradient, as TensorFlow's ReluGrad/Relu6Grad: zero on the bounds too
                    dead = x <= lo if hi is None else (x <= lo) | (x >= hi)
                    true = tf.where(dead, tf.zeros_like(g), g)
                return redirect(x, g, true, lo, hi)

            return y, grad

        return gated

    twins: dict[str, Any] = {}
    if "relu" in saved:
        twins["relu"] = gate(saved["relu"], 0.0, None)
    if "relu6" in saved:
        twins["relu6"] = gate(saved["relu6"], 0.0, 6.0)
    for name in ("hard_silu", "hard_swish"):
        if name in saved:
            twins[name] = gate(saved[name], -3.0, None, swish=True)
    if "max_pool" in saved:
        max_pool = saved["max_pool"]

        def spread_max_pool(inputs: Any, pool_size: Any, strides: Any = None, padding: str = "valid",
                            data_format: Any = None) -> Any:
            y = max_pool(inputs, pool_size, strides, padding, data_format)
            spread = nn.average_pool(inputs, pool_size, strides, padding, data_format)
            # the max's value; while redirecting, the average's gradient
            return tf.cond(flag, lambda: tf.stop_gradient(y) + spread - tf.stop_gradient(spread), lambda: y)

        twins["max_pool"] = spread_max_pool
    return twins
