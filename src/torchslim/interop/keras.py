"""Keras 3 models in and out: a `.keras` file becomes a torch module, a compressed one a `.keras` file again.

Layout. torchslim works channels-first, as torch does. A channels_last Keras model (the Keras default)
becomes a torch module that takes **channels-first input**: images as (N, C, H, W) where Keras takes
(N, H, W, C), sequences as (N, C, L) where Keras takes (N, L, C); outputs of rank 3 and more are
channels-first too, flat outputs (logits, embeddings) are the same as Keras'. channels_first Keras
models keep their layout. Keras flattens an (H, W, C) map in that order, the torch module flattens
(C, H, W) with a plain `nn.Flatten`: the Dense layer after the Flatten gets its kernel rows permuted
at import (and permuted back on export), so the graph stays Flatten + Linear and channel pruning
cuts through it. A Flatten whose features reach anything else than Dense layers (through elementwise
layers) flattens in Keras' order instead (exact, but the channels before it are then not pruned).

Supported: Sequential and functional models with one input (branches joined by Add, Concatenate, ...)
made of the layers in `keras_layers.LAYERS`; any other layer is a `UserError` naming it. Layers keep
their Keras names as module names: `layers.<name>` holds a layer's weights, `pads.<name>` an explicit
(uneven 'same') padding and `acts.<name>` its fused activation, so `exclude: [layers.dense_1]` works.

`import_keras` records the Keras architecture (JSON) as the model's source: `ts.load` rebuilds the
module from it without Keras. `write_keras` writes `OUT/model.keras` with the widths of the (possibly
channel-pruned) torch layers. Reading and writing `.keras` files needs Keras with the torch backend
(`pip install 'torchslim[keras]'`; `KERAS_BACKEND` defaults to torch). Files load with `safe_mode`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from torchslim import io
from torchslim.atomic import temp_dir_beside
from torchslim.errors import ManifestError, UserError
from torchslim.interop.keras_layers import LAYERS, Built, Node, Value

CONFIG_FILE = "keras_model.json"
NEEDS_EXTRA = "Keras import needs the keras extra: pip install 'torchslim[keras]'"
FLOAT_ONLY = (
    "the keras format holds float models; use `formats: [onnx]` for quantized ones "
    "(layer {name!r} is a {kind})"
)


# -- the Keras graph ------------------------------------------------------------------------------
@dataclass
class Plan:
    """A Keras architecture config resolved into nodes, the values between them and fresh torch modules."""

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    values: dict[str, Value]
    node_inputs: dict[str, list[Value]]
    built: dict[str, Built]


def parse(config: dict[str, Any]) -> tuple[list[Node], list[str], list[str]]:
    """Nodes (config dicts shared with `config`), input and output layer names."""
    cls, body = config.get("class_name"), config.get("config") or {}
    if cls not in ("Sequential", "Functional"):
        raise UserError(f"Keras model class {cls!r}: only Sequential and functional models can be converted")
    taken: set[str] = set()
    nodes: list[Node] = []
    for spec in body.get("layers", []):
        if cls == "Sequential":
            inputs = [nodes[-1].name] if nodes else []
        else:
            inbound = spec.get("inbound_nodes") or []
            if len(inbound) > 1:
                raise UserError(f"Keras layer {spec.get('name')!r} is shared (called {len(inbound)} times)")
            inputs = _history(inbound[0].get("args", [])) if inbound else []
        nodes.append(_node(spec, inputs, taken))
    if cls == "Functional":
        return nodes, _ends(body.get("input_layers")), _ends(body.get("output_layers"))
    if not nodes or nodes[0].cls != "InputLayer":
        raise UserError(
            "a Sequential Keras model needs a known input shape: start it with keras.Input(shape)"
        )
    return nodes, [nodes[0].name], [nodes[-1].name]


def _node(spec: dict[str, Any], inputs: list[str], taken: set[str]) -> Node:
    cls, config = str(spec.get("class_name")), spec.get("config") or {}
    name = str(spec.get("name") or config.get("name"))
    if cls not in LAYERS or spec.get("module", "keras.layers") != "keras.layers":
        raise UserError(
            f"Keras layer {cls} {name!r} is not supported; supported layers: {', '.join(LAYERS.names())}"
        )
    policy = config.get("dtype")
    policy = (policy.get("config") or {}).get("name") if isinstance(policy, dict) else policy
    if isinstance(policy, str) and ("int" in policy or "float8" in policy):
        raise UserError(f"Keras layer {cls} {name!r} is quantized ({policy}); only float models convert")
    key = re.sub(r"\W", "_", name) or "layer"
    while key in taken or hasattr(nn.ModuleDict(), key):
        key += "_"
    taken.add(key)
    return Node(name, key, cls, config, inputs)


def _history(args: Any) -> list[str]:
    """Names of the layers whose outputs a call's arguments are (Keras 3 `__keras_tensor__` entries)."""
    if isinstance(args, dict):
        if args.get("class_name") == "__keras_tensor__":
            name, node_index, tensor_index = args["config"]["keras_history"]
            if node_index or tensor_index:
                raise UserError(
                    f"Keras layer {name!r}: shared layers and multi-output layers are not supported"
                )
            return [str(name)]
        return [n for v in args.values() for n in _history(v)]
    if isinstance(args, (list, tuple)):
        return [n for v in args for n in _history(v)]
    return []


def _ends(spec: Any) -> list[str]:
    specs = [spec] if spec and isinstance(spec[0], str) else spec or []
    return [str(s[0]) for s in specs]


def make_plan(config: dict[str, Any]) -> Plan:
    nodes, inputs, outputs = parse(config)
    if len(inputs) != 1:
        raise UserError(f"Keras models with one input are supported; this one has {len(inputs)}")
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
    for node in _ordered(nodes):
        args = [plan.values[i] for i in node.inputs]
        built = LAYERS.get(node.cls).build(node, args)
        plan.nodes.append(node)
        plan.values[node.name], plan.node_inputs[node.name], plan.built[node.name] = built.out, args, built
    return plan


def _absorbs_order(name: str, consumers: dict[str, list[Node]], outputs: list[str]) -> bool:
    """Whether a permuted flat feature order from `name` can be absorbed by the Dense layers after it."""
    if name in outputs:
        return False
    for node in consumers[name]:
        conv = LAYERS.get(node.cls)
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


class KerasNet(nn.Module):
    """A Keras model as torch modules, run in the Keras graph's order (channels-first, see module doc)."""

    def __init__(self, config: dict[str, Any], plan: Plan) -> None:
        super().__init__()
        self.keras_config = config
        self.layers, self.pads, self.acts = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        key = {n.name: n.key for n in plan.nodes}
        self.steps: list[tuple[str, list[str]]] = []
        for node in plan.nodes:
            built = plan.built[node.name]
            if built.layer is None:
                continue
            self.steps.append((node.key, [key[i] for i in node.inputs]))
            self.layers[node.key] = built.layer
            if built.pad is not None:
                self.pads[node.key] = built.pad
            if built.act is not None:
                self.acts[node.key] = built.act
        self.input_key = key[plan.inputs[0]]
        self.output_keys = [key[o] for o in plan.outputs]

    def forward(self, x: torch.Tensor) -> Any:
        values = {self.input_key: x}
        for key, args in self.steps:
            inputs = [values[a] for a in args]
            if key in self.pads:
                inputs = [self.pads[key](inputs[0])]
            y = self.layers[key](*inputs)
            values[key] = self.acts[key](y) if key in self.acts else y
        outs = tuple(values[k] for k in self.output_keys)
        return outs[0] if len(outs) == 1 else outs


def build(config: dict[str, Any]) -> KerasNet:
    """The torch module of a Keras architecture config (fresh weights)."""
    return KerasNet(config, make_plan(config))


def build_from_config(file: str) -> nn.Module:
    """The `keras` source of `ts.load`: rebuild the bare module from the saved Keras architecture JSON."""
    from torchslim.manifest import parse_json

    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise ManifestError(f"{file}: unreadable Keras architecture ({exc})") from None
    config = parse_json(data, f"{file} (Keras architecture)", max_depth=64)
    try:
        return build(config)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{file}: malformed Keras architecture ({type(exc).__name__}: {exc})") from None


# -- Keras files ------------------------------------------------------------------------------------
def _keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if importlib.util.find_spec("keras") is None:
        raise UserError(NEEDS_EXTRA)
    try:
        keras = importlib.import_module("keras")
    except ImportError as exc:
        raise UserError(f"keras failed to import ({exc}); torchslim needs KERAS_BACKEND=torch") from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise UserError(
            f"keras runs with the {backend!r} backend; torchslim converts Keras models with the torch "
            "backend: set KERAS_BACKEND=torch before keras is first imported"
        )
    return keras


def import_keras(path: Path) -> nn.Module:
    """Read a `.keras` file into a torch module (channels-first) with its Keras source recorded."""
    keras = _keras()
    try:
        kmodel = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(kmodel)))
    except Exception as exc:  # Keras raises many types for a bad or unsafe file
        raise UserError(f"cannot read Keras model {str(path)!r}: {type(exc).__name__}: {exc}") from None
    plan = make_plan(config)
    net = KerasNet(config, plan)
    for node in plan.nodes:
        if node.cls == "InputLayer":  # not a layer of a Sequential model
            continue
        weights = kmodel.get_layer(node.name).get_weights()
        conv = LAYERS.get(node.cls)
        if conv.weights_in is not None:
            conv.weights_in(net.layers[node.key], weights, node.config, plan.node_inputs[node.name])
        elif weights:
            raise UserError(f"{node.describe()}: has weights this converter does not read")
    net.eval()
    _compare(keras, kmodel, net, plan, "import")
    io.set_source(net, "keras", files={CONFIG_FILE: json.dumps(config).encode()}, file=CONFIG_FILE)
    return net


def write_keras(model: nn.Module, example_inputs: Any, out_dir: Path) -> Path:
    """Write `out_dir/model.keras`: the Keras model with the torch layers' widths and (masked) weights."""
    if not isinstance(model, KerasNet):
        raise UserError(
            f"output format keras: the model ({type(model).__name__}) was not imported from a .keras "
            "file; only Keras models can be written back as Keras"
        )
    keras = _keras()
    training = model.training
    try:
        return _write(keras, model.eval(), Path(out_dir) / "model.keras")
    finally:
        model.train(training)


def _write(keras: Any, net: KerasNet, dest: Path) -> Path:
    # pruning masks are parametrizations: `module.weight` (read below) is the masked weight
    config = copy.deepcopy(net.keras_config)
    _check_float(net, make_plan(copy.deepcopy(config)))
    nodes, _, _ = parse(config)  # shares the layer config dicts of `config`: edited in place below
    for node in nodes:
        if node.key in net.layers:
            LAYERS.get(node.cls).export(node.config, net.layers[node.key])
    for spec in config.get("config", {}).get("layers", []):
        spec.pop("build_config", None)  # input shapes of the original widths
    plan = make_plan(config)
    _check_shapes(net, plan)
    try:
        kmodel = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:
        raise UserError(f"output format keras: Keras cannot rebuild the model ({exc})") from None
    for node in plan.nodes:
        conv = LAYERS.get(node.cls)
        if conv.weights_out is not None:
            arrays = conv.weights_out(net.layers[node.key], node.config, plan.node_inputs[node.name])
            kmodel.get_layer(node.name).set_weights(arrays)
    _compare(keras, kmodel, net, plan, "export")
    with temp_dir_beside(dest) as tmp:
        kmodel.save(str(tmp / "model.keras"))
        os.replace(tmp / "model.keras", dest)
    return dest


def _check_float(net: KerasNet, plan: Plan) -> None:
    """Every module is still of the plain type the converter built (quantization swaps them)."""
    for node in plan.nodes:
        built = plan.built[node.name]
        for slots, fresh in ((net.layers, built.layer), (net.pads, built.pad), (net.acts, built.act)):
            have = slots[node.key] if node.key in slots else None  # noqa: SIM401 (ModuleDict)
            if _plain_type(have) is not type(fresh):
                raise UserError(FLOAT_ONLY.format(name=node.name, kind=type(have).__name__))


def _plain_type(module: nn.Module | None) -> type:
    """The class of `module`, seen through torch parametrizations (pruning masks)."""
    cls = type(module)
    return cls.__bases__[0] if module is not None and parametrize.is_parametrized(module) else cls


def _check_shapes(net: KerasNet, plan: Plan) -> None:
    for node in plan.nodes:
        layer = plan.built[node.name].layer
        if layer is None:
            continue
        want = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
        mine = net.layers[node.key]
        have = {
            k: tuple(getattr(mine, k).shape) for k in want if isinstance(getattr(mine, k, None), torch.Tensor)
        }
        if want != have:
            raise UserError(f"{node.describe()}: torch shapes {have} cannot be written as Keras ({want})")


def _to_keras(array: np.ndarray, value: Value) -> np.ndarray:
    return np.moveaxis(array, 1, -1) if value.channels_last else array


def _compare(keras: Any, kmodel: Any, net: nn.Module, plan: Plan, what: str) -> None:
    """Both models on the same random batch: a conversion that changes the outputs is a bug, not a result."""
    source = plan.values[plan.inputs[0]]
    x = torch.randn(2, *source.torch_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = net(x)
    theirs = kmodel(_to_keras(x.numpy(), source), training=False)
    ours = list(ours) if isinstance(ours, tuple) else [ours]
    theirs = list(theirs) if isinstance(theirs, (list, tuple)) else [theirs]
    for name, mine, other in zip(plan.outputs, ours, theirs, strict=True):
        expected = np.asarray(keras.ops.convert_to_numpy(other))
        diff = float(np.abs(_to_keras(mine.numpy(), plan.values[name]) - expected).max())
        if diff > 1e-3 * (1.0 + float(np.abs(expected).max())):
            raise RuntimeError(f"Keras {what}: torch and Keras outputs of {name!r} differ by {diff:.3g}")


__all__ = ["KerasNet", "build", "build_from_config", "import_keras", "make_plan", "write_keras"]
