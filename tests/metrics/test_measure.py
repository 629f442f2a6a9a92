import time
from typing import ClassVar

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune

import torchslim as ts
from torchslim.metrics import layer_table
from torchslim.metrics.latency import threads, time_fn
from torchslim.metrics.size import nonzero_params, param_count


def test_lenet5_parameters_and_nonzeros(lenet) -> None:
    assert param_count(lenet) == 431_080
    with torch.no_grad():
        lenet.fc1.weight[:100].zero_()
    assert nonzero_params(lenet) == 431_080 - 100 * 800


def test_reparametrized_weights_count_as_the_forward_pass_sees_them() -> None:
    layer = nn.Linear(10, 10)
    torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
    assert param_count(layer) == 110
    assert nonzero_params(layer) == 110 - 50


def test_measure_reports_every_field(tiny_task) -> None:
    model = tiny_task.model()
    m = ts.measure(model, tiny_task.example_inputs, tiny_task.test_loader(), repeats=3)
    assert m.params == 64 * 32 + 32 + 32 * 10 + 10
    assert m.macs == 64 * 32 + 32 * 10
    assert m.accuracy is not None and m.accuracy > 0.85
    assert m.accuracy == tiny_task.evaluate(model)
    assert m.size_bytes > 4 * m.params  # float32 weights plus header and manifest
    assert m.latency_ms > 0 and m.runtime == "torch"
    assert set(m.to_dict()) >= {"params", "nonzero_params", "macs", "size_bytes", "latency_ms", "accuracy"}


def test_size_grows_with_parameters(tiny_task) -> None:
    small = ts.measure(tiny_task.build(width=0.25), tiny_task.example_inputs, repeats=1)
    large = ts.measure(tiny_task.build(width=2.0), tiny_task.example_inputs, repeats=1)
    assert small.size_bytes < large.size_bytes
    # float32 weights, entropy-coded: random-looking floats save well under 10%
    assert large.size_bytes - small.size_bytes >= 0.9 * 4 * (large.params - small.params)


def test_latency_uses_one_thread_and_restores_the_setting() -> None:
    before = torch.get_num_threads()
    seen = []
    with threads(1):
        time_fn(lambda: seen.append(torch.get_num_threads()), warmup=1, repeats=3, min_seconds=0)
    assert set(seen) == {1} and torch.get_num_threads() == before


def test_layer_table(lenet) -> None:
    with torch.no_grad():
        lenet.fc2.weight[:5].zero_()
    rows = {r["name"]: r for r in layer_table(lenet, torch.randn(1, 1, 28, 28))}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["fc2"]["shape"] == [10, 500] and rows["fc2"]["params"] == 5010
    assert rows["fc2"]["sparsity"] == pytest.approx(2500 / 5010, abs=1e-6)
    assert rows["conv2"]["macs"] == 1_600_000 and rows["conv1"]["bits"] == 32


class _CacheStandIn(torch.nn.Module):
    """Slow (10 ms) when another model ran last, as a small model is after a large one evicted its
    weights from cache; fast (1 ms) when it ran last itself."""

    last: ClassVar[list[object]] = [None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.001 if self.last[0] is self else 0.010)
        self.last[0] = self
        return x


def test_paired_latency_times_each_model_warm_not_after_its_neighbour() -> None:
    from torchslim.metrics.runtimes import paired_latency

    a, b = _CacheStandIn(), _CacheStandIn()
    times = paired_latency([(a, "torch"), (b, "torch")], torch.zeros(1), rounds=8, warmup=1)
    assert all(ms < 5.0 for ms in times)  # each timed call follows an untimed one of the same model
