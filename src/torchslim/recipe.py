"""Recipes: YAML validated up front against the registered stages; every error names its key and line.

A recipe is `model`, optional `task`, a list of `stages` (each a one-key mapping `name: {spec}`) and
`output`. Stages plug in through `register_stage`, which also supplies the schema of their block.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from torchslim import bounded
from torchslim.config import BaseConfig
from torchslim.errors import UserError
from torchslim.registry import Registry

Loc = tuple[str | int, ...]
MAX_SEED = 2**32 - 1
MAX_TOKENS = 20_000
_SYNTAX = re.compile(r"[\[\]{},:\n]")
C = TypeVar("C", bound="BaseConfig")


class StageSpec(BaseModel):
    """Base of every stage's block: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_of(self, cls: type[C]) -> C:
        """The config dataclass `cls` filled from this block's fields of the same names."""
        return cls(
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(cls)
                if f.name in type(self).model_fields
            }
        )


@dataclass(frozen=True)
class StageDef:
    spec: type[StageSpec]
    run: Callable[..., None]
    """`run(ctx, spec)`: transform `ctx.model` (in place or by assigning a new one)."""


STAGES: Registry[StageDef] = Registry("stage")
BUILTIN_STAGE_MODULES = ("torchslim.distill.stages", "torchslim.prune.stage", "torchslim.quant.stages")
"""Modules that register the built-in stages; imported on first validation."""


def register_stage(name: str, spec: type[StageSpec]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def add(run: Callable[..., None]) -> Callable[..., None]:
        STAGES.register(name, StageDef(spec, run))
        return run

    return add


def _known_format(fmt: str) -> str:
    from torchslim.interop import EXPORTERS

    if fmt != "torchslim" and fmt not in EXPORTERS:
        known = ", ".join(["torchslim", *EXPORTERS.names()])
        raise ValueError(f"unknown output format {fmt!r} (known: {known})")
    return fmt


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    formats: list[Annotated[str, AfterValidator(_known_format)]] = ["torchslim"]
    """Artifacts written for the final model: `torchslim` (OUT/model/, always written), `onnx`
    (OUT/model.onnx), `keras` (OUT/model.keras), `hf` (OUT/hf/, save_pretrained); the interop
    EXPORTERS registry lists them."""


class RecipeHead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(min_length=1, max_length=bounded.MAX_STRING)
    """`zoo:NAME`, `package.module:factory`, a saved model directory, a `.onnx` file, or `hf:DIR`."""
    task: str | dict[str, Any] | None = None
    """A registered task name, `package.module:factory` (returns a `ts.Task`), or a data mapping
    (`torchslim.tasks.spec.DataTaskSpec`; `TextTaskSpec` for `{text: GLOB, tokenizer: DIR}`); defaults
    to the model's own zoo task."""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seed for every stage's randomness (0 to 2**32 - 1, the range NumPy accepts too)."""
    stages: list[Any] = Field(default_factory=list)
    output: OutputSpec = Field(default_factory=OutputSpec)


@dataclass(frozen=True)
class Recipe:
    model: str
    task: str | dict[str, Any] | None
    seed: int
    stages: list[tuple[str, StageSpec]]
    output: OutputSpec
    source: str = "<recipe>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "seed": self.seed,
            "stages": [{name: spec.model_dump(mode="json")} for name, spec in self.stages],
            "output": self.output.model_dump(mode="json"),
        }


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file."""
    text = bounded.read_text(path, "recipe")
    try:
        node, data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path}: not valid YAML ({exc})".replace("\n", " ")) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise UserError(f"recipe {path}: {str(exc).split(';')[0]}") from None
    return parse_recipe(data, source=str(path), node=node)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit: composing nodes recurses once per level."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > bounded.MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise yaml.YAMLError(f"nested more than {bounded.MAX_DEPTH} levels deep (line {line})")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _load_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of one YAML document, parsed once."""
    # Pure-Python PyYAML takes about 0.1 ms a token, and the square of the open brackets on one
    # line: both are counted first (in strings and comments too, so only far more than any recipe
    # holds is refused here; the loader then applies the exact depth limit)
    if bounded.bracket_depth(text) > 4 * bounded.MAX_DEPTH:
        raise yaml.YAMLError(f"nested more than {bounded.MAX_DEPTH} levels deep")
    if len(_SYNTAX.findall(text)) > MAX_TOKENS:
        raise yaml.YAMLError(f"more than {MAX_TOKENS} lines, brackets, commas and colons; a recipe is small")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def parse_recipe(data: Any, *, source: str = "<recipe>", node: yaml.Node | None = None) -> Recipe:
    """Validate a recipe given as plain data (`node` gives line numbers when it came from YAML)."""
    for module in BUILTIN_STAGE_MODULES:
        importlib.import_module(module)
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a mapping with keys model, stages, output")
    try:
        bounded.check_values(data)
    except bounded.BoundsError as exc:
        raise UserError(f"{source}{_line(node, exc.loc)}: {_dotted(exc.loc)}: {exc.message}") from None
    errors: list[tuple[Loc, str]] = []
    try:
        head = RecipeHead.model_validate(data)
    except ValidationError as exc:
        errors += [(tuple(e["loc"]), _message(e, RecipeHead)) for e in exc.errors()]
        head = None
    if head is not None and isinstance(head.task, dict):
        head = head.model_copy(update={"task": _parse_task(head.task, errors)})
    stages = _parse_stages(data.get("stages") or [], errors)
    errors.sort(key=lambda e: not e[1].startswith("unknown key"))  # a misspelt key explains a missing one
    if errors:
        loc, msg = errors[0]
        more = (
            f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        )
        raise UserError(f"{source}{_line(node, loc)}: {_dotted(loc)}: {msg}{more}")
    assert head is not None
    return Recipe(head.model, head.task, head.seed, stages, head.output, source)


def _parse_task(raw: dict[str, Any], errors: list[tuple[Loc, str]]) -> dict[str, Any]:
    """A data mapping, validated here so its errors carry the key and line like the rest."""
    from torchslim.tasks.spec import spec_class

    schema = spec_class(raw)
    try:
        return schema.model_validate(raw).model_dump(mode="json", exclude_defaults=True)
    except ValidationError as exc:
        errors += [(("task", *e["loc"]), _message(e, schema)) for e in exc.errors()]
        return raw


def _parse_stages(raw: Any, errors: list[tuple[Loc, str]]) -> list[tuple[str, StageSpec]]:
    if not isinstance(raw, list):
        errors.append((("stages",), "must be a list of one-key mappings like `- finetune: {epochs: 1}`"))
        return []
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or len(item) != 1:
            errors.append((("stages", i), "each stage is a mapping with exactly one key, the stage name"))
            continue
        name, body = next(iter(item.items()))
        if name not in STAGES:
            errors.append((("stages", i, name), STAGES.unknown_message(name)))
            continue
        try:
            out.append((name, STAGES.get(name).spec.model_validate(body or {})))
        except ValidationError as exc:
            spec = STAGES.get(name).spec
            errors += [(("stages", i, name, *e["loc"]), _message(e, spec)) for e in exc.errors()]
    return out


def _message(error: Any, schema: type[BaseModel]) -> str:
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(schema, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown key{hint} (allowed: {', '.join(allowed)})"
    if error["type"] == "missing":
        return "required key is missing"
    value = error.get("input")
    shown = f" (got {bounded.short(value)})" if not isinstance(value, (dict, list)) else ""
    return f"{error['msg']}{shown}"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "recipe"


def _line(node: yaml.Node | None, loc: Loc) -> str:
    """`, line N` of the deepest YAML node that `loc` reaches."""
    if node is None:
        return ""
    line = node.start_mark.line
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node, line = child
    return f", line {line + 1}"


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, int] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                return value, key.start_mark.line
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child = node.value[part]
        return child, child.start_mark.line
    return None


def _fields_at(schema: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the (nested) model that `loc` points into."""
    for part in loc:
        field = schema.model_fields.get(str(part))
        nested = field.annotation if field is not None else None
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            break
        schema = nested
    return list(schema.model_fields)
