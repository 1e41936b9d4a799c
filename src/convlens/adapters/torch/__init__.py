"""The torch adapter (one module for now, moved here whole; it is split by concern next)."""

from __future__ import annotations

from .table import (
           HookedRow,
           TorchAdapter,
           hooked_gradients,
           import_torch,
           load_state_dict_file,
           open_torch_file,
           open_torchvision,
)

__all__ = ["HookedRow", "TorchAdapter", "hooked_gradients", "import_torch",
           "load_state_dict_file", "open_torch_file", "open_torchvision"]
