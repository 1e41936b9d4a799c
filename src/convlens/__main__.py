"""``python -m convlens``."""

from .cli import run

run()
