"""Shared fixtures. Keras tests (marker ``keras``) run once per Keras backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FIXTURES = Path(__file__).parent / "fixtures"

# Tests import TensorFlow directly (TFLite conversion); triton, which torch.export pulls in, crashes
# the process when loaded after TensorFlow, so it is loaded first, as convlens itself does.
from convlens.adapters.keras import load_triton_before_tensorflow  # noqa: E402

load_triton_before_tensorflow()


@pytest.fixture(scope="session")
def keras():
    """Keras 3, on the backend that KERAS_BACKEND names (checked, so a run cannot silently mix them)."""
    import keras as k

    assert k.backend.backend() == os.environ["KERAS_BACKEND"]
    return k


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES
