"""TensorBoard event files written without TensorFlow and read back by TensorBoard's own reader."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens import OutputError
from convlens.render.png import encode_png
from convlens.timeline.events import EventWriter

SRC = Path(__file__).resolve().parents[2] / "src"


def _read(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(logdir), size_guidance={IMAGES: 0, SCALARS: 0})
    acc.Reload()
    return acc


def test_scalars_and_pictures_round_trip(tmp_path):
    w = EventWriter(tmp_path / "tb")
    gray = encode_png(np.arange(12, dtype=np.uint8).reshape(3, 4))
    rgb = encode_png(np.full((2, 5, 3), 7, np.uint8))
    indexed = encode_png(np.array([[0, 1]], np.uint8), palette=np.array([[0, 0, 0], [255, 0, 0]], np.uint8))
    w.scalars(3, {"dead_fraction/conv1": 0.25, "weight_change/conv1": float("nan"), "skip": None})
    w.images(3, {"maps/conv1/a": gray, "maps/conv1/b": rgb, "maps/conv1/c": indexed})
    w.scalars(7, {"dead_fraction/conv1": 0.75})
    w.close()
    w.close()  # idempotent
    acc = _read(tmp_path / "tb")
    assert acc.Tags()["scalars"] == ["dead_fraction/conv1"]  # NaN and None are left out
    assert [(e.step, e.value) for e in acc.Scalars("dead_fraction/conv1")] == [(3, 0.25), (7, 0.75)]
    for tag, png, size in (("maps/conv1/a", gray, (4, 3)), ("maps/conv1/b", rgb, (5, 2)),
                           ("maps/conv1/c", indexed, (2, 1))):
        (event,) = acc.Images(tag)
        assert event.step == 3 and (event.width, event.height) == size and event.encoded_image_string == png
        assert Image.open(io.BytesIO(event.encoded_image_string)).size == size


def test_an_unwritable_folder_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError) as e:
        EventWriter(tmp_path / "file" / "tb")
    assert "tensorboard=False" in str(e.value) and "\n" not in str(e.value)


def test_writing_events_imports_no_tensorflow(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(SRC)!r})\n"
            "from convlens.timeline.events import EventWriter\n"
            f"w = EventWriter({str(tmp_path)!r}); w.scalars(1, {{'a': 1.0}}); w.close()\n"
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
