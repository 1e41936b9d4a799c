"""Keras's name-scope stack kept as it was around a TensorFlow trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def name_scopes_kept() -> Iterator[None]:
    """Leave Keras's (thread-local) name-scope stack as it was, also when a trace fails half-way.

    Keras's TensorFlow ``name_scope`` pushes a layer's name onto its stack and
    then enters ``tf.name_scope``, which rejects names such as
    ``<img src=x>`` inside a traced function: the exception skips the pop, and
    every variable that the process creates afterwards (an optimizer's slots
    when another model is trained, say) is named under that layer, which
    Keras then refuses ("... is not a valid scope name").
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - a Keras without this module has no such stack
        yield
        return
    before = global_state.get_global_attribute("name_scope_stack")
    saved = list(before) if before is not None else []
    try:
        yield
    finally:
        stack = global_state.get_global_attribute("name_scope_stack")
        if stack is not None:
            stack[:] = saved
