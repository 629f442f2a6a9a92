"""Where a compressed model is deployed: the fastest installed runtime for it, measured, not assumed.

Integer layers pay only where a runtime has kernels for them: eager PyTorch dequantizes them on the fly
(lenet5-digits static int8: 0.65x the speed of fp32), onnxruntime fuses QDQ chains into integer ops
(1.6x on a Xeon with VNNI/AMX; about 1.0x on an AVX2-only EPYC), torch.compile runs torchao's int8
matmuls. So every installed candidate is timed on the example inputs (median of a few round-robin
repeats, one thread), the baseline beside it in the same runtime. The model is deployed as it is in the
fastest runtime where it is at least `PAYS` times as fast as the baseline (in two timings). A `fallback`
form (e.g. the float-compute form of a quantized model: integers stored, weights dequantized once at load)
is timed beside it in the same passes, and deployed in its fastest runtime where the model as it is does not
pay or is slower than that form: compression then keeps the size win without making the model slower, and a
pruned model whose int8 kernels are slower than its float ones runs the float ones (kws-digits pruned to
0.44 of the MACs, batch 1 in onnxruntime on AVX2 without VNNI: int8 0.28 ms, float form 0.18 ms, dense
0.26 ms). Without a fallback the plain fastest wins.
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
PAYS = 1.1
"""Speedup over the baseline (same runtime) an integer form must measure to be deployed: below it, the
noise of a few timed rounds on a shared machine can turn a measured 1.05x into a final 0.95x, while the
float-compute form costs what the baseline costs."""


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
    fallback_ms: dict[str, float] = field(default_factory=dict)
    """The fallback form's median ms per runtime (timed only when the model as it is does not pay)."""
    fallback_baseline_ms: dict[str, float] = field(default_factory=dict)
    confirm_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    """The second timing of the fastest paying runtime (model and baseline), which must pay again."""
    use_fallback: bool = False
    """Deploy the fallback form (see the module doc) rather than the model as it is."""

    def notes(self) -> dict[str, Any]:
        timed = {
            rt: {"model_ms": round(ms, 4), "baseline_ms": round(self.baseline_ms[rt], 4)}
            for rt, ms in self.model_ms.items()
        }
        out: dict[str, Any] = {"runtime_chosen": self.runtime, "runtime_candidates": timed}
        if self.confirm_ms:
            out["runtime_confirmed"] = self.confirm_ms
        if self.fallback_ms:
            out["fallback_candidates"] = {
                rt: {"model_ms": round(ms, 4), "baseline_ms": round(self.fallback_baseline_ms[rt], 4)}
                for rt, ms in self.fallback_ms.items()
            }
            out["deployed_form"] = "float compute" if self.use_fallback else "as quantized"
            out["deploy_reason"] = self.reason()
        return out | ({"runtime_skipped": self.skipped} if self.skipped else {})

    def reason(self) -> str:
        """Why the model is deployed the way it is, in measured numbers."""
        speed = ", ".join(
            f"{rt} {self.baseline_ms[rt] / ms:.2f}x ({ms:.3g} ms vs fp32 {self.baseline_ms[rt]:.3g} ms)"
            for rt, ms in self.model_ms.items()
        )
        if not self.use_fallback:
            return f"as quantized: {speed}"
        rt = self.runtime
        return (
            f"no runtime runs the integer layers at least {PAYS}x as fast as fp32 and as fast as float "
            f"compute here ({speed}); deployed with integer weights stored and dequantized once at load, "
            f"float compute in {rt} ({self.fallback_ms[rt]:.3g} ms): "
            f"{self.fallback_baseline_ms[rt] / self.fallback_ms[rt]:.2f}x fp32 there"
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
    fallback: Callable[[nn.Module], nn.Module] | None = None,
) -> RuntimeChoice:
    """Time `model` and `baseline` in each runtime and pick where (and in which form) `model` is
    deployed (see module doc). `fallback(model)` builds the other form, on a copy."""
    names, skipped = candidates(model) if runtimes is None else (list(runtimes), {})
    run = timer or default_timer
    choice = RuntimeChoice("torch", skipped=dict(skipped))
    form = fallback(model) if fallback is not None else None
    _time_all(choice, model, form, baseline, example_inputs, names, run)
    if not choice.model_ms:
        return choice
    pays = [rt for rt, ms in choice.model_ms.items() if ms * PAYS <= choice.baseline_ms[rt]]
    if form is not None and choice.fallback_ms:
        fastest_form = min(choice.fallback_ms.values())
        pays = [rt for rt in pays if choice.model_ms[rt] <= fastest_form]  # the faster form is deployed
        if pays and not _confirmed(choice, model, baseline, example_inputs, pays, run):
            pays = []
    if pays or not choice.fallback_ms:
        not_slower = [rt for rt, ms in choice.model_ms.items() if ms <= choice.baseline_ms[rt]]
        pool = pays or not_slower or list(choice.model_ms)
        choice.runtime = min(pool, key=lambda rt: (choice.model_ms[rt], rt))
        return choice
    ms_of = choice.fallback_ms
    choice.use_fallback = True
    choice.runtime = min(ms_of, key=lambda rt: (ms_of[rt], rt))
    return choice


def _confirmed(
    choice: RuntimeChoice,
    model: nn.Module,
    baseline: nn.Module,
    example_inputs: Any,
    pays: list[str],
    run: Timer,
) -> bool:
    """Time the fastest paying runtime once more: it must pay again (one slow spell of a shared machine
    can make fp32 look slow; measured so, lenet5-digits int8 read 1.55x at the choice and 0.98x after)."""
    rt = min(pays, key=lambda r: (choice.model_ms[r], r))
    ms, base = run([(model, rt), (baseline, rt)], example_inputs)
    choice.confirm_ms[rt] = {"model_ms": round(ms, 4), "baseline_ms": round(base, 4)}
    return ms * PAYS <= base


def _time_all(
    choice: RuntimeChoice,
    model: nn.Module,
    form: nn.Module | None,
    baseline: nn.Module,
    example_inputs: Any,
    names: Sequence[str],
    run: Timer,
) -> None:
    """Time the model, its fallback form (where that form can differ: no integer layers are left for
    torch.compile to lower) and the baseline round-robin in each runtime, so their ratios hold."""
    for rt in names:
        with_form = form is not None and rt != "torch.compile"
        entries = [(model, rt), *([(form, rt)] if with_form else []), (baseline, rt)]
        try:
            ms = run(entries, example_inputs)  # type: ignore[arg-type]
        except Exception as e:  # a runtime that cannot run this model is not a candidate
            choice.skipped[rt] = f"{type(e).__name__}: {e}"[:300]
            continue
        choice.model_ms[rt], choice.baseline_ms[rt] = ms[0], ms[-1]
        if with_form:
            choice.fallback_ms[rt], choice.fallback_baseline_ms[rt] = ms[1], ms[-1]
