"""Shared fixtures. Keras tests (marker ``keras``) run once per Keras backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def keras():
    """Keras 3, on the backend that KERAS_BACKEND names (checked, so a run cannot silently mix them)."""
    import keras as k

    assert k.backend.backend() == os.environ["KERAS_BACKEND"]
    return k


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES
