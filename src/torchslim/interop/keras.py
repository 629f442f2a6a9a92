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

Supported: Sequential and functional models (several inputs: `MultiInputKerasNet.forward(*xs)`),
nested models (inlined by `keras_graph`), made of the layers in `keras_layers.LAYERS`; a `UserError`
names every other layer at once. Layers keep their Keras names (a nested model's layers their own) as
module names: `layers.<name>` holds a layer's weights, `pads.<name>` an explicit
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from torchslim import io
from torchslim.atomic import temp_dir_beside
from torchslim.errors import ManifestError, UserError
from torchslim.interop.keras_graph import Plan, converter, make_plan, parse
from torchslim.interop.keras_layers import Node, Value

CONFIG_FILE = "keras_model.json"
NEEDS_EXTRA = "Keras import needs the keras extra: pip install 'torchslim[keras]'"
FLOAT_ONLY = (
    "the keras format holds float models; use `formats: [onnx]` for quantized ones "
    "(layer {name!r} is a {kind})"
)


# -- the torch module ----------------------------------------------------------------------------------
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
        self.input_keys = [key[i] for i in plan.inputs]
        self.output_keys = [key[o] for o in plan.outputs]

    def forward(self, x: torch.Tensor) -> Any:
        return self.run((x,))

    def run(self, xs: tuple[torch.Tensor, ...]) -> Any:
        """The graph on the inputs in the Keras model's input order (a plain loop: fx traces it)."""
        values = self.layer_outputs(xs)
        outs = tuple(values[k] for k in self.output_keys)
        return outs[0] if len(outs) == 1 else outs

    def layer_outputs(self, xs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Every layer's output by its Keras name (the inputs' too), for comparing layer by layer."""
        values = dict(zip(self.input_keys, xs, strict=True))
        for key, args in self.steps:
            inputs = [values[a] for a in args]
            if key in self.pads:
                inputs = [self.pads[key](inputs[0])]
            y = self.layers[key](*inputs)
            values[key] = self.acts[key](y) if key in self.acts else y
        return values


class MultiInputKerasNet(KerasNet):
    """A Keras model of several inputs: `forward(*xs)` takes them in the Keras model's input order."""

    def forward(self, *xs: torch.Tensor) -> Any:
        if len(xs) != len(self.input_keys):
            raise TypeError(f"this Keras model takes {len(self.input_keys)} inputs, got {len(xs)}")
        return self.run(xs)


def _net(config: dict[str, Any], plan: Plan) -> KerasNet:
    return (MultiInputKerasNet if len(plan.inputs) > 1 else KerasNet)(config, plan)


def build(config: dict[str, Any]) -> KerasNet:
    """The torch module of a Keras architecture config (fresh weights)."""
    return _net(config, make_plan(config))


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
    net = _net(config, plan)
    for node in plan.nodes:
        if node.cls == "InputLayer" or node.registry.startswith("ops."):  # no Keras layer, no weights
            continue
        weights = _keras_layer(kmodel, node).get_weights()
        conv = converter(node)
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
            converter(node).export(node.config, net.layers[node.key])
    _drop_build_configs(config)
    plan = make_plan(config)
    for node in plan.nodes:
        if node.cls == "InputLayer" and node.inputs:  # a nested model's input: the new widths
            node.config["batch_shape"] = [None, *plan.values[node.name].shape]
    _check_shapes(net, plan)
    try:
        kmodel = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:
        raise UserError(f"output format keras: Keras cannot rebuild the model ({exc})") from None
    for node in plan.nodes:
        conv = converter(node)
        if conv.weights_out is not None:
            arrays = conv.weights_out(net.layers[node.key], node.config, plan.node_inputs[node.name])
            _keras_layer(kmodel, node).set_weights(arrays)
    _compare(keras, kmodel, net, plan, "export")
    with temp_dir_beside(dest) as tmp:
        kmodel.save(str(tmp / "model.keras"))
        os.replace(tmp / "model.keras", dest)
    return dest


def _keras_layer(kmodel: Any, node: Node) -> Any:
    """The Keras layer of `node`, looked up through the nested models on its path."""
    layer = kmodel
    for name in node.path:
        layer = layer.get_layer(name)
    return layer


def _drop_build_configs(spec: dict[str, Any]) -> None:
    """Forget the input shapes Keras recorded at the original widths (nested models too)."""
    for layer_spec in (spec.get("config") or {}).get("layers", []):
        layer_spec.pop("build_config", None)
        if layer_spec.get("class_name") in ("Sequential", "Functional"):
            _drop_build_configs(layer_spec)


def _check_float(net: KerasNet, plan: Plan) -> None:
    """Every module is still of the plain type the converter built (quantization swaps them)."""
    for node in plan.nodes:
        built = plan.built[node.name]
        for slots, fresh in ((net.layers, built.layer), (net.pads, built.pad), (net.acts, built.act)):
            have = slots[node.key] if node.key in slots else None  # noqa: SIM401 (ModuleDict)
            if _types(have) != _types(fresh):
                kind = next((t for t in _types(have) if t not in _types(fresh)), type(have))
                raise UserError(FLOAT_ONLY.format(name=node.name, kind=kind.__name__))


def _types(module: nn.Module | None) -> list[type]:
    """The classes of `module` and its children, seen through torch parametrizations (pruning masks)."""
    if module is None:
        return [type(None)]
    return [_plain_type(m) for name, m in module.named_modules() if "parametrizations" not in name]


def _plain_type(module: nn.Module) -> type:
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _check_shapes(net: KerasNet, plan: Plan) -> None:
    for node in plan.nodes:
        layer = plan.built[node.name].layer
        if layer is None:
            continue
        want = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
        mine = net.layers[node.key]
        have = {k: tuple(t.shape) for k in want if isinstance(t := _attr(mine, k), torch.Tensor)}
        if want != have:
            raise UserError(f"{node.describe()}: torch shapes {have} cannot be written as Keras ({want})")


def _attr(module: nn.Module, dotted: str) -> Any:
    """`module.a.b` for "a.b": a parametrized weight reads as the (masked) weight."""
    value: Any = module
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def _to_keras(array: np.ndarray, value: Value) -> np.ndarray:
    return np.moveaxis(array, 1, -1) if value.channels_last else array


def _compare(keras: Any, kmodel: Any, net: nn.Module, plan: Plan, what: str) -> None:
    """Both models on the same random batch: a conversion that changes the outputs is a bug, not a result."""
    generator = torch.Generator().manual_seed(0)
    sources = [plan.values[i] for i in plan.inputs]
    xs = [torch.randn(2, *v.torch_shape, generator=generator) for v in sources]
    with torch.no_grad():
        ours = net(*xs)
    keras_xs = [_to_keras(x.numpy(), v) for x, v in zip(xs, sources, strict=True)]
    theirs = kmodel(keras_xs if len(keras_xs) > 1 else keras_xs[0], training=False)
    ours = list(ours) if isinstance(ours, tuple) else [ours]
    theirs = list(theirs) if isinstance(theirs, (list, tuple)) else [theirs]
    for name, mine, other in zip(plan.outputs, ours, theirs, strict=True):
        expected = np.asarray(keras.ops.convert_to_numpy(other))
        diff = float(np.abs(_to_keras(mine.numpy(), plan.values[name]) - expected).max())
        if diff > 1e-3 * (1.0 + float(np.abs(expected).max())):
            raise RuntimeError(f"Keras {what}: torch and Keras outputs of {name!r} differ by {diff:.3g}")


__all__ = ["KerasNet", "build", "build_from_config", "import_keras", "make_plan", "write_keras"]
