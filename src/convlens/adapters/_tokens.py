"""Token outputs as spatial maps: ViT/DeiT class-token layouts restored to their patch grid.

A vision transformer cuts the image into patches with one strided convolution
(torchvision's ``conv_proj``, timm's ``patch_embed.proj``), flattens the
``(h, w)`` grid of patches into ``h * w`` tokens and puts ``p`` extra tokens in
front (ViT's class token, DeiT's class and distillation tokens, register
tokens). Its encoder outputs are ``(N, p + h * w, C)``: maps in disguise.

This module finds those rows from the patch embedding's geometry and converts
between the two layouts; the adapters call it at one point each (where a row's
layout is decided) and every view downstream sees the canonical ``(N, h, w, C)``
map. The ``p`` prefix tokens are set apart: they hold no place on the grid.
Swin-style stages are ``(N, H, W, C)`` already and need nothing from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The most tokens a model puts before its patch tokens (class, distillation and register tokens).
MAX_PREFIX = 8

#: Module types whose every output token attends to every input token: at a token row, the receptive
#: field is global. Windowed attention (Swin's ``ShiftedWindowAttention``) is not among them.
GLOBAL_ATTENTION_TYPES = frozenset({"MultiheadAttention", "NonDynamicallyQuantizableMultiheadAttention",
                                    "Attention", "SelfAttention", "MultiHeadAttention", "MultiHeadSelfAttention",
                                    "ViTSelfAttention", "ViTAttention", "DeiTAttention", "DeiTSelfAttention",
                                    "EncoderBlock", "Encoder", "Block"})


@dataclass(frozen=True)
class TokenGrid:
    """Where a token tensor's patch tokens sit: ``prefix`` tokens first, then an ``(h, w)`` grid, row-major.

    Truthy, like the ``channels_last`` flag it stands in for: the token tensor
    holds its channels last.

    Attributes:
        prefix: how many tokens come before the grid (1 for ViT's class token).
        grid: ``(h, w)``, the patch grid.
    """

    prefix: int
    grid: tuple[int, int]

    def __bool__(self) -> bool:
        return True

    def map_shape(self, channels: int) -> tuple[int, int, int]:
        """The canonical map shape ``(h, w, C)`` of one image's tokens."""
        return (self.grid[0], self.grid[1], int(channels))

    def to_grid(self, tokens: Any) -> Any:
        """``(N, p + h * w, C)`` tokens (a torch tensor or numpy array) as an ``(N, h, w, C)`` map.

        The prefix tokens are dropped; a torch tensor stays differentiable.
        """
        n, channels = tokens.shape[0], tokens.shape[-1]
        return tokens[:, self.prefix:].reshape(n, self.grid[0], self.grid[1], channels)

    def to_tokens(self, grid: np.ndarray) -> np.ndarray:
        """An ``(N, h, w, C)`` map (a cotangent) as ``(N, p + h * w, C)`` tokens, zeros at the prefix."""
        n, channels = grid.shape[0], grid.shape[-1]
        out = np.zeros((n, self.prefix + self.grid[0] * self.grid[1], channels), dtype=grid.dtype)
        out[:, self.prefix:] = grid.reshape(n, -1, channels)
        return out

    def as_extra(self) -> dict[str, Any]:
        """The layer table's ``extra["tokens"]`` entry."""
        return {"prefix": self.prefix, "grid": self.grid}


#: How a captured tensor holds its values: channels last (``True``), channels first, or tokens on a grid.
Layout = bool | TokenGrid


def token_grid(shape: Sequence[int], channels_last: bool, patch_grid: tuple[int, int] | None) -> TokenGrid | None:
    """The grid of a row's token output, or ``None`` when the output is not tokens of ``patch_grid``.

    Args:
        shape: the output's canonical shape for one image (``(L, C)`` for tokens).
        channels_last: the tensor holds its channels last (``(N, L, C)``, not ``(N, C, L)``).
        patch_grid: ``(h, w)``, the spatial shape of the latest patch embedding (the latest
            convolution's output) before this row; ``None``: none yet.
    """
    if patch_grid is None or not channels_last or len(shape) != 2:
        return None
    h, w = patch_grid
    if h * w < 2:
        return None
    prefix = int(shape[0]) - h * w
    if not 0 <= prefix <= MAX_PREFIX:
        return None
    return TokenGrid(prefix, (int(h), int(w)))


def find_token_grids(rows: Sequence[tuple[Sequence[int], Layout, bool]]) -> dict[int, TokenGrid]:
    """The rows whose outputs are tokens of a patch grid, by position.

    Args:
        rows: for each row in execution order, ``(canonical shape, channels_last, is_conv)``.
            A convolution with a spatial ``(h, w, C)`` output sets the patch grid for the rows after it.

    Returns:
        ``{position: TokenGrid}`` for each token row.
    """
    found: dict[int, TokenGrid] = {}
    patch: tuple[int, int] | None = None
    for pos, (shape, last, is_conv) in enumerate(rows):
        if is_conv and len(shape) == 3:
            patch = (int(shape[0]), int(shape[1]))
            continue
        grid = token_grid(shape, bool(last), patch)
        if grid is not None:
            found[pos] = grid
    return found


def grid_free(free: set[int]) -> set[int]:
    """A token row's free axes ``{0: L, 1: C}`` as free axes of its ``(h, w, C)`` map."""
    return ({0, 1} if 0 in free else set()) | ({2} if 1 in free else set())


def mark_token_row(extra: dict[str, Any], grid: TokenGrid) -> None:
    """Record ``grid`` in a layer table row's ``extra`` (see the shared interface in the module docstring)."""
    extra["tokens"] = grid.as_extra()


def tokens_cotangent(cotangent: np.ndarray, layout: Layout) -> np.ndarray:
    """A canonical cotangent in the layout of the tensor it multiplies: tokens for a token row."""
    return layout.to_tokens(cotangent) if isinstance(layout, TokenGrid) else cotangent


def declared_image_size(module: Any) -> tuple[int, int] | None:
    """``(H, W)`` a transformer declares it takes (torchvision's ``image_size``, timm's
    ``patch_embed.img_size``), else ``None``: its position embedding fixes the patch grid."""
    for owner, attr in ((module, "image_size"), (getattr(module, "patch_embed", None), "img_size")):
        size = getattr(owner, attr, None) if owner is not None else None
        if isinstance(size, int) and size > 0:
            return (size, size)
        if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(d, int) and d > 0 for d in size):
            return (int(size[0]), int(size[1]))
    return None


def attends_in_windows(module: Any, type_name: str, shape: Sequence[int]) -> bool:
    """Whether a module is windowed attention (Swin's) whose windows do not cover its ``(H, W, C)`` grid.

    Each output then sees its (shifted) window of the input's units, which the
    layer table does not model: its receptive field is shown as unknown rather
    than as the patch's field it would otherwise inherit.
    """
    window = getattr(module, "window_size", None)
    return ("WindowAttention" in type_name and isinstance(window, (list, tuple)) and len(window) == 2
            and len(shape) == 3 and not all(int(w) >= int(d) for w, d in zip(window, shape[:2])))


def attends_globally(module: Any, type_name: str, shape: Sequence[int], tokens: bool) -> bool:
    """Whether every output of an attention module sees the whole input: global self-attention on a
    token row, or windowed attention (Swin's) whose window covers the whole ``(H, W, C)`` grid."""
    if type_name in GLOBAL_ATTENTION_TYPES and tokens:
        return True
    window = getattr(module, "window_size", None)
    if "WindowAttention" in type_name and isinstance(window, (list, tuple)) and len(window) == 2 \
            and len(shape) == 3:
        return all(int(w) >= int(d) for w, d in zip(window, shape[:2]))
    return False
