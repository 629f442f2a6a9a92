"""Functions that imported graphs call at run time where ONNX semantics differ from one torch call.

Shape arithmetic (Shape → Gather → Concat → Reshape) is kept as int64 tensors computed from the
input at run time, as in the ONNX graph, so an imported model takes any batch size or sequence length
its export allowed; the functions here turn such tensors back into the Python ints torch wants.
They are plain module-level functions: `fx.GraphModule` calls them by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

IntsLike = torch.Tensor | Sequence[int]


def ints(value: IntsLike) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def scalar(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def shape_of(x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


def size_of(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


def reshape(x: torch.Tensor, shape: IntsLike, allowzero: bool = False) -> torch.Tensor:
    dims = ints(shape)
    if not allowzero:  # a 0 copies the input's dim
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def expand(x: torch.Tensor, shape: IntsLike) -> torch.Tensor:
    """ONNX Expand broadcasts both ways: a target dim of 1 keeps the input's."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))


def tile(x: torch.Tensor, repeats: IntsLike) -> torch.Tensor:
    return x.repeat(ints(repeats))


def constant_of_shape(shape: IntsLike, value: torch.Tensor) -> torch.Tensor:
    return value.reshape(()).expand(ints(shape)).clone()


def arange(start: Any, limit: Any, delta: Any) -> torch.Tensor:
    dtype = start.dtype if isinstance(start, torch.Tensor) else None
    return torch.arange(scalar(start), scalar(limit), scalar(delta), dtype=dtype)


def gather(x: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Gather: `x.shape[:axis] + index.shape + x.shape[axis + 1:]`, negative indices from the end."""
    return x[(slice(None),) * (axis % x.dim()) + (index.long(),)]


def gather_elements(x: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    index = index.long()
    return torch.gather(x, axis, torch.where(index < 0, index + x.shape[axis], index))


def gather_nd(x: torch.Tensor, index: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    index = index.long()
    if batch_dims == 0:
        return x[tuple(index[..., i] for i in range(index.shape[-1]))]
    batch = [
        torch.arange(n).reshape([-1] + [1] * (index.dim() - 2 - i))
        for i, n in enumerate(x.shape[:batch_dims])
    ]
    return x[(*batch, *(index[..., i] for i in range(index.shape[-1])))]


def slice_(
    x: torch.Tensor, starts: IntsLike, ends: IntsLike, axes: IntsLike | None, steps: IntsLike | None
) -> torch.Tensor:
    """ONNX Slice with clamping and negative steps (torch slicing has no negative step)."""
    begin, end = ints(starts), ints(ends)
    axes_list = list(range(len(begin))) if axes is None else ints(axes)
    steps_list = [1] * len(begin) if steps is None else ints(steps)
    for axis, b, e, s in zip(axes_list, begin, end, steps_list, strict=True):
        axis %= x.dim()
        n = x.shape[axis]
        b, e = (b + n if b < 0 else b), (e + n if e < 0 else e)
        if s > 0:
            b, e = min(max(b, 0), n), min(max(e, 0), n)
        else:
            b, e = min(max(b, -1), n - 1), min(max(e, -1), n - 1)
        x = x.index_select(axis, torch.arange(b, e, s, dtype=torch.long))
    return x


def split(x: torch.Tensor, sizes: IntsLike | None, axis: int, count: int) -> tuple[torch.Tensor, ...]:
    """ONNX Split: explicit sizes, or `count` parts, the last one smaller when the dim does not divide."""
    if sizes is not None:
        return tuple(torch.split(x, ints(sizes), dim=axis))
    n = x.shape[axis]
    part = -(-n // count)
    return tuple(torch.split(x, [min(part, n - i * part) for i in range(count)], dim=axis))


def div(a: Any, b: Any) -> Any:
    """Integer tensors divide with truncation in ONNX; floats divide exactly."""
    if _integral(a) and _integral(b):
        return torch.div(torch.as_tensor(a), torch.as_tensor(b), rounding_mode="trunc")
    return torch.div(a, b)


def mod(a: torch.Tensor, b: Any, fmod: bool) -> torch.Tensor:
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


def _integral(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return not v.is_floating_point() and not v.is_complex()
    return isinstance(v, int)


def cumsum(x: torch.Tensor, axis: Any, exclusive: bool, reverse: bool) -> torch.Tensor:
    dim = int(scalar(axis))
    if reverse:
        x = x.flip(dim)
    out = torch.cumsum(x, dim).to(x.dtype)
    if exclusive:
        out = out - x
    return out.flip(dim) if reverse else out


def trilu(x: torch.Tensor, k: Any, upper: bool) -> torch.Tensor:
    return torch.triu(x, int(scalar(k))) if upper else torch.tril(x, int(scalar(k)))


def is_inf(x: torch.Tensor, negative: bool, positive: bool) -> torch.Tensor:
    return (torch.isneginf(x) & negative) | (torch.isposinf(x) & positive)


def nonzero(x: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(x).t()


def resize(
    x: torch.Tensor,
    sizes: IntsLike | None,
    scales: torch.Tensor | Sequence[float] | None,
    mode: str,
    align_corners: bool | None,
) -> torch.Tensor:
    """Resize of the spatial dims (batch and channel kept); "linear"/"cubic" take the rank's name."""
    if mode == "linear":
        mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    elif mode == "cubic":
        mode = "bicubic"
    if sizes is not None and len(ints(sizes)):
        return F.interpolate(x, size=ints(sizes)[2:], mode=mode, align_corners=align_corners)
    assert scales is not None
    values = scales.reshape(-1).tolist() if isinstance(scales, torch.Tensor) else list(scales)
    return F.interpolate(
        x,
        scale_factor=[float(v) for v in values[2:]],
        mode=mode,
        align_corners=align_corners,
        recompute_scale_factor=False,
    )


def rnn_sequence(out: torch.Tensor, directions: int) -> torch.Tensor:
    """torch's [seq, batch, directions * hidden] as ONNX's Y: [seq, directions, batch, hidden]."""
    seq, batch, width = out.shape
    return out.reshape(seq, batch, directions, width // directions).permute(0, 2, 1, 3)
