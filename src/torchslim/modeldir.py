"""A saved model directory as untrusted files: paths that stay inside it, checksums, and the tensors
read from safetensors only after what they decode to has been checked against the file's size."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from torchslim import manifest as schema
from torchslim.errors import ManifestError
from torchslim.storage import check_budget, declared_bytes, decode_state

MANIFEST = "manifest.json"


def digest(file: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"sha256": sha.hexdigest(), "bytes": file.stat().st_size}


def inside(path: Path, name: str) -> Path:
    """`path/name`, refused when a symlink makes it resolve outside the model directory."""
    file = path / name
    if file.exists() and not file.resolve().is_relative_to(path.resolve()):
        raise ManifestError(f"{file}: a link to a file outside the model directory; refusing to read it")
    return file


def verify_files(path: Path, manifest: schema.Manifest) -> None:
    """Every file the manifest lists has its recorded size and sha256 (format 1 recorded none)."""
    for name, expected in (manifest.files or {}).items():
        file = inside(path, name)
        if not file.is_file():
            raise ManifestError(f"{path}: file {name!r} named in {MANIFEST} is missing")
        size = file.stat().st_size
        if size != expected.bytes or digest(file)["sha256"] != expected.sha256:
            raise ManifestError(
                f"{file}: corrupted: its sha256 or size ({size} bytes) differs from the one recorded in "
                f"{MANIFEST} ({expected.bytes} bytes); the file was changed or damaged after saving"
            )


def read_state(weights: Path, manifest: schema.Manifest) -> dict[str, torch.Tensor]:
    """The decoded tensors, after checking what they would decode to against the file's size."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = list(f.keys())
            header = {k: (_dtype_name(f.get_slice(k).get_dtype()), f.get_slice(k).get_shape()) for k in names}
        check_budget(
            declared_bytes(header, manifest.encodings),
            manifest.tensor_bytes,
            weights.stat().st_size,
            str(weights),
        )
        stored = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ManifestError(f"{weights}: unreadable safetensors file ({exc})") from None
    return decode_state(stored, manifest.encodings)


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


def _dtype_name(code: str) -> str:
    if code not in _SAFETENSORS_DTYPES:
        raise ManifestError(f"safetensors dtype {code!r} is not supported")
    return _SAFETENSORS_DTYPES[code]
