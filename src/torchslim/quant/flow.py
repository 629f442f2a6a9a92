"""Where each layer's output goes, traced on one batch; and the two deployment rewrites built on it.

- `fold_batchnorm`: a convolution whose output feeds only a BatchNorm (eval statistics) takes the
  BatchNorm into its weight and bias, and the BatchNorm becomes `nn.Identity`. Done before static
  quantization (per-channel weights, whose scales absorb the per-channel factor), as every deployment
  quantizer does: a float BatchNorm between integer convolutions keeps onnxruntime from fusing them.
- `share_boundaries`: a static layer whose output reaches the next static layer only through ops that
  commute with a monotone quantizer (ReLU, max pooling, flatten/reshape, eval dropout) quantizes its
  output on that layer's *input* grid. Both grids were calibrated by us; a double rounding
  (out grid, then in grid) becomes one (in grid), and onnxruntime sees one scale per tensor, so it
  runs max pooling on uint8, drops ReLU into the quantizer and fuses QLinearConv / QGemm chains.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from torchslim.data import call
from torchslim.quant.modules import QuantModule

GRID_PRESERVING = frozenset(
    {"relu", "relu_", "max_pool1d", "max_pool2d", "flatten", "reshape", "view", "contiguous", "dropout"}
)
"""Functions whose output lies on the grid of their (only) tensor input: a quantizer commutes with them."""


@dataclass
class Flow:
    consumers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """watched module -> watched modules its output reaches (through the pass-through functions)."""
    escaped: set[str] = field(default_factory=set)
    """watched modules whose output also reaches anything else (another op, the model's output)."""
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _Tracer(TorchFunctionMode):
    def __init__(self, passthrough: frozenset[str]) -> None:
        super().__init__()
        self.passthrough, self.flow = passthrough, Flow()
        self.origin: dict[int, str] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.depth = 0

    def tag(self, out: Any, name: str) -> None:
        if isinstance(out, torch.Tensor):
            self.origin[id(out)] = name
            self.alive.append(out)
        else:
            self.flow.escaped.add(name)

    def sources(self, tree: Any) -> set[str]:
        return {self.origin[id(t)] for t in tree_leaves(tree) if id(t) in self.origin}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth or not any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
            return out  # inside a watched layer, or shape queries (dim, size) that carry no values
        srcs = self.sources((args, kwargs))
        if not srcs:
            return out
        name = getattr(func, "__name__", "")
        training = args[2] if len(args) > 2 else kwargs.get("training", True)
        passes = name in self.passthrough and (name != "dropout" or not training)
        if passes and len(srcs) == 1 and isinstance(out, torch.Tensor) and id(args[0]) in self.origin:
            self.tag(out, srcs.pop())
        else:
            self.flow.escaped |= srcs
        return out


@torch.no_grad()
def trace(
    model: nn.Module, watched: Mapping[str, nn.Module], inputs: Any, passthrough: frozenset[str]
) -> Flow:
    """Run `inputs` through `model` (eval) and record where each watched module's output goes."""
    tracer = _Tracer(passthrough)
    handles = []
    for name, mod in watched.items():

        def pre(mod: nn.Module, args: Any, name: str = name) -> None:
            for src in tracer.sources(args):
                tracer.flow.consumers[src].append(name)
            tracer.flow.calls[name] += 1
            tracer.depth += 1

        def post(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            tracer.depth -= 1
            tracer.tag(out, name)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    was_training = model.training
    model.eval()
    try:
        with tracer:
            out = call(model, inputs)
        tracer.flow.escaped |= tracer.sources(out)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return tracer.flow


def only_consumer(flow: Flow, name: str) -> str | None:
    """The single watched module `name`'s output goes to, if it goes nowhere else (one call each)."""
    users = flow.consumers.get(name, [])
    alone = len(users) == 1 and name not in flow.escaped and flow.calls[name] == 1
    return users[0] if alone and flow.calls[users[0]] == 1 else None


BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def sole_batchnorms(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    inputs: Any,
    types: tuple[type[nn.modules.batchnorm._BatchNorm], ...] = BATCHNORMS,
) -> dict[str, tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """{layer: (name, batchnorm)} for each of `layers` whose output goes only to a BatchNorm of
    `types` with running statistics, traced on `inputs`."""
    norms = {n: m for n, m in model.named_modules() if isinstance(m, types) and m.running_mean is not None}
    if not norms or not layers:
        return {}
    flow = trace(model, {**layers, **norms}, inputs, frozenset())
    pairs = {name: only_consumer(flow, name) for name in layers}
    return {name: (bn, norms[bn]) for name, bn in pairs.items() if bn is not None and bn in norms}


def batchnorm_factor(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """gamma / sqrt(var + eps) per channel: what an eval-mode BatchNorm multiplies its input by."""
    assert bn.running_var is not None
    factor = torch.rsqrt(bn.running_var + bn.eps)
    return factor * bn.weight if bn.weight is not None else factor


@torch.no_grad()
def fold_batchnorm(model: nn.Module, convs: Mapping[str, nn.Module], inputs: Any) -> dict[str, str]:
    """Fold each BatchNorm that alone consumes one of `convs` into it; returns {conv: batchnorm}."""
    folded: dict[str, str] = {}
    for name, (bn_name, bn) in sole_batchnorms(model, convs, inputs).items():
        conv = convs[name]
        if not parametrize.is_parametrized(conv):
            fold_into(conv, bn)
            replace(model, bn_name, nn.Identity())
            folded[name] = bn_name
    return folded


def fold_into(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    assert isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, BATCHNORMS)
    assert bn.running_mean is not None and bn.running_var is not None
    factor = batchnorm_factor(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    bias = (bias - bn.running_mean) * factor + (bn.bias if bn.bias is not None else 0.0)
    conv.weight.copy_(conv.weight * factor.reshape(-1, *[1] * (conv.weight.dim() - 1)))
    conv.bias = nn.Parameter(bias.detach().clone())


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def share_boundaries(model: nn.Module, layers: Mapping[str, nn.Module], inputs: Any) -> dict[str, str]:
    """Quantize static outputs on the next static layer's input grid; returns {layer: next layer}."""
    static = {n: m for n, m in layers.items() if isinstance(m, QuantModule) and m.activations == "static"}
    flow = trace(model, dict(static), inputs, GRID_PRESERVING)
    shared: dict[str, str] = {}
    for name, mod in static.items():
        nxt = only_consumer(flow, name)
        if nxt is None or hasattr(static[nxt], "smooth"):  # SmoothQuant scales the input before its grid
            continue
        with torch.no_grad():
            mod.out_scale = static[nxt].in_scale.clone()
            mod.out_zero = static[nxt].in_zero.clone()
        mod.refresh()
        shared[name] = nxt
    return shared
