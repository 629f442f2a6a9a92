"""Channel flow through a traced graph: one registered handler per op, run alongside real values.

A handler gets the analyzer, the node and its real output, and returns the output's `Chan` (channel
ids and dim), a list of them for tuple outputs, or None when the output carries no tracked channels.
Ops are keyed by name: a function's `__name__` (`add`, `cat`), a method name (`view`), or a leaf
module's class name (`ReLU`). An op that is not registered and sees tracked channels
leaves those channels whole and notes the op and the module path (`Analyzer.notes`); register a
handler to cut them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from torchslim.prune.graph import Chan, Graph, Group, Key, UnionFind
from torchslim.prune.layers import rule_of
from torchslim.registry import Registry

Out = Chan | list[Any] | None
Handler = Callable[["Analyzer", fx.Node, Any], Out]
OPS: Registry[Handler] = Registry("channel-flow op")


def op_name(node: fx.Node, module: nn.Module | None) -> str:
    if node.op == "call_module":
        return type(module).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


class Analyzer(fx.Interpreter):
    def __init__(
        self, model: nn.Module, graph: fx.Graph, opaque: set[str], protected: set[str] | None = None
    ) -> None:
        super().__init__(model, graph=graph)
        self.opaque = opaque
        self.protected = protected or set()
        """Layers whose output channels are frozen (excluded outputs); their inputs stay tracked."""
        self.uf = UnionFind()
        self.chan: dict[fx.Node, Out] = {}
        self.records: dict[Key, np.ndarray] = {}
        self.modules = dict(model.named_modules())
        self.notes: dict[str, str] = {}
        """Module path -> why channels there are kept whole (a construct the cut cannot follow)."""

    # -- bookkeeping ----------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op in ("call_function", "call_method", "call_module"):
            self.chan[n] = self.handle(n, out)
        elif n.op == "output":
            self.freeze_args(n)
        return out

    def handle(self, n: fx.Node, out: Any) -> Out:
        module = self.modules.get(str(n.target)) if n.op == "call_module" else None
        if module is not None and (str(n.target) in self.opaque or rule_of(module) is not None):
            from torchslim.prune.flow_ops import layer_flow

            return layer_flow(self, n, module, out)
        name = op_name(n, module)
        if name in OPS:
            return OPS.get(name)(self, n, out)
        if not self.tracked_args(n):
            return None
        path = str(n.target) if module is not None else _module_path(n)
        self.freeze_args(n)
        self.notes.setdefault(
            path or "the model's own forward",
            f"channels kept: op {name!r} is not followed (register a handler in torchslim.prune.flow.OPS)",
        )
        return None

    def value(self, a: Any) -> Any:
        return self.env[a] if isinstance(a, fx.Node) else a

    def arg_nodes(self, n: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), lambda x: found.append(x) or x)  # type: ignore[func-returns-value]
        return found

    def tracked_args(self, n: fx.Node) -> list[tuple[fx.Node, Chan]]:
        out = []
        for a in self.arg_nodes(n):
            c = self.chan.get(a)
            if isinstance(c, Chan):
                out.append((a, c))
            elif isinstance(c, list):
                out += [(a, x) for x in _flat(c)]
        return out

    def freeze(self, ids: np.ndarray) -> None:
        self.uf.frozen.extend(ids.tolist())

    def freeze_args(self, n: fx.Node) -> None:
        for _, c in self.tracked_args(n):
            self.freeze(c.ids)

    def ids_at(self, a: Any, dim: int) -> np.ndarray:
        """Ids of value `a` along `dim`, fresh and frozen when `a`'s channels are not tracked there."""
        c = self.chan.get(a) if isinstance(a, fx.Node) else None
        if isinstance(c, Chan) and c.dim == dim:
            return c.ids
        if isinstance(c, Chan):
            self.freeze(c.ids)
        return self.uf.new(int(self.value(a).shape[dim]), frozen=True)

    def record(self, key: Key, ids: np.ndarray) -> np.ndarray:
        """Note that tensor side `key` follows `ids`; a module called again must follow the same ids."""
        if key in self.records:
            self.uf.union(self.records[key], ids)
            return self.records[key]
        self.records[key] = ids
        return ids

    def produce(self, key: Key, n: int) -> np.ndarray:
        if key in self.records:
            return self.records[key]
        return self.record(key, self.uf.new(n, produced=True))

    # -- result -----------------------------------------------------------------------------------
    def result(self) -> Graph:
        find = self.uf.find
        frozen = {find(i) for i in self.uf.frozen}
        units = {find(i) for i in self.uf.produced} - frozen
        roots = {k: np.array([find(i) for i in ids.tolist()]) for k, ids in self.records.items()}
        touched: dict[int, list[Key]] = {}
        for key, rs in roots.items():
            for r in dict.fromkeys(rs.tolist()):
                if r in units:
                    touched.setdefault(r, []).append(key)
        by_keys: dict[tuple[Key, ...], list[int]] = {}
        for r, keys in touched.items():
            by_keys.setdefault(tuple(keys), []).append(r)
        groups = [_group(keys, rs, roots) for keys, rs in by_keys.items()]
        sizes = {k: len(v) for k, v in self.records.items()}
        return Graph(groups, sizes, dict(self.notes))


def _group(keys: tuple[Key, ...], rs: list[int], roots: dict[Key, np.ndarray]) -> Group:
    index = {r: i for i, r in enumerate(rs)}
    positions = {k: np.array([index.get(r, -1) for r in roots[k].tolist()]) for k in keys}
    producer = next((k for k in keys if k[1] == "out"), keys[0])
    per_unit = int((positions[producer] >= 0).sum()) // max(len(rs), 1)
    return Group(producer[0], len(rs), positions, max(per_unit, 1))


def _flat(items: list[Any]) -> list[Chan]:
    out: list[Chan] = []
    for x in items:
        out += _flat(x) if isinstance(x, list) else [x] if isinstance(x, Chan) else []
    return out


def _module_path(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if stack:
        value = list(stack.values())[-1]
        return str(value[0] if isinstance(value, tuple) else value)
    return ""


def is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)
