"""The tflite adapter (one module for now, moved here whole; it is split by concern next)."""

from __future__ import annotations

from .table import TFLiteAdapter, dequantize, op_kind, readable_name, tflite_final_activation

__all__ = ["TFLiteAdapter", "dequantize", "op_kind", "readable_name", "tflite_final_activation"]
