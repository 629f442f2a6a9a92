"""ONNX import coverage: models exported with `ts.export_onnx` from a batch-1 example, imported with
`import_model`, and run against onnxruntime on another batch size (and sequence length for the HF
token models): does the export keep a dynamic batch, does the file import, do the outputs match.

Models: the structural-coverage nets of the pruning tests (torch CNNs and a torch transformer, the
tiny transformers configs: ResNet, ConvNeXT, MobileNetV2, ViT, BERT, GPT-2, Llama), torchslim's own
static-int8 export, and timm architectures when timm is importable (`$TIMM_PATH`, default
/work/peers/timm, with a torchvision stand-in at `$TORCHVISION_STUB`, default benchmarks/torchvision_stub).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import torchslim as ts
from benchmarks.harness import Table, benchmark
from torchslim.interop import import_model

ROOT = Path(__file__).resolve().parent.parent
TIMM = [
    "resnet10t",
    "mobilenetv3_small_050",
    "efficientnet_lite0",
    "regnetx_002",
    "convnext_atto",
    "mixnet_s",
]
TIMM_VIT = ["vit_tiny_patch16_224", "deit_tiny_patch16_224"]
Case = tuple[str, str, Callable[[], nn.Module], Any]


def _test_nets() -> Iterator[Case]:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "prune"))
    from test_channel_nets import NETS  # the nets the pruning tests cover

    for name, (make, x) in NETS.items():
        yield name, "transformers" if name.startswith("hf-") else "torch", make, x


def _quantized() -> nn.Module:
    """torchslim's static int8 (per-channel weights, uint8 activations) of a small CNN."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 10),
    ).eval()
    ts.quantize_(net, ts.QuantConfig(bits=8, activations="static"), data=[torch.randn(4, 3, 16, 16)])
    return net


def _timm() -> Iterator[Case]:
    for path in (
        os.environ.get("TIMM_PATH", "/work/peers/timm"),
        os.environ.get("TORCHVISION_STUB", str(ROOT / "benchmarks" / "torchvision_stub")),
    ):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)
    try:
        import timm
    except ImportError:
        return
    image = torch.randn(2, 3, 64, 64)
    for name in TIMM:
        yield name, "timm", lambda n=name: timm.create_model(n, pretrained=False), image
    for name in TIMM_VIT:
        yield name, "timm", lambda n=name: timm.create_model(n, pretrained=False, img_size=64), image


def _cases(quick: bool) -> Iterator[Case]:
    yield from _test_nets()
    yield "static-int8 cnn", "torchslim quantized", _quantized, torch.randn(2, 3, 16, 16)
    if not quick:
        yield from _timm()


def _resized(x: Any, source: str, batch: int) -> Any:
    """Inputs like `x` with another batch (and, for transformers' token inputs, another length)."""
    if isinstance(x, dict):
        return {k: _resized(v, source, batch) for k, v in x.items()}
    if x.is_floating_point():
        return torch.randn(batch, *x.shape[1:])
    length = x.shape[1] - 3 if source == "transformers" else x.shape[1]
    return torch.randint(0, 64, (batch, length))


def _feeds(path: Path, x: Any) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(str(path)).get_inputs()]
    values = list(x.values()) if isinstance(x, dict) else [x]
    return {n: v.numpy() for n, v in zip(names, values, strict=True)}


def _check(name: str, source: str, make: Callable[[], nn.Module], x: Any, out: Path) -> list[Any]:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = make().eval()
    one = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    started = time.perf_counter()
    try:
        path = ts.export_onnx(model, one, out / f"{name}.onnx")
    except Exception as exc:  # report, keep going
        return [name, source, "", "no", "", "no", f"export failed: {str(exc).splitlines()[0][:120]}"]
    graph = onnx.load(str(path)).graph
    ops = len({n.op_type for n in graph.node})
    dynamic = all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.input)
    try:
        imported = import_model(path)
    except Exception as exc:
        return [name, source, ops, "no", "", "no", str(exc).split("; supported")[0].split(": ", 1)[-1][:160]]
    feeds = _feeds(path, _resized(x, source, 3))
    expected = np.asarray(ort.InferenceSession(str(path)).run(None, feeds)[0])
    with torch.no_grad():
        got = imported(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    match = diff <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    seconds = time.perf_counter() - started
    note = f"batch {'dynamic' if dynamic else 'STATIC'}, checked at batch 3; {seconds:.0f} s"
    return [name, source, ops, "yes", f"{diff:.2e}", "yes" if match else "no", note]


@benchmark("onnx_import")
def run(quick: bool) -> Table:
    table = Table(
        "ONNX import: torchslim exports (batch-1 example) imported and checked against onnxruntime",
        ["model", "from", "distinct ONNX ops", "imports", "max abs diff vs onnxruntime", "matches", "note"],
    )
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, make, x in _cases(quick):
            table.rows.append(_check(name, source, make, x, Path(tmp)))
            print(table.rows[-1], flush=True)
    ok = sum(r[5] == "yes" for r in table.rows)
    table.notes.append(
        f"{ok} of {len(table.rows)} exports import and match onnxruntime"
        " (max abs diff <= 1e-4 x max(1, |output|))"
    )
    table.notes.append(
        "every export from a batch-1 example; inputs of batch 3 (HF token models: 3 tokens shorter)"
    )
    return table
