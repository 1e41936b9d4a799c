"""convlens's own exceptions.

Every user mistake raises a subclass of :class:`ConvlensError` whose message
says what went wrong and what to do next. The CLI prints ``str(error)`` on one
line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "BadArgument",
    "BadImage",
    "BadModel",
    "ConvlensError",
    "LayerNotFound",
    "MissingDependency",
    "OutOfMemory",
    "OutputError",
    "UnsafeModel",
    "UnsupportedModel",
    "WeightsUnavailable",
]


class ConvlensError(Exception):
    """Base class of every error convlens raises on purpose."""


class BadArgument(ConvlensError, ValueError):
    """An option has a value convlens cannot use (unknown colormap, bad range...)."""


class BadImage(ConvlensError):
    """An image is missing, unreadable, truncated, too large or of an unknown kind."""


class BadModel(ConvlensError):
    """A model file is missing, corrupt, or not a model convlens can read."""


class UnsupportedModel(ConvlensError):
    """The model cannot do what was asked (no conv layer, unbuilt, no kernels...)."""


class UnsafeModel(ConvlensError):
    """Loading the model would run code from the file; needs ``trust=True`` / ``--trust``."""


class LayerNotFound(ConvlensError):
    """A layer selection names a layer the model does not have."""


class WeightsUnavailable(ConvlensError):
    """Pretrained weights could not be downloaded or read."""


class OutputError(ConvlensError):
    """The output location cannot be created or written."""


class MissingDependency(ConvlensError, ImportError):
    """An optional framework is not installed; the message names the pip extra."""


class OutOfMemory(ConvlensError, MemoryError):
    """The device (a GPU) ran out of memory during a pass; a smaller batch usually fits."""
