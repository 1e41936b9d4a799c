"""Runs convlens commands on damaged model files, one case after another, for test_corrupt_models.py.

Usage: ``python corrupt_worker.py CASES.json PROGRESS.log IMAGE OUT_DIR``

``CASES.json`` lists ``{"name", "path"}`` records. For each case the worker
appends ``START <name>`` to ``PROGRESS.log`` (unbuffered, so the line is there
even if a framework then kills the process natively), runs ``convlens layers``
and, when the model opens, ``convlens maps --layers all`` (a forward pass through every layer,
and the output written), and then
appends ``END <json>`` with what each command returned, what it wrote to
stderr, what reached the native stderr (file descriptor 2) and Python's
``sys.stderr`` besides, any exception that escaped ``main`` (a traceback the
user would see), and the seconds it took. The test reads the log: a case with
a START and no END is the one that crashed or hung the process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings


def _run(main, argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(argv, stdout=out, stderr=err)
        escaped = None
    except SystemExit as exc:  # argparse: not expected for these argument lists
        code, escaped = exc.code, f"SystemExit({exc.code})"
    except BaseException:  # noqa: BLE001 - anything past main() is what the user would see as a traceback
        code, escaped = None, traceback.format_exc(limit=6)
    return {"argv0": argv[0], "code": code, "stderr": err.getvalue(), "escaped": escaped}


def main() -> None:
    cases_file, progress_file, image, out_dir = sys.argv[1:5]
    with open(cases_file) as fh:
        cases = json.load(fh)
    from convlens.cli import main as convlens_main

    progress = os.open(progress_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for case in cases:
        os.write(progress, f"START {case['name']}\n".encode())
        with tempfile.TemporaryFile() as native:
            record = _case(convlens_main, case, native, image, out_dir)
        os.write(progress, ("END " + json.dumps(record) + "\n").encode())
    os.close(progress)


def _case(convlens_main, case: dict, native, image: str, out_dir: str) -> dict:
    """One case, with file descriptor 2 and ``sys.stderr`` caught for its duration."""
    saved_fd, saved_stderr = os.dup(2), sys.stderr
    python_err = io.StringIO()
    os.dup2(native.fileno(), 2)
    sys.stderr = python_err
    t0 = time.monotonic()
    results = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # every warning shows, as it would for a user
            results.append(_run(convlens_main, ["layers", case["path"]]))
            if results[0]["code"] == 0:
                out = os.path.join(out_dir, "maps")
                results.append(_run(convlens_main, ["maps", case["path"], image, "--out", out,
                                                    "--layers", "all"]))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        seconds = time.monotonic() - t0
        sys.stderr = saved_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
    native.seek(0)
    return {"name": case["name"], "results": results, "seconds": round(seconds, 3),
            "native_stderr": native.read(4000).decode("utf-8", "replace"),
            "python_stderr": python_err.getvalue()[:4000]}


if __name__ == "__main__":
    main()
