"""Save and load without pickle: `manifest.json` says how to rebuild, safetensors holds the values.

A saved model is a directory:
- `manifest.json`: the source (how to build the bare architecture), the transforms applied since
  (each replayed on load to restore structure: new shapes, masks, quantized modules), the encoding
  of every tensor that is not stored densely, and the sha256 and size of every other file;
- `model.safetensors`: the tensors.

Three registries make this extensible: `SOURCES` (how to build a model: `zoo`, `registered`,
`factory`, `onnx`, `keras`), `TRANSFORMS` (how to replay a structural change) and `CODECS` (how to
store one tensor compactly). Loading executes no pickle and treats the directory as untrusted: the
manifest is validated (`torchslim.manifest`) and the files checked before anything is built, and a
`factory` source (user code named by the file) runs only when the caller trusts it (`trust_code`).
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
from safetensors.torch import save_file

from torchslim import manifest as schema
from torchslim import safe
from torchslim.atomic import replace_dir, share_modes, temp_dir_beside
from torchslim.errors import ManifestError, UserError
from torchslim.modeldir import MANIFEST, digest, inside, read_state, verify_files
from torchslim.registry import Registry
from torchslim.storage import CODECS, Codec, decode_state, encode_state, state_bytes  # noqa: F401  (public here)
from torchslim.trust import Trust, check_trust, trusting  # noqa: F401  (public here)

FORMAT = schema.FORMAT
FORMAT_VERSION = schema.FORMAT_VERSION
WEIGHTS = "model.safetensors"

SOURCES: Registry[Callable[..., nn.Module]] = Registry("model source")
MODELS: Registry[Callable[..., nn.Module]] = Registry("registered model")
"""In-process model factories (`register_model`): a manifest may name them without trust."""
SOURCE_FALLBACKS: list[Callable[[nn.Module], bool]] = []
"""Tried in turn on a model saved without a source: one that records a source for it returns True
(transformers models record the `hf` source: their class and config)."""


class Transform(Protocol):
    def __call__(self, model: nn.Module, params: dict[str, Any]) -> nn.Module:
        """Replay a recorded change on the freshly built model (structure only; values load after).
        `params` passed its schema (`manifest.TRANSFORM_PARAMS`); look names up through `torchslim.safe`."""
        ...


TRANSFORMS: Registry[Transform] = Registry("transform")


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
MAX_BUILD_ELEMENTS = 1 << 30
"""Parameters a zoo architecture built from manifest kwargs may have (probed on the meta device first)."""


@SOURCES.register("zoo")
def _zoo_source(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    from torchslim import zoo

    task = zoo.get(name)
    if not callable(getattr(task, "build", None)):  # a user's task brings data, not an architecture
        raise ManifestError(f"task {name!r} cannot build a model (it has no `build`)")
    make = getattr(task, "make", None)
    if kwargs and callable(make):
        _probe_size(lambda: make(**kwargs), f"zoo:{name} with {kwargs}")
    return task.build(**(kwargs or {}))  # type: ignore[attr-defined]


def _probe_size(build: Callable[[], nn.Module], what: str) -> None:
    """Refuse an architecture too large to allocate, counted without allocating (meta device)."""
    try:
        with torch.device("meta"):
            numel = sum(p.numel() for p in build().state_dict().values())
    except (UserError, TypeError, ValueError):
        raise
    except Exception:  # a task that cannot be built on the meta device is built for real
        return
    if numel > MAX_BUILD_ELEMENTS:
        raise ManifestError(f"source {what}: {numel} elements, more than the {MAX_BUILD_ELEMENTS} allowed")


@SOURCES.register("factory")
def _factory_source(target: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    model = resolve_factory(target)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {target!r} returned {type(model).__name__}, not a torch.nn.Module")
    return set_source(model, "factory", target=target, kwargs=kwargs or {})


@SOURCES.register("registered")
def _registered_source(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    model = MODELS.get(name)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise UserError(f"registered model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return set_source(model, "registered", name=name, kwargs=kwargs or {})


def register_model(name: str, factory: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Make `factory` loadable by name: `ts.save(model, path, factory=name)` records it, and `ts.load`
    builds it (in a process that registered the same name) without `trust_code`."""
    if not name or ":" in name:
        raise UserError(f"register_model: name {name!r} must be non-empty and contain no ':'")
    if not callable(factory):
        raise UserError(f"register_model: factory for {name!r} is not callable")
    MODELS.register(name, factory, replace=replace)


def resolve_factory(target: str) -> Callable[..., Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"factory {target!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"factory {target!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if part.startswith("__") or not hasattr(obj, part):  # no walk through dunders to builtins
            raise UserError(f"factory {target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"factory {target!r} is not callable")
    return obj


# -- save / load ----------------------------------------------------------------------------------
def write(model: nn.Module, path: str | os.PathLike[str], *, require_source: bool = True) -> Path:
    """Write `model` to directory `path` atomically (temporary sibling, then rename)."""
    rec = record_of(model)
    if rec.source is None:
        any(fallback(model) for fallback in SOURCE_FALLBACKS)
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
    with temp_dir_beside(path) as tmp:
        save_file(stored, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        for name, content in rec.files.items():
            (tmp / name).write_bytes(content)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "torchslim_version": _version(),
            "source": rec.source,
            "transforms": rec.transforms,
            "weights": WEIGHTS,
            "encodings": encodings,
            "files": {name: digest(tmp / name) for name in sorted([WEIGHTS, *rec.files])},
            "tensor_bytes": state_bytes(model.state_dict(), encodings),
        }
        # compact: the manifest counts in size_bytes
        (tmp / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
        share_modes(tmp)
        replace_dir(tmp, path)
    return path


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    factory: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Path:
    """Save to a directory (manifest.json + safetensors). `factory` names how to rebuild a user model:
    a name given to `register_model` (loads without trust) or 'package.module:function'."""
    if factory is not None and factory in MODELS:
        set_source(model, "registered", name=factory, kwargs=kwargs or {})
    elif factory is not None:
        resolve_factory(factory)
        set_source(model, "factory", target=factory, kwargs=kwargs or {})
    return write(model, path)


def read_manifest(path: str | os.PathLike[str]) -> schema.Manifest:
    """The validated manifest of a model directory (nothing built, no other file read)."""
    path = Path(path)
    if not path.is_dir():
        raise ManifestError(f"{path}: no such model directory")
    file = inside(path, MANIFEST)
    if not file.is_file():
        raise ManifestError(f"{path}: missing {MANIFEST}; not a torchslim model directory")
    manifest = schema.read(file.read_bytes(), str(file))
    kind = manifest.source.get("kind")
    if kind not in SOURCES:
        raise ManifestError(f"{file}: {SOURCES.unknown_message(str(kind))}")
    for step in manifest.transforms:
        if step.name not in TRANSFORMS:
            raise ManifestError(f"{file}: {TRANSFORMS.unknown_message(step.name)}")
    return manifest


def load(path: str | os.PathLike[str], trust_code: Trust = False) -> nn.Module:
    """Rebuild a saved model: check the files, build the source, replay transforms, load tensors
    (strict), eval mode. A manifest naming user code (`factory`) is refused unless `trust_code`."""
    path = Path(path)
    try:
        return _load(path, trust_code)
    except MemoryError:
        raise ManifestError(
            f"{path}: out of memory while loading; the file is corrupted or too large"
        ) from None
    except ManifestError:
        raise
    except UserError as exc:  # a registry lookup or a check deeper down: still about this directory
        raise ManifestError(f"{path}: {exc}") from None


def _load(path: Path, trust_code: Trust) -> nn.Module:
    manifest = read_manifest(path)
    check_trust(manifest.source, trust_code, path / MANIFEST)
    weights = inside(path, manifest.weights)
    if not weights.is_file():
        raise ManifestError(f"{path}: weights file {manifest.weights!r} named in {MANIFEST} is missing")
    verify_files(path, manifest)
    state = read_state(weights, manifest)
    source = dict(manifest.source)
    kind = source.pop("kind")
    files = _source_files(path, source, manifest)
    largest = max((t.numel() for t in state.values()), default=0)
    with safe.element_budget(max(1 << 20, 64 * largest)):
        model = _rebuild(path, kind, source, manifest)
    _check_fits(path, model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a value the rebuilt layer rejects (its load hooks check packed data)
        raise ManifestError(f"{path}: the stored tensors do not fit the rebuilt model ({exc})") from None
    rec = record_of(model)
    rec.source = dict(manifest.source)
    rec.transforms = [step.model_dump() for step in manifest.transforms]
    rec.files = files
    return model.eval()


def _rebuild(path: Path, kind: str, source: dict[str, Any], manifest: schema.Manifest) -> nn.Module:
    """Build the source and replay the transforms. The schema and the guards in `torchslim.safe` catch
    what they can name; a combination they let through that the code cannot build (a weight of rank 0
    for a quantized Linear) still ends as a ManifestError naming the step, never a traceback."""
    where = "source"
    try:
        model = SOURCES.get(kind)(**source)
        for i, step in enumerate(manifest.transforms):
            where = f"transforms[{i}] ({step.name})"
            model = TRANSFORMS.get(step.name)(model, schema.checked_params(step))
    except (UserError, MemoryError):
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, AssertionError) as exc:
        raise ManifestError(
            f"{path / MANIFEST}: {where} cannot be rebuilt as recorded ({type(exc).__name__}: {exc})"
        ) from None
    return model


def _source_files(path: Path, source: dict[str, Any], manifest: schema.Manifest) -> dict[str, bytes]:
    """Resolve the source's `file` parameter inside the saved directory (never outside it)."""
    name = source.get("file")
    if name is None:
        return {}
    file = inside(path, str(name))
    if Path(str(name)).name != name or name in (MANIFEST, manifest.weights) or not file.is_file():
        raise ManifestError(f"{path}: source file {name!r} named in {MANIFEST} is missing")
    if manifest.files is not None and name not in manifest.files:
        raise ManifestError(f"{path}: source file {name!r} has no checksum in {MANIFEST}")
    source["file"] = str(file)
    return {str(name): file.read_bytes()}


def _check_fits(path: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The stored tensors have the rebuilt model's names and shapes (checked before any copy)."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state))[:10], sorted(set(state) - set(expected))[:10]
    if missing or unexpected:
        raise ManifestError(
            f"{path}: weights do not fit the rebuilt model: missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in expected.items():
        got = state[name]
        if got.shape != tensor.shape:
            raise ManifestError(
                f"{path}: tensor {name!r} has shape {list(got.shape)}, the rebuilt model {list(tensor.shape)}"
            )


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
