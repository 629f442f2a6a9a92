"""Channel flow through attention written out in a forward (timm's `Attention`): heads as units.

A fused q/k/v projection is viewed as (..., 3, heads, head_dim) and the heads meet again only in the
output projection, so a head (its q, k and v channels) is a unit: the view tracks the heads dim and
couples every position of one head; `unbind`, `scaled_dot_product_attention` and batched `matmul`
carry the heads through; merging heads and head_dim back is the ordinary reshape. The forward views
by its own `num_heads`, so this is followed only in modules a `HEADS` rule knows how to fix after the
cut. Whole heads keep the softmax scale (head_dim) as it was, so zeroed heads cut exactly.

A view whose target size is read off a tracked tensor's channel dim (`reshape(B, N, C)` with
`C = x.shape[-1]`) ties its output to those channels: they follow the view where it carries them,
and are kept whole where it does not (they would otherwise shrink apart).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn

from torchslim.prune.flow import OPS, Analyzer, Chan, Out, _module_path, is_tensor
from torchslim.prune.flow_ops import _first, reshape
from torchslim.prune.flow_split import keep_whole
from torchslim.registry import Registry


@dataclass(frozen=True)
class HeadRule:
    applies: Callable[[Any], bool]
    """Whether this instance has the layout the rule fixes (class names are shared across libraries)."""
    fix: Callable[[Any], None]
    """Sets the head count (and derived sizes) from the cut projection."""


HEADS: Registry[HeadRule] = Registry("attention-heads rule")


def head_rule(module: nn.Module | None) -> HeadRule | None:
    for cls in type(module).__mro__ if module is not None else ():
        if cls.__name__ in HEADS:
            rule = HEADS.get(cls.__name__)
            return rule if rule.applies(module) else None
    return None


def fix_heads(model: nn.Module) -> None:
    for module in model.modules():
        rule = head_rule(module)
        if rule is not None:
            rule.fix(module)


def _timm_applies(m: Any) -> bool:
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    layout = all(isinstance(getattr(m, a, None), int) for a in ("num_heads", "head_dim", "attn_dim"))
    return isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and layout


def _timm_fix(m: Any) -> None:
    m.num_heads = m.qkv.out_features // (3 * m.head_dim)
    m.attn_dim = m.num_heads * m.head_dim


HEADS.register("Attention", HeadRule(_timm_applies, _timm_fix))


# -- views ---------------------------------------------------------------------------------------
def view(an: Analyzer, n: fx.Node, out: Any) -> Out:
    links = _size_links(an, n)
    result = _heads_split(an, n, out)
    if result is None:
        result = reshape(an, n, out)
    for j, ids in links:
        if isinstance(result, Chan) and result.dim == j and len(result.ids) == len(ids):
            an.uf.union(result.ids, ids)
        else:
            keep_whole(an, n, ids, "channels kept: a view sizes a dim by them that does not carry them")
    return result


for _name in ("view", "reshape"):
    OPS.register(_name, view, replace=True)


def _heads_split(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """(..., 3 * H * D, ...) viewed as (..., 3, H, D, ...) in a module with a `HEADS` rule: heads tracked."""
    x = _first(n)
    c = an.chan.get(x)
    if not isinstance(c, Chan) or not is_tensor(out) or head_rule(an.modules.get(_module_path(n))) is None:
        return None
    shape_in, shape_out, d = list(an.value(x).shape), list(out.shape), c.dim
    before, after = math.prod(shape_in[:d]), math.prod(shape_in[d + 1 :])
    for j in range(len(shape_out)):
        if math.prod(shape_out[:j]) != before:
            continue
        for end in range(j + 2, len(shape_out) + 1):
            if math.prod(shape_out[j:end]) == shape_in[d] and math.prod(shape_out[end:]) == after:
                ids = c.ids.reshape(shape_out[j:end])
                heads = np.moveaxis(ids, -2, 0).reshape(ids.shape[-2], -1)
                for row in heads:
                    an.uf.union_all(row)
                return Chan(heads[:, 0].copy(), end - 2)
    return None


def _size_links(an: Analyzer, n: fx.Node) -> list[tuple[int, np.ndarray]]:
    """(output dim, channel ids) for every target size read off a tracked tensor's channel dim."""
    sizes = n.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = tuple(sizes[0])
    out = []
    for j, s in enumerate(sizes):
        source = _size_source(s)
        if source is None:
            continue
        y, k, query = source
        c, ndim = an.chan.get(y), _ndims(an).get(query)
        if isinstance(c, Chan) and ndim is not None and k % ndim == c.dim:
            out.append((j, c.ids))
    return out


def _ndims(an: Analyzer) -> dict[fx.Node, int]:
    """Size-query node -> rank of the tensor it queried (the interpreter frees values after last use)."""
    return vars(an).setdefault("_queried_ranks", {})


def shape_query(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """`x.shape` / `x.size()`: no channels, but the rank is noted for `_size_links`."""
    x = n.args[0] if n.args else None
    if isinstance(x, fx.Node) and is_tensor(an.value(x)):
        _ndims(an)[n] = an.value(x).ndim
    return None


OPS.register("getattr", shape_query, replace=True)
OPS.register("size", shape_query, replace=True)


def _size_source(s: Any) -> tuple[fx.Node, int, fx.Node] | None:
    """(tensor, dim, query node) when `s` is `y.shape[k]`, `y.size()[k]` or `y.size(k)`."""
    if not isinstance(s, fx.Node):
        return None
    if s.op == "call_method" and s.target == "size" and len(s.args) == 2 and isinstance(s.args[1], int):
        return s.args[0], s.args[1], s  # type: ignore[return-value]
    if getattr(s.target, "__name__", "") != "getitem" or not isinstance(s.args[1], int):
        return None
    base = s.args[0]
    if not isinstance(base, fx.Node) or not isinstance(base.args[0] if base.args else None, fx.Node):
        return None
    query = base.op == "call_method" and base.target == "size" and len(base.args) == 1
    shape = getattr(base.target, "__name__", "") == "getattr" and base.args[1:] == ("shape",)
    return (base.args[0], s.args[1], base) if query or shape else None  # type: ignore[return-value]


# -- ops that carry heads --------------------------------------------------------------------------
def unbind(an: Analyzer, n: fx.Node, out: Any) -> Out:
    x = _first(n)
    c = an.chan.get(x)
    if not isinstance(c, Chan):
        return None
    dim = (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)) % an.value(x).ndim
    if dim == c.dim:
        an.freeze(c.ids)
        return None
    return [Chan(c.ids, c.dim - (1 if dim < c.dim else 0)) for _ in out]


def attention(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """q, k, v (and a mask) aligned on a batch-like dim (the heads) share it; anything else stays."""
    tracked = an.tracked_args(n)
    if not tracked or not is_tensor(out):
        return None
    dims = {c.dim - an.value(a).ndim for a, c in tracked}
    lead = tracked[0][1].ids
    p = next(iter(dims))
    if len(dims) != 1 or p > -3 or any(len(c.ids) != len(lead) for _, c in tracked):
        an.freeze_args(n)
        return None
    for _, c in tracked[1:]:
        an.uf.union(lead, c.ids)
    names = {a for a, _ in tracked}
    for a in an.arg_nodes(n):  # an untracked mask or bias spanning the heads pins them
        v = an.value(a)
        if a not in names and is_tensor(v) and v.ndim >= -p and v.shape[p] == len(lead) and len(lead) > 1:
            an.freeze(lead)
    return Chan(lead, out.ndim + p)


def matmul(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """Batched matmul over the heads (q @ k^T, attn @ v): as attention; other uses freeze."""
    a, b = n.args[0], n.args[1]
    ndims = {getattr(an.value(t), "ndim", 0) for t in (a, b)}
    if len(ndims) != 1 or min(ndims) < 3:
        an.freeze_args(n)
        return None
    return attention(an, n, out)


OPS.register("unbind", unbind, replace=True)
OPS.register("scaled_dot_product_attention", attention, replace=True)
for _name in ("matmul", "bmm"):
    OPS.register(_name, matmul, replace=True)


def shift(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """`roll` / `flip` over token or spatial dims (Swin's shifted windows) keep the channels in place."""
    x = _first(n)
    c = an.chan.get(x)
    if not isinstance(c, Chan):
        return None
    roll = getattr(n.target, "__name__", n.target) == "roll"
    given = n.args[2:] if roll else n.args[1:]
    dims = list(given[0] if len(given) == 1 and isinstance(given[0], (list, tuple)) else given)
    named = n.kwargs.get("dims")
    dims = dims or (list(named) if isinstance(named, (list, tuple)) else [named])
    ndim = an.value(x).ndim
    if any(not isinstance(d, (int, np.integer)) or d % ndim == c.dim for d in dims):
        an.freeze(c.ids)  # a roll without dims flattens, a flip of the channels reorders them
        return None
    return Chan(c.ids, c.dim)


for _name in ("roll", "flip"):
    OPS.register(_name, shift, replace=True)
