"""Runtime choice on fixed-cost stand-ins: a deterministic timer, so the rule is what is tested."""

from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.metrics import deploy
from torchslim.quant.modules import QuantModule

# ms per (is the model quantized, runtime): eager dequantizes int8 on the fly (slower than fp32),
# onnxruntime runs integer kernels (faster), as measured on lenet5-digits (0.65x and 1.6x).
FIXED_COST = {
    (False, "torch"): 1.0,
    (True, "torch"): 1.6,
    (False, "onnxruntime"): 0.8,
    (True, "onnxruntime"): 0.5,
}


def quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantModule) for m in model.modules())


def timer_from(costs: dict[tuple[bool, str], float]) -> deploy.Timer:
    def timer(entries: Sequence[tuple[nn.Module, str]], example_inputs: Any) -> list[float]:
        return [costs[(quantized(m), rt)] for m, rt in entries]

    return timer


def pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(4, 8)
    ts.quantize_(model, ts.QuantConfig(bits=8, activations="static"), [x])
    return model, base, x


def test_an_int8_model_goes_where_it_is_not_slower_than_fp32() -> None:
    model, base, x = pair()
    choice = deploy.choose_runtime(
        model, base, x, runtimes=["torch", "onnxruntime"], timer=timer_from(FIXED_COST)
    )
    assert choice.runtime == "onnxruntime"
    assert choice.model_ms[choice.runtime] <= choice.baseline_ms[choice.runtime]
    assert choice.notes()["runtime_candidates"]["torch"] == {"model_ms": 1.6, "baseline_ms": 1.0}


def test_the_fastest_runtime_loses_to_one_where_compression_pays() -> None:
    model, base, x = pair()
    costs = {(False, "torch.compile"): 0.2, (True, "torch.compile"): 0.3} | FIXED_COST
    choice = deploy.choose_runtime(
        model, base, x, runtimes=["torch", "torch.compile", "onnxruntime"], timer=timer_from(costs)
    )
    assert choice.runtime == "onnxruntime"  # 0.5 ms, not slower than fp32 there; compile's 0.3 is slower


def test_slower_everywhere_takes_the_fastest_and_a_failing_runtime_is_skipped() -> None:
    model, base, x = pair()
    costs = {(False, "torch"): 1.0, (True, "torch"): 1.2}

    def timer(entries: Sequence[tuple[nn.Module, str]], example_inputs: Any) -> list[float]:
        if entries[0][1] == "onnxruntime":
            raise RuntimeError("export failed")
        return timer_from(costs)(entries, example_inputs)

    choice = deploy.choose_runtime(model, base, x, runtimes=["torch", "onnxruntime"], timer=timer)
    assert choice.runtime == "torch" and choice.skipped == {"onnxruntime": "RuntimeError: export failed"}


def test_torch_compile_is_a_candidate_only_with_layers_torchao_lowers() -> None:
    names, skipped = deploy.candidates(nn.Sequential(nn.Linear(4, 4)))
    assert names[0] == "torch" and "torch.compile" in skipped and "torch.compile" not in names


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_the_real_timer_times_both_models(runtime: str) -> None:
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    model, base, x = pair()
    choice = deploy.choose_runtime(model, base, x, runtimes=[runtime])
    assert choice.runtime == runtime and choice.model_ms[runtime] > 0 and choice.baseline_ms[runtime] > 0


# this CPU (AVX2, no VNNI): int8 is slower than fp32 in eager PyTorch and barely faster in onnxruntime;
# the float-compute form (integers stored, weights dequantized once) costs what fp32 costs.
NO_INT8_KERNELS = {
    (False, "torch"): 1.0,
    (True, "torch"): 1.6,
    (False, "onnxruntime"): 0.8,
    (True, "onnxruntime"): 0.78,
}


def integer(model: nn.Module) -> bool:
    return any(isinstance(m, QuantModule) and m.compute == "int" for m in model.modules())


def form_timer(costs: dict[tuple[bool, str], float]) -> deploy.Timer:
    def timer(entries: Sequence[tuple[nn.Module, str]], example_inputs: Any) -> list[float]:
        return [costs[(integer(m), rt)] for m, rt in entries]

    return timer


def test_where_integer_layers_do_not_pay_the_float_compute_form_is_deployed() -> None:
    from torchslim.quant.dequantized import float_compute

    model, base, x = pair()
    choice = deploy.choose_runtime(
        model,
        base,
        x,
        runtimes=["torch", "onnxruntime"],
        timer=form_timer(NO_INT8_KERNELS),
        fallback=float_compute,
    )
    assert choice.use_fallback and choice.runtime == "onnxruntime"
    assert choice.fallback_ms[choice.runtime] <= choice.fallback_baseline_ms[choice.runtime]
    assert integer(model)  # the choice leaves the model as it is; the stage converts it
    notes = choice.notes()
    assert notes["deployed_form"] == "float compute"
    assert "onnxruntime 1.03x (0.78 ms vs fp32 0.8 ms)" in notes["deploy_reason"]
    assert "1.00x fp32 there" in notes["deploy_reason"]


def test_an_integer_runtime_that_pays_keeps_the_integer_form() -> None:
    from torchslim.quant.dequantized import float_compute

    model, base, x = pair()
    costs = NO_INT8_KERNELS | {(True, "onnxruntime"): 0.8 / deploy.PAYS}
    choice = deploy.choose_runtime(
        model, base, x, runtimes=["torch", "onnxruntime"], timer=form_timer(costs), fallback=float_compute
    )
    assert not choice.use_fallback and choice.runtime == "onnxruntime"
    assert choice.fallback_ms == {"torch": 1.0, "onnxruntime": 0.8}  # the float form, timed beside it


def test_a_runtime_that_pays_once_but_not_when_timed_again_is_not_deployed() -> None:
    from torchslim.quant.dequantized import float_compute

    model, base, x = pair()
    calls: list[str] = []

    def timer(entries: Sequence[tuple[nn.Module, str]], example_inputs: Any) -> list[float]:
        rt = entries[0][1]
        calls.append(rt)
        lucky = rt == "onnxruntime" and calls.count(rt) == 1  # a slow spell while fp32 ran, the first time
        costs = NO_INT8_KERNELS | ({(True, "onnxruntime"): 0.5} if lucky else {})
        return [costs[(integer(m), r)] for m, r in entries]

    choice = deploy.choose_runtime(
        model, base, x, runtimes=["torch", "onnxruntime"], timer=timer, fallback=float_compute
    )
    assert choice.use_fallback and choice.confirm_ms == {
        "onnxruntime": {"model_ms": 0.78, "baseline_ms": 0.8}
    }


def test_integer_layers_that_pay_against_fp32_lose_to_a_faster_float_form() -> None:
    """A pruned int8 model: faster than the dense baseline, slower than its own float-compute form
    (kws-digits at 0.44 of the MACs in onnxruntime without VNNI: int8 0.28 ms, float 0.18 ms)."""
    from torchslim.quant.dequantized import float_compute

    model, base, x = pair()
    pruned = {(True, "torch"): 1.6, (False, "torch"): 0.9, (True, "onnxruntime"): 0.6}
    costs = {(False, "onnxruntime"): 0.4, **pruned}

    def timer(entries: Sequence[tuple[nn.Module, str]], example_inputs: Any) -> list[float]:
        # the last entry is the dense baseline: 1.0 ms in torch, 0.8 ms in onnxruntime
        *forms, (_, rt) = entries
        return [costs[(integer(m), r)] for m, r in forms] + [{"torch": 1.0, "onnxruntime": 0.8}[rt]]

    choice = deploy.choose_runtime(
        model, base, x, runtimes=["torch", "onnxruntime"], timer=timer, fallback=float_compute
    )
    assert choice.use_fallback and choice.runtime == "onnxruntime"
    assert choice.model_ms["onnxruntime"] * deploy.PAYS <= choice.baseline_ms["onnxruntime"]  # it paid
    assert choice.fallback_ms == {"torch": 0.9, "onnxruntime": 0.4} and not choice.confirm_ms
    assert "float compute in onnxruntime (0.4 ms): 2.00x fp32 there" in choice.notes()["deploy_reason"]
