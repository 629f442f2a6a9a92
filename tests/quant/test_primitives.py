from __future__ import annotations

import pytest
import torch

from torchslim.errors import UserError
from torchslim.quant.primitives import (
    WeightSpec,
    dequantize,
    dequantize_weight,
    fake_quantize,
    pack,
    qparams_from_range,
    qrange,
    quantize,
    quantize_weight,
    sqnr_db,
    unpack,
)


def test_known_values_symmetric_and_asymmetric() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.26, 1.0])
    scale, zero = qparams_from_range(x.min(), x.max(), 8, symmetric=True)
    assert float(scale) == pytest.approx(1 / 127) and int(zero) == 0
    q = quantize(x, scale, zero, *qrange(8, True))
    assert q.tolist() == [-127, -64, 0, 33, 127]  # -63.5 rounds half to even
    scale, zero = qparams_from_range(torch.tensor(0.0), torch.tensor(2.55), 8, symmetric=False)
    assert float(scale) == pytest.approx(0.01) and int(zero) == 0
    scale, zero = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), 4, symmetric=False)
    assert int(zero) == 4  # 0.0 maps exactly to an integer
    assert float(dequantize(quantize(torch.tensor(0.0), scale, zero, 0, 15), scale, zero)) == 0.0


def test_clamping_and_bits_range() -> None:
    scale, zero = torch.tensor(0.1), torch.tensor(0)
    assert quantize(torch.tensor([100.0, -100.0]), scale, zero, -7, 7).tolist() == [7, -7]
    for bad in (1, 9, 16):
        with pytest.raises(UserError, match="2..8"):
            qrange(bad, True)


@pytest.mark.parametrize(
    ("bits", "granularity", "min_sqnr"),
    [
        (8, "per_tensor", 35),
        (8, "per_channel", 38),
        (4, "per_channel", 14),
        (4, "per_group", 16),
        (2, "per_group", 2),
    ],
)
def test_weight_round_trip_error(bits: int, granularity: str, min_sqnr: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.linspace(0.1, 3, 64)[:, None]  # rows with very different ranges
    spec = WeightSpec(bits, granularity, group_size=32)
    q, scale, zero = quantize_weight(w, spec)
    back = dequantize_weight(q, scale, zero, spec)
    assert sqnr_db(w, back) >= min_sqnr
    assert (w - back).abs().max() <= scale.max() / 2 + 1e-6  # nothing clipped, error <= half a step


def test_per_channel_beats_per_tensor_and_asymmetric_fits_skewed() -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 64) * torch.logspace(-2, 0, 32)[:, None]
    errs = {}
    for g in ("per_tensor", "per_channel"):
        spec = WeightSpec(4, g)
        errs[g] = sqnr_db(w, dequantize_weight(*quantize_weight(w, spec), spec))
    assert errs["per_channel"] > errs["per_tensor"] + 5
    skewed = torch.rand(16, 64) + 2.0
    results = {}
    for sym in (True, False):
        spec = WeightSpec(4, "per_channel", symmetric=sym)
        results[sym] = sqnr_db(skewed, dequantize_weight(*quantize_weight(skewed, spec), spec))
    assert results[False] > results[True] + 5  # 16 levels on [0, 3] vs 15 on [-3, 3]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_round_trip_and_size(bits: int) -> None:
    lo, hi = qrange(bits, True)
    q = torch.randint(lo, hi + 1, (7, 9), dtype=torch.int32)
    packed = pack(q, bits, lo)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-63 // (4 if bits == 2 else 2 if bits <= 4 else 1))
    assert torch.equal(unpack(packed, bits, lo, q.shape), q)


def test_fake_quantize_straight_through_gradient() -> None:
    x = torch.tensor([0.04, 0.26, 5.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.1), torch.tensor(0), -8, 7)
    assert y.tolist() == pytest.approx([0.0, 0.3, 0.7])
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [1.0, 1.0, 0.0]  # clamped value: no gradient
