"""Shape arithmetic, indexing, logic, recurrent and resize operators on tiny graphs, against onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import torchslim as ts
from torchslim.interop.onnx_import import convert

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, TP, numpy_helper = onnx.helper, onnx.TensorProto, onnx.numpy_helper
I64, F32 = np.int64, np.float32
rng = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(F32)


def _i(*values: int) -> np.ndarray:
    return np.array(values, dtype=I64)


def _model(nodes: list[Any], feeds: dict[str, np.ndarray], inits: dict[str, np.ndarray], opset: int) -> Any:
    """Inputs take their dtype and rank from `feeds`, every dim symbolic (as a dynamic export has it);
    the output's dtype is what onnx's reference evaluator computes."""
    from onnx.reference import ReferenceEvaluator

    draft = _graph(nodes, feeds, inits, opset, TP.FLOAT)
    out = ReferenceEvaluator(draft).run(None, feeds)[0]
    return _graph(nodes, feeds, inits, opset, helper.np_dtype_to_tensor_dtype(np.asarray(out).dtype))


def _graph(
    nodes: list[Any], feeds: dict[str, np.ndarray], inits: dict[str, np.ndarray], opset: int, out: int
) -> Any:
    inputs = [
        helper.make_tensor_value_info(
            k, helper.np_dtype_to_tensor_dtype(v.dtype), [f"{k}{i}" for i in range(v.ndim)]
        )
        for k, v in feeds.items()
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("y", out, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _check(model: Any, feeds: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.asarray(session.run(None, feeds)[0])
    module = convert(model)
    with torch.no_grad():
        got = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=atol)


node = helper.make_node
CASES: dict[str, tuple[list[Any], dict[str, np.ndarray], dict[str, np.ndarray], int]] = {
    # runtime shapes: the batch and length come from the input, heads from a constant
    "shape gather concat reshape (heads split)": (
        [
            node("Shape", ["x"], ["s"], start=0, end=2),
            node("Concat", ["s", "heads"], ["t"], axis=0),
            node("Reshape", ["x", "t"], ["r"]),
            node("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3]),
        ],
        {"x": _f(3, 5, 8)},
        {"heads": _i(2, 4)},
        18,
    ),
    "shape, gather scalar, div on int64 truncates, range, unsqueeze": (
        [
            node("Shape", ["x"], ["s"]),
            node("Gather", ["s", "one"], ["n"], axis=0),
            node("Div", ["n", "two"], ["h"]),
            node("Range", ["zero", "h", "one"], ["y"]),
        ],
        {"x": _f(2, 7)},
        {"one": np.array(1, I64), "two": np.array(2, I64), "zero": np.array(0, I64)},
        17,
    ),
    "constant of shape from a runtime shape, expand both ways": (
        [
            node("Shape", ["x"], ["s"]),
            node("ConstantOfShape", ["s"], ["c"], value=numpy_helper.from_array(np.array([2.5], F32))),
            node("Expand", ["v", "s"], ["e"]),
            node("Mul", ["c", "e"], ["y"]),
        ],
        {"x": _f(3, 4)},
        {"v": _f(1, 4)},
        17,
    ),
    "expand to fewer dims keeps the input's (bidirectional)": (
        [node("Expand", ["x", "t"], ["y"])],
        {"x": _f(2, 1, 3)},
        {"t": _i(4, 1)},
        17,
    ),
    "gather on a runtime axis 1 with negative indices": (
        [node("Gather", ["x", "i"], ["y"], axis=1)],
        {"x": _f(2, 5, 3)},
        {"i": np.array([[0, -1], [2, -3]], I64)},
        17,
    ),
    "gather of a constant table is an embedding": (
        [node("Gather", ["table", "ids"], ["y"], axis=0)],
        {"ids": np.array([[1, 0, 3], [2, 2, 1]], I64)},
        {"table": _f(4, 6)},
        17,
    ),
    "gather elements, negative indices": (
        [node("GatherElements", ["x", "i"], ["y"], axis=1)],
        {"x": _f(3, 4)},
        {"i": np.array([[0, -1], [3, 1], [2, 2]], I64)},
        17,
    ),
    "gather nd": (
        [node("GatherND", ["x", "i"], ["y"])],
        {"x": _f(3, 4, 2)},
        {"i": np.array([[0, 1], [2, 3]], I64)},
        17,
    ),
    "gather nd with a batch dim": (
        [node("GatherND", ["x", "i"], ["y"], batch_dims=1)],
        {"x": _f(2, 4, 3)},
        {"i": np.array([[[1], [3]], [[0], [2]]], I64)},
        17,
    ),
    "split in equal parts (opset 18 num_outputs), uneven split sizes": (
        [
            node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
            node("Split", ["x", "sizes"], ["d", "e"], axis=1),
            node("Concat", ["c", "b", "a", "e", "d"], ["y"], axis=1),
        ],
        {"x": _f(2, 7)},
        {"sizes": _i(2, 5)},
        18,
    ),
    "slice with runtime ends and negative steps": (
        [
            node("Shape", ["x"], ["s"], start=1, end=2),
            node("Sub", ["s", "one"], ["end"]),
            node("Slice", ["x", "start", "end", "axis", "step"], ["a"]),
            node("Slice", ["a", "m1", "big", "axis", "m1"], ["y"]),
        ],
        {"x": _f(2, 9)},
        {"one": _i(1), "start": _i(1), "axis": _i(1), "step": _i(2), "m1": _i(-1), "big": _i(-100)},
        17,
    ),
    "where with isnan mask, logic ops": (
        [
            node("IsNaN", ["x"], ["nan"]),
            node("GreaterOrEqual", ["x", "zero"], ["ge"]),
            node("LessOrEqual", ["x", "zero"], ["le"]),
            node("Xor", ["ge", "le"], ["xor"]),
            node("Or", ["nan", "xor"], ["or"]),
            node("Not", ["or"], ["not"]),
            node("And", ["not", "ge"], ["and"]),
            node("Where", ["and", "x", "zero"], ["y"]),
        ],
        {"x": np.array([[np.nan, 1.0, -2.0], [0.0, 3.0, np.inf]], F32)},
        {"zero": np.array(0.0, F32)},
        17,
    ),
    "isinf positive only, n-ary max min sum mean": (
        [
            node("IsInf", ["x"], ["inf"], detect_negative=0),
            node("Cast", ["inf"], ["f"], to=TP.FLOAT),
            node("Max", ["x", "f", "c"], ["mx"]),
            node("Min", ["mx", "c", "f"], ["mn"]),
            node("Sum", ["mn", "f", "c"], ["sm"]),
            node("Mean", ["sm", "c", "f"], ["y"]),
        ],
        {"x": np.array([[-np.inf, 1.0, np.inf], [0.5, -3.0, 2.0]], F32)},
        {"c": np.array([0.25, 0.5, 1.5], F32)},
        17,
    ),
    "einsum attention scores": (
        [node("Einsum", ["q", "k"], ["y"], equation="bhqd, bhkd -> bhqk")],
        {"q": _f(2, 3, 4, 5), "k": _f(2, 3, 6, 5)},
        {},
        17,
    ),
    "cumsum exclusive reverse, trilu, mod": (
        [
            node("CumSum", ["x", "ax"], ["c"], exclusive=1, reverse=1),
            node("Trilu", ["c", "k"], ["t"], upper=0),
            node("Mod", ["t", "m"], ["y"], fmod=1),
        ],
        {"x": _f(4, 4)},
        {"ax": np.array(1, I64), "k": np.array(1, I64), "m": np.array(0.7, F32)},
        17,
    ),
    "tile, size, argmax": (
        [
            node("Tile", ["x", "r"], ["t"]),
            node("ArgMax", ["t"], ["a"], axis=1, keepdims=0),
            node("Size", ["t"], ["n"]),
            node("Add", ["a", "n"], ["y"]),
        ],
        {"x": _f(2, 3)},
        {"r": _i(2, 2)},
        17,
    ),
    "instance norm (torch's group norm)": (
        [
            node("Reshape", ["x", "groups"], ["g"]),
            node("InstanceNormalization", ["g", "s", "b"], ["n"], epsilon=1e-5),
            node("Reshape", ["n", "shape"], ["y"]),
        ],
        {"x": _f(2, 4, 3, 3)},
        {"groups": _i(0, 2, -1), "s": _f(2), "b": _f(2), "shape": _i(2, 4, 3, 3)},
        17,
    ),
    "nonzero": ([node("NonZero", ["x"], ["y"])], {"x": np.array([[1, 0], [0, 3]], F32)}, {}, 17),
}


@pytest.mark.parametrize("name", list(CASES))
def test_operator_matches_onnxruntime(name: str) -> None:
    nodes, feeds, inits, opset = CASES[name]
    _check(_model(nodes, feeds, inits, opset), feeds)


def test_runtime_shapes_follow_the_input() -> None:
    """One import serves every batch and length, as the ONNX graph does."""
    nodes, feeds, inits, opset = CASES["shape gather concat reshape (heads split)"]
    model = _model(nodes, feeds, inits, opset)
    for shape in [(1, 2, 8), (4, 9, 8)]:
        _check(model, {"x": _f(*shape)})


def test_constant_table_gather_becomes_an_embedding() -> None:
    nodes, feeds, inits, opset = CASES["gather of a constant table is an embedding"]
    module = convert(_model(nodes, feeds, inits, opset))
    assert [type(m).__name__ for m in module.children()] == ["Embedding"]


def _recurrent(op: str, dirs: int, with_state: bool) -> tuple[Any, dict[str, np.ndarray]]:
    gates = {"LSTM": 4, "GRU": 3}[op]
    hidden, size, seq, batch = 5, 3, 4, 2
    inits = {
        "w": _f(dirs, gates * hidden, size),
        "r": _f(dirs, gates * hidden, hidden),
        "b": _f(dirs, 2 * gates * hidden),
    }
    names = ["x", "w", "r", "b", "", "h0"] + (["c0"] if op == "LSTM" else [])
    if with_state:
        inits["h0"] = _f(dirs, batch, hidden)
        inits["c0"] = _f(dirs, batch, hidden)
    else:
        names = names[:4]
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    direction = "bidirectional" if dirs == 2 else "forward"
    outputs = ["y1", "yh"] + (["yc"] if op == "LSTM" else [])
    nodes = [
        node(op, names, outputs, hidden_size=hidden, direction=direction, **extra),
        node("Flatten", ["y1"], ["f1"], axis=0),
        node("Flatten", ["yh"], ["f2"], axis=0),
        node("Concat", ["f1", "f2"], ["y"], axis=1),
    ]
    feeds = {"x": _f(seq, batch, size)}
    return _model(nodes, feeds, {k: v for k, v in inits.items() if k in names}, 17), feeds


@pytest.mark.parametrize(
    ("op", "dirs", "with_state"), [("LSTM", 1, False), ("LSTM", 2, True), ("GRU", 1, True), ("GRU", 2, False)]
)
def test_recurrent_layers_match_onnxruntime(op: str, dirs: int, with_state: bool) -> None:
    model, feeds = _recurrent(op, dirs, with_state)
    _check(model, feeds)
    assert [type(m).__name__ for m in convert(model).children()] == [op]


RESIZE = {
    "nearest asymmetric floor by scales": (
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        np.array([1, 1, 2, 3], F32),
        None,
    ),
    "nearest half pixel round_prefer_ceil by sizes": (
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "half_pixel",
            "nearest_mode": "round_prefer_ceil",
        },
        None,
        _i(2, 3, 7, 5),
    ),
    "linear half pixel": ({"mode": "linear"}, np.array([1, 1, 2, 2], F32), None),
    "linear align corners by sizes": (
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
        None,
        _i(2, 3, 9, 4),
    ),
    "cubic half pixel": ({"mode": "cubic", "cubic_coeff_a": -0.75}, np.array([1, 1, 2, 2], F32), None),
}


@pytest.mark.parametrize("name", list(RESIZE))
def test_resize_matches_onnxruntime(name: str) -> None:
    attrs, scales, sizes = RESIZE[name]
    inits = {"scales": scales} if scales is not None else {"sizes": sizes}
    inputs = ["x", "", "scales"] if scales is not None else ["x", "", "", "sizes"]
    feeds = {"x": _f(2, 3, 4, 5)}
    _check(_model([node("Resize", inputs, ["y"], **attrs)], feeds, inits, 13), feeds, atol=1e-4)


def test_resize_without_a_torch_equivalent_is_named() -> None:
    feeds = {"x": _f(1, 1, 2, 2)}
    attrs = {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize"}
    nodes = [node("Resize", ["x", "", "s"], ["y"], **attrs)]
    model = _graph(nodes, feeds, {"s": np.array([1, 1, 2, 2], F32)}, 13, TP.FLOAT)
    with pytest.raises(ts.UserError, match="tf_crop_and_resize.*has no torch equivalent"):
        convert(model)
