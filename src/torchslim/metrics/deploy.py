"""Where a compressed model is deployed: the fastest installed runtime for it, measured, not assumed.

Integer layers pay only where a runtime has kernels for them: eager PyTorch dequantizes them on the fly
(lenet5-digits static int8: 0.65x the speed of fp32), onnxruntime fuses QDQ chains into integer ops
(1.6x), torch.compile runs torchao's int8 matmuls. So every installed candidate is timed on the example
inputs (median of a few round-robin repeats, one thread), the baseline beside it in the same runtime,
and the fastest runtime in which the compressed model is not slower than the baseline wins; only when
it is slower everywhere does the plain fastest win (the report then shows a like-with-like speedup < 1).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from torchslim.metrics.runtimes import paired_latency

Timer = Callable[[Sequence[tuple[nn.Module, str]], Any], list[float]]
"""`timer([(model, runtime), ...], example_inputs) -> median ms of each`, timed round-robin."""
ROUNDS = 10


def default_timer(entries: Sequence[tuple[nn.Module, str]], example_inputs: Any) -> list[float]:
    return paired_latency(entries, example_inputs, rounds=ROUNDS, warmup=2)


@dataclass
class RuntimeChoice:
    runtime: str
    model_ms: dict[str, float] = field(default_factory=dict)
    """The compressed model's median ms in each runtime that ran it."""
    baseline_ms: dict[str, float] = field(default_factory=dict)
    """The baseline's median ms in the same runtimes (timed in the same pass)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Runtimes not tried or that failed, with the reason."""

    def notes(self) -> dict[str, Any]:
        timed = {
            rt: {"model_ms": round(ms, 4), "baseline_ms": round(self.baseline_ms[rt], 4)}
            for rt, ms in self.model_ms.items()
        }
        return {"runtime_chosen": self.runtime, "runtime_candidates": timed} | (
            {"runtime_skipped": self.skipped} if self.skipped else {}
        )


def candidates(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Installed runtimes worth timing for `model`, and those left out (why).

    torch.compile is tried only where torchao lowers quantized layers to integer kernels: compiling takes
    tens of seconds here, and without integer kernels it mostly re-runs the float graph."""
    from torchslim.quant.backends import torchao

    names, skipped = ["torch"], {}
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
    else:
        skipped["onnxruntime"] = "not installed (pip install onnxruntime)"
    if not torchao.plan(model)[0]:
        skipped["torch.compile"] = "no layer that torchao lowers to integer kernels"
    elif not torchao.available():
        skipped["torch.compile"] = torchao.MISSING
    else:
        names.append("torch.compile")
    return names, skipped


def choose_runtime(
    model: nn.Module,
    baseline: nn.Module,
    example_inputs: Any,
    *,
    runtimes: Sequence[str] | None = None,
    timer: Timer | None = None,
) -> RuntimeChoice:
    """Time `model` and `baseline` in each runtime and pick where `model` is deployed (see module doc)."""
    names, skipped = candidates(model) if runtimes is None else (list(runtimes), {})
    run = timer or default_timer
    choice = RuntimeChoice("torch", skipped=dict(skipped))
    for rt in names:
        try:
            ms, base = run([(model, rt), (baseline, rt)], example_inputs)
        except Exception as e:  # a runtime that cannot run this model is not a candidate
            choice.skipped[rt] = f"{type(e).__name__}: {e}"[:300]
            continue
        choice.model_ms[rt], choice.baseline_ms[rt] = ms, base
    if not choice.model_ms:
        return choice
    not_slower = [rt for rt, ms in choice.model_ms.items() if ms <= choice.baseline_ms[rt]]
    pool = not_slower or list(choice.model_ms)
    choice.runtime = min(pool, key=lambda rt: (choice.model_ms[rt], rt))
    return choice
