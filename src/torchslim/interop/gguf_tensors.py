"""Tensors of the `gguf` output: our quantized integers in GGUF's own block types, floats as F32/F16.

A quantized layer keeps its integers; only the container changes. GGUF blocks hold 32 consecutive
inputs of one row with one fp16 scale `d` (Q4_1 adds an fp16 offset `m`), so a grid maps onto a block
type whenever every block of 32 lies inside one of our groups (group size, or a row for per_channel,
a multiple of 32):
- symmetric, 4 bits or fewer -> Q4_0 (`(n - 8) * d`, n = q + 8: our [-7, 7] grid, or a narrower one);
- symmetric 5-8 bits, or asymmetric 5-7 bits (q - zero fits int8) -> Q8_0 (`n * d`, n = q - zero);
- asymmetric, 4 bits or fewer -> Q4_1 (`n * d + m`, n = q, m = -zero * d).
The integers are written exactly; the scale is rounded once to fp16 (GGUF has no other scale type),
so dequantized values equal ours exactly when our scales are fp16 values (and within 2**-11 of each
scale otherwise); `m` is one more fp16 rounding. Anything else we quantized (asymmetric 8-bit,
SmoothQuant-scaled weights, codebooks, rows not a multiple of 32) is written dequantized as F32 with a
note: exact values, float size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchslim.registry import Registry

BLOCK = 32
FP16_MAX = 65504.0


@dataclass(frozen=True)
class Grid:
    """A quantized 2-D weight: integers [rows, cols], one scale (and zero point) per row and group."""

    q: torch.Tensor  # int32 [rows, cols]
    scale: torch.Tensor  # float32 [rows, groups]
    zero: torch.Tensor | None  # int32 [rows, groups]; None for symmetric grids
    bits: int
    group: int  # inputs per scale

    def permuted(self, rows: torch.Tensor) -> Grid:
        zero = None if self.zero is None else self.zero[rows]
        return Grid(self.q[rows], self.scale[rows], zero, self.bits, self.group)


def quantized_grid(module: Any) -> tuple[Grid | None, str]:
    """The integers and scales of a quantized layer's weight, or (None, why it has no exact block type).

    The only function that reads quant/'s storage (`int_weight`, `w_scale`, `w_zero`, `spec`): a new
    storage layout changes this function alone."""
    spec = getattr(module, "spec", None)
    if spec is None or not callable(getattr(module, "int_weight", None)):
        return None, f"{type(module).__name__} is not an integer grid"
    if hasattr(module, "smooth"):
        return None, "SmoothQuant scales are folded into its integers (no GGUF type holds them)"
    q = module.int_weight()
    rows = q.shape[0]
    q = q.reshape(rows, -1)
    cols = q.shape[1]
    scale = module.w_scale.reshape(module.w_scale.shape[0], -1).expand(rows, -1)
    group = cols // scale.shape[1]
    zero = (
        None if spec.symmetric else module.w_zero.to(torch.int32).reshape(scale.shape[0], -1).expand_as(scale)
    )
    if group % BLOCK:
        return None, f"groups of {group} inputs are not whole GGUF blocks of {BLOCK}"
    if float(scale.max()) > FP16_MAX:
        return None, f"a scale above {FP16_MAX:g} does not fit fp16"
    return Grid(q, scale.float().contiguous(), zero, spec.bits, group), ""


def _fp16(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float16).numpy()


def _blocks(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] -> [rows, cols // 32, 32]."""
    return values.reshape(values.shape[0], -1, BLOCK)


def _block_scale(grid: Grid, x: torch.Tensor) -> torch.Tensor:
    """Per-group values [rows, groups] repeated to one per block [rows, cols // 32, 1]."""
    return x.repeat_interleave(grid.group // BLOCK, dim=1).unsqueeze(-1)


def _nibbles(n: torch.Tensor) -> np.ndarray:
    """Blocks of 32 values in 0..15 -> 16 bytes each: element j in the low nibble of byte j, j+16 high."""
    u = n.to(torch.uint8)
    return (u[..., : BLOCK // 2] | (u[..., BLOCK // 2 :] << 4)).numpy()


def _raw(parts: list[np.ndarray], rows: int) -> np.ndarray:
    """Concatenate per-block fields (each [rows, nblocks, k] bytes) into [rows, bytes per row] uint8."""
    joined = np.concatenate([np.ascontiguousarray(p).view(np.uint8) for p in parts], axis=-1)
    return joined.reshape(rows, -1)


def q4_0(grid: Grid) -> np.ndarray:
    d = _fp16(_block_scale(grid, grid.scale))
    return _raw([d, _nibbles(_blocks(grid.q + 8))], grid.q.shape[0])


def q8_0(grid: Grid) -> np.ndarray:
    n = grid.q if grid.zero is None else grid.q - _expand(grid, grid.zero)
    d = _fp16(_block_scale(grid, grid.scale))
    return _raw([d, _blocks(n).to(torch.int8).numpy()], grid.q.shape[0])


def q4_1(grid: Grid) -> np.ndarray:
    assert grid.zero is not None
    d16 = _block_scale(grid, grid.scale).to(torch.float16)
    m = (-_block_scale(grid, grid.zero.float()) * d16.float()).to(torch.float16)
    return _raw([d16.numpy(), m.numpy(), _nibbles(_blocks(grid.q))], grid.q.shape[0])


def _expand(grid: Grid, x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(grid.group, dim=1)


@dataclass(frozen=True)
class BlockType:
    name: str  # GGMLQuantizationType member
    fits: Callable[[Grid], bool]
    encode: Callable[[Grid], np.ndarray]


BLOCK_TYPES: Registry[BlockType] = Registry("GGUF block type")
"""Tried in name order (Q4_0, Q4_1, Q8_0: smallest first); the first that holds a grid wins."""
BLOCK_TYPES.register("Q4_0", BlockType("Q4_0", lambda g: g.zero is None and g.bits <= 4, q4_0))
BLOCK_TYPES.register("Q4_1", BlockType("Q4_1", lambda g: g.zero is not None and g.bits <= 4, q4_1))
BLOCK_TYPES.register(
    "Q8_0", BlockType("Q8_0", lambda g: g.bits <= 8 if g.zero is None else g.bits <= 7, q8_0)
)


def block_type(grid: Grid) -> BlockType | None:
    return next((BLOCK_TYPES.get(n) for n in BLOCK_TYPES.names() if BLOCK_TYPES.get(n).fits(grid)), None)


def float_array(value: torch.Tensor, float_type: str) -> np.ndarray:
    """Unquantized tensors: 1-D ones (norms, biases) always F32, as llama.cpp's own files; others
    `float_type` (f32 keeps our values exactly, f16 halves the file)."""
    value = value.detach().float().contiguous()
    if float_type == "f16" and value.dim() > 1:
        return value.to(torch.float16).numpy()
    return value.numpy()


def rope_rows(rows: int, heads: int) -> torch.Tensor:
    """Row order llama.cpp expects for Llama's q/k projections: per head, transformers' halves
    (rotate_half) become interleaved pairs, as convert_hf_to_gguf.py's `permute`."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, 2, half).transpose(1, 2).reshape(-1)
