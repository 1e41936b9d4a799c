"""Keeping native (C/C++) log lines off the terminal for a block of code."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["native_stderr_silenced"]


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 on /dev/null for the block.

    C++ libraries (TensorFlow's oneDNN and CUDA probing, Ray's core worker) write
    to the file descriptor, bypassing ``sys.stderr`` and Python's logging. Only
    the descriptor is redirected, only for the block: Python exceptions still
    propagate and are reported after it is restored.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (some notebook kernels)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
