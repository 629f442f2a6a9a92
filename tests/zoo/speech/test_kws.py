from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchslim import zoo
from torchslim.io import load, record_of, write
from torchslim.metrics import count_macs
from torchslim.zoo.speech.kws import DSCNN, KwsDigits, shift_frames


def _tiny_task() -> KwsDigits:
    """The task over random features in place of the synthesised set."""
    task = KwsDigits()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 31, 40, generator=gen), torch.arange(40) % 11
    task.__dict__["data"] = {"x_train": x, "y_train": y, "x_test": x[:11], "y_test": y[:11]}
    task.mean, task.std = 2.0, 3.0
    return task


def test_dscnn_is_mlperf_tiny_sized() -> None:
    model, x = DSCNN(), torch.zeros(1, 1, 31, 40)
    assert model(x).shape == (1, 11)
    assert 20_000 < sum(p.numel() for p in model.parameters()) < 40_000
    assert 2_000_000 < count_macs(model, x) < 5_000_000
    half = DSCNN(width=0.5)
    assert half.stem[0].out_channels == 32 and half(x).shape == (1, 11)


def test_registered_and_build_tags_width(tmp_path: Path) -> None:
    task = zoo.get("kws-digits")
    assert isinstance(task, KwsDigits) and task.chunk_ms == 32.0
    model = task.build(width=0.25)
    assert model.fc.in_features == 16
    loaded = load(write(model, tmp_path / "m"))
    assert record_of(loaded).source == {"kind": "zoo", "name": "kws-digits", "kwargs": {"width": 0.25}}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_shift_moves_frames_and_repeats_the_edge() -> None:
    x = torch.arange(10.0).reshape(1, 1, 10, 1).repeat(8, 1, 1, 2)
    out = shift_frames(x, torch.Generator().manual_seed(0), max_shift=3)
    assert out.shape == x.shape
    for row in out[:, 0, :, 0]:
        steps = row.diff()
        assert set(steps.tolist()) <= {0.0, 1.0} and row.max() - row.min() >= 6
    assert len({tuple(r.tolist()) for r in out[:, 0, :, 0]}) > 1


def test_front_end_standardises_log_mel_of_audio() -> None:
    task = _tiny_task()
    x = task.features(torch.randn(2, 16000) * 0.1)
    assert x.shape == (2, 1, 31, 40)
    from torchslim.zoo.speech.features import log_mel

    expect = (log_mel(torch.zeros(16000) + 0.5) - 2.0) / 3.0
    assert torch.allclose(task.features(torch.zeros(1, 16000) + 0.5)[0, 0], expect)


def test_a_tiny_model_trains_on_augmented_batches() -> None:
    task = _tiny_task()
    torch.manual_seed(0)
    model = task.build(width=0.25)
    x, y = next(iter(task.train_loader(batch_size=40)))
    assert x.shape == (40, 1, 31, 40)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = F.cross_entropy(model(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        task.loss(model(x), y).backward()
        opt.step()
    assert F.cross_entropy(model(x), y).item() < 0.5 * before
    assert 0.0 <= task.evaluate(model) <= 1.0


@pytest.mark.slow
def test_baseline_recognises_held_out_voices() -> None:
    task = zoo.get("kws-digits")
    assert len(task.data["y_train"]) == 2464 and len(task.data["y_test"]) == 704
    assert task.evaluate(task.model()) > 0.9


def test_the_example_is_one_streaming_call_and_default_pruning_keeps_blocked_widths() -> None:
    """A run's runtime choice and latencies are per chunk (batch 1), and channel pruning with its
    defaults leaves the DS-CNN widths onnxruntime's blocked kernels take (37 channels: 2.6x slower)."""
    import torch.nn as nn

    import torchslim as ts

    task = _tiny_task()
    assert task.example_inputs.shape == (1, 1, 31, 40) and torch.equal(task.example_inputs, task.chunk_inputs)
    model = DSCNN()
    ts.prune_(model, ts.ChannelConfig(ratio=0.42), example_inputs=task.example_inputs)
    widths = {m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert widths == {36}  # 64 * 0.58 = 37.1, rounded to a multiple of 4
