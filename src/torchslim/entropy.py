"""Entropy coding of stored tensors with zstd, applied after a tensor's structural encoding.

Pruning leaves runs of zeros and quantization leaves a few distinct byte values; a general-purpose
entropy coder captures both without a format of our own (Deep Compression used Huffman coding for
the same purpose). A part is stored compressed only when that saves at least `MIN_SAVING` of it,
so dense float weights, which barely compress, load at full speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MIN_SAVING = 0.05


def _level(nbytes: int) -> int:
    """Strong compression for small tensors, fast for large ones (level 19 costs ~1 s per MiB)."""
    return 19 if nbytes <= 1 << 20 else 9 if nbytes <= 8 << 20 else 3


def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """`(uint8 bytes, meta)` when zstd saves enough, else None."""
    import zstandard

    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    if len(raw) < 64:
        return None
    packed = zstandard.ZstdCompressor(level=_level(len(raw))).compress(raw)
    if len(packed) > (1 - MIN_SAVING) * len(raw):
        return None
    meta = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
    return torch.from_numpy(np.frombuffer(packed, dtype=np.uint8).copy()), meta


def from_bytes(raw: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """A tensor of `dtype` and `shape` over a copy of `raw` (decompressed bytes, checked by the caller)."""
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
