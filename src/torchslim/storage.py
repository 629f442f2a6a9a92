"""Tensors to stored parts and back: the registered codecs (`CODECS`), zstd, aliases of shared tensors.

Decoding reads untrusted data, so it is bounded before anything is allocated: each tensor's decoded
size comes from its declared (validated) shape, the sum must match the manifest's `tensor_bytes` and
stay within `MAX_EXPANSION` times the weights file's size, a zstd part's frame must declare exactly
the size its metadata claims, and codecs check their parts against the shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from torchslim import entropy
from torchslim.errors import ManifestError
from torchslim.manifest import DTYPES, Encoding
from torchslim.registry import Registry

WEIGHTS = "model.safetensors"
MAX_EXPANSION = 4096
"""Decoded tensors may be at most this many times the weights file (sparse masks and zeros compress well)."""
MIN_BUDGET = 64 << 20
"""Bytes any weights file may decode to, however small it is."""


class Codec(Protocol):
    def encode(
        self, name: str, tensor: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Compact stored tensors plus JSON metadata, or None when this codec does not apply."""
        ...

    def decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """The tensor back; `meta` is validated (`manifest.Encoding`), parts must be checked against it."""
        ...


CODECS: Registry[Codec] = Registry("tensor encoding")


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype named in a manifest (only names in `manifest.DTYPES` are looked up)."""
    if name not in DTYPES or not isinstance(getattr(torch, name, None), torch.dtype):
        raise ManifestError(f"unsupported dtype {name!r}")
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype)
    return dtype


def nbytes(shape: list[int], dtype: str) -> int:
    return math.prod(shape) * dtype_of(dtype).itemsize


def encode_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Each tensor in its smallest registered encoding, its parts entropy-coded where that pays;
    shared tensors stored once, as aliases. Returns the stored tensors and the per-tensor metadata
    (tensors absent from it are stored as they are)."""
    stored: dict[str, torch.Tensor] = {}
    encodings: dict[str, Any] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.dtype,
        )
        if tensor.numel() and key in seen:
            encodings[name] = {"codec": "alias", "of": seen[key]}
            continue
        seen[key] = name
        parts, meta = _smallest_encoding(name, tensor)
        for part, value in parts.items():
            packed = entropy.compress(value)
            if packed is not None:
                parts[part] = packed[0]
                meta.setdefault("zstd", {})[part] = packed[1]
        stored.update(parts)
        if meta != {"codec": "dense"}:
            encodings[name] = {**meta, "parts": sorted(parts)}
    return stored, encodings


def _smallest_encoding(name: str, tensor: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    best: tuple[dict[str, torch.Tensor], dict[str, Any]] = ({name: tensor.contiguous()}, {"codec": "dense"})
    for codec_name in CODECS:
        out = CODECS.get(codec_name).encode(name, tensor)
        if out is not None and _nbytes(out[0]) < _nbytes(best[0]):
            best = (dict(out[0]), {"codec": codec_name, **out[1]})
    return best


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    # safetensors' header costs about this much per tensor: count it, so splitting a tiny tensor never "wins"
    return sum(t.numel() * t.element_size() + 64 for t in tensors.values())


def state_bytes(state: Mapping[str, torch.Tensor], encodings: Mapping[str, Any]) -> int:
    """Bytes of the decoded tensors, aliases counted once (what the manifest records as `tensor_bytes`)."""
    aliases = {n for n, m in encodings.items() if m.get("codec") == "alias"}
    return sum(t.numel() * t.element_size() for n, t in state.items() if n not in aliases)


def declared_bytes(header: Mapping[str, tuple[str, list[int]]], encodings: Mapping[str, Encoding]) -> int:
    """Bytes the stored tensors decode to, from the safetensors header and the validated encodings
    alone (nothing decoded yet): what decoding would allocate at most for the final tensors."""
    encoded = {p for e in encodings.values() for p in e.parts or ()}
    total = sum(nbytes(shape, dtype) for name, (dtype, shape) in header.items() if name not in encoded)
    for name, enc in encodings.items():
        if enc.codec == "alias":
            continue
        if enc.codec == "dense":
            part = (enc.parts or [name])[0]
            zstd = enc.zstd.get(part)
            dtype, shape = (zstd.dtype, zstd.shape) if zstd else header.get(part, ("uint8", [0]))
            total += nbytes(shape, dtype)
        else:
            assert enc.shape is not None and enc.dtype is not None
            total += nbytes(enc.shape, enc.dtype)
    return total


def check_budget(declared: int, recorded: int | None, file_bytes: int, where: str) -> None:
    if recorded is not None and declared != recorded:
        raise ManifestError(
            f"{where}: corrupted: the encodings declare {declared} bytes of tensors, "
            f"tensor_bytes says {recorded}"
        )
    limit = max(MIN_BUDGET, MAX_EXPANSION * file_bytes)
    if declared > limit:
        raise ManifestError(
            f"{where}: the encodings declare {declared} bytes of tensors from a {file_bytes}-byte weights "
            f"file (more than {MAX_EXPANSION}x); refusing to allocate them"
        )


def decode_state(stored: dict[str, torch.Tensor], encodings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict back from stored parts (`encodings` as written by `encode_state`, validated)."""
    checked = {n: m if isinstance(m, Encoding) else Encoding.model_validate(m) for n, m in encodings.items()}
    encoded = {part for meta in checked.values() for part in meta.parts or ()}
    state = {k: v for k, v in stored.items() if k not in encoded}
    for name, meta in checked.items():
        if meta.codec == "alias":
            continue
        parts = {p: _stored(stored, p, name) for p in meta.parts or ()}
        for part, info in meta.zstd.items():
            parts[part] = decompress(parts[part], info.dtype, info.shape, f"{name} part {part!r}")
        if meta.codec == "dense":
            if name not in parts:
                raise ManifestError(f"encodings.{name}: a dense tensor's parts must name itself")
            state[name] = parts[name]
        else:
            state[name] = CODECS.get(meta.codec).decode(parts, meta.model_dump(exclude_none=True))
    for name, meta in checked.items():
        if meta.codec == "alias":
            assert meta.of is not None
            target = _stored(state, meta.of, name)
            if checked.get(meta.of, meta).codec == "alias":
                raise ManifestError(f"encodings.{name}: an alias of an alias ({meta.of!r})")
            state[name] = target
    return state


def decompress(data: torch.Tensor, dtype: str, shape: list[int], what: str) -> torch.Tensor:
    """A zstd part back, refused unless its frame declares exactly the size of `shape` x `dtype`."""
    import zstandard

    expected = nbytes(shape, dtype)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ManifestError(f"{what}: a zstd part must be a 1-D uint8 tensor")
    raw = data.numpy().tobytes()
    try:
        declared = zstandard.frame_content_size(raw)
        if declared != expected:
            raise ManifestError(
                f"{what}: corrupted: the zstd frame declares {declared} bytes, the manifest {expected}"
            )
        out = zstandard.ZstdDecompressor().decompress(raw, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise ManifestError(f"{what}: corrupted zstd data ({exc})") from None
    if len(out) != expected:
        raise ManifestError(f"{what}: corrupted: decompressed to {len(out)} bytes, expected {expected}")
    return entropy.from_bytes(out, dtype_of(dtype), shape)


def _stored(stored: dict[str, torch.Tensor], key: str, owner: str) -> torch.Tensor:
    if key not in stored:
        raise ManifestError(f"{WEIGHTS} lacks tensor {key!r} needed for {owner!r}")
    return stored[key]
