"""Hostile ONNX input: folded constants beyond the size limit, huge stripped tensors in a saved
graph.onnx, external data that would be read from outside the model directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchslim as ts
from torchslim.errors import ManifestError, UserError
from torchslim.interop.onnx_fold import FOLD_LIMIT
from torchslim.interop.onnx_import import STRUCTURE_FILE, convert

onnx = pytest.importorskip("onnx")
helper, TP, numpy_helper = onnx.helper, onnx.TensorProto, onnx.numpy_helper


def _graph(nodes: list[Any], inits: dict[str, np.ndarray], opset: int = 17) -> Any:
    """x [2, 3] + (whatever the constant nodes make of `inits`, named c) -> y."""
    graph = helper.make_graph(
        [*nodes, helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TP.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


I64 = np.int64
F32 = np.float32
HUGE = {
    "Pad": (
        [helper.make_node("Pad", ["d", "p"], ["c"])],
        {"d": np.ones([1], F32), "p": np.array([0, 2**31], I64)},
    ),
    "Add": (
        [helper.make_node("Add", ["a", "b"], ["c"])],
        {"a": np.ones([10**4, 1], F32), "b": np.ones([1, 10**4], F32)},
    ),
    "Where": (
        [helper.make_node("Where", ["m", "a", "b"], ["c"])],
        {"m": np.ones([1, 1], bool), "a": np.ones([10**4, 1], F32), "b": np.ones([1, 10**4], F32)},
    ),
    "MatMul": (
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        {"a": np.ones([10**4, 1], F32), "b": np.ones([1, 10**4], F32)},
    ),
    "ConstantOfShape": (
        [helper.make_node("ConstantOfShape", ["s"], ["c"])],
        {"s": np.array([10**5, 10**5], I64)},
    ),
    "Expand": (
        [helper.make_node("Expand", ["a", "s"], ["c"])],
        {"a": np.ones([1], F32), "s": np.array([10**5, 10**5], I64)},
    ),
    "Tile": (
        [helper.make_node("Tile", ["a", "s"], ["c"])],
        {"a": np.ones([1, 1], F32), "s": np.array([10**5, 10**5], I64)},
    ),
    "Range": (
        [helper.make_node("Range", ["a", "b", "d"], ["c"])],
        {"a": np.array(0.0, F32), "b": np.array(1e12, F32), "d": np.array(1.0, F32)},
    ),
    "Gather": (
        [helper.make_node("Gather", ["a", "i"], ["c"], axis=0)],
        {"a": np.ones([2, 10**4], F32), "i": np.zeros([10**4], I64)},
    ),
    "ConvTranspose": (
        [helper.make_node("ConvTranspose", ["a", "w"], ["c"], strides=[10**5, 10**5])],
        {"a": np.ones([1, 1, 4, 4], F32), "w": np.ones([1, 1, 1, 1], F32)},
    ),
    "Einsum": (
        [helper.make_node("Einsum", ["a", "b"], ["c"], equation="i,j->ij")],
        {"a": np.ones([10**4], F32), "b": np.ones([10**4], F32)},
    ),
    "Resize": (
        [helper.make_node("Resize", ["a", "", "s"], ["c"])],
        {"a": np.ones([1, 1, 2, 2], F32), "s": np.array([1, 1, 10**4, 10**4], F32)},
    ),
}


def test_every_converted_operator_has_a_folding_bound() -> None:
    """A new converter is also a new operator that folding evaluates: it needs a size bound (`SIZES`)
    or must be one whose output the inputs bound (`BOUNDED_BY_INPUTS`)."""
    from torchslim.interop.onnx_fold import BOUNDED_BY_INPUTS, SIZES
    from torchslim.interop.onnx_import import ONNX_OPS, _check_supported

    _check_supported(_graph([], {"c": np.ones([3], F32)}), "<test>")  # registers every converter
    assert set(ONNX_OPS.names()) - set(SIZES.names()) - BOUNDED_BY_INPUTS == set()
    assert not BOUNDED_BY_INPUTS & set(SIZES.names())


@pytest.mark.parametrize("op", HUGE)
def test_folding_refuses_outputs_beyond_the_limit(op: str) -> None:
    nodes, inits = HUGE[op]
    with pytest.raises(
        UserError, match=rf"{op} node .*cannot fold this constant node: .*more than the {FOLD_LIMIT}"
    ):
        convert(_graph(nodes, inits))


def test_small_folds_still_work() -> None:
    nodes = [helper.make_node("Add", ["a", "b"], ["c"])]
    module = convert(_graph(nodes, {"a": np.ones([2, 1], F32), "b": np.ones([1, 3], F32)}))
    assert torch.equal(module(torch.ones(2, 3)), torch.full((2, 3), 3.0))


def _saved_import(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["c0"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("c0", TP.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "in.onnx"))
    return ts.save(ts.interop.import_model(tmp_path / "in.onnx"), tmp_path / "m")


def _rewrite_graph(saved: Path, edit: Any) -> None:
    """Edit the stored graph.onnx and, as a careful attacker would, its checksum in the manifest."""
    graph = onnx.load(str(saved / STRUCTURE_FILE), load_external_data=False)
    edit(graph)
    data = graph.SerializeToString()
    (saved / STRUCTURE_FILE).write_bytes(data)
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"][STRUCTURE_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (saved / "manifest.json").write_text(json.dumps(manifest))


def test_a_stripped_tensor_of_a_trillion_elements_is_refused(tmp_path: Path) -> None:
    saved = _saved_import(tmp_path)
    assert ts.load(saved) is not None

    def grow(graph: Any) -> None:
        graph.graph.initializer[0].dims[:] = [10**6, 10**6]

    _rewrite_graph(saved, grow)
    with pytest.raises(ManifestError, match="more than the .* that the stored weights can fill"):
        ts.load(saved)


def test_external_data_in_a_saved_graph_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = _saved_import(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    monkeypatch.chdir(tmp_path)  # where a relative location would resolve

    def point_outside(graph: Any) -> None:
        tensor = graph.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TP.EXTERNAL
        del tensor.external_data[:]
        tensor.external_data.add(key="location", value="secret.bin")

    _rewrite_graph(saved, point_outside)
    with pytest.raises(ManifestError, match="external data that was not loaded with the model"):
        ts.load(saved)


def test_a_changed_graph_without_a_new_checksum_is_corrupted(tmp_path: Path) -> None:
    saved = _saved_import(tmp_path)
    data = bytearray((saved / STRUCTURE_FILE).read_bytes())
    data[len(data) // 2] ^= 0x10
    (saved / STRUCTURE_FILE).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=f"{STRUCTURE_FILE}: corrupted"):
        ts.load(saved)
