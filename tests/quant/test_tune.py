"""Block tuning after GPTQ: a tuning that does not lower the block's error is dropped (the lowered error and
the grid are tested on a decoder block in tests/llm/test_quant.py)."""

import pytest
import torch
import torch.nn as nn

from torchslim.quant import rounding, tune
from torchslim.quant.modules import QuantLinear
from torchslim.quant.primitives import WeightSpec


def _gptq_block(spec: WeightSpec) -> tuple[nn.Sequential, nn.Sequential, list[torch.Tensor]]:
    """A fixed two-Linear block (float copy kept), each Linear rounded by GPTQ on its own inputs."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).eval()
    xs = [torch.randn(64, 32) * torch.logspace(-1, 0.5, 32) for _ in range(4)]
    block = nn.Sequential(*[QuantLinear(m, spec, None) if isinstance(m, nn.Linear) else m for m in ref])
    with torch.no_grad():
        for i in (0, 2):
            inputs = torch.cat([ref[:i](x) for x in xs])
            layer = ref[i]
            assert isinstance(layer, nn.Linear)
            q = block[i]
            assert isinstance(q, QuantLinear)
            rounding.gptq(q, layer.weight.detach(), inputs.t() @ inputs)
    return ref, block, xs


def test_a_tuning_that_does_not_lower_the_error_is_not_kept() -> None:
    spec = WeightSpec(4, "per_group", 16, symmetric=True)
    ref, block, xs = _gptq_block(spec)
    stored = [m.int_weight().clone() for m in block if isinstance(m, QuantLinear)]
    with torch.no_grad():
        targets = [ref(x) for x in xs]
    report = tune.tune_block(block, lambda i: block(xs[i]), targets, steps=0)  # no step: equal, not lower
    assert report is not None and not report.kept and report.after == pytest.approx(report.before)
    now = [m.int_weight() for m in block if isinstance(m, QuantLinear)]
    assert all(torch.equal(a, b) for a, b in zip(now, stored, strict=True))


def test_a_block_without_weight_only_quantized_linears_is_left_alone() -> None:
    block = nn.Sequential(nn.Linear(4, 4))
    assert tune.tune_block(block, lambda i: block(torch.ones(1, 4)), [torch.zeros(1, 4)]) is None
