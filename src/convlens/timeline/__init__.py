"""Watching a network learn: recording checkpoints during training, and the timeline page.

The framework front ends are :class:`convlens.keras.LensCallback` and
:class:`convlens.torch.LensRecorder`; both drive the framework-free
:class:`Recorder`. :func:`save_timeline` (``convlens timeline RUN_DIR``)
draws a recorded run as one self-contained HTML page; :class:`Timeline` is a
recorded run as a result (``Timeline.load(run).save("timeline.html")``).
"""

from __future__ import annotations

from .page import build_timeline, read_run, save_timeline
from .recorder import Recorder, logger
from .run import Timeline

__all__ = ["Recorder", "Timeline", "build_timeline", "logger", "read_run", "save_timeline"]
