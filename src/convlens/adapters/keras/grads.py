"""Gradients of a Keras model on its backend: a traced TensorFlow tape, torch's autograd, or ``jax.vjp``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._errors import BadArgument, ConvlensError, UnsupportedModel
from .._graph import LOGIT_ROLES
from ..base import Gradients, OnOutput, RankedGradients, Target, check_rows, target_cotangent
from ..base import first_line as _first_line  # one-line error messages
from ..redirect import keras_tf_gates, torch_redirect_mode
from .forward import KerasForward
from .scopes import name_scopes_kept
from .table import KERAS_ROLES, first_tensor, keras_word


@dataclass(frozen=True)
class _GradPlan:
    """What one gradient pass captures and differentiates (hashable: it keys the traced graphs)."""

    rows: tuple[int, ...]  # rows whose outputs and gradients are returned
    needed: frozenset[int] | set[int]  # rows captured: ``rows`` and the target's
    target_layer: int | None  # None: the model's output
    start: int | None  # the earliest needed row (0: the input is a leaf), None: no gradient needed
    stop_after: int | None  # the pass stops after this row (need_output=False)
    sources: tuple[int, ...]  # rows differentiated, ``rows`` plus 0 for the input gradient
    output: int | None = None  # which model output holds the score (target_layer None); None: the first

    def __post_init__(self) -> None:
        object.__setattr__(self, "needed", frozenset(self.needed))


class _StopForward(BaseException):
    """Raised from a wrapped call once the last layer a gradient pass needs has run.

    A ``BaseException``, so that no ``except Exception`` on the way (Keras's
    traceback filtering, a model's own) stops it.
    """


def _logit_source(layer: Any) -> str | None:
    """Where the logits before a final softmax or log-softmax are: ``"activation"`` (the input of the
    layer's own activation), ``"input"`` (a Softmax/Activation layer's input), or ``None`` (neither).

    Read from the layer's type (``Softmax``) or its ``activation`` (a Dense or
    Conv layer's, an ``Activation`` layer's), by the roles of the final-activation
    walk (:data:`convlens.adapters.keras.table.KERAS_ROLES`). Operations applied
    with ``keras.ops`` in a subclassed model's ``call`` after its last layer are not seen.
    """
    if KERAS_ROLES.get(keras_word(layer)) not in LOGIT_ROLES:
        return None
    if type(layer).__name__ in ("Softmax", "Activation"):
        return "input"
    return "activation"


def model_outputs(out: Any, names: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """A model's outputs as ``(name, tensor)`` in order: a list's or tuple's items (named by ``names``,
    the model's ``output_names``, where they match), a dict's values by key, nested containers flattened.
    The first is what :func:`first_tensor` gives."""
    found: list[tuple[str, Any]] = []

    def walk(o: Any, name: str) -> None:
        if hasattr(o, "shape") and hasattr(o, "dtype"):
            found.append((name, o))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{name}/{i}" if name else f"output_{i}")

    if isinstance(out, (list, tuple)) and len(out) == len(names) and all(hasattr(o, "shape") for o in out):
        return [(str(n), o) for n, o in zip(names, out)]
    walk(out, "")
    return [(n or "output_0", t) for n, t in found]


def _picked_output(out: Any, output: int | None, names: Sequence[str], model: str) -> Any:
    """Output ``output`` of a model's return value (``None``: the first tensor)."""
    if output is None:
        return first_tensor(out)
    listed = model_outputs(out, names)
    if not 0 <= int(output) < len(listed):
        raise BadArgument(f"output {output} does not exist: {model} has {len(listed)} output(s) "
                          f"({', '.join(f'{i}: {n}' for i, (n, _) in enumerate(listed))})")
    return listed[int(output)][1]


def _replace_first(out: Any, new: Any) -> Any:
    """``out`` with its first tensor replaced by ``new`` (containers copied)."""
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return new
    if isinstance(out, (list, tuple)):
        items = list(out)
        for i, o in enumerate(items):
            if first_tensor(o) is not None:
                items[i] = _replace_first(o, new)
                break
        return type(out)(items) if not hasattr(out, "_fields") else type(out)(*items)
    if isinstance(out, dict):
        items_d = dict(out)
        for k, o in items_d.items():
            if first_tensor(o) is not None:
                items_d[k] = _replace_first(o, new)
                break
        return items_d
    return out


class KerasAdapter(KerasForward):
    """A Keras 3 model behind convlens's adapter contract.

    Args:
        model: a ``keras.Model`` (Sequential, functional, nested or subclassed).
        input_shape: ``(H, W, C)`` for models that do not know theirs (unbuilt
            Sequential or subclassed models never called).
        preprocess: the preprocessing preset the model expects, if known.
        image_input: a model with several inputs: the image input's name, its
            ``InputLayer``'s (as ``model.summary()`` lists it); ``None``: the first
            input that looks like an image.
        inputs: the values the other inputs are held at, by ``InputLayer`` name,
            one item each (channels as the model takes them); those left out
            are zeros, with a note (:mod:`convlens.adapters._inputs`). Every
            pass feeds them, in the structure (list, dict) the model was built with.
    """

    def randomized(self, rows: Sequence[int], seed: int) -> KerasAdapter:
        """A copy with ``rows``' weights re-drawn (see :mod:`convlens.adapters.keras.randomize`)."""
        from .randomize import randomized

        return randomized(self, rows, seed)  # type: ignore[no-any-return]

    def outputs(self, batch: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Every output of one forward pass, canonical, by name (the model's ``output_names``), in order."""
        self.layers()
        x = self._model_layout(batch)
        with self._no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
            try:
                y = self.model(self._model_input(self.keras.ops.convert_to_tensor(x)), training=False)
            except ConvlensError:
                raise
            except Exception as exc:  # noqa: BLE001 - the model's own error, e.g. an input size it cannot take
                raise self._run_failed(exc, np.shape(batch)) from None
        return [(name, self._numpy(t)) for name, t in model_outputs(y, self._output_names())]

    def _output_names(self) -> list[str]:
        names = getattr(self.model, "output_names", None)
        return [str(n) for n in names] if isinstance(names, (list, tuple)) else []

    def _output_layer(self, output: int | None) -> Any:
        """The layer whose (softmax) activation makes model output ``output`` (``None``: the first), or
        ``None`` where the graph does not say; a model with one output: its last row's layer."""
        try:
            outs = list(self.model.outputs or [])
        except (AttributeError, ValueError):
            outs = []
        if len(outs) < 2:
            return self._objects[-1] if self._objects and (output or 0) == 0 else None
        k = int(output or 0)
        if not 0 <= k < len(outs):
            return None
        op = getattr(getattr(outs[k], "_keras_history", None), "operation", None)
        return op if any(op is o for o in self._objects) else None

    # ----------------------------------------------------------------- gradients

    def gradients_unavailable(self) -> str | None:
        backend = self.keras.backend.backend()
        if backend in ("tensorflow", "torch", "jax"):
            return None
        return (f"gradients of Keras models on the {backend} backend are not supported yet: run with "
                "KERAS_BACKEND=tensorflow, torch or jax, or use a forward-only method (Score-CAM, "
                "Eigen-CAM, occlusion)")

    #: Compiled gradient passes kept (TensorFlow, JAX), least recently used dropped first.
    GRADIENT_GRAPHS = 8

    def gradients(self, batch: np.ndarray, target: Target, layers: Sequence[int] = (), *,
                  wrt_input: bool = False, need_output: bool = True) -> Gradients:
        """One forward and one backward pass (see :meth:`Adapter.gradients`).

        No kernel gradient is computed on any backend. TensorFlow: a
        ``tf.function`` traced on the first call for these layers, target layer
        and input shape (kept, see :attr:`GRADIENT_GRAPHS`), with the cotangent
        an argument; its ``GradientTape`` watches no variable, only the outputs
        of the needed layers (the input with ``wrt_input``), and the function
        runs only the backward ops its outputs need: no ``Conv2DBackpropFilter``
        (see :meth:`_tf_traced`). torch backend: autograd, with the earliest
        needed output detached as the one leaf and every variable's
        ``requires_grad`` off for the pass (restored after). JAX backend:
        ``jax.vjp`` of the model's ``stateless_call`` with respect to the input
        and a zero added to each requested output, compiled with ``jax.jit``
        (see :mod:`convlens.adapters.keras._jax`). Layers run in inference mode
        (``training=False``). A final softmax (a layer's ``activation``, a
        ``Softmax`` or ``Activation`` layer) is read at its input: the class
        score is the logit.
        """
        why = self.gradients_unavailable()
        if why:
            raise UnsupportedModel(f"{self.name}: {why}")
        table = self.layers()
        rows = check_rows(table, layers, target, self.name)
        needed = set(rows) | ({int(target.layer)} if target.layer is not None else set())
        plan = _GradPlan(
            rows=rows, needed=needed, target_layer=None if target.layer is None else int(target.layer),
            start=0 if wrt_input or 0 in needed else min(needed, default=None),
            stop_after=max(needed) if not need_output and target.layer is not None else None,
            sources=rows + ((0,) if wrt_input and 0 not in rows else ()),
            output=None if target.layer is not None or target.output is None else int(target.output))
        x = self._model_layout(batch)
        where = None if plan.target_layer is None else table[plan.target_layer].name

        def build_cot(score_t: Any) -> Any:
            shape = tuple(int(d) for d in score_t.shape)
            if self.channels_first and len(shape) in (3, 4):
                shape = (shape[0], *shape[2:], shape[1])
            return self._native(target_cotangent(target, shape, where), score_t)

        backend = self.keras.backend.backend()
        if backend == "torch":
            y, score_t, acts, found, is_logit = self._torch_pass(plan, x, build_cot)
        elif backend == "jax":
            y, score_t, acts, found, is_logit = self._jax_pass(plan, x, target)
        else:
            with keras_tf_gates(self.keras):  # redirect.py: gated ReLUs, redirected in redirected_gradients()
                y, score_t, acts, found, is_logit = self._tf_pass(plan, x, target, build_cot)
        score_np = self._numpy(score_t)
        cot = target_cotangent(target, score_np.shape, where)
        score = (score_np.astype(np.float64) * cot).reshape(len(cot), -1).sum(axis=1)
        by_row = dict(zip(plan.sources, found))
        activations: dict[int, np.ndarray] = {}
        grads: dict[int, np.ndarray] = {}
        for r, a in zip(rows, acts):
            activations[r] = np.asarray(batch, np.float32).copy() if r == 0 else self._numpy(a)
            g = by_row.get(r)
            grads[r] = self._numpy(g) if g is not None else np.zeros_like(activations[r])
        input_grad = None
        if wrt_input:
            g = by_row.get(0)
            input_grad = self._numpy(g) if g is not None else np.zeros(np.shape(batch), np.float32)
        return Gradients(output=self._numpy(y) if y is not None else None, score=score,
                         activations=activations, grads=grads, input_grad=input_grad, logits=is_logit)

    def run_ranked(self, batch: np.ndarray, wanted: Sequence[int], on_output: OnOutput, *, layer: int,
                   top: int) -> RankedGradients:
        """:meth:`run` that also records the top classes' gradients at ``layer`` (see :class:`RankedGradients`).

        TensorFlow backend only: one traced ``tf.function`` runs the forward
        pass under a persistent ``GradientTape`` that watches no variable, takes
        each item's ``top`` best classes of the output (``tf.math.top_k``: ties
        to the lower index) and differentiates each rank's score (the logit
        before a final softmax) back to ``layer``; in a graph TensorFlow keeps
        only the backward ops that lead there. The wanted outputs are handed to
        ``on_output`` after the pass, as :meth:`run` does from its traced graph.

        Raises:
            UnsupportedModel: another backend, an output that is not ``(N, K)``,
                outputs above :attr:`GRAPH_BUDGET`, a model that cannot be
                traced, or ``layer`` gave no output (nothing was handed over then).
        """
        if self.keras.backend.backend() != "tensorflow":
            raise UnsupportedModel(f"{self.name}: one-pass gradients need the TensorFlow backend")
        import tensorflow as tf

        table = self.layers()
        wanted_key = tuple(sorted(set(wanted)))
        check_rows(table, [*wanted_key, layer], Target(), self.name)
        last = table[-1].output_shape
        if not last or len(last) != 1 or last[0] is None:
            raise UnsupportedModel(f"{self.name}: the output is not one score per class")
        k = max(1, min(int(top), int(last[0])))
        x = self._model_layout(batch)
        sizes = [table[i].output_shape for i in (*wanted_key, layer) if i]
        if any(s is None or None in s for s in sizes) or \
                4 * len(x) * sum(int(np.prod(s)) for s in sizes) > self.GRAPH_BUDGET:  # type: ignore[arg-type,misc]
            raise UnsupportedModel(f"{self.name}: the layer outputs do not fit one traced pass")
        graphs = self._ranked_graphs
        key = (wanted_key, int(layer), k, x.shape)
        entry = graphs.pop(key, None)
        if entry is None:
            rows = frozenset(r for r in (*wanted_key, layer) if r)
            plan = _GradPlan(rows=(int(layer),), needed=rows, target_layer=None, start=min(rows),
                             stop_after=None, sources=(int(layer),))
            logit: list[bool] = [False]

            def ranked(x_t: Any) -> tuple:
                with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
                    def leaf(t: Any, row: int) -> Any:
                        tape.watch(t)
                        return t

                    y, score_t, captured, logit[0] = self._forward_for_gradients(plan, x_t, leaf)
                    idx = tf.math.top_k(tf.cast(y, tf.float32), k=k, sorted=True).indices
                    picked = tf.gather(score_t, idx, batch_dims=1)  # (N, k): each item's ranked scores
                # One vectorised backward for the k ranks (pfor): the layers after the CAM layer are
                # read once, not k times (VGG16's 400 MB fc1), ~5x cheaper than k tape.gradient calls.
                # An item's scores depend on that item alone (inference), as batch_jacobian requires.
                source = captured[int(layer)]
                stacked = tf.transpose(tape.batch_jacobian(picked, source),
                                       (1, 0, *range(2, len(source.shape) + 1)))  # (k, N, ...)
                kept = {str(r): captured[r] for r in wanted_key if r in captured}
                return y, source, stacked, idx, kept

            entry = (tf.function(ranked), logit)
        graphs[key] = entry  # most recently used last
        while len(graphs) > self.GRADIENT_GRAPHS:
            graphs.pop(next(iter(graphs)))
        fn, logit = entry
        try:
            with name_scopes_kept():  # the first call traces: a failed trace leaves Keras's scopes as they were
                y, acts, grads, idx, kept = fn(tf.convert_to_tensor(x))
        except ConvlensError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model that cannot be traced: the caller falls back
            graphs.pop(key, None)
            raise UnsupportedModel(f"{self.name}: one-pass gradients failed: {_first_line(str(exc))}") from None
        if 0 in wanted_key:
            on_output(0, np.asarray(batch, dtype="float32"))
        for row in wanted_key:
            if str(row) in kept:
                on_output(row, self._canonical_array(np.asarray(kept[str(row)])))
        g = np.asarray(grads, np.float32)
        if self.channels_first and g.ndim == 5:
            g = np.moveaxis(g, 2, -1)
        return RankedGradients(output=self._canonical_array(np.asarray(y)), layer=int(layer),
                               activations=self._canonical_array(np.asarray(acts)),
                               classes=np.asarray(idx, np.int64), grads=g, logits=bool(logit[0]))

    def _forward_for_gradients(self, plan: _GradPlan, x_t: Any, leaf: Callable[[Any, int], Any],
                               call: Callable[[Any], Any] | None = None) -> tuple[Any, Any, dict[int, Any], bool]:
        """The forward half of a gradient pass: ``(output, score tensor, captured rows, logits?)``.

        Runs inside the caller's tape (TensorFlow), ``enable_grad`` (torch) or
        JAX trace. ``leaf(t, row)`` makes sure gradient recording covers what
        follows row ``row``'s output ``t`` and returns the tensor to pass on.
        ``call(x)`` runs the model (default: ``model(x, training=False)``; JAX:
        its ``stateless_call``). Wrappers and a swapped final activation are removed in ``finally``.
        """
        run_model = call if call is not None else (lambda t: self.model(t, training=False))
        by_call = self._rows_by_call()
        final = self._output_layer(plan.output) if plan.target_layer is None else None
        logit_from = _logit_source(final) if final is not None else None
        captured: dict[int, Any] = {}
        logits: list[Any] = []
        seen: dict[int, int] = {}

        def record(layer: Any, name: str, args: tuple, out: Any) -> Any:
            if logit_from == "input" and layer is final:
                logits[:] = [a for a in self.keras.tree.flatten(args) if hasattr(a, "shape")][:1]
            k = seen.get(id(layer), 0)
            seen[id(layer)] = k + 1
            row = by_call.get((id(layer), k), -1)  # the row standing for this call of the layer, if any
            first = first_tensor(out)
            if row not in plan.needed or first is None:
                return None
            # every needed output is a leaf unless recorded already (downstream of an earlier one): a
            # row on a parallel branch (a ResNet shortcut) gets its own gradient, not zeros
            first = leaf(first, row)
            captured[row] = first
            new = _replace_first(out, first)
            if row == plan.stop_after:
                raise _StopForward
            return new

        def capture_logits(fn: Any) -> Callable[[Any], Any]:
            def activation(t: Any) -> Any:
                logits[:] = [t]
                return fn(t)
            return activation

        if plan.start == 0:
            x_t = leaf(x_t, 0)
            captured[0] = x_t
        swapped = final.activation if final is not None and logit_from == "activation" else None
        y = None
        try:
            if swapped is not None:
                object.__setattr__(final, "activation", capture_logits(swapped))
            with self._wrapped(record), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
                try:
                    y = _picked_output(run_model(self._model_input(x_t)), plan.output, self._output_names(),
                                       self.name)  # held inputs fed, constant
                except _StopForward:
                    y = None
        finally:
            if swapped is not None:
                object.__setattr__(final, "activation", swapped)
        missing = [r for r in plan.rows if r not in captured]
        if plan.target_layer is not None and plan.target_layer not in captured:
            missing.insert(0, plan.target_layer)
        if missing:
            name = self.layers()[missing[0]].name
            raise UnsupportedModel(f"layer {name} (row {missing[0]}) gave no output in this gradient pass of "
                                   f"{self.name}; pick another layer (--layer)")
        if plan.target_layer is None:
            if y is None:
                raise UnsupportedModel(f"{self.name} returned no tensor to take a class score from; pick a "
                                       "layer as the target")
            if logits and tuple(logits[0].shape) == tuple(y.shape):
                return y, logits[0], captured, True
            return y, y, captured, False
        return y, captured[plan.target_layer], captured, False

    def _torch_pass(self, plan: _GradPlan, x: np.ndarray, build_cot: Callable[[Any], Any]) -> tuple:
        import torch

        variables = self._torch_parameters()
        flags = [p.requires_grad for p in variables]
        try:
            for p in variables:
                p.requires_grad_(False)
            with torch.enable_grad(), torch_redirect_mode():  # redirect.py: only in redirected_gradients()
                y, score_t, captured, is_logit = self._forward_for_gradients(
                    plan, self.keras.ops.convert_to_tensor(x),
                    lambda t, row: t if t.requires_grad else t.detach().requires_grad_())
                inputs: list[Any] = [captured.get(r) for r in plan.sources]
                usable = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
                found: list[Any] = [None] * len(inputs)
                if usable and score_t.requires_grad:
                    got = torch.autograd.grad([score_t], [inputs[i] for i in usable], [build_cot(score_t)],
                                              allow_unused=True)
                    for i, grad in zip(usable, got):
                        found[i] = grad
                else:
                    build_cot(score_t)  # the target is checked even when nothing depends on it
        finally:
            for p, flag in zip(variables, flags):
                p.requires_grad_(flag)
        return y, score_t, [captured[r] for r in plan.rows], found, is_logit

    def _tf_pass(self, plan: _GradPlan, x: np.ndarray, target: Target,
                 build_cot: Callable[[Any], Any]) -> tuple:
        """The TensorFlow gradient pass, compiled from its first call (see :meth:`_tf_traced`).

        A model that cannot be traced runs the same pass under an eager tape,
        which also computes (and drops) every kernel's gradient.
        """
        import tensorflow as tf

        key = (plan, x.shape)
        traced = self._grad_graphs.pop(key, None) if key in self._grad_graphs else self._tf_traced(plan, x.shape)
        self._remember(key, traced)
        if traced is not None:
            fn, cot_shape, is_logit = traced
            cot = target_cotangent(target, cot_shape, None if plan.target_layer is None
                                   else self.layers()[plan.target_layer].name)
            if self.channels_first and cot.ndim in (3, 4):
                cot = np.moveaxis(cot, -1, 1)
            y, score_t, acts, found = fn(tf.convert_to_tensor(x), tf.convert_to_tensor(cot, tf.float32))
            return None if plan.stop_after is not None else y, score_t, list(acts), list(found), is_logit
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            def leaf(t: Any, row: int) -> Any:
                tape.watch(t)
                return t

            y, score_t, captured, is_logit = self._forward_for_gradients(plan, tf.convert_to_tensor(x), leaf)
        found = tape.gradient(score_t, [captured[r] for r in plan.sources], output_gradients=build_cot(score_t),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO) if plan.sources else []
        return y, score_t, [captured[r] for r in plan.rows], list(found), is_logit

    def _tf_traced(self, plan: _GradPlan, shape: tuple[int, ...]) -> tuple[Any, tuple[int, ...], bool] | None:
        """``(concrete function, canonical score shape, logits?)`` for ``plan`` on inputs of ``shape``.

        The function maps ``(x, cotangent)`` to ``(output, score tensor,
        requested rows' outputs, gradients of plan.sources)``. Traced once, with
        no variable watched: the graph's backward half holds every conv's
        ``Conv2DBackpropFilter`` (TensorFlow's gradient function builds both
        halves), but a function runs only the ops its outputs need, so no
        kernel gradient is ever computed (the eager tape computes each one and
        throws it away: 3x the pass on VGG16's classifier, and the op that
        crashed oneDNN on AVX-512 machines). ``None``: the model cannot be
        traced, or its score's shape is not static.
        """
        import tensorflow as tf

        seen: dict[str, Any] = {}

        def traced(x_t: Any, cot: Any) -> tuple:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                def leaf(t: Any, row: int) -> Any:
                    tape.watch(t)
                    return t

                y, score_t, captured, seen["logits"] = self._forward_for_gradients(plan, x_t, leaf)
            seen["shape"] = score_t.shape
            cot = tf.cast(tf.ensure_shape(cot, score_t.shape), score_t.dtype)
            found = tape.gradient(score_t, [captured[r] for r in plan.sources], output_gradients=cot,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO) if plan.sources else []
            return (y if y is not None else tf.zeros((0,))), score_t, [captured[r] for r in plan.rows], found

        try:
            with name_scopes_kept():  # a failed trace leaves Keras's scopes as they were
                fn = tf.function(traced).get_concrete_function(tf.TensorSpec(shape, tf.float32),
                                                               tf.TensorSpec(None, tf.float32))
        except ConvlensError:
            raise
        except Exception:  # noqa: BLE001 - a model TensorFlow cannot trace: the eager pass reports its own errors
            return None
        if not seen["shape"].is_fully_defined():
            return None
        cot_shape = tuple(int(d) for d in seen["shape"])
        if self.channels_first and len(cot_shape) in (3, 4):
            cot_shape = (cot_shape[0], *cot_shape[2:], cot_shape[1])
        return fn, cot_shape, bool(seen["logits"])

    def _jax_pass(self, plan: _GradPlan, x: np.ndarray, target: Target) -> tuple:
        """The JAX gradient pass, compiled per plan and input shape (see :mod:`._jax`)."""
        from ._jax import compile_gradient_pass

        key = (plan, x.shape)
        if key in self._grad_graphs:
            compiled = self._grad_graphs.pop(key)
        else:
            # a model that raises while traced raises its own error, as on the other backends
            compiled = compile_gradient_pass(
                self.model, lambda x_t, leaf, call: self._forward_for_gradients(plan, x_t, leaf, call),
                plan.rows, plan.sources, x.shape)
        self._remember(key, compiled)
        shape = compiled.score_shape
        if self.channels_first and len(shape) in (3, 4):
            shape = (shape[0], *shape[2:], shape[1])
        cot = target_cotangent(target, shape, None if plan.target_layer is None
                               else self.layers()[plan.target_layer].name)
        if self.channels_first and cot.ndim in (3, 4):
            cot = np.moveaxis(cot, -1, 1)
        y, score_t, acts, found = compiled(self.model, x, np.ascontiguousarray(cot, np.float32))
        return None if plan.stop_after is not None else y, score_t, acts, found, compiled.logits

    def _remember(self, key: tuple, compiled: Any) -> None:
        """Keep a compiled gradient pass (``None``: one that cannot be compiled), the least recently used
        dropped beyond :attr:`GRADIENT_GRAPHS`."""
        self._grad_graphs[key] = compiled  # most recently used last
        while len(self._grad_graphs) > self.GRADIENT_GRAPHS:
            self._grad_graphs.pop(next(iter(self._grad_graphs)))

    def _torch_parameters(self) -> list[Any]:
        """The torch tensors behind the model's variables (Keras on torch)."""
        import torch

        found: dict[int, Any] = {}
        for v in self.model.variables:
            t = getattr(v, "value", None)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                found.setdefault(id(t), t)
        return list(found.values())

    def _numpy(self, t: Any) -> np.ndarray:
        """A backend tensor as a canonical float32 numpy array."""
        if hasattr(t, "detach"):
            t = t.detach()
        return self._canonical_array(self.keras.ops.convert_to_numpy(t))

    def _native(self, cot: np.ndarray, like: Any) -> Any:
        """A canonical numpy cotangent as a tensor in the layout and dtype of ``like``."""
        if self.channels_first and cot.ndim in (3, 4):
            cot = np.ascontiguousarray(np.moveaxis(cot, -1, 1))
        return self.keras.ops.cast(self.keras.ops.convert_to_tensor(cot), like.dtype)

