"""Compact storage of sparse tensors, registered in `torchslim.io.CODECS` (the smallest encoding wins).

- `sparse_bitmask`: one bit per entry saying nonzero (packed) + the nonzero values in order.
  About n/8 + nnz * itemsize bytes: best at moderate sparsity.
- `sparse_index`: gaps between nonzero positions as uint8 or uint16 codes + the values. A code
  c < M means "advance c + 1 and place the next value", the code M means "advance M, place nothing",
  so any gap is representable (Deep Compression's relative indices, with an escape instead of
  filler zeros). About nnz * (1 or 2 + itemsize) bytes: best at high sparsity.
- `sparse_nm`: N:M sparsity (at most N nonzeros in every M consecutive entries, as 2:4 / 4:8 pruning
  leaves): per group, which N positions hold the values, as its rank among the C(M, N) choices in
  ceil(log2 C(M, N)) bits (3 bits per 2:4 group, 7 per 4:8 group), + N values per group. About
  n * (bits / M / 8 + N / M * itemsize) bytes: below the bitmask's n / 8 for the index. Bool tensors
  with exactly N set per group (the masks of N:M pruning) store the ranks alone.
- `packed_bits`: a bool tensor (a mask buffer) as packed bits, n/8 bytes. `sparse_index` also takes
  bools, listing the positions of the rarer value, which wins for masks at high or low sparsity.

Decoding restores every value exactly (a stored -0.0 comes back as 0.0, which compares equal).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from torchslim import io
from torchslim.errors import ManifestError
from torchslim.storage import dtype_of

MIN_NUMEL = 16
Encoded = tuple[dict[str, torch.Tensor], dict[str, Any]] | None


def _meta(tensor: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}


def _dtype(meta: dict[str, Any]) -> torch.dtype:
    return dtype_of(meta["dtype"])


def _numel(meta: dict[str, Any]) -> int:
    return int(np.prod(meta["shape"], dtype=np.int64)) if meta["shape"] else 1


def _part(
    tensors: dict[str, torch.Tensor], suffix: str, dtype: torch.dtype | None, numel: int | None
) -> torch.Tensor:
    """The one part ending in `suffix`, refused unless it is 1-D of `dtype` and `numel` elements."""
    found = _parts(tensors, suffix)
    if len(found) != 1:
        raise ManifestError(f"encoding needs exactly one part ending in {suffix!r}, found {len(found)}")
    part = found[0]
    if (
        part.dim() != 1
        or (dtype is not None and part.dtype != dtype)
        or (numel is not None and part.numel() != numel)
    ):
        raise ManifestError(
            f"corrupted: part {suffix!r} is {part.dtype} {list(part.shape)}, expected {dtype} [{numel}]"
        )
    return part


def _pack(flags: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(flags.flatten().numpy(), bitorder="little"))


def _unpack(bits: torch.Tensor, n: int) -> np.ndarray:
    return np.unpackbits(bits.numpy(), count=n, bitorder="little").astype(bool)


class SparseBitmask:
    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        if tensor.dtype == torch.bool or tensor.numel() < MIN_NUMEL or tensor.is_complex():
            return None
        flat = tensor.detach().cpu().flatten()
        nonzero = flat != 0
        nnz = int(nonzero.sum())
        if (tensor.numel() + 7) // 8 + nnz * tensor.element_size() >= tensor.numel() * tensor.element_size():
            return None
        return {f"{name}::bits": _pack(nonzero), f"{name}::values": flat[nonzero].clone()}, _meta(tensor)

    def decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        n, dtype = _numel(meta), _dtype(meta)
        flags = _unpack(_part(tensors, "::bits", torch.uint8, (n + 7) // 8), n)
        values = _part(tensors, "::values", dtype, int(flags.sum()))
        out = torch.zeros(n, dtype=dtype)
        out[torch.from_numpy(flags)] = values
        return out.view(meta["shape"])


def _gap_codes(positions: torch.Tensor, limit: int) -> torch.Tensor:
    """Codes for ascending `positions` with escape code `limit` (see module docstring), as int64."""
    advance = torch.diff(positions, prepend=torch.tensor([-1]))
    escapes = (advance - 1) // limit
    codes = torch.full((int(escapes.sum()) + positions.numel(),), limit, dtype=torch.int64)
    ends = torch.cumsum(escapes + 1, 0) - 1
    codes[ends] = advance - escapes * limit - 1
    return codes


def _positions(codes: torch.Tensor, limit: int) -> torch.Tensor:
    codes = codes.to(torch.int64)
    escape = codes == limit
    pos = torch.cumsum(torch.where(escape, limit, codes + 1), 0) - 1
    return pos[~escape]


_CODE_TYPES = ((np.uint8, 255), (np.uint16, 65535))


class SparseIndex:
    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        if tensor.numel() < MIN_NUMEL or tensor.is_complex():
            return None
        flat = tensor.detach().cpu().flatten()
        meta = _meta(tensor)
        if tensor.dtype == torch.bool:
            meta["invert"] = bool(flat.sum() * 2 > flat.numel())  # list the rarer value's positions
            marked, value_bytes = flat != meta["invert"], 0
        else:
            marked, value_bytes = flat != 0, tensor.element_size()
        positions = torch.nonzero(marked).flatten()
        best: tuple[int, np.ndarray, int] | None = None
        for np_type, limit in _CODE_TYPES:
            codes = _gap_codes(positions, limit)
            size = codes.numel() * np.dtype(np_type).itemsize + positions.numel() * value_bytes
            if best is None or size < best[0]:
                best = (size, codes.numpy().astype(np_type), limit)
        assert best is not None
        if best[0] >= tensor.numel() * tensor.element_size():
            return None
        out = {f"{name}::index": torch.from_numpy(best[1])}
        if value_bytes:
            out[f"{name}::values"] = flat[marked].clone()
        return out, {**meta, "limit": best[2]}

    def decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        n, dtype, limit = _numel(meta), _dtype(meta), int(meta["limit"])
        code_type = torch.uint8 if limit == 255 else torch.uint16
        index = _part(tensors, "::index", code_type, None)
        if index.numel() > n:  # each code advances at least one position
            raise ManifestError(f"corrupted: {index.numel()} index codes for a tensor of {n} elements")
        positions = _positions(index, limit)
        if positions.numel() and int(positions[-1]) >= n:
            raise ManifestError(f"corrupted: index codes point past the end of a tensor of {n} elements")
        if dtype == torch.bool:
            out = torch.full((n,), bool(meta.get("invert", False)))
            out[positions] = not meta.get("invert", False)
        else:
            out = torch.zeros(n, dtype=dtype)
            out[positions] = _part(tensors, "::values", dtype, positions.numel())
        return out.view(meta["shape"])


class PackedBits:
    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        if tensor.dtype != torch.bool or tensor.numel() < MIN_NUMEL:
            return None
        return {f"{name}::bits": _pack(tensor.detach().cpu())}, _meta(tensor)

    def decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        n = _numel(meta)
        if meta["dtype"] != "bool":
            raise ManifestError(f"packed_bits stores bool tensors, not {meta['dtype']}")
        bits = _part(tensors, "::bits", torch.uint8, (n + 7) // 8)
        return torch.from_numpy(_unpack(bits, n)).view(meta["shape"])


def _parts(tensors: dict[str, torch.Tensor], suffix: str) -> list[torch.Tensor]:
    return [t for k, t in tensors.items() if k.endswith(suffix)]


NM_PATTERNS = ((2, 4), (1, 4), (4, 8), (2, 8), (1, 8))
"""Layouts `sparse_nm` tries; the smallest that holds wins (and `_smallest_encoding` compares codecs)."""


def _nm_parts(
    name: str, flat: torch.Tensor, dtype: torch.dtype, n: int, m: int
) -> tuple[dict[str, torch.Tensor], int, int] | None:
    """Parts of `flat` in the n:m layout, or None when some group breaks it."""
    groups = flat.reshape(-1, m)
    marked = groups if dtype == torch.bool else groups != 0
    count = marked.sum(1)
    if bool((count != n).any()) if dtype == torch.bool else bool((count > n).any()):
        return None
    # a group with fewer than n nonzeros also lists zeros: nonzeros first, then by position
    order = torch.argsort(marked.to(torch.int8), dim=1, descending=True, stable=True)[:, :n]
    chosen = torch.zeros_like(marked).scatter_(1, order, True)
    ranks = _rank_table(n, m)[(chosen.long() << torch.arange(m)).sum(1)]
    out = {f"{name}::ranks": _pack_codes(ranks, _rank_bits(n, m))}
    if dtype != torch.bool:
        out[f"{name}::values"] = groups[chosen].clone()
    return out, n, m


def _combinations(n: int, m: int) -> torch.Tensor:
    """Every choice of `n` positions of `m`, as bool rows `[C(m, n), m]`, in lexicographic order."""
    rows = [[j in c for j in range(m)] for c in itertools.combinations(range(m), n)]
    return torch.tensor(rows, dtype=torch.bool)


def _rank_table(n: int, m: int) -> torch.Tensor:
    """Bit pattern of a group's chosen positions (sum of 1 << j) -> its rank; -1 where not n bits."""
    table = torch.full((1 << m,), -1, dtype=torch.int64)
    combos = _combinations(n, m)
    codes = (combos.long() << torch.arange(m)).sum(1)
    table[codes] = torch.arange(combos.shape[0])
    return table


def _rank_bits(n: int, m: int) -> int:
    return max(1, math.ceil(math.log2(math.comb(m, n))))


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative ints < 2**bits (bits <= 8) as a packed little-endian bit stream."""
    low = np.unpackbits(codes.to(torch.uint8).numpy()[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(low.flatten(), bitorder="little"))


def _unpack_codes(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    flat = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    return torch.from_numpy(np.packbits(flat, axis=1, bitorder="little")[:, 0].astype(np.int64))


class SparseNM:
    def encode(self, name: str, tensor: torch.Tensor) -> Encoded:
        if tensor.numel() < MIN_NUMEL or tensor.is_complex():
            return None
        flat = tensor.detach().cpu().flatten()
        found = [_nm_parts(name, flat, tensor.dtype, n, m) for n, m in NM_PATTERNS if flat.numel() % m == 0]
        options = [(parts, {**_meta(tensor), "n": n, "m": m}) for parts, n, m in filter(None, found)]
        if not options:
            return None
        return min(options, key=lambda o: sum(t.numel() * t.element_size() for t in o[0].values()))

    def decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        total, dtype, n, m = _numel(meta), _dtype(meta), int(meta["n"]), int(meta["m"])
        if n >= m or total % m:
            raise ManifestError(f"corrupted: sparse_nm {n}:{m} for a tensor of {total} elements")
        count, bits = total // m, _rank_bits(n, m)
        ranks = _unpack_codes(_part(tensors, "::ranks", torch.uint8, (count * bits + 7) // 8), count, bits)
        combos = _combinations(n, m)
        if count and int(ranks.max()) >= combos.shape[0]:
            raise ManifestError(f"corrupted: sparse_nm rank {int(ranks.max())} of {combos.shape[0]} choices")
        chosen = combos[ranks]
        if dtype == torch.bool:
            return chosen.reshape(meta["shape"])
        out = torch.zeros(count, m, dtype=dtype)
        out[chosen] = _part(tensors, "::values", dtype, count * n)
        return out.reshape(meta["shape"])


io.CODECS.register("sparse_bitmask", SparseBitmask())
io.CODECS.register("sparse_nm", SparseNM())
io.CODECS.register("sparse_index", SparseIndex())
io.CODECS.register("packed_bits", PackedBits())
