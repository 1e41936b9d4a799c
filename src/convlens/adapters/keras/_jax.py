"""Gradients of a Keras model on the JAX backend: ``jax.vjp`` over its stateless call, under ``jax.jit``.

The model runs as its ``stateless_call`` does: a ``StatelessScope`` maps each
variable to an argument of the compiled function. JAX differentiates
functions, not tensors, so a gradient with respect to a layer's output is read
as the gradient with respect to a zero added to that output (``out + eps``,
``eps == 0``): d score / d eps is d score / d out, the full derivative, also
for a row on a branch parallel to another requested row. The variables are
never differentiated (no kernel gradient is computed) nor baked into the
compiled program as constants, and the backward pass stops at the earliest
row differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: ``forward(x, leaf, call) -> (output, score tensor, captured rows, logits?)``: the adapter's
#: forward half of a gradient pass (``KerasAdapter._forward_for_gradients`` with its plan bound).
Forward = Callable[[Any, Callable[[Any, int], Any], Callable[[Any], Any]], tuple[Any, Any, dict[int, Any], bool]]


@dataclass(frozen=True)
class JaxGradientPass:
    """One compiled gradient pass for one plan and one input shape.

    Attributes:
        fn: ``fn(trainable, non_trainable, x, cotangent) -> (output, score,
            requested rows' outputs, gradients of sources)``, jitted.
        score_shape: the shape of the score's tensor, in the model's own layout.
        logits: the score is read before a final softmax.
    """

    fn: Any
    score_shape: tuple[int, ...]
    logits: bool

    def __call__(self, model: Any, x: np.ndarray, cot: np.ndarray) -> tuple[Any, Any, list[Any], list[Any]]:
        """Runs the pass on ``x`` (the model's layout, float32) with the cotangent ``cot`` (score's shape)."""
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        y, score, acts, found = self.fn(trainable, non_trainable, x, cot)
        return y, score, list(acts), list(found)


def compile_gradient_pass(model: Any, forward: Forward, rows: tuple[int, ...], sources: tuple[int, ...],
                          shape: tuple[int, ...]) -> JaxGradientPass:
    """Traces the model once abstractly (shapes of the score and of the rows differentiated) and
    returns the jitted pass; XLA compiles it on its first call.

    Args:
        model: the Keras model (JAX backend).
        forward: the forward half of the pass (see :data:`Forward`).
        rows: the rows whose outputs are returned.
        sources: the rows differentiated (0: the input).
        shape: the input batch's shape, in the model's layout.

    Raises:
        whatever the model raises on an input of ``shape`` (the caller words it).
    """
    import jax
    import jax.numpy as jnp
    import keras

    def call_with(trainable: list[Any], non_trainable: list[Any]) -> Callable[[Any], Any]:
        # what ``model.stateless_call`` does, through ``model(...)`` so that a ``call`` without a
        # ``training`` argument (a subclassed model's) is called as Keras calls it
        mapping = [*zip(model.trainable_variables, trainable), *zip(model.non_trainable_variables, non_trainable)]

        def call(x_t: Any) -> Any:
            with keras.StatelessScope(state_mapping=mapping):
                return model(x_t, training=False)
        return call

    perturbed = tuple(r for r in sources if r != 0)
    seen: dict[str, bool] = {}

    def probe(trainable: list[Any], non_trainable: list[Any], x: Any) -> tuple[Any, dict[str, Any]]:
        _, score, captured, seen["logits"] = forward(x, lambda t, row: t, call_with(trainable, non_trainable))
        return score, {str(r): captured[r] for r in perturbed}

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    score_spec, eps_specs = jax.eval_shape(probe, trainable, non_trainable, jax.ShapeDtypeStruct(shape, jnp.float32))
    wrt_x = 0 in sources

    def run(trainable: list[Any], non_trainable: list[Any], x: Any, cot: Any) -> tuple:
        call = call_with(trainable, non_trainable)

        def scored(x_t: Any, eps: dict[str, Any]) -> tuple[Any, tuple[Any, list[Any]]]:
            def leaf(t: Any, row: int) -> Any:
                return t + eps[str(row)] if str(row) in eps else t

            y, score, captured, _ = forward(x_t, leaf, call)
            return score, (y if y is not None else jnp.zeros((0,)), [captured[r] for r in rows])

        eps = {k: jnp.zeros(s.shape, s.dtype) for k, s in eps_specs.items()}
        if wrt_x:
            score, pullback, (y, acts) = jax.vjp(scored, x, eps, has_aux=True)
            g_x, g_eps = pullback(cot.astype(score.dtype))
        else:  # x is a constant: the backward pass stops at the earliest perturbed row
            score, pullback, (y, acts) = jax.vjp(lambda e: scored(x, e), eps, has_aux=True)
            (g_eps,) = pullback(cot.astype(score.dtype))
            g_x = None
        return y, score, acts, [g_x if r == 0 else g_eps[str(r)] for r in sources]

    return JaxGradientPass(fn=jax.jit(run), score_shape=tuple(int(d) for d in score_spec.shape),
                           logits=bool(seen.get("logits")))
