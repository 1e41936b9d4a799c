"""TensorBoard event files, written with TensorBoard's own record writer and protos.

Only the ``tensorboard`` package is needed, never TensorFlow: the events are
``tensorboard.compat.proto`` protocol buffers framed by
``tensorboard.summary.writer.record_writer.RecordWriter`` (the TFRecord
framing with masked CRC-32C that TensorBoard reads). TensorBoard's
``EventFileWriter`` is not used because it opens files through
``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed:
seconds of start-up in a PyTorch process, and the native-library clash
described in :func:`convlens.adapters.keras.load_triton_before_tensorflow`.

Scalars are written as ``simple_value`` and pictures as PNG ``Summary.Image``,
as ``torch.utils.tensorboard.SummaryWriter`` writes them, so ``tensorboard
--logdir`` shows them under its Scalars and Images tabs.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from .._errors import MissingDependency, OutputError

__all__ = ["EventWriter", "import_tensorboard"]

_COUNTER = itertools.count()


def import_tensorboard() -> tuple[Any, Any, Any]:
    """``(RecordWriter, event_pb2, summary_pb2)`` from the tensorboard package, or a clear error."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as exc:
        raise MissingDependency(f"TensorBoard is not installed ({exc}); run: pip install "
                                "'convlens[training]', or pass tensorboard=False") from None
    return RecordWriter, event_pb2, summary_pb2


class EventWriter:
    """One TensorBoard event file in ``logdir``.

    Not thread-safe: one thread writes (convlens's recording worker).

    Args:
        logdir: the folder (created); ``tensorboard --logdir`` on it or on
            any parent shows the events.

    Raises:
        MissingDependency: the tensorboard package is missing.
        OutputError: the folder or the file cannot be created.
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        record_writer, self._event_pb2, self._summary_pb2 = import_tensorboard()
        self.logdir = Path(logdir)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_COUNTER)}.convlens")
        self.path = self.logdir / name
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "wb")  # noqa: SIM115 - kept open for the run; closed by close()
        except OSError as e:
            raise OutputError(f"cannot write TensorBoard events to {self.logdir}: "
                              f"{e.strerror or e}; choose another folder or pass tensorboard=False") from e
        self._writer = record_writer(handle)
        self._write(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, event: Any) -> None:
        try:
            self._writer.write(event.SerializeToString())
        except OSError as e:
            raise OutputError(f"cannot write TensorBoard events to {self.path}: {e.strerror or e}") from e

    def _summary(self, step: int, values: list[Any], wall_time: float | None) -> None:
        if values:
            summary = self._summary_pb2.Summary(value=values)
            self._write(self._event_pb2.Event(wall_time=wall_time or time.time(), step=int(step),
                                              summary=summary))

    def scalars(self, step: int, values: dict[str, float], *, wall_time: float | None = None) -> None:
        """One event holding a scalar per tag (non-finite values are skipped)."""
        v = self._summary_pb2.Summary.Value
        self._summary(step, [v(tag=tag, simple_value=float(x)) for tag, x in values.items()
                             if x is not None and math.isfinite(x)], wall_time)

    def images(self, step: int, pictures: dict[str, bytes], *, wall_time: float | None = None) -> None:
        """One event holding a PNG picture per tag (the PNG's own size is read from its header)."""
        s = self._summary_pb2.Summary
        values = []
        for tag, png in pictures.items():
            width, height = struct.unpack(">II", png[16:24])  # IHDR: the first chunk of every PNG
            colorspace = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(png[25], 3)
            values.append(s.Value(tag=tag, image=s.Image(height=height, width=width, colorspace=colorspace,
                                                          encoded_image_string=png)))
        self._summary(step, values, wall_time)

    def flush(self) -> None:
        try:
            self._writer.flush()
        except OSError as e:
            raise OutputError(f"cannot write TensorBoard events to {self.path}: {e.strerror or e}") from e

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if not self._writer.closed:
            try:
                self._writer.flush()
            finally:
                self._writer.close()
