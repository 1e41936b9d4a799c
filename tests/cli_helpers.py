"""Helpers the CLI test modules share: run ``main`` in-process, and check a one-line error.

A plain module, not a test module: pytest's importlib mode does not let test
modules import each other, so those that need it put ``tests/`` on
``sys.path`` and import it by name, as ``torch_models`` is.
"""

from __future__ import annotations

import io

from convlens.cli import main


def call(*args: str) -> tuple[int, str, str]:
    """``convlens ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert a user mistake's answer: exit 2 and one ``convlens: error:`` line holding each needle; the line."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("convlens: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
