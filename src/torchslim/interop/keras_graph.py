"""A Keras architecture config (JSON) resolved into a graph of converter nodes and the values between them.

Nested models (a Sequential or functional model used as a layer, as ConvNeXt's stem and downsampling
blocks) are inlined: their layers become nodes of the outer graph, named `outer/inner` (Keras names
cannot hold a '/'), and their input layers pass the outer values through. Keras ops recorded in a
functional model (`x + 3.0`) are nodes too, their constants kept as operands. Every unsupported layer
of the model, and every layer whose settings cannot be converted, is named in one error.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from torchslim.errors import UserError
from torchslim.interop.keras_base import Converter, registry_name
from torchslim.interop.keras_layers import LAYERS, Built, Node, Value

Ref = tuple[str, int]
"""A Keras tensor: the (qualified) name of the layer that made it and which of its outputs it is."""
MODEL_CLASSES = ("Sequential", "Functional")


@dataclass
class Plan:
    """A Keras architecture config resolved into nodes, the values between them and fresh torch modules."""

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    values: dict[str, Value]
    node_inputs: dict[str, list[Value]]
    built: dict[str, Built]


@dataclass
class _Parse:
    nodes: list[Node] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)
    unsupported: list[str] = field(default_factory=list)
    refs: dict[str, list[Ref | float]] = field(default_factory=dict)
    models: dict[str, list[Ref]] = field(default_factory=dict)
    """Qualified name of a nested model -> the refs of its outputs."""


def converter(node: Node) -> Converter:
    return LAYERS.get(node.registry)


def parse(config: dict[str, Any]) -> tuple[list[Node], list[str], list[str]]:
    """Nodes (config dicts shared with `config`, nested models inlined), input and output layer names."""
    if config.get("class_name") not in MODEL_CLASSES:
        raise UserError(
            f"Keras model class {config.get('class_name')!r}: only Sequential and functional models can be "
            "converted"
        )
    state = _Parse()
    inputs, outputs = _parse_model(config, (), None, state)
    if state.unsupported:
        many = len(state.unsupported) > 1
        raise UserError(
            f"Keras layer{'s' if many else ''} {', '.join(state.unsupported)} "
            f"{'are' if many else 'is'} not supported; supported layers: {', '.join(LAYERS.names())}"
        )
    for node in state.nodes:
        node.operands = [_resolve(r, state) if isinstance(r, tuple) else r for r in state.refs[node.name]]
        node.inputs = [r for r in node.operands if isinstance(r, str)]
    return state.nodes, [_resolve(r, state) for r in inputs], [_resolve(r, state) for r in outputs]


def _resolve(ref: Ref, state: _Parse) -> str:
    name, index = ref
    if name in state.models:
        outputs = state.models[name]
        if index >= len(outputs):
            raise UserError(f"Keras model {name!r} has {len(outputs)} outputs, not {index + 1}")
        return _resolve(outputs[index], state)
    if index:
        raise UserError(f"Keras layer {name!r}: multi-output layers are not supported")
    return name


def _parse_model(
    spec: dict[str, Any], path: tuple[str, ...], outer: list[Ref] | None, state: _Parse
) -> tuple[list[Ref], list[Ref]]:
    """Add the layers of one (possibly nested) model to `state`; its input and output refs."""
    body = spec.get("config") or {}
    prefix = "".join(f"{p}/" for p in path)
    sequential = spec.get("class_name") == "Sequential"
    input_names = [] if sequential else [prefix + n for n, _ in _ends(body.get("input_layers"))]
    if outer is not None and not sequential and len(outer) != len(input_names):
        raise UserError(f"nested Keras model {path[-1]!r} takes {len(input_names)} inputs, gets {len(outer)}")
    previous: list[Ref] = list(outer or [])
    inputs: list[Ref] = []
    for layer_spec in body.get("layers", []):
        name = str(layer_spec.get("name") or (layer_spec.get("config") or {}).get("name"))
        qualified = prefix + name
        refs = previous if sequential else _inbound(layer_spec, prefix)
        if layer_spec.get("class_name") == "InputLayer":
            inputs.append((qualified, 0))
            refs = previous if sequential else [] if outer is None else [outer[input_names.index(qualified)]]
        if layer_spec.get("class_name") in MODEL_CLASSES and "layers" in (layer_spec.get("config") or {}):
            _, state.models[qualified] = _parse_model(
                layer_spec, (*path, name), [r for r in refs if isinstance(r, tuple)], state
            )
        else:
            _add_node(layer_spec, (*path, name), refs, state)
        previous = [(qualified, 0)]
    if sequential:
        if outer is None and not inputs:
            raise UserError(
                "a Sequential Keras model needs a known input shape: start it with keras.Input(shape)"
            )
        return inputs[:1], previous
    return [(prefix + n, 0) for n, _ in _ends(body.get("input_layers"))], [
        (prefix + n, i) for n, i in _ends(body.get("output_layers"))
    ]


def _inbound(spec: dict[str, Any], prefix: str) -> list[Ref | float]:
    inbound = spec.get("inbound_nodes") or []
    if len(inbound) > 1:
        raise UserError(f"Keras layer {spec.get('name')!r} is shared (called {len(inbound)} times)")
    if not inbound:
        return []
    if inbound[0].get("kwargs", {}).get("mask") not in (None, False) or not isinstance(
        inbound[0].get("args"), list
    ):
        raise UserError(f"Keras layer {spec.get('name')!r}: masked or keyword calls are not supported")
    return [(prefix + n, i) if isinstance(n, str) else n for n, i in _args(inbound[0]["args"])]


def _args(args: Any) -> list[tuple[str | float, int]]:
    """The call's arguments in order: Keras tensors as (layer, output index), numbers as (number, 0)."""
    if isinstance(args, dict):
        if args.get("class_name") == "__keras_tensor__":
            name, node_index, tensor_index = args["config"]["keras_history"]
            if node_index:
                raise UserError(f"Keras layer {name!r}: shared layers are not supported")
            return [(str(name), int(tensor_index))]
        return [a for v in args.values() for a in _args(v)]
    if isinstance(args, (list, tuple)):
        return [a for v in args for a in _args(v)]
    if isinstance(args, (int, float)) and not isinstance(args, bool):
        return [(float(args), 0)]
    return []


def _add_node(spec: dict[str, Any], path: tuple[str, ...], refs: list[Any], state: _Parse) -> None:
    cls, config = str(spec.get("class_name")), spec.get("config") or {}
    name = "/".join(path)
    kind = registry_name(spec)
    if kind is None or kind not in LAYERS:
        module = spec.get("module", "keras.layers")
        state.unsupported.append(f"{cls} {name!r}" + ("" if module == "keras.layers" else f" ({module})"))
        return
    policy = config.get("dtype")
    policy = (policy.get("config") or {}).get("name") if isinstance(policy, dict) else policy
    if isinstance(policy, str) and ("int" in policy or "float8" in policy):
        raise UserError(f"Keras layer {cls} {name!r} is quantized ({policy}); only float models convert")
    key = re.sub(r"\W", "_", path[-1]) or "layer"
    while key in state.taken or hasattr(nn.ModuleDict(), key):
        key += "_"
    state.taken.add(key)
    state.refs[name] = list(refs)
    state.nodes.append(Node(name, key, cls, config, [], path=path, registry=kind))


def _ends(spec: Any) -> list[tuple[str, int]]:
    """A model's `input_layers`/`output_layers`: one [name, node, tensor] or a list of them."""
    specs = [spec] if spec and isinstance(spec[0], str) else spec or []
    return [(str(s[0]), int(s[2]) if len(s) > 2 else 0) for s in specs]


def make_plan(config: dict[str, Any]) -> Plan:
    nodes, inputs, outputs = parse(config)
    formats = {n.config["data_format"] for n in nodes if n.cls != "Flatten" and n.config.get("data_format")}
    if len(formats) > 1:
        raise UserError("the Keras model mixes channels_first and channels_last layers")
    consumers: dict[str, list[Node]] = defaultdict(list)
    for node in nodes:
        node.channels_last = formats == {"channels_last"}
        for source in node.inputs:
            consumers[source].append(node)
    for node in nodes:
        node.keras_order = node.cls == "Flatten" and not _absorbs_order(node.name, consumers, outputs)
    plan = Plan([], inputs, outputs, {}, {}, {})
    errors: list[str] = []
    for node in _ordered(nodes):
        if any(i not in plan.values for i in node.inputs):
            continue  # after a layer that failed
        args = [plan.values[i] for i in node.inputs]
        try:
            built = converter(node).build(node, args)
        except UserError as exc:
            errors.append(str(exc))
            continue
        plan.nodes.append(node)
        plan.values[node.name], plan.node_inputs[node.name], plan.built[node.name] = built.out, args, built
    if errors:
        raise UserError(
            errors[0]
            if len(errors) == 1
            else f"{len(errors)} Keras layers cannot be converted: " + "; ".join(errors)
        )
    return plan


def _absorbs_order(name: str, consumers: dict[str, list[Node]], outputs: list[str]) -> bool:
    """Whether a permuted flat feature order from `name` can be absorbed by the Dense layers after it."""
    if name in outputs:
        return False
    for node in consumers[name]:
        conv = converter(node)
        if len(node.inputs) != 1 or not (conv.absorbs_order or conv.keeps_order):
            return False
        if not conv.absorbs_order and not _absorbs_order(node.name, consumers, outputs):
            return False
    return True


def _ordered(nodes: list[Node]) -> list[Node]:
    """The nodes in an order where every node comes after its inputs."""
    done: set[str] = set()
    out: list[Node] = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(i in done for i in n.inputs)]
        if not ready:
            missing = sorted({i for n in pending for i in n.inputs} - done - {n.name for n in pending})
            raise UserError(f"the Keras graph refers to unknown layers {missing} or has a cycle")
        out += ready
        done |= {n.name for n in ready}
        pending = [n for n in pending if n.name not in done]
    return out


__all__ = ["Plan", "converter", "make_plan", "parse"]
