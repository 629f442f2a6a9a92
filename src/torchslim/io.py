"""Save and load without pickle: `manifest.json` says how to rebuild, safetensors holds the values.

A saved model is a directory:
- `manifest.json`: the source (how to build the bare architecture), the transforms applied since
  (each replayed on load to restore structure: new shapes, masks, quantized modules), and the
  encoding of every tensor that is not stored densely;
- `model.safetensors`: the tensors.

Three registries make this extensible: `SOURCES` (how to build a model: `zoo`, `factory`),
`TRANSFORMS` (how to replay a structural change) and `CODECS` (how to store one tensor compactly).
Loading executes no pickle; a `factory` source imports the named, installed module, as the user asks.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from torchslim import entropy
from torchslim.atomic import replace_dir, temp_dir_beside
from torchslim.errors import ManifestError, UserError
from torchslim.registry import Registry

FORMAT = "torchslim"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"

SOURCES: Registry[Callable[..., nn.Module]] = Registry("model source")


class Transform(Protocol):
    def __call__(self, model: nn.Module, params: dict[str, Any]) -> nn.Module:
        """Replay a recorded change on the freshly built model (structure only; values load after)."""
        ...


class Codec(Protocol):
    def encode(
        self, name: str, tensor: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Compact stored tensors plus JSON metadata, or None when this codec does not apply."""
        ...

    def decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor: ...


TRANSFORMS: Registry[Transform] = Registry("transform")
CODECS: Registry[Codec] = Registry("tensor encoding")


@dataclass
class Record:
    """How a live model was made: kept on the module, written to the manifest by `save`."""

    source: dict[str, Any] | None = None
    transforms: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    """Files the source needs (an imported graph's structure), written beside the manifest."""


def record_of(model: nn.Module) -> Record:
    rec = model.__dict__.get("_torchslim_record")
    if rec is None:
        rec = Record()
        model.__dict__["_torchslim_record"] = rec
    return rec


def set_source(
    model: nn.Module, kind: str, *, files: dict[str, bytes] | None = None, **params: Any
) -> nn.Module:
    """Record how to rebuild `model`'s bare architecture: `set_source(m, "factory", target="pkg.mod:fn")`.

    `files` are saved beside the manifest; a source parameter `file` naming one of them reaches the
    source's builder on load as the path of that file inside the saved directory.
    """
    SOURCES.get(kind)
    for name in files or {}:
        if Path(name).name != name or name in (MANIFEST, WEIGHTS):
            raise ValueError(
                f"source file name {name!r} must be a plain file name other than {MANIFEST}/{WEIGHTS}"
            )
    rec = record_of(model)
    rec.source = {"kind": kind, **params}
    rec.files = dict(files or {})
    return model


def add_transform(model: nn.Module, name: str, params: dict[str, Any]) -> None:
    """Record a structural change so that `load` can replay it; `name` must be in TRANSFORMS."""
    TRANSFORMS.get(name)
    json.dumps(params)  # fail now, not at save time, if params are not plain data
    record_of(model).transforms.append({"name": name, "params": params})


# -- sources --------------------------------------------------------------------------------------
@SOURCES.register("zoo")
def _zoo_source(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    from torchslim import zoo

    task = zoo.get(name)
    if not callable(getattr(task, "build", None)):  # a user's task brings data, not an architecture
        raise ManifestError(f"task {name!r} cannot build a model (it has no `build`)")
    return task.build(**(kwargs or {}))  # type: ignore[attr-defined]


@SOURCES.register("factory")
def _factory_source(target: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    model = resolve_factory(target)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {target!r} returned {type(model).__name__}, not a torch.nn.Module")
    return set_source(model, "factory", target=target, kwargs=kwargs or {})


def resolve_factory(target: str) -> Callable[..., Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"factory {target!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"factory {target!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"factory {target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"factory {target!r} is not callable")
    return obj


# -- codecs ---------------------------------------------------------------------------------------
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


def decode_state(stored: dict[str, torch.Tensor], encodings: dict[str, Any]) -> dict[str, torch.Tensor]:
    encoded = {part for meta in encodings.values() for part in meta.get("parts", ())}
    state = {k: v for k, v in stored.items() if k not in encoded}
    for name, meta in encodings.items():
        if meta["codec"] == "alias":
            continue
        parts = {p: _stored(stored, p, name) for p in meta["parts"]}
        for part, info in meta.get("zstd", {}).items():
            parts[part] = entropy.decompress(parts[part], info)
        state[name] = (
            parts[name] if meta["codec"] == "dense" else CODECS.get(meta["codec"]).decode(parts, meta)
        )
    for name, meta in encodings.items():
        if meta["codec"] == "alias":
            state[name] = _stored(state, meta["of"], name)
    return state


def _stored(stored: dict[str, torch.Tensor], key: str, owner: str) -> torch.Tensor:
    if key not in stored:
        raise ManifestError(f"{WEIGHTS} lacks tensor {key!r} needed for {owner!r}")
    return stored[key]


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    # safetensors' header costs about this much per tensor: count it, so splitting a tiny tensor never "wins"
    return sum(t.numel() * t.element_size() + 64 for t in tensors.values())


# -- save / load ----------------------------------------------------------------------------------
def write(model: nn.Module, path: str | os.PathLike[str], *, require_source: bool = True) -> Path:
    """Write `model` to directory `path` atomically (temporary sibling, then rename)."""
    rec = record_of(model)
    if rec.source is None and require_source:
        raise UserError(
            "the model has no recorded source, so it could not be rebuilt on load; build it with "
            "torchslim.zoo or pass factory='package.module:function' (and kwargs) to torchslim.save"
        )
    path = Path(path)
    foreign = path.exists() and not (path / MANIFEST).is_file()
    if foreign and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} exists and is not a torchslim model directory; refusing to overwrite it")
    stored, encodings = encode_state(model.state_dict())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torchslim_version": _version(),
        "source": rec.source,
        "transforms": rec.transforms,
        "weights": WEIGHTS,
        "encodings": encodings,
    }
    with temp_dir_beside(path) as tmp:
        save_file(stored, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        for name, content in rec.files.items():
            (tmp / name).write_bytes(content)
        # compact: the manifest counts in size_bytes
        (tmp / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
        replace_dir(tmp, path)
    return path


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    factory: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Path:
    """Save to a directory (manifest.json + safetensors). `factory` names how to rebuild a user model."""
    if factory is not None:
        resolve_factory(factory)
        set_source(model, "factory", target=factory, kwargs=kwargs or {})
    return write(model, path)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise ManifestError(f"{path}: no such model directory")
    if not file.is_file():
        raise ManifestError(f"{path}: missing {MANIFEST}; not a torchslim model directory")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{file}: corrupted manifest, not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{file}: not a torchslim manifest (format field is missing or wrong)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ManifestError(f"{file}: format_version {version!r} is not readable by this torchslim")
    for key, kind in (("source", dict), ("transforms", list), ("weights", str), ("encodings", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ManifestError(f"{file}: field {key!r} is missing or not a {kind.__name__}")
    return manifest


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a saved model: build the source, replay transforms, load tensors (strict), eval mode."""
    path = Path(path)
    manifest = read_manifest(path)
    for step in manifest["transforms"]:
        if step.get("name") not in TRANSFORMS:
            raise ManifestError(f"{path / MANIFEST}: {TRANSFORMS.unknown_message(step.get('name'))}")
    weights = path / manifest["weights"]
    if weights.parent != path or not weights.is_file():
        raise ManifestError(f"{path}: weights file {manifest['weights']!r} named in {MANIFEST} is missing")
    source = dict(manifest["source"])
    kind = source.pop("kind", None)
    if kind not in SOURCES:
        raise ManifestError(f"{path / MANIFEST}: {SOURCES.unknown_message(kind)}")
    files = _source_files(path, source)
    model = SOURCES.get(kind)(**source)
    for step in manifest["transforms"]:
        model = TRANSFORMS.get(step["name"])(model, step.get("params", {}))
    try:
        stored = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ManifestError(f"{weights}: unreadable safetensors file ({exc})") from None
    state = decode_state(stored, manifest["encodings"])
    missing, unexpected = _state_mismatch(model, state)
    if missing or unexpected:
        raise ManifestError(
            f"{path}: weights do not fit the rebuilt model: missing {missing}, unexpected {unexpected}"
        )
    model.load_state_dict(state, strict=True)
    rec = record_of(model)
    rec.source = manifest["source"]
    rec.transforms = list(manifest["transforms"])
    rec.files = files
    return model.eval()


def _source_files(path: Path, source: dict[str, Any]) -> dict[str, bytes]:
    """Resolve the source's `file` parameter inside the saved directory (never outside it)."""
    name = source.get("file")
    if name is None:
        return {}
    file = path / str(name)
    if Path(str(name)).name != name or not file.is_file():
        raise ManifestError(f"{path}: source file {name!r} named in {MANIFEST} is missing")
    source["file"] = str(file)
    return {str(name): file.read_bytes()}


def _state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state))[:10], sorted(set(state) - expected)[:10]


def disk_size(path: str | os.PathLike[str]) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def saved_size(model: nn.Module) -> int:
    """Bytes that `save` writes for this model (measured by writing it to a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="torchslim-size-") as tmp:
        return disk_size(write(model, Path(tmp) / "model", require_source=False))


def _version() -> str:
    from torchslim import __version__

    return __version__
