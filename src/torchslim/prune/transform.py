"""The `channel_prune` transform: record new shapes after pruning, replay them on load.

What is recorded, per changed module: the shapes of its tensors and the plain attributes that
changed (`out_channels`, `num_features`, a transformers attention's head count, ...). Replaying sets
empty tensors of those shapes and those attributes on the freshly built model; `ts.load` then fills
the values from safetensors. This needs no per-layer code, so custom layers replay too. A module whose
class cannot hold the smaller sizes (torch's MultiheadAttention) is swapped before the cut for one
that can; `replace` records the `REPLACEMENTS` entry, replayed first. `config` holds the fields of a
transformers `model.config` that describe the pruned sizes (heads, kv heads, intermediate size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from torchslim import safe
from torchslim.errors import ManifestError
from torchslim.io import TRANSFORMS
from torchslim.manifest import TRANSFORM_PARAMS, Attribute, ModulePath, Name, Shape, Strict
from torchslim.registry import Registry

REPLACEMENTS: Registry[Callable[[nn.Module], nn.Module]] = Registry("module replacement")
"""Name -> builder of a module that replaces a freshly built one before its tensors shrink (the
module as it was before the cut, e.g. `PrunedMultiheadAttention.from_torch`); the name is recorded."""

Plain = int | float | bool | str | tuple[Any, ...] | list[Any] | None


def _attrs(module: nn.Module) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and isinstance(v, (int, float, tuple)) and _plain(v)
    }


def _plain(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(isinstance(x, (int, float)) for x in v)
    return True


def _shapes(module: nn.Module) -> dict[str, list[int]]:
    tensors = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
    return {k: list(t.shape) for k, t in tensors.items() if t is not None}


def snapshot(model: nn.Module) -> dict[str, tuple[dict[str, Any], dict[str, list[int]]]]:
    return {name: (_attrs(m), _shapes(m)) for name, m in model.named_modules()}


def record_prune(
    model: nn.Module, before: dict[str, tuple[dict[str, Any], dict[str, list[int]]]]
) -> dict[str, Any]:
    """`{"shapes": {module: {tensor: shape}}, "attrs": {module: {attr: value}}}` of what changed."""
    shapes: dict[str, dict[str, list[int]]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        old_attrs, old_shapes = before.get(name, ({}, {}))
        new_attrs, new_shapes = _attrs(module), _shapes(module)
        changed = {
            k: list(v) if isinstance(v, tuple) else v for k, v in new_attrs.items() if old_attrs.get(k) != v
        }
        if changed:
            attrs[name] = changed
        if new_shapes != old_shapes:
            shapes[name] = new_shapes
    return {"shapes": shapes, "attrs": attrs}


ConfigField = Literal[
    "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "n_inner"
]
"""The transformers config fields pruning writes (`heads.sync_config`), the only ones a manifest may set."""


@TRANSFORM_PARAMS.register("channel_prune")
class ChannelPruneParams(Strict):
    replace: dict[ModulePath, Name] = Field(default_factory=dict)
    shapes: dict[ModulePath, dict[Attribute, Shape]] = Field(default_factory=dict)
    attrs: dict[ModulePath, dict[Attribute, bool | int | float | list[int | float]]] = Field(
        default_factory=dict
    )
    config: dict[ConfigField, Annotated[int, Field(ge=1, le=1 << 20)]] = Field(default_factory=dict)


@TRANSFORMS.register("channel_prune")
def replay(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Give the freshly built `model` the recorded replacements, shapes and attributes (values load
    afterwards). Only existing submodules, their own tensors and their plain size attributes are touched."""
    where = "channel_prune"
    for name, replacement in params.get("replace", {}).items():
        model.set_submodule(name, REPLACEMENTS.get(replacement)(safe.submodule(model, name, where)))
    for name, shapes in params.get("shapes", {}).items():
        module = safe.submodule(model, name, where)
        for tensor_name, shape in shapes.items():
            safe.tensor_name(module, tensor_name, f"{where} {name!r}", parametrized=False)
            safe.check_numel(shape, f"{where} {name}.{tensor_name}")
            old = getattr(module, tensor_name)
            if old is None or old.dim() != len(shape):
                raise ManifestError(f"{where}: {name}.{tensor_name} cannot take shape {shape}")
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                module._parameters[tensor_name] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                module._buffers[tensor_name] = new
        if isinstance(module, nn.RNNBase):  # its kernel reads a list of its weights, refreshed here
            module._init_flat_weights()
    for name, attrs in params.get("attrs", {}).items():
        module = safe.submodule(model, name, where)
        for attr, value in attrs.items():
            setattr(module, attr, safe.plain_attribute(module, attr, value, f"{where} {name!r}"))
    config = getattr(model, "config", None)
    if params.get("config") and config is None:
        raise ManifestError(f"{where}: config fields {sorted(params['config'])} for a model without a config")
    for key, value in params.get("config", {}).items():  # transformers config fields (heads.sync_config)
        setattr(config, key, value)
    return model
