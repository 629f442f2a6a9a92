"""Dependency graph: which channels of which layers must be removed together.

Choice: torch.fx symbolic tracing, then one run of the traced graph on the example inputs.
- fx keeps module boundaries: a conv is one `call_module` node named by its path, so every coupling
  we find maps straight onto a module that `layers.py` knows how to cut. torch.export lowers to
  ATen ops and functional parameters, which we would have to map back to modules, and is 10-50x
  slower to build (the ResNet-50 graph must build in seconds).
- running the traced graph (an `fx.Interpreter`) gives every value's real shape, which is what
  flatten -> linear, concatenation, split and broadcasting need.
Control flow on a shape is retraced with the example run alongside (every value's shape is then
known). Tracing fails on data-dependent Python control flow; the module being traced is then made an opaque
leaf (its channels are left alone, `Graph.notes` says so) and the model traced again; only the
model's own forward failing is an error.

Model. Every channel of every tracked value carries an integer id. A layer that makes new channels
(conv, linear) gets fresh ids; ops that keep channels pass ids through (norms, activations,
pooling, upsampling); `add`/`mul` unify the ids of their operands (residuals); `cat` concatenates
id lists; `split`/slicing slices them; flatten repeats each id over the positions it spans;
depthwise convs and GroupNorm unify all channels of one group so groups go whole, while grouped convs
with several channels per group unify position j of every group (each group is narrowed alike). After
the run, the union-find classes of ids are the pruning units; a class touching a model input or
output, an excluded module or an op we do not follow is frozen. Units that appear in the same set
of layer tensors form a `Group` (e.g. all output channels of one conv and its norm and consumers).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from torchslim.data import as_tuple
from torchslim.errors import UserError
from torchslim.prune.layers import rule_of

Key = tuple[str, str]
"""(module path, role): role `out`, `in` or `both` (a passthrough layer's only channels)."""


@dataclass
class Chan:
    """Channel ids of one tensor value, along its dim `dim` (non-negative)."""

    ids: np.ndarray
    dim: int


@dataclass
class Group:
    """`units` pruning units; `positions[key][j]` is the unit of position j of that tensor side, or -1."""

    name: str
    units: int
    positions: dict[Key, np.ndarray]
    unit_channels: int = 1
    """Channels per unit in the group's producing layer (heads: head_dim; GroupNorm: group size)."""
    block: bool = False
    """Made by a registered transformer block (`heads.py`); `name` is then the block's module path."""
    conv: bool = False
    """Produced by a convolution (whose runtime kernels may want channel counts in multiples)."""


@dataclass
class Graph:
    groups: list[Group]
    sizes: dict[Key, int]
    """Length of the pruned dim of every tensor side any group touches."""
    notes: dict[str, str] = field(default_factory=dict)
    """Module path -> why channels there are kept whole."""

    def keep(self, removed: dict[int, np.ndarray]) -> dict[Key, torch.Tensor]:
        """Indices to keep per tensor side, given removed unit indices per group index."""
        drop: dict[Key, np.ndarray] = {k: np.zeros(n, dtype=bool) for k, n in self.sizes.items()}
        for gi, units in removed.items():
            if len(units) == 0:
                continue
            for key, pos in self.groups[gi].positions.items():
                drop[key] |= np.isin(pos, units) & (pos >= 0)
        return {k: torch.from_numpy(np.flatnonzero(~d)) for k, d in drop.items() if d.any()}


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: list[int] = []
        self.produced: list[int] = []

    def new(self, n: int, *, frozen: bool = False, produced: bool = False) -> np.ndarray:
        start = len(self.parent)
        ids = np.arange(start, start + n)
        self.parent.extend(ids.tolist())
        (self.frozen if frozen else self.produced if produced else []).extend(ids.tolist())
        return ids

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def union_all(self, ids: np.ndarray) -> None:
        self.union(ids[:-1], ids[1:]) if len(ids) > 1 else None


class _ShapeProxy(fx.Proxy):
    """An input's `.shape`/`.size()` are its example's: the graph is only analysed on those inputs,
    so specializing shapes is sound, and input checks (`if x.shape[1] != channels: raise`) trace."""

    def __getattr__(self, k: str) -> Any:
        shape = _known_shape(self.tracer, self.node) if k in ("shape", "size", "ndim", "dim") else None
        if shape is None:
            return super().__getattr__(k)
        if k == "shape":
            return shape
        if k == "ndim":
            return len(shape)
        if k == "dim":
            return lambda: len(shape)
        return lambda dim=None: shape if dim is None else shape[dim]


def _known_shape(tracer: Any, node: fx.Node) -> torch.Size | None:
    if node.op == "placeholder" and node.name in getattr(tracer, "shapes", {}):
        return tracer.shapes[node.name]
    value = (getattr(tracer, "values", None) or {}).get(node)
    return value.shape if isinstance(value, torch.Tensor) else None


class _Tracer(fx.Tracer):
    """Registered layers and the given module paths are leaves; everything else is traced through."""

    def __init__(
        self, leaves: set[str], shapes: dict[str, torch.Size], inputs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.leaves = leaves
        self.shapes = shapes
        self.inputs = inputs
        """Concrete mode (given the example inputs by name): every node is also computed on them, so
        the shapes of intermediate values are known too (`B, C, H, W = x.shape` deep in a module)."""
        self.values: dict[fx.Node, Any] | None = {} if inputs is not None else None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> fx.Proxy:
        out = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
        if self.values is not None:
            self.values[out.node] = self._compute(out.node)
        return out

    def _compute(self, n: fx.Node) -> Any:
        """The node's value on the example inputs; `_UNKNOWN` where an input to it is unknown or it fails
        (the shapes it would have given are then symbolic, as in plain tracing)."""
        values = self.values or {}
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: values.get(a, _UNKNOWN))
        flat: list[Any] = []
        fx.node.map_aggregate((args, kwargs), lambda v: flat.append(v) or v)  # type: ignore[func-returns-value]
        if any(v is _UNKNOWN for v in flat):
            return _UNKNOWN
        try:
            with _unpatched():  # tracing patches Module.__call__: the real call must not be recorded
                return self._run(n, args, kwargs)
        except Exception:
            return _UNKNOWN

    def _run(self, n: fx.Node, args: Any, kwargs: Any) -> Any:
        if n.op == "placeholder":
            return (self.inputs or {}).get(str(n.target), _UNKNOWN)
        if n.op == "get_attr":
            return _fetch(self.root, str(n.target))
        if n.op == "call_module":
            return self.root.get_submodule(str(n.target))(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], str(n.target))(*args[1:], **kwargs)
        return n.target(*args, **kwargs)  # type: ignore[operator]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves or rule_of(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


_UNKNOWN = object()
_unpatched: Callable[[], AbstractContextManager[None]] = getattr(
    fx._symbolic_trace, "_maybe_revert_all_patches", contextlib.nullcontext
)


def _fetch(root: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)


class Untraceable(UserError):
    """Tracing failed inside module `path` ("" for the model's own forward)."""

    def __init__(self, message: str, path: str, reason: str) -> None:
        super().__init__(message)
        self.path, self.reason = path, reason


def trace(
    model: nn.Module, example_inputs: Any, leaves: set[str], *, run_example: bool = False
) -> tuple[fx.Graph, list[Any]]:
    """The traced graph and the full positional arguments to run it with (on `model` itself: the
    graph is interpreted, never compiled to code, so no GraphModule is needed). `run_example`: run the
    example alongside, so control flow on any value's shape traces (see `_Tracer.inputs`)."""
    sig = inspect.signature(model.forward)
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    given = dict(example_inputs) if isinstance(example_inputs, dict) else {}
    if not given:
        given = {p.name: v for p, v in zip(params, as_tuple(example_inputs), strict=False)}
    concrete = {p.name: p.default for p in params if p.name not in given and p.default is not p.empty}
    varkw: dict[str, Any] = {"**" + p.name: {} for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD}
    shapes = {k: v.shape for k, v in given.items() if isinstance(v, torch.Tensor)}
    tracer = _Tracer(leaves, shapes, given | concrete if run_example else None)
    cls = type(model)
    forward = inspect.unwrap(cls.forward)
    if (
        forward is not cls.forward
    ):  # decorators taking **kwargs (transformers' return_dict) hide the signature
        model.__class__ = type(cls.__name__, (cls,), {"forward": forward})
    try:
        graph = tracer.trace(model, concrete_args=concrete | varkw)
    except Exception as exc:
        path = next(reversed(tracer.module_stack), "") if tracer.module_stack else ""
        where = f"module {path!r}" if path else "the model's own forward"
        hint = f"ChannelConfig(exclude=[{path!r}])" if path else "a model without data-dependent control flow"
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        raise Untraceable(
            f"channel pruning cannot trace {where} ({reason}); use {hint}", path, reason
        ) from None
    finally:
        model.__class__ = cls
    args = [given.get(p.name, concrete.get(p.name)) for p in params if p.name in given or p.name in concrete]
    return graph, args


def build_graph(
    model: nn.Module,
    example_inputs: Any,
    *,
    opaque: set[str] | None = None,
    protected: set[str] | None = None,
    allow_untraceable: bool = False,
) -> Graph:
    """Trace `model` and group its coupled channels; modules in `opaque` (and below) are left alone,
    layers in `protected` keep their output channels (their inputs may be cut).

    `allow_untraceable`: an untraceable model yields an empty graph instead of an error (used when
    registered transformer blocks supply the groups and the rest of the model is not pruned anyway).
    """
    from torchslim.prune import flow_attention as flow_attention  # registers views by heads, attention
    from torchslim.prune import flow_split as flow_split  # registers cat, split and slicing
    from torchslim.prune.flow_ops import Analyzer

    opaque = set(opaque or ())
    notes: dict[str, str] = {}
    run_example = False
    while True:
        try:
            traced, args = _trace_eval(model, example_inputs, opaque, run_example)
            break
        except Untraceable as exc:
            if not run_example:  # control flow on a shape: retry knowing every shape
                run_example = True
                continue
            if exc.path and exc.path not in opaque and len(notes) < 64:
                opaque.add(exc.path)  # left whole; the rest of the model is still pruned
                notes[exc.path] = f"channels kept: the module cannot be traced ({exc.reason})"
                continue
            if allow_untraceable:
                return Graph([], {})
            raise
    analyzer = Analyzer(model, traced, opaque, protected or set())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer.run(*args)
    finally:
        model.train(was_training)
    graph = analyzer.result()
    graph.notes = notes | graph.notes
    return graph


def _trace_eval(
    model: nn.Module, example_inputs: Any, leaves: set[str], run_example: bool
) -> tuple[fx.Graph, list[Any]]:
    """`trace`, in eval mode without gradients when the example runs alongside."""
    if not run_example:
        return trace(model, example_inputs, leaves)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return trace(model, example_inputs, leaves, run_example=True)
    finally:
        model.train(was_training)
