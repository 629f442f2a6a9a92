"""Channel-flow handlers for ops that join or split channels: cat, stack, split/chunk, slicing.

A forward that splits or slices its channels usually does it with sizes fixed when the model was
built (`torch.split(x, self.width, 1)`, `x[:, :self.in_channels]`); those sizes are constants in the
traced graph and stay what they were after a cut. So:
- `chunk` (a count) keeps working when every piece loses the same positions: the pieces are coupled
  position by position.
- `split` by sizes works only where the module that owns the sizes is registered in `SPLITS` (a rule
  says whether its pieces may shrink independently or must stay equal, and re-derives the sizes from
  the cut layers afterwards, `fix_splits`); elsewhere the split tensor's channels are kept whole.
- a slice of part of the channels is kept whole (its bounds would no longer match).
Every channel kept whole this way is noted (`Analyzer.notes`) with the module and the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch.fx as fx
import torch.nn as nn

from torchslim.prune.flow import Analyzer, Chan, Out, _module_path
from torchslim.prune.flow_ops import _arg, _first, bind_param, register
from torchslim.registry import Registry


@dataclass(frozen=True)
class SplitRule:
    """How a module's own `split` of its channels may change, and how to write the new sizes back."""

    mode: Literal["pieces", "equal"]
    """pieces: each piece may lose any channels; equal: all pieces lose the same positions."""
    fix: Callable[[Any], None]
    """Sets the module's size attributes from its (cut) layers."""


SPLITS: Registry[SplitRule] = Registry("split-size rule")
SIZE_FIXES: Registry[Callable[[Any], None]] = Registry("size-attribute fix")
"""Class name -> sets a module's size attributes from its cut tensors (a shape its forward views by)."""


def _owner(an: Analyzer, n: fx.Node) -> nn.Module | None:
    """The module whose forward runs `n`."""
    return an.modules.get(_module_path(n))


def split_rule(module: nn.Module | None) -> SplitRule | None:
    for cls in type(module).__mro__ if module is not None else ():
        if cls.__name__ in SPLITS:
            return SPLITS.get(cls.__name__)
    return None


def size_fix(module: nn.Module | None) -> Callable[[Any], None] | None:
    for cls in type(module).__mro__ if module is not None else ():
        if cls.__name__ in SIZE_FIXES:
            return SIZE_FIXES.get(cls.__name__)
    return None


def fix_splits(model: nn.Module) -> None:
    """After a cut: every registered module writes its split sizes and shapes back."""
    for module in model.modules():
        rule, fix = split_rule(module), size_fix(module)
        if rule is not None:
            rule.fix(module)
        if fix is not None:
            fix(module)


def keep_whole(an: Analyzer, n: fx.Node, ids: np.ndarray, why: str) -> None:
    an.freeze(ids)
    path = _module_path(n) or "the model's own forward"
    an.notes.setdefault(path, why)


@register("cat", "concat", "concatenate")
def cat(an: Analyzer, n: fx.Node, out: Any) -> Out:
    tensors = n.args[0] if n.args else n.kwargs["tensors"]
    d = _arg(n, 1, "dim", 0, an) % out.ndim
    positions = {c.dim for _, c in an.tracked_args(n)}
    if not positions:
        return None
    if positions == {d}:
        return Chan(np.concatenate([an.ids_at(t, d) for t in tensors]), d)  # type: ignore[union-attr]
    if len(positions) == 1:  # joined along another dim (tokens): channels align, as in `add`
        p = positions.pop()
        lead = next(c.ids for _, c in an.tracked_args(n))
        for t in tensors:  # type: ignore[union-attr]
            c = an.chan.get(t) if isinstance(t, fx.Node) else None
            if isinstance(c, Chan) and c.dim == p:
                an.uf.union(lead, c.ids)
            elif not bind_param(an, t, lead):  # a class token is cut with the tokens' channels
                an.uf.union(lead, an.ids_at(t, p))
        return Chan(lead, p)
    an.freeze_args(n)
    return None


@register("stack")
def stack(an: Analyzer, n: fx.Node, out: Any) -> Out:
    """Stacked tensors align channel to channel (selective-kernel paths), as in `add`."""
    tensors = n.args[0] if n.args else n.kwargs["tensors"]
    d = _arg(n, 1, "dim", 0, an) % out.ndim
    tracked = an.tracked_args(n)
    positions = {c.dim for _, c in tracked}
    if len(positions) != 1:
        an.freeze_args(n)
        return None
    p = positions.pop()
    lead = tracked[0][1].ids
    for t in tensors:  # type: ignore[union-attr]
        an.uf.union(lead, an.ids_at(t, p))
    return Chan(lead, p + 1 if d <= p else p)


@register("split", "chunk", "tensor_split", "split_with_sizes")
def split(an: Analyzer, n: fx.Node, out: Any) -> Out:
    x = _first(n)
    c = an.chan.get(x)
    if not isinstance(c, Chan):
        return None
    d = _arg(n, 2, "dim", 0, an) % an.value(x).ndim
    if d != c.dim:
        return [Chan(c.ids, c.dim) for _ in out]
    bounds = np.cumsum([0] + [int(t.shape[d]) for t in out]).tolist()
    pieces = [c.ids[a:b] for a, b in itertools.pairwise(bounds)]
    rule = split_rule(_owner(an, n))
    name = str(n.target) if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    mode = rule.mode if rule is not None else "equal" if name == "chunk" else None
    if mode == "equal" and len({len(p) for p in pieces}) == 1:
        for p in pieces[1:]:
            an.uf.union(pieces[0], p)
    elif mode != "pieces":
        why = "split by sizes fixed in its forward" if mode is None else "chunks of unequal sizes"
        keep_whole(
            an, n, c.ids, f"channels kept: {why} (register a rule in torchslim.prune.flow_split.SPLITS)"
        )
    return [Chan(p, d) for p in pieces]


@register("getitem")
def getitem(an: Analyzer, n: fx.Node, out: Any) -> Out:
    base, index = n.args[0], fx.node.map_aggregate(n.args[1], an.value)
    c = an.chan.get(base)  # type: ignore[arg-type]
    if isinstance(c, list):
        return c[index] if isinstance(index, int) else None
    if not isinstance(c, Chan):
        return None
    entries = index if isinstance(index, tuple) else (index,)
    if any(not isinstance(e, (int, slice, type(None), type(Ellipsis))) for e in entries):
        an.freeze(c.ids)
        return None
    explicit = sum(1 for e in entries if e is not None and e is not Ellipsis)
    ndim = an.value(base).ndim
    expanded: list[Any] = []
    for e in entries:
        expanded += [slice(None)] * (ndim - explicit) if e is Ellipsis else [e]
    d_in = d_out = 0
    for e in expanded:
        if e is None:
            d_out += 1
            continue
        if d_in == c.dim:
            return _slice(an, n, c, e, d_out)
        d_in, d_out = d_in + 1, d_out + (0 if isinstance(e, int) else 1)
    return Chan(c.ids, d_out + c.dim - d_in)


def _slice(an: Analyzer, n: fx.Node, c: Chan, e: Any, d_out: int) -> Out:
    if isinstance(e, slice) and len(c.ids[e]) == len(c.ids):
        return Chan(c.ids, d_out)
    keep_whole(an, n, c.ids, "channels kept: sliced by bounds fixed in its forward")
    return Chan(c.ids[e], d_out) if isinstance(e, slice) else None


# -- known owners of channel splits -----------------------------------------------------------------
def _mixed_conv_fix(m: Any) -> None:
    """timm's MixedConv2d: one conv per piece of the input, outputs concatenated."""
    convs = list(m.values())
    m.splits = [int(conv.in_channels) for conv in convs]
    m.in_channels, m.out_channels = sum(m.splits), sum(int(conv.out_channels) for conv in convs)


def _cross_stage_fix(m: Any) -> None:
    """timm's CrossStage(3): the expansion conv's output is split in two halves."""
    m.expand_chs = int(m.conv_exp.conv.out_channels) if hasattr(m.conv_exp, "conv") else m.expand_chs


def _res2net_fix(m: Any) -> None:
    """timm's Bottle2neck: conv1's output is split into `scale` pieces of `width`."""
    m.width = int(m.convs[0].in_channels)


def _selective_kernel_fix(m: Any) -> None:
    """timm's SelectiveKernel with split_input: each path takes one piece of the input."""
    if m.split_input:
        first = m.paths[0].conv if hasattr(m.paths[0], "conv") else m.paths[0]
        m.in_channels = int(first.in_channels) * m.num_paths


SPLITS.register("MixedConv2d", SplitRule("pieces", _mixed_conv_fix))
SPLITS.register("CrossStage", SplitRule("equal", _cross_stage_fix))
SPLITS.register("CrossStage3", SplitRule("equal", _cross_stage_fix))
SPLITS.register("Bottle2neck", SplitRule("equal", _res2net_fix))
SPLITS.register("SelectiveKernel", SplitRule("equal", _selective_kernel_fix))


def _scale_fix(m: Any) -> None:
    """timm's MetaFormer Scale: `x * scale.view(self.shape)`."""
    m.shape = (m.scale.shape[0], 1, 1) if len(m.shape) == 3 else (m.scale.shape[0],)


SIZE_FIXES.register("Scale", _scale_fix)
