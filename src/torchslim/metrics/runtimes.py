"""Runtimes that latency is measured in, by name: `torch` (eager), `torch.compile`, `onnxruntime`.

`torch.compile` lowers our quantized Linear layers to torchao int8 tensors first (integer kernels, see
`torchslim.quant.backends.torchao`); `onnxruntime` exports them as QDQ / integer ONNX ops.

A runtime prepares a model into a zero-argument runner (one forward pass of the whole example
batch); timing is the same for all. `paired_latency` times several models round-robin in one
process, so a slow spell of this shared machine hits all of them alike and their ratios hold.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn

from torchslim.data import as_tuple, call
from torchslim.metrics.latency import threads, time_fn
from torchslim.registry import Registry

Runner = Callable[[], Any]
Prepare = Callable[[nn.Module, Any, ExitStack], Runner]
RUNTIMES: Registry[Prepare] = Registry("runtime")


@RUNTIMES.register("torch")
def _torch(model: nn.Module, example_inputs: Any, stack: ExitStack) -> Runner:
    return lambda: call(model, example_inputs)


@RUNTIMES.register("torch.compile")
def _compiled(model: nn.Module, example_inputs: Any, stack: ExitStack) -> Runner:
    """`torch.compile` for inference (inductor freezing: weights become constants, folded and prepacked).

    Our quantized Linear layers are first lowered (on a copy) to torchao int8 tensors with our integers
    and scales, so the compiled graph runs integer matmuls. Without torchao the dequantizing layers are
    compiled as they are, with a warning."""
    from torchslim.quant.backends import torchao as ao

    if ao.plan(model)[0]:
        if ao.available():
            with torch.inference_mode(False):
                model = ao.lower(model).model
        else:
            warnings.warn(ao.MISSING + " (compiling the dequantizing layers instead)", stacklevel=2)
    compiled = cast(nn.Module, torch.compile(model, options={"freezing": True}))
    return lambda: call(compiled, example_inputs)


@RUNTIMES.register("onnxruntime")
def _onnxruntime(model: nn.Module, example_inputs: Any, stack: ExitStack) -> Runner:
    """Export to a temporary ONNX file (quantized layers become QDQ / integer ops) and run it."""
    from torchslim.export import export_onnx

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="torchslim-ort-")))
    return _onnx_file(export_onnx(model, example_inputs, tmp / "model.onnx"), example_inputs)


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
    """Median ms of an ONNX file in onnxruntime on one thread."""
    session = ort_session(path)
    feed = ort_feed(session, example_inputs)
    with threads(1):
        return time_fn(lambda: session.run(None, feed), warmup=3, repeats=20)


def latency(model: nn.Module, example_inputs: Any, runtime: str = "torch", *, repeats: int = 20) -> float:
    """Median ms of one forward pass of the batch in `runtime`, eval mode, no grad, one thread."""
    return paired_latency([(model, runtime)], example_inputs, rounds=repeats)[0]


def paired_latency(
    entries: Sequence[tuple[nn.Module | str | Path, str]],
    example_inputs: Any,
    *,
    rounds: int = 20,
    warmup: int = 3,
) -> list[float]:
    """Median ms of each `(model, runtime)`, timed round-robin: one call of each per round, each timed
    call right after an untimed one of the same model. Without it a small model timed just after a
    large one (or another runtime) ran with cold caches: lenet5-digits' 0.3 ms onnxruntime models read
    0.57 and 0.45 ms after eager PyTorch entries, 0.31 and 0.33 alone, which turned a 1.1x speedup into 0.8x.

    A model may also be an ONNX file with runtime `onnxruntime` (run as it is, e.g. another tool's).
    """
    prepare = [RUNTIMES.get(runtime) for _, runtime in entries]  # unknown names fail before any work
    for model, runtime in entries:
        if not isinstance(model, nn.Module) and runtime != "onnxruntime":
            raise ValueError(f"an ONNX file runs in onnxruntime, not {runtime!r}: {model}")
    modules = [model for model, _ in entries if isinstance(model, nn.Module)]
    modes = [model.training for model in modules]
    samples: list[list[float]] = [[] for _ in entries]
    try:
        with ExitStack() as stack, threads(1), torch.inference_mode():
            runners = []
            for (model, _), make in zip(entries, prepare, strict=True):
                if isinstance(model, nn.Module):
                    model.eval()
                    runners.append(make(model, example_inputs, stack))
                else:
                    runners.append(_onnx_file(model, example_inputs))
            for run in runners:
                for _ in range(warmup):
                    run()
            for _ in range(rounds):
                for run, out in zip(runners, samples, strict=True):
                    run()  # untimed: the timed call finds its own weights in cache, not its neighbour's
                    start = time.perf_counter()
                    run()
                    out.append((time.perf_counter() - start) * 1000.0)
    finally:
        for model, mode in zip(modules, modes, strict=True):
            model.train(mode)
    return [statistics.median(s) for s in samples]


def _onnx_file(path: str | Path, example_inputs: Any) -> Runner:
    session = ort_session(path)
    feed = ort_feed(session, example_inputs)
    return lambda: session.run(None, feed)
