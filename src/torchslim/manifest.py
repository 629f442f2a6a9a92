"""The schema of `manifest.json`: every field is validated here before `ts.load` builds anything.

A manifest is untrusted input: parsing limits its size and nesting depth, and the pydantic models
below fix the type, range and length of every field down to transform parameters and tensor
encodings, so that later code indexes plain, checked data. A failure names the field
(`manifest.json: encodings.fc1.weight.shape[0]: ...`). Transform and source kinds register their
parameter schema here (`TRANSFORM_PARAMS`, `SOURCE_PARAMS`) beside their replay function.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from torchslim import bounded
from torchslim.errors import ManifestError
from torchslim.registry import Registry

FORMAT = "torchslim"
FORMAT_VERSION = 2
"""2 adds `files` (sha256 and size of every stored file) and `tensor_bytes`; 1 still loads."""
MAX_MANIFEST_BYTES = 64 << 20
MAX_DEPTH = 32
MAX_DIM = 1 << 31
MAX_NUMEL = 1 << 34
MAX_RANK = 8
MAX_NAME = 512

DTYPES = (
    "float32", "float16", "bfloat16", "float64", "uint8", "int8", "int16", "int32", "int64", "bool",
    "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2",
)  # fmt: skip
"""The only names `getattr(torch, ...)` ever sees from a manifest."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00-\x1f]+$")]
ModulePath = Annotated[str, StringConstraints(max_length=MAX_NAME, pattern=r"^([\w\-]+(\.[\w\-]+)*)?$")]
Attribute = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
FileName = Annotated[str, StringConstraints(max_length=255, pattern=r"^[\w\-][\w.\-]*$")]
Dim = Annotated[int, Field(ge=0, le=MAX_DIM)]
DType = Literal[DTYPES]  # type: ignore[valid-type]
Plain = int | float | bool | str | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_shape(shape: list[int]) -> list[int]:
    if math.prod(shape) > MAX_NUMEL:
        raise ValueError(f"shape {shape} holds more than {MAX_NUMEL} elements")
    return shape


class ShapeModel(Strict):
    shape: Annotated[list[Dim], Field(max_length=MAX_RANK)]

    @model_validator(mode="after")
    def _numel(self) -> ShapeModel:
        _check_shape(self.shape)
        return self


Shape = Annotated[list[Dim], Field(max_length=MAX_RANK)]


class Zstd(ShapeModel):
    dtype: DType


CODEC_FIELDS: dict[str, set[str]] = {
    "alias": {"of"},
    "dense": {"parts"},
    "sparse_bitmask": {"parts", "shape", "dtype"},
    "sparse_index": {"parts", "shape", "dtype", "limit"},
    "packed_bits": {"parts", "shape", "dtype"},
    "sparse_nm": {"parts", "shape", "dtype", "n", "m"},
}
"""Fields each codec needs; a codec registered elsewhere adds its entry here."""


class Encoding(Strict):
    codec: Name
    of: Name | None = None
    parts: Annotated[list[Name], Field(max_length=8)] | None = None
    shape: Shape | None = None
    dtype: DType | None = None
    limit: Literal[255, 65535] | None = None
    invert: bool | None = None
    n: Annotated[int, Field(ge=1, le=7)] | None = None
    """sparse_nm: at most `n` nonzeros in every group of `m` consecutive entries."""
    m: Annotated[int, Field(ge=2, le=8)] | None = None
    zstd: Annotated[dict[Name, Zstd], Field(max_length=8)] = {}

    @model_validator(mode="after")
    def _fields(self) -> Encoding:
        if self.codec not in CODEC_FIELDS:
            raise ValueError(f"unknown tensor encoding {self.codec!r} (known: {', '.join(CODEC_FIELDS)})")
        missing = sorted(f for f in CODEC_FIELDS[self.codec] if getattr(self, f) is None)
        if missing:
            raise ValueError(f"codec {self.codec!r} needs {', '.join(missing)}")
        if self.shape is not None:
            _check_shape(self.shape)
        if set(self.zstd) - set(self.parts or ()):
            raise ValueError("zstd names a part that is not in parts")
        return self


class StoredFile(Strict):
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0, le=1 << 44)]


class Step(Strict):
    name: Name
    params: dict[str, Any] = {}


class Manifest(Strict):
    format: Literal["torchslim"]
    format_version: Annotated[int, Field(ge=1, le=FORMAT_VERSION)]
    torchslim_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    source: dict[str, Any]
    transforms: Annotated[list[Step], Field(max_length=1024)]
    weights: FileName
    encodings: dict[Name, Encoding]
    files: dict[FileName, StoredFile] | None = None
    tensor_bytes: Annotated[int, Field(ge=0, le=1 << 44)] | None = None

    @model_validator(mode="after")
    def _integrity(self) -> Manifest:
        if self.format_version >= 2 and (self.files is None or self.tensor_bytes is None):
            raise ValueError("format_version 2 needs files (checksums) and tensor_bytes")
        if self.files is not None and self.weights not in self.files:
            raise ValueError(f"files has no checksum of the weights file {self.weights!r}")
        return self


# -- sources and transforms register their parameter schemas -----------------------------------
SOURCE_PARAMS: Registry[type[BaseModel]] = Registry("model source")
TRANSFORM_PARAMS: Registry[type[BaseModel]] = Registry("transform")

Kwargs = Annotated[dict[Annotated[str, StringConstraints(max_length=128)], Any], Field(max_length=256)]


class ZooKwargs(BaseModel):
    """Zoo `build` keywords: sizes in the range the zoo's architectures are meant for."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    width: Annotated[float, Field(gt=0, le=4)] = 1.0
    layers: Annotated[int, Field(ge=1, le=64)] | None = None
    num_classes: Annotated[int, Field(ge=1, le=100_000)] | None = None

    @model_validator(mode="after")
    def _extras(self) -> ZooKwargs:
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, Plain) or (isinstance(value, int) and not 0 <= value <= 1 << 16):
                raise ValueError(f"{key}: must be a number in [0, 65536], a bool or a string")
        return self


@SOURCE_PARAMS.register("zoo")
class ZooSource(Strict):
    kind: Literal["zoo"]
    name: Name
    kwargs: ZooKwargs = ZooKwargs()


@SOURCE_PARAMS.register("factory")
class FactorySource(Strict):
    kind: Literal["factory"]
    target: Annotated[str, StringConstraints(max_length=MAX_NAME, pattern=r"^[\w.]+:[\w.]+$")]
    kwargs: Kwargs = {}


@SOURCE_PARAMS.register("registered")
class RegisteredSource(Strict):
    kind: Literal["registered"]
    name: Name
    kwargs: Kwargs = {}


class FileSource(Strict):
    kind: str
    file: FileName


SOURCE_PARAMS.register("onnx", FileSource)
SOURCE_PARAMS.register("keras", FileSource)


# -- parsing ------------------------------------------------------------------------------------
def parse_json(data: bytes, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` of untrusted bytes with the size and depth limited first."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where}: {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
    try:
        text = data.decode("utf-8")
        if bounded.json_depth(text) > max_depth:
            raise ManifestError(f"{where}: nested deeper than {max_depth} levels")
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where}: corrupted manifest, not valid JSON ({exc})") from None


def validate(schema: type[BaseModel], data: Any, where: str, prefix: tuple[Any, ...] = ()) -> Any:
    """`schema.model_validate(data)` with the first error raised as a ManifestError naming its field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = _dotted((*prefix, *error["loc"]))
        value = error.get("input")
        shown = f" (got {value!r:.80})" if isinstance(value, Plain) and error["type"] != "missing" else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ManifestError(f"{where}: {loc}: {error['msg']}{shown}{more}") from None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "manifest"


def checked_params(step: Step) -> dict[str, Any]:
    """A transform's parameters as its schema reads them (defaults filled in), or as stored if the
    transform registered no schema."""
    if step.name not in TRANSFORM_PARAMS:
        return dict(step.params)
    return TRANSFORM_PARAMS.get(step.name).model_validate(step.params).model_dump()


def read(data: bytes, where: str) -> Manifest:
    """Parse and validate a whole manifest: top level, source and every transform's parameters."""
    raw = parse_json(data, where)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ManifestError(f"{where}: not a torchslim manifest (format field is missing or wrong)")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ManifestError(f"{where}: format_version {version!r} is not readable by this torchslim")
    manifest: Manifest = validate(Manifest, raw, where)
    kind = manifest.source.get("kind")
    if kind not in SOURCE_PARAMS:
        raise ManifestError(f"{where}: source.kind: {SOURCE_PARAMS.unknown_message(str(kind))}")
    validate(SOURCE_PARAMS.get(str(kind)), manifest.source, where, ("source",))
    for i, step in enumerate(manifest.transforms):
        if step.name not in TRANSFORM_PARAMS:
            raise ManifestError(
                f"{where}: transforms[{i}].name: {TRANSFORM_PARAMS.unknown_message(step.name)}"
            )
        validate(TRANSFORM_PARAMS.get(step.name), step.params, where, ("transforms", i, "params"))
    return manifest
