"""Layer surgery for structural pruning: how to cut one layer type, registered per type.

A `LayerRule` says which tensors of a module hold its output channels and its input channels (and
along which dim), and how to update the module's size attributes. Surgery is then generic: select the
kept indices of those tensors and set the attributes, so the result is an ordinary dense module.
The graph (`graph.py`) uses the same rules to learn how channels flow through a layer: a `producer`
makes new output channels (conv, linear), a `passthrough` keeps its input channels (norms).

Register a rule for a custom layer: `LAYERS.register("MyLayer", LayerRule(...))`. Lookup walks the
class's MRO by class name, so subclasses inherit their parent's rule and no import is needed to
register a rule for a third-party class (transformers' `Conv1D` below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from torchslim.registry import Registry

Dims = Callable[[Any], dict[str, int]]
SetSize = Callable[[Any, int], None]
Kind = Literal["producer", "passthrough", "opaque"]


def _none(module: nn.Module) -> dict[str, int]:
    return {}


def _noop(module: nn.Module, n: int) -> None:
    pass


@dataclass(frozen=True)
class LayerRule:
    out_dims: Dims
    """Tensor name -> dim holding output channels (for a passthrough layer: its only channels)."""
    in_dims: Dims = _none
    """Tensor name -> dim holding input channels."""
    set_out: SetSize = _noop
    set_in: SetSize = _noop
    kind: Callable[[Any], Kind] = lambda m: "producer"
    act_dim: int = 1
    """Channel dim of the layer's output activation (1 for conv-like, -1 for linear-like)."""
    group_size: Callable[[Any], tuple[int, int]] = lambda m: (0, 0)
    """(input, output) channels per group of a grouped conv; (0, 0) when ungrouped."""
    act_dim_of: Callable[[Any], int] | None = None
    """Per-module channel dim, where it depends on the instance (channels-first LayerNorms)."""
    role_dims: Callable[[Any, str], dict[str, int]] | None = None
    """Tensor name -> dim for every tensor side (role) of layers with more than `in`/`out`: a
    recurrent layer's hidden units also index its recurrent weight's inputs (see `prune.recurrent`)."""
    set_role: Callable[[Any, str, int], None] | None = None
    """Size update per role, with `role_dims`."""
    flow: Callable[..., Any] | None = None
    """The layer's own channel-flow handler `(analyzer, node, module, out) -> Out`, where the generic
    one (new output channels, inputs mapped to weight columns) does not describe it."""
    cut_in: Callable[[Any, torch.Tensor], bool] | None = None
    """Cuts the input side given the kept indices, where a selection along `in_dims` cannot (a grouped
    conv narrowed within its groups); returns False to fall back to `in_dims` and `set_in`. A producer
    with a `cut_in` and more than one channel per group on both sides is narrowed within its groups."""

    def channel_dim(self, module: Any) -> int:
        return self.act_dim_of(module) if self.act_dim_of is not None else self.act_dim

    def dims_for(self, module: Any, role: str) -> dict[str, int]:
        if self.role_dims is not None:
            return self.role_dims(module, role)
        return self.in_dims(module) if role == "in" else self.out_dims(module)

    def set_size(self, module: Any, role: str, n: int) -> None:
        if self.set_role is not None:
            self.set_role(module, role, n)
        else:
            (self.set_in if role == "in" else self.set_out)(module, n)


LAYERS: Registry[LayerRule] = Registry("layer rule")


def rule_of(module: nn.Module) -> LayerRule | None:
    for cls in type(module).__mro__:
        if cls.__name__ in LAYERS:
            return LAYERS.get(cls.__name__)
    return None


def _select(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Replace tensor `name` by its kept slices along `dim`, as a fresh (unshared) tensor."""
    old = getattr(module, name, None)
    if old is None:
        return
    new = old.detach().index_select(dim, keep.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module._buffers[name] = new


def prune_module(module: nn.Module, role: str, keep: torch.Tensor) -> None:
    """Keep channels `keep` (sorted indices) of `module` on the side `role`: `out`, `in` or `both`."""
    rule = rule_of(module)
    assert rule is not None, f"no layer rule for {type(module).__name__}"
    if role == "in" and rule.cut_in is not None and rule.cut_in(module, keep):
        return
    for name, dim in rule.dims_for(module, role).items():
        _select(module, name, dim, keep)
    rule.set_size(module, role, len(keep))


def register_layer(*names: str, rule: LayerRule) -> None:
    for name in names:
        LAYERS.register(name, rule)


# -- linear and embedding ----------------------------------------------------------------------
def _set_attr(attr: str) -> SetSize:
    return lambda m, n: setattr(m, attr, n)


register_layer(
    "Linear",
    rule=LayerRule(
        out_dims=lambda m: {"weight": 0, "bias": 0},
        in_dims=lambda m: {"weight": 1},
        set_out=_set_attr("out_features"),
        set_in=_set_attr("in_features"),
        act_dim=-1,
    ),
)
# transformers' GPT-2 Conv1D is a linear layer with a transposed weight [in, out]
register_layer(
    "Conv1D",
    rule=LayerRule(
        out_dims=lambda m: {"weight": 1, "bias": 0},
        in_dims=lambda m: {"weight": 0},
        set_out=_set_attr("nf"),
        set_in=_set_attr("nx"),
        act_dim=-1,
    ),
)
register_layer(
    "Embedding",
    rule=LayerRule(out_dims=lambda m: {"weight": 1}, set_out=_set_attr("embedding_dim"), act_dim=-1),
)


# -- convolutions --------------------------------------------------------------------------------
def _conv_kind(m: Any) -> Kind:
    return "producer"


def _conv_in_dims(m: Any) -> dict[str, int]:
    # a grouped conv's weight holds one group's inputs: `_conv_cut_in` maps the kept channels onto it
    return {"weight": 1} if m.groups == 1 else {}


def _conv_cut_in(m: Any, keep: torch.Tensor) -> bool:
    """A grouped conv either loses whole groups (depthwise-like: the graph couples a group's inputs
    with its outputs) or keeps every group and loses the same positions in each (narrowed: the graph
    couples position j of every group); which one is read off the kept indices."""
    if m.groups == 1:
        return False
    per_group = m.in_channels // m.groups
    present = int(torch.unique(keep // per_group).numel())
    if present == m.groups:  # narrowed: the first group's kept positions are every group's
        _select(m, "weight", 1, keep[keep < per_group])
    else:  # whole groups went: the channels per group stay
        m.groups = present
    m.in_channels = len(keep)
    return True


def _conv_group_size(m: Any) -> tuple[int, int]:
    return (0, 0) if m.groups == 1 else (m.in_channels // m.groups, m.out_channels // m.groups)


register_layer(
    "Conv1d",
    "Conv2d",
    "Conv3d",
    rule=LayerRule(
        out_dims=lambda m: {"weight": 0, "bias": 0},
        in_dims=_conv_in_dims,
        set_out=_set_attr("out_channels"),
        set_in=_set_attr("in_channels"),
        kind=_conv_kind,
        group_size=_conv_group_size,
        cut_in=_conv_cut_in,
    ),
)


def _convt_kind(m: Any) -> Kind:
    return "producer" if m.groups == 1 else "opaque"


register_layer(
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    rule=LayerRule(
        out_dims=lambda m: {"weight": 1, "bias": 0},
        in_dims=lambda m: {"weight": 0},
        set_out=_set_attr("out_channels"),
        set_in=_set_attr("in_channels"),
        kind=_convt_kind,
    ),
)


# -- normalization ------------------------------------------------------------------------------
_NORM_TENSORS = {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}

register_layer(
    "_BatchNorm",
    "_InstanceNorm",
    rule=LayerRule(
        out_dims=lambda m: dict(_NORM_TENSORS),
        set_out=_set_attr("num_features"),
        kind=lambda m: "passthrough",
    ),
)


def _ln_kind(m: Any) -> Kind:
    # normalizing over several dims mixes channels with positions: we do not cut those
    return "passthrough" if len(getattr(m, "normalized_shape", (0,))) == 1 else "opaque"


def _ln_set(m: Any, n: int) -> None:
    if hasattr(m, "normalized_shape"):  # RMSNorm-likes of transformers keep only a weight
        m.normalized_shape = (n,)


def _ln_dim(m: Any) -> int:
    # transformers' ConvNeXt LayerNorm (data_format="channels_first") and timm's LayerNorm2d (permutes
    # NCHW to NHWC and back) are LayerNorm subclasses that normalise dim 1
    channels_first = getattr(m, "data_format", "") == "channels_first"
    return 1 if channels_first or type(m).__name__.startswith("LayerNorm2d") else -1


register_layer(
    "LayerNorm",
    "RMSNorm",
    "LlamaRMSNorm",
    rule=LayerRule(
        out_dims=lambda m: {"weight": 0, "bias": 0},
        set_out=_ln_set,
        kind=_ln_kind,
        act_dim=-1,
        act_dim_of=_ln_dim,
    ),
)


def _gn_set(m: Any, n: int) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels, m.num_groups = n, 1 if m.num_groups == 1 else n // per_group


def _gn_group_size(m: Any) -> tuple[int, int]:
    # one group (PoolFormer's GroupNorm1, a LayerNorm over C, H, W) stays one group whatever is cut
    per_group = m.num_channels // m.num_groups
    return (0, 0) if m.num_groups == 1 else (per_group, per_group)


register_layer(
    "GroupNorm",
    rule=LayerRule(
        out_dims=lambda m: {"weight": 0, "bias": 0},
        set_out=_gn_set,
        kind=lambda m: "passthrough",
        group_size=_gn_group_size,
    ),
)
