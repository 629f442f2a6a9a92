"""Channel-flow handlers for registered layers and common ops (see `flow.py` for the contract)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn

from torchslim.prune.flow import OPS, Analyzer, Chan, Handler, Out, _module_path, is_tensor
from torchslim.prune.layers import rule_of

__all__ = ["Analyzer", "layer_flow"]


def register(*names: str) -> Any:
    def add(fn: Handler) -> Handler:
        for name in names:
            OPS.register(name, fn)
        return fn

    return add


def _first(n: fx.Node) -> Any:
    return n.args[0] if n.args else next(iter(n.kwargs.values()))


def _arg(n: fx.Node, i: int, name: str, default: Any, an: Analyzer) -> Any:
    raw = n.args[i] if len(n.args) > i else n.kwargs.get(name, default)
    return fx.node.map_aggregate(raw, an.value)


# -- registered layers ----------------------------------------------------------------------------
def layer_flow(an: Analyzer, n: fx.Node, module: nn.Module, out: Any) -> Out:
    path, rule = str(n.target), rule_of(module)
    kind = "opaque" if path in an.opaque or rule is None else rule.kind(module)
    x = _first(n)
    if rule is not None and rule.flow is not None and kind != "opaque":
        return rule.flow(an, n, module, out)
    if kind == "opaque" or rule is None or not is_tensor(out) or not is_tensor(an.value(x)):
        an.freeze_args(n)
        return None
    for a, c in an.tracked_args(n):
        if a is not x:
            an.freeze(c.ids)
    act = rule.channel_dim(module)
    dim_in, dim_out = act % an.value(x).ndim, act % out.ndim
    gi, go = rule.group_size(module)
    if kind == "passthrough":
        ids = an.record((path, "both"), an.ids_at(x, dim_in))
        for g in range(0, len(ids), gi or 1):
            an.uf.union_all(ids[g : g + gi]) if gi > 1 else None
        if path in an.protected:  # its outputs are its inputs
            an.freeze(ids)
        return Chan(ids, dim_out)
    tracked = an.chan.get(x)
    pointwise = rule.act_dim == -1 and not gi  # linear-like: every other dim maps to itself
    if pointwise and isinstance(tracked, Chan) and tracked.dim != dim_in and out.ndim == an.value(x).ndim:
        return _across(an, path, module, x, out, tracked, (dim_in, dim_out))
    out_ids = an.produce((path, "out"), int(out.shape[dim_out]))
    if path in an.protected:
        an.freeze(out_ids)
    if rule.in_dims(module) or gi:
        in_ids = an.record((path, "in"), an.ids_at(x, dim_in))
        if gi > 1 and go > 1 and rule.cut_in is not None:
            _narrow_groups(an, in_ids, out_ids, (gi, go))
            return Chan(out_ids, dim_out)
        for g in range(len(in_ids) // gi if gi else 0):
            an.uf.union_all(np.concatenate([in_ids[g * gi : (g + 1) * gi], out_ids[g * go : (g + 1) * go]]))
    return Chan(out_ids, dim_out)


def _narrow_groups(an: Analyzer, in_ids: np.ndarray, out_ids: np.ndarray, sizes: tuple[int, int]) -> None:
    """A grouped conv with several channels per group on both sides keeps its group count and loses
    the same positions from every group (Torch-Pruning's grouped-conv pruning): position j of each
    group is one unit, on the input and output sides independently. Depthwise-like convs (one channel
    per group on a side) still lose whole groups, their inputs with their outputs."""
    for ids, size in zip((in_ids, out_ids), sizes, strict=True):
        for j in range(size):
            an.uf.union_all(ids[j::size])


def _across(
    an: Analyzer, path: str, module: nn.Module, x: Any, out: Any, c: Chan, dims: tuple[int, int]
) -> Out:
    """A layer applied along another dim than the tracked channels (an MLP-Mixer token MLP): those
    channels pass through; the layer's own channels are kept (a tensor tracks one dim)."""
    rule = rule_of(module)
    if rule is not None and rule.in_dims(module):
        an.record((path, "in"), an.uf.new(int(an.value(x).shape[dims[0]]), frozen=True))
    an.freeze(an.produce((path, "out"), int(out.shape[dims[1]])))
    return Chan(c.ids, c.dim)


# -- channel-preserving ops ---------------------------------------------------------------------
_UNARY = [
    "ReLU",
    "ReLU6",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "Hardswish",
    "Hardsigmoid",
    "LeakyReLU",
    "ELU",
    "Mish",
    "Softplus",
    "Softmax",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "Identity",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "Upsample",
    "UpsamplingNearest2d",
    "UpsamplingBilinear2d",
    "ZeroPad2d",
    "ConstantPad1d",
    "ConstantPad2d",
    "ReflectionPad1d",
    "ReflectionPad2d",
    "ReplicationPad2d",
    "relu",
    "relu_",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "elu",
    "mish",
    "softmax",
    "dropout",
    "interpolate",
    "upsample",
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "pad",
    "contiguous",
    "clone",
    "float",
    "half",
    "to",
    "detach",
    "neg",
    "abs",
    "exp",
    "sqrt",
    "rsqrt",
    "erf",
    "sin",
    "cos",
    "square",
]


@register(*_UNARY)
def passthrough(an: Analyzer, n: fx.Node, out: Any) -> Out:
    x = _first(n)
    c = an.chan.get(x)
    ok = isinstance(c, Chan) and is_tensor(out) and out.ndim == an.value(x).ndim
    if not ok or out.shape[c.dim] != len(c.ids):  # type: ignore[union-attr]
        an.freeze_args(n)
        return None
    for a, other in an.tracked_args(n):
        if a is not x:
            an.freeze(other.ids)
    return Chan(c.ids, c.dim)  # type: ignore[union-attr]


@register("size", "dim", "getattr", "numel", "type", "__len__", "eq", "ne", "lt", "gt", "le", "ge")
def ignore(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """Shape queries and comparisons: their results carry no channels (and do not constrain them)."""
    return None


@register("matmul", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention", "expand", "repeat")
@register("squeeze", "unsqueeze", "unbind", "roll", "flip", "gather", "index_select")
def freeze(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """Ops that mix channels with something else: the channels they touch are left alone."""
    an.freeze_args(n)
    return None


@register("add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "add_", "mul_", "pow", "where")
@register("maximum", "minimum", "floordiv", "mod", "addcmul", "addcdiv", "lerp")
def elementwise(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """Operands aligned channel to channel (broadcasting from the right) share their channel ids."""
    tracked = an.tracked_args(n)
    if not tracked:
        return None
    positions = {c.dim - an.value(a).ndim + out.ndim for a, c in tracked} if is_tensor(out) else set()
    lead = tracked[0][1].ids
    if len(positions) != 1 or out.shape[next(iter(positions))] != len(lead):
        an.freeze_args(n)
        return None
    p = positions.pop()
    for _, c in tracked[1:]:
        an.uf.union(lead, c.ids) if len(c.ids) == len(lead) else an.freeze(c.ids)
    tracked_nodes = {a for a, _ in tracked}
    for a in an.arg_nodes(n):
        if a not in tracked_nodes and _spans(an.value(a), out.ndim, p, len(lead)):
            _bind_param(an, a, lead)
    return Chan(lead, p)


def _spans(v: Any, ndim: int, p: int, size: int) -> bool:
    k = p - (ndim - getattr(v, "ndim", 0))
    return is_tensor(v) and k >= 0 and size > 1 and v.shape[k] == size


def _bind_param(an: Analyzer, a: fx.Node, lead: np.ndarray) -> None:
    """A full-size untracked operand: a parameter (layer scale, functional norm weight, position
    embedding, class token) is cut along; anything else freezes the channels."""
    if not bind_param(an, a, lead):
        an.freeze(lead)


_VIEWS = ("getitem", "view", "reshape", "unsqueeze", "expand", "expand_as", "to", "type_as", "float")


def _resizes(an: Analyzer, node: fx.Node, size: int) -> bool:
    """A view whose target shape holds the channel count as a constant (`.view(self.shape)`) is only
    cut when its module is registered in `SIZE_FIXES` (which writes the new shape back)."""
    ints: list[Any] = []
    fx.node.map_aggregate(node.args[1:], lambda v: ints.append(v) or v)  # type: ignore[func-returns-value]
    if not any(isinstance(v, int) and v == size for v in ints):
        return True
    from torchslim.prune.flow_split import size_fix

    return size_fix(an.modules.get(_module_path(node))) is not None


def bind_param(an: Analyzer, a: Any, lead: np.ndarray) -> bool:
    """Record parameter `a` (or a view or expansion of one) as cut along with channels `lead`, when
    exactly one of its dims has their size; False when `a` is not such a parameter."""
    node = a
    while isinstance(node, fx.Node) and node.op in ("call_function", "call_method"):
        if getattr(node.target, "__name__", node.target) not in _VIEWS or not _resizes(an, node, len(lead)):
            return False
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return False  # (the interpreter has freed the values of nodes we walked past)
    value = an.fetch_attr(str(node.target))
    dims = [d for d, s in enumerate(getattr(value, "shape", ())) if s == len(lead)]
    if len(dims) != 1 or len(lead) < 2:
        return False
    an.record((str(node.target), f"param{dims[0]}"), lead)
    return True


# -- ops that move channels ---------------------------------------------------------------------
@register("view", "reshape", "flatten", "Flatten", "view_as", "reshape_as")
def reshape(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """The dims before and after the channel dim reshaped among themselves (window partitions,
    flatten(0, 1)): channels kept; channel merged with the dims after it: ids repeated; with the
    dims before it: ids tiled."""
    x = _first(n)
    c = an.chan.get(x)
    if not isinstance(c, Chan):
        return None
    shape_in, shape_out, d = list(an.value(x).shape), list(out.shape), c.dim
    before, size = math.prod(shape_in[:d]), shape_in[d]
    for j in range(len(shape_out)):
        if math.prod(shape_out[:j]) != before:
            continue
        after = math.prod(shape_out[j + 1 :])
        if shape_out[j] == size and after == math.prod(shape_in[d + 1 :]):
            return Chan(c.ids, j)
        for end in range(d + 2, len(shape_in) + 1):
            if shape_out[j] == math.prod(shape_in[d:end]) and after == math.prod(shape_in[end:]):
                return Chan(np.repeat(c.ids, math.prod(shape_in[d + 1 : end])), j)
    for start in range(d - 1, -1, -1):  # merged with dims before it (Swin's patch merging): ids tiled
        j = next(
            (j for j in range(len(shape_out)) if math.prod(shape_out[:j]) == math.prod(shape_in[:start])), -1
        )
        merged = math.prod(shape_in[start : d + 1])
        if (
            j >= 0
            and shape_out[j] == merged
            and math.prod(shape_out[j + 1 :]) == math.prod(shape_in[d + 1 :])
        ):
            return Chan(np.tile(c.ids, math.prod(shape_in[start:d])), j)
    an.freeze(c.ids)
    return None


@register("permute", "transpose")
def permute(an: Analyzer, n: fx.Node, out: Any) -> Out:
    x = _first(n)
    c = an.chan.get(x)
    if not isinstance(c, Chan):
        return None
    ndim = an.value(x).ndim
    rest = [an.value(a) for a in n.args[1:]] or list(n.kwargs.values())
    if n.target in ("transpose",) or getattr(n.target, "__name__", "") == "transpose":
        a, b = (r % ndim for r in rest[:2])
        order = list(range(ndim))
        order[a], order[b] = b, a
    else:
        order = [r % ndim for r in (rest[0] if isinstance(rest[0], (list, tuple)) else rest)]
    return Chan(c.ids, order.index(c.dim))


@register("mean", "sum", "amax", "amin", "std", "var")
def reduce(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """Reducing other dims keeps channels; reducing the channel dim only drops them (no constraint)."""
    x = _first(n)
    c = an.chan.get(x)
    dims = _arg(n, 1, "dim", None, an)
    if not isinstance(c, Chan) or dims is None or not is_tensor(out):
        return None
    ndim = an.value(x).ndim
    dims = {d % ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    if c.dim in dims:
        return None
    keep = out.ndim == ndim
    return Chan(c.ids, c.dim if keep else c.dim - sum(1 for d in dims if d < c.dim))


@register("MultiheadAttention", "PrunedMultiheadAttention", "RNN", "PReLU")
@register("Transformer", "TransformerEncoder", "TransformerDecoder")
@register("TransformerEncoderLayer", "TransformerDecoderLayer")
def opaque_module(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """Known modules whose inputs' channels are left alone (the residual stream of torch's transformer
    layers stays whole; their heads and feed-forward sizes are cut as blocks, `torch_blocks.py`)."""
    an.freeze_args(n)
    return None
