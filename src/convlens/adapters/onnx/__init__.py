"""The onnx adapter (one module for now, moved here whole; it is split by concern next)."""

from __future__ import annotations

from .table import OnnxAdapter, import_onnx

__all__ = ["OnnxAdapter", "import_onnx"]
