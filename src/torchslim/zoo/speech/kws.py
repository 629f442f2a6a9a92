"""`kws-digits`: a DS-CNN keyword spotter for the spoken digits, on clips synthesised with eSpeak NG.

The log-mel front-end belongs to the task, not to the model: the model takes standardised log-mel
features [batch, 1, 31 frames, 40 mels] and is a plain convolutional network, so pruning, quantization
and ONNX export see only convolutions, batch norms and one linear layer (an STFT inside the graph would
be a fixed op that quantization must skip and ONNX export handles poorly). `features` is the front-end
for raw audio. Streaming: each new 32 ms chunk of audio adds one frame, and the model is called once on
the last second of frames; `chunk_inputs` is that call's input (batch 1) for per-chunk latency.

The DS-CNN follows the MLPerf Tiny keyword-spotting reference (a 10×4 convolution, four depthwise-
separable blocks of 64 channels, average pooling, one linear layer); its first convolution strides 2×4
over 31×40 features, so the blocks see 16×10 positions, about the reference's 25×5 on 49×10 MFCCs.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchslim.zoo.classification import ClassificationTask
from torchslim.zoo.speech import features, kws_data

EPOCHS = 12
LR = 5e-3
WEIGHT_DECAY = 1e-4
CHUNK_MS = 1000 * features.HOP / features.SAMPLE_RATE
"""32 ms of audio per streaming step."""
MAX_SHIFT = 3
"""Train-time time shift, in frames (±96 ms)."""


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: Any, stride: Any = 1, padding: Any = 0, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )


class DSBlock(nn.Module):
    """Depthwise 3×3 then pointwise 1×1, each followed by batch norm and ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(cin, cin, 3, padding=1, groups=cin)
        self.pointwise = ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DSCNN(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = len(kws_data.CLASSES), blocks: int = 4) -> None:
        super().__init__()
        c = _scaled(64, width)
        self.stem = ConvBNReLU(1, c, (10, 4), stride=(2, 4), padding=(5, 1))
        self.blocks = nn.Sequential(*(DSBlock(c, c) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


def shift_frames(x: torch.Tensor, gen: torch.Generator, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Each example moved in time by up to `max_shift` frames, the vacated frames copying the edge."""
    n, frames = x.shape[0], x.shape[-2]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 1), generator=gen)
    rows = (torch.arange(frames).expand(n, frames) - shifts).clamp(0, frames - 1)
    index = rows[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1])
    return torch.gather(x, 2, index)


class KwsDigits(ClassificationTask):
    name = "kws-digits"
    metric = "accuracy"
    train_batch = 64
    test_batch = 256
    classes = kws_data.CLASSES
    chunk_ms = CHUNK_MS

    def make(self, width: float = 1.0, **kwargs: Any) -> nn.Module:
        return DSCNN(width=width, **kwargs)

    def code_hash(self) -> str:
        """This module's hash and the data's: regenerated clips retrain the baseline."""
        both = super().code_hash() + kws_data.data_path().name
        return hashlib.sha256(both.encode()).hexdigest()[:12]

    @functools.cached_property
    def data(self) -> dict[str, torch.Tensor]:
        """[n, 1, 31, 40] log-mel features standardised with the training split's mean and std."""
        arrays = kws_data.load_arrays()
        self.mean, self.std = float(arrays["x_train"].mean()), float(arrays["x_train"].std())
        out = {k: torch.from_numpy(v) for k, v in arrays.items()}
        for split in ("x_train", "x_test"):
            out[split] = ((out[split] - self.mean) / self.std).unsqueeze(1)
        return out

    def features(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The front-end: [batch, samples] 16 kHz audio -> the model's standardised log-mel input."""
        self.data  # noqa: B018 (sets mean and std)
        x = features.log_mel(torch.as_tensor(audio, dtype=torch.float32))
        return ((x - self.mean) / self.std).unsqueeze(-3)

    @property
    def chunk_inputs(self) -> torch.Tensor:
        """One streaming call's input: the last second of frames, batch 1."""
        return self.data["x_test"][:1]

    @property
    def example_inputs(self) -> torch.Tensor:
        """The streaming call (batch 1), so a run's runtime choice and latencies are per chunk: at batch
        1 the pruned model's int8 kernels lose to its float ones in onnxruntime without VNNI."""
        return self.chunk_inputs

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Time shifts of up to ±96 ms and a gain of ±6 dB (an offset in log power)."""
        gain = (torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 2 - 1) * (np.log(10**0.6) / self.std)
        return shift_frames(x, gen) + gain

    def train_baseline(self, model: nn.Module) -> None:
        """AdamW with a one-cycle schedule and the train-time augmentation; see `fit_classifier`."""
        gen = torch.Generator().manual_seed(0)
        self.fit_classifier(
            model, epochs=EPOCHS, lr=LR, weight_decay=WEIGHT_DECAY, augment=lambda x: self.augment(x, gen)
        )


if __name__ == "__main__":  # quick measurement: python -m torchslim.zoo.speech.kws
    import time

    task = KwsDigits()
    start = time.perf_counter()
    data = task.data
    print(f"data in {time.perf_counter() - start:.0f}s", {k: tuple(v.shape) for k, v in data.items()})
    torch.manual_seed(0)
    net = task.build()
    print("params", sum(p.numel() for p in net.parameters()))
    start = time.perf_counter()
    task.train_baseline(net)
    print(f"trained in {time.perf_counter() - start:.0f}s, accuracy {task.evaluate(net):.4f}")
