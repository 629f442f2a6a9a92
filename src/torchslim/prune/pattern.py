"""N:M semi-structured sparsity: in every group of M consecutive weights along a row, N are kept.

A row is what one output computes from: a Linear weight's input dimension (the layout sparse tensor
cores and 2:4 kernels read), a convolution's flattened `in * kh * kw`. `"2:4"` keeps 2 of every 4
(50% sparsity), `"4:8"` 4 of 8. Any criterion's scores pick the kept ones: the N highest per group.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from torchslim.errors import UserError

_PATTERN = re.compile(r"^(\d{1,3}):(\d{1,3})$")


def parse(pattern: str) -> tuple[int, int]:
    """`"N:M"` -> (N, M), with 1 <= N < M <= 128; a UserError that says the form otherwise."""
    found = _PATTERN.match(pattern.strip()) if isinstance(pattern, str) else None
    n, m = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    if not found or not 1 <= n < m <= 128:
        raise UserError(
            f"SparsityConfig.pattern: {pattern!r} must be 'N:M' with 1 <= N < M <= 128, e.g. '2:4'"
        )
    return n, m


def sparsity_of(pattern: str) -> float:
    n, m = parse(pattern)
    return 1.0 - n / m


def rows(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as `[outputs, row]` (a view where it can be)."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)


def check_rows(name: str, tensor: torch.Tensor, m: int) -> None:
    length = rows(tensor).shape[1]
    if length % m:
        raise UserError(
            f"pattern N:{m}: layer {name!r} has rows of {length} weights, not a multiple of {m}; "
            "exclude it (exclude: [...]) or pick another M"
        )


def keep_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean keep-mask shaped like `scores`: the N highest of every M along each row (ties: first)."""
    flat = rows(scores)
    groups = flat.reshape(flat.shape[0], -1, m)
    # stable order on position so that equal scores keep the earlier weight
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(scores.shape)


def by_pattern(scores: Mapping[str, torch.Tensor], pattern: str) -> dict[str, torch.Tensor]:
    """Keep-masks of every layer at `pattern` (entries already pruned score -inf and go first)."""
    n, m = parse(pattern)
    for name, s in scores.items():
        check_rows(name, s, m)
    return {name: keep_nm(s, n, m) for name, s in scores.items()}


def is_nm(tensor: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M along each row has at most N nonzeros."""
    flat = rows(tensor)
    if flat.shape[1] % m:
        return False
    return bool(((flat != 0).reshape(flat.shape[0], -1, m).sum(-1) <= n).all())
