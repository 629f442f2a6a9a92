"""Runtimes that latency is measured in, by name: `torch` (eager), `torch.compile`, `onnxruntime`.

Each is `fn(model, example_inputs) -> median ms` of the whole example batch on one thread, so a
report row can say which runtime its latency belongs to and speedups compare like with like.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn

from torchslim.data import as_tuple, call
from torchslim.metrics.latency import measure_latency, threads, time_fn
from torchslim.registry import Registry

LatencyFn = Callable[[nn.Module, Any], float]
RUNTIMES: Registry[LatencyFn] = Registry("runtime")
RUNTIMES.register("torch", measure_latency)


@RUNTIMES.register("torch.compile")
def compiled_latency(model: nn.Module, example_inputs: Any) -> float:
    model.eval()
    with threads(1), torch.inference_mode():
        compiled = cast(nn.Module, torch.compile(model))
        return time_fn(lambda: call(compiled, example_inputs), warmup=3, repeats=20)


def ort_session(path: str | Path) -> Any:
    """A one-thread CPU InferenceSession with all graph optimisations (QDQ fusion included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_feed(session: Any, example_inputs: Any) -> dict[str, Any]:
    names = [i.name for i in session.get_inputs()]
    return {n: t.detach().numpy() for n, t in zip(names, as_tuple(example_inputs), strict=False)}


def time_onnx(path: str | Path, example_inputs: Any) -> float:
    session = ort_session(path)
    feed = ort_feed(session, example_inputs)
    return time_fn(lambda: session.run(None, feed), warmup=3, repeats=20)


@RUNTIMES.register("onnxruntime")
def onnxruntime_latency(model: nn.Module, example_inputs: Any) -> float:
    """Export to a temporary ONNX file (quantized layers become QDQ / integer ops) and time it."""
    from torchslim.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
        path = export_onnx(model, example_inputs, Path(tmp) / "model.onnx")
        return time_onnx(path, example_inputs)
