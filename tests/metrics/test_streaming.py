import pytest
import torch
import torch.nn as nn

from torchslim.metrics.streaming import StreamingLatency, streaming_latency


def test_one_entry_per_model_with_its_runtime_and_rtf() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(1, 1, 8, 8)
    model(x)
    rows = streaming_latency([(model, "torch"), (model, "onnxruntime")], x, 32.0, rounds=5)
    assert [r.runtime for r in rows] == ["torch", "onnxruntime"]
    for row in rows:
        assert row.chunk_ms == 32.0 and row.latency_ms > 0
        assert row.rtf == pytest.approx(row.latency_ms / 32.0)


def test_rtf_is_compute_per_second_of_audio() -> None:
    assert StreamingLatency("torch", 32.0, 8.0).rtf == 0.25


def test_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_ms"):
        streaming_latency([(nn.Identity(), "torch")], torch.zeros(1), 0.0)
