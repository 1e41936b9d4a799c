"""The final activation of a model, read from its graph: one walk back from the output for every framework.

Each adapter describes its own graph to :func:`walk_final_activation`: a
*producer lookup* (a tensor -> the operator or layer that made it, and the
tensors it read) and a table of *roles* (operator name -> what it does to the
values). The walk starts at the model's output and follows pass-through
operators (reshapes, flattens, identities, dropout, quantise/dequantise) back
to the operator that computes it:

* ``"softmax"``, ``"sigmoid"``, ``"linear"`` are the answers
  (:data:`convlens.core.predictions.FINAL_ACTIVATIONS`);
* ``"log_softmax"`` answers ``None``: log-probabilities are neither
  probabilities nor raw scores, so the reader of the output falls back to the
  numbers themselves (which are never in ``[0, 1]`` summing to 1, so they go
  through a softmax, and the softmax of log-probabilities is exactly the
  model's probabilities). The gradient passes still differentiate before a
  final log-softmax, as before a softmax (:data:`LOGIT_ROLES`).
* ``"bias"`` (ONNX's ``Add`` of a stored bias) answers ``"linear"`` when the
  one computed input is made by a linear operator, else ``None``.
* anything else (a ReLU, an operator without a role) answers ``None``: the
  graph does not say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["LOGIT_ROLES", "ROLES", "FinalActivation", "Producer", "walk_final_activation"]

T = TypeVar("T")

#: The roles an operator may have on the way back from the output.
ROLES = ("softmax", "log_softmax", "sigmoid", "linear", "pass", "bias")
#: Roles whose input holds the logits, which a class score is read from in a gradient pass.
LOGIT_ROLES = ("softmax", "log_softmax")
#: The answer of a walk that ends at an operator of each role.
_ANSWERS: dict[str, str | None] = {"softmax": "softmax", "sigmoid": "sigmoid", "linear": "linear",
                                   "log_softmax": None}


@dataclass(frozen=True)
class Producer(Generic[T]):
    """The operator (or layer) that made a tensor.

    Attributes:
        op: its name, looked up in the roles table (an ONNX ``op_type``, a
            TFLite op name, a torch module's class name, a word for a Keras layer).
        inputs: the tensors it reads; a pass-through operator passes on the
            first one's values, a bias ``Add`` names only its one computed input.
    """

    op: str
    inputs: Sequence[T] = ()


@dataclass(frozen=True)
class FinalActivation(Generic[T]):
    """What a walk found.

    Attributes:
        answer: ``"softmax"``, ``"sigmoid"``, ``"linear"`` or ``None`` (the
            graph does not say); an adapter's ``final_activation``.
        path: the tensors the walk visited, from the model's output back (the
            ONNX and TFLite adapters read the output's quantisation step from them).
    """

    answer: str | None
    path: tuple[T, ...]


def walk_final_activation(output: T | None, producer: Callable[[T], Producer[T] | None],
                          roles: Mapping[str, str], *, limit: int) -> FinalActivation[T]:
    """Walk back from a model's output to the operator that computes it (see the module docstring).

    Args:
        output: the model's (first) output tensor; ``None``: there is no graph.
        producer: the operator that made a tensor, ``None`` for a graph input
            or a tensor the graph does not know.
        roles: operator name -> one of :data:`ROLES`; names without a role end
            the walk with ``None``.
        limit: the most operators to visit (the graph's size: a bound, in case
            a graph loops through something unexpected).

    Returns:
        the answer and the tensors visited.
    """
    path: list[T] = []
    tensor = output
    for _ in range(limit):
        if tensor is None:
            break
        path.append(tensor)
        made = producer(tensor)
        if made is None:
            break
        role = roles.get(made.op)
        if role == "pass":
            tensor = made.inputs[0] if made.inputs else None
            continue
        if role == "bias":
            maker = producer(made.inputs[0]) if len(made.inputs) == 1 else None
            linear = maker is not None and roles.get(maker.op) == "linear"
            return FinalActivation("linear" if linear else None, tuple(path))
        return FinalActivation(_ANSWERS.get(role) if role else None, tuple(path))
    return FinalActivation(None, tuple(path))
