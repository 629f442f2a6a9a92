"""ONNX in: a `.onnx` file becomes a `torch.fx.GraphModule` made of native torch layers.

Weighted operators become the torch modules that pruning and quantization know (Conv → `nn.Conv2d`,
Gemm or MatMul(+Add) with constant weights → `nn.Linear`, BatchNormalization → `nn.BatchNorm2d`, ...),
so an imported model compresses like one written in PyTorch; a Reshape that flattens trailing dims
becomes `torch.flatten`, so the graph stays valid when channels are removed. Nodes whose inputs are
all constant are folded with onnx's reference evaluator. Every operator is a small registered
converter (`ONNX_OPS`); an operator without one is reported, with every other missing one, before
anything is built.

`ts.save` keeps a structure-only copy of the graph (`graph.onnx`: large float tensors stripped, their
values live in the safetensors file like any model's) from which `ts.load` rebuilds the module.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from torchslim import io, safe
from torchslim.errors import ManifestError, UserError
from torchslim.interop.onnx_fold import check_fold, check_outputs
from torchslim.registry import Registry

if TYPE_CHECKING:
    import onnx

STRUCTURE_FILE = "graph.onnx"
KEEP_ELEMENTS = 16
"""Float tensors up to this size stay in the structure copy: they may be baked into the graph."""

Value = fx.Node | np.ndarray
_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
Converter = Callable[["Builder", "onnx.NodeProto"], Value | tuple[Value, ...]]
ONNX_OPS: Registry[Converter] = Registry("ONNX operator")


def import_onnx(path: str | Path) -> nn.Module:
    """Read `path` into a torch module and record a structure copy so that `ts.save`/`ts.load` work."""
    onnx = _onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError or OSError for broken files
        raise UserError(f"{path}: not a readable ONNX model ({exc})") from None
    if not model.graph.output:
        raise UserError(f"{path}: the ONNX graph has no outputs (an empty or truncated file?)")
    module = convert(model, source=str(path))
    structure = strip_weights(model).SerializeToString()
    return io.set_source(module, "onnx", files={STRUCTURE_FILE: structure}, file=STRUCTURE_FILE)


def build_from_structure(file: str) -> nn.Module:
    """The `onnx` model source of `ts.load`: the architecture from the stripped graph, values zero
    (`ts.load` records the source and its file on the rebuilt model)."""
    try:
        model = _onnx().load(file, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError or OSError for broken files
        raise ManifestError(f"{file}: not a readable ONNX graph ({exc})") from None
    return convert(model, source=file)


def convert(model: onnx.ModelProto, *, source: str = "<onnx>") -> fx.GraphModule:
    """The torch equivalent of an ONNX model (opset ≥ 7, default domain)."""
    onnx = _onnx()
    _check_supported(model, source)
    # inference is a help (flatten detection, norm ranks), not a requirement
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model)
    builder = Builder(model, source)
    for node in model.graph.node:
        builder.run(node)
    return builder.finish()


def strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large float tensors keep dtype and shape only (marked as external, never read)."""
    onnx = _onnx()
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    # notes and inferred shapes are re-derived on load; only the structure is kept
    del stripped.graph.value_info[:]
    del stripped.metadata_props[:]
    for item in [*stripped.graph.node, *stripped.graph.initializer]:
        item.ClearField("doc_string")
        item.ClearField("metadata_props")
    tensors = list(stripped.graph.initializer)
    tensors += [a.t for n in stripped.graph.node if n.op_type == "Constant" for a in n.attribute if a.t.dims]
    weights = _integer_weights(stripped)
    for tensor in tensors:
        if int(np.prod(tensor.dims)) <= KEEP_ELEMENTS or not (_is_float(tensor) or tensor.name in weights):
            continue
        # a quantized weight's grid is chosen from its range: kept beside the shape (see `_array`)
        span = _span(tensor) if tensor.name in weights else None
        for data in ("raw_data", "float_data", "double_data", "int32_data"):
            tensor.ClearField(data)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        tensor.external_data.add(key="location", value="stripped")
        if span is not None:
            tensor.external_data.add(key="range", value=span)
    return stripped


def _integer_weights(model: onnx.ModelProto) -> set[str]:
    """Names of the integer weights of DequantizeLinear and QLinear* nodes (their values live in the
    quantized layers' state)."""
    at = {"DequantizeLinear": 0, "QLinearConv": 3, "QLinearMatMul": 3}
    return {
        n.input[at[n.op_type]] for n in model.graph.node if n.op_type in at and len(n.input) > at[n.op_type]
    }


def _span(tensor: onnx.TensorProto) -> str:
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor)
    return f"{int(values.min())},{int(values.max())}"


def _stripped_zeros(tensor: onnx.TensorProto, dtype: np.dtype[Any]) -> np.ndarray:
    """Zeros of the stripped tensor's shape; an integer weight's recorded min and max come first and
    last, so that the layer rebuilt from it picks the same grid as the one first imported."""
    safe.check_numel(list(tensor.dims), f"stripped initializer {tensor.name!r}")
    out = np.zeros(tuple(tensor.dims), dtype=dtype)
    span = next((e.value for e in tensor.external_data if e.key == "range"), None)
    if span is not None and dtype.kind in "iu" and out.size >= 2:
        info = np.iinfo(dtype)
        try:
            lo, hi = (int(v) for v in span.split(","))
        except ValueError:
            raise ManifestError(f"stripped initializer {tensor.name!r}: unreadable range {span!r}") from None
        if not info.min <= lo <= hi <= info.max:
            raise ManifestError(f"stripped initializer {tensor.name!r}: range {span!r} outside {dtype}")
        out.reshape(-1)[[0, -1]] = lo, hi
    return out


def _is_float(tensor: onnx.TensorProto) -> bool:
    onnx = _onnx()
    return tensor.data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    )


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX import needs the onnx extra: pip install 'torchslim[onnx]'") from None
    return onnx


def _check_supported(model: onnx.ModelProto, source: str) -> None:
    from torchslim.interop import (  # noqa: F401  (register the converters)
        onnx_ops,
        onnx_quant_ops,
        onnx_seq_ops,
        onnx_shape_ops,
    )

    missing: dict[str, str] = {}
    for node in model.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if op not in ONNX_OPS:
            missing.setdefault(op, node.name or node.output[0])
    if missing:
        listed = ", ".join(f"{op} (node {name!r})" for op, name in missing.items())
        raise UserError(
            f"{source}: cannot convert ONNX operator{'s' if len(missing) > 1 else ''} {listed}; "
            f"supported: {', '.join(ONNX_OPS.names())}"
        )


class Builder:
    """Walks the ONNX graph in order, emitting fx nodes; constants stay numpy arrays until used."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.source = source
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.values: dict[str, Value] = {}
        self.shapes: dict[str, list[int | None] | None] = {}
        self.types: dict[str, int] = {}
        self.node: onnx.NodeProto | None = None
        self._names: set[str] = set()
        self._consumers: dict[str, int] = {}
        self._fusable: dict[str, nn.Linear] = {}
        self._buffers: dict[str, fx.Node] = {}
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.absorbed: dict[str, Value] = {}
        """Outputs of nodes ahead that a converter already computed (a QuantizeLinear fused into a layer)."""
        self.quantized: dict[str, Any] = {}
        """Folded constants that came from DequantizeLinear: their integers and scales (`onnx_quant_ops`)."""
        self._outputs = [o.name for o in model.graph.output]
        for tensor in model.graph.initializer:
            self.values[tensor.name] = _array(tensor)
        for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
            self.shapes[info.name] = _dims(info)
            if info.type.WhichOneof("value") == "tensor_type" and info.type.tensor_type.elem_type:
                self.types[info.name] = info.type.tensor_type.elem_type
        for node in model.graph.node:
            for name in node.input:
                self._consumers[name] = self._consumers.get(name, 0) + 1
                self.consumers.setdefault(name, []).append(node)
        for name in self._outputs:
            self._consumers[name] = self._consumers.get(name, 0) + 1
        for info in model.graph.input:
            if info.name not in self.values:
                self.values[info.name] = self.graph.placeholder(_identifier(info.name, "input"))

    # -- the walk ---------------------------------------------------------------------------------
    def run(self, node: onnx.NodeProto) -> None:
        from torchslim.interop import onnx_quant_ops

        self.node = node
        for name in node.output:
            self.producers[name] = node
        if node.output and all(o in self.absorbed for o in node.output if o):
            outputs: Any = tuple(self.absorbed.pop(o) for o in node.output if o)  # fused into a layer
        elif node.op_type != "Constant" and all(self.is_const(n) for n in node.input if n):
            outputs = self._fold(node)
            onnx_quant_ops.record_folded(self, node)
        else:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            outputs = ONNX_OPS.get(op)(self, node)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        for name, value in zip(node.output, outputs, strict=False):
            if name:
                self.values[name] = value

    def finish(self) -> fx.GraphModule:
        outputs = [self.tensor(name) for name in self._outputs]
        self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        module = fx.GraphModule(self.root, self.graph, class_name="OnnxModel")
        if module.graph.eliminate_dead_code():  # e.g. the Q/DQ functions a quantized layer took over
            module.recompile()
            used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
            for node in self._buffers.values():
                if node.target not in used:
                    delattr(module, str(node.target))
        return module.eval()

    def _fold(self, node: onnx.NodeProto) -> tuple[np.ndarray, ...]:
        from onnx.reference import ReferenceEvaluator

        onnx = _onnx()
        graph = onnx.helper.make_graph(
            [node], "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None) for o in node.output]
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        feeds = {n: self.const(n) for n in node.input if n}
        why = check_fold(node, [feeds.get(n) for n in node.input], self.attrs())
        if why is not None:
            self.fail(f"cannot fold this constant node: {why}")
        if node.op_type == "DequantizeLinear":  # onnx's evaluator has it from opset 19 only
            from torchslim.interop.onnx_quant_ops import fold_dequantize

            return (fold_dequantize(self, node),)
        try:
            outputs = tuple(np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds))
        except MemoryError:
            self.fail("folding this constant node ran out of memory")
        why = check_outputs(outputs)
        if why is not None:
            self.fail(f"cannot fold this constant node: {why}")
        return outputs

    # -- inputs -----------------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return isinstance(self.values.get(name), np.ndarray)

    def const(self, name: str) -> np.ndarray:
        value = self.values.get(name)
        if not isinstance(value, np.ndarray):
            self.fail(f"input {name!r} must be a constant")
        return value

    def optional_const(self, index: int) -> np.ndarray | None:
        assert self.node is not None
        if len(self.node.input) <= index or not self.node.input[index]:
            return None
        return self.const(self.node.input[index])

    def tensor(self, name: str) -> fx.Node:
        """An fx node for `name`; a constant becomes a buffer of the root module."""
        value = self.values[name]
        if isinstance(value, fx.Node):
            return value
        if name not in self._buffers:  # the array stays in `values`: later nodes may need it constant
            attr = self.unique(_identifier(name, "const"))
            self.root.register_buffer(attr, torch.from_numpy(np.array(value)))
            self._buffers[name] = self.graph.get_attr(attr)
        return self._buffers[name]

    def operand(self, name: str) -> fx.Node | float | int:
        """A tensor input, or a python number when it is a one-element constant (baked into the graph)."""
        value = self.values[name]
        if isinstance(value, np.ndarray) and value.size == 1 and value.ndim == 0:
            return value.item()  # type: ignore[no-any-return,unused-ignore]
        return self.tensor(name)

    def is_float(self, name: str) -> bool:
        """Whether `name` is known to hold floats (from its constant or from shape inference)."""
        value = self.values.get(name)
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "fc"
        elem = self.types.get(name)
        return elem in _FLOAT_TYPES

    def shape(self, name: str) -> list[int | None] | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        if self.is_const(name):
            return self.const(name).ndim
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def attrs(self) -> dict[str, Any]:
        from onnx import helper

        assert self.node is not None
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute}

    # -- outputs ----------------------------------------------------------------------------------
    def module(self, module: nn.Module, *args: Any, hint: str | None = None) -> fx.Node:
        assert self.node is not None
        name = self.unique(hint or _module_name(self.node))
        self.root.add_module(name, module)
        return self.graph.call_module(name, args)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.call_function(fn, args, kwargs)

    def method(self, name: str, *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.call_method(name, args, kwargs)

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def offer_bias(self, output: str, linear: nn.Linear) -> None:
        """A bias-free Linear whose only consumer may be an Add of a constant vector (MatMul + Add)."""
        if self._consumers.get(output) == 1:
            self._fusable[output] = linear

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node that reads `name` (None when several do, or the graph outputs it)."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and self._consumers.get(name) == 1 else None

    def take_fusable(self, name: str) -> nn.Linear | None:
        return self._fusable.pop(name, None)

    def fail(self, why: str) -> NoReturn:
        node = self.node
        where = f"{node.op_type} node {(node.name or node.output[0])!r}" if node else "graph"
        raise UserError(f"{self.source}: cannot convert {where}: {why}")


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    """Values of an initializer; a stripped one (see `strip_weights`) is zeros of its shape."""
    from onnx import helper, numpy_helper

    if tensor.data_location == 1:
        if not any(e.value == "stripped" for e in tensor.external_data):  # never read a path a file names
            raise UserError(f"initializer {tensor.name!r}: external data that was not loaded with the model")
        return _stripped_zeros(tensor, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)))
    safe.check_numel(list(tensor.dims), f"initializer {tensor.name!r}")
    return np.asarray(numpy_helper.to_array(tensor))


def _dims(info: onnx.ValueInfoProto) -> list[int | None] | None:
    kind = info.type.WhichOneof("value")
    if kind != "tensor_type" or not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def _module_name(node: onnx.NodeProto) -> str:
    """Named after the weight initializer when there is one (`conv1.weight` → `conv1`), else the node."""
    weight = node.input[1] if len(node.input) > 1 else ""
    stem = re.sub(r"([._](weight|W|kernel))$", "", weight) if weight else ""
    if stem and stem != weight:
        return _identifier(stem, node.op_type.lower())
    return _identifier(node.name, node.op_type.lower())


def _identifier(name: str, fallback: str) -> str:
    ident = re.sub(r"\W", "_", name).strip("_")
    if not ident:
        return fallback
    return f"{fallback}_{ident}" if ident[0].isdigit() else ident
