"""Zoo task `silero-vad`: the pretrained Silero VAD and speech synthesised with eSpeak NG.

Each 4 s signal holds two or three utterances (eSpeak NG, voices and variants split between train and
test, random rate and pitch) between stretches of silence, with white/pink/brown noise at 5-30 dB SNR
and a random gain. A 32 ms frame is labelled speech where the clean speech's RMS in it is within 30 dB
of the utterance's loudest frame. The metric is agreement with the original model: the fraction of test
frames whose decision at 0.5 is the same (`agreement`); `mean_abs_diff` and `roc_auc` (against the
labels, for the model and the original) are reported beside it. Batches are single streaming steps
`((x, h, c), p_original)` gathered by running the original model over the training signals, so
calibration sees the states the model meets while streaming.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.zoo.base import Task
from torchslim.zoo.speech import silero
from torchslim.zoo.speech.kws_data import noise

SECONDS = 4
TEXTS = (
    "the quick brown fox jumps over the lazy dog",
    "please call me back when you get this message",
    "turn left at the next corner and keep going",
    "seven hundred and twenty three",
    "it is going to rain later this afternoon",
    "where did you put the keys",
    "my phone battery is almost empty",
    "we will meet at the station at noon",
)
VOICES = {
    "train": ("en", "en-us", "en+f3", "en+m3", "en-us+f2", "en+m7"),
    "test": ("en-gb-x-rp", "en+f4", "en-us+m2", "en+f2"),
}
SIGNALS = {"train": 24, "test": 32}
SPEECH_DB = -30.0


def _place(rng: np.random.Generator, voice: str) -> tuple[np.ndarray, np.ndarray]:
    """(clean speech, per-sample activity) of one signal: utterances between silences."""
    from torchslim.zoo.speech.espeak import synthesize

    n = SECONDS * silero.SAMPLE_RATE
    clean, active = np.zeros(n), np.zeros(n, dtype=bool)
    pos = int(rng.integers(2000, 12000))
    for _ in range(int(rng.integers(2, 4))):
        text = TEXTS[int(rng.integers(len(TEXTS)))]
        words = text.split()[: int(rng.integers(2, 6))]
        rate, pitch = int(rng.integers(130, 240)), int(rng.integers(25, 76))
        speech = synthesize(" ".join(words), voice, rate, pitch, seed=int(rng.integers(1 << 30)))
        end = min(n, pos + len(speech))
        if end - pos < 4000:
            break
        clean[pos:end] = speech[: end - pos] * rng.uniform(0.3, 1.0)
        frames = _frame_rms(speech[: end - pos])
        loud = frames > frames.max() * 10 ** (SPEECH_DB / 20)
        active[pos:end] = np.repeat(loud, silero.CHUNK)[: end - pos]
        pos = end + int(rng.integers(3000, 16000))
        if pos >= n:
            break
    return clean, active


def _frame_rms(x: np.ndarray) -> np.ndarray:
    pad = (-len(x)) % silero.CHUNK
    frames = np.pad(x, (0, pad)).reshape(-1, silero.CHUNK)
    return np.sqrt((frames**2).mean(1))


def signals(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio [S, 64000] float32, frame labels [S, 125] bool) of a split, the same on every call."""
    rng = np.random.default_rng({"train": 11, "test": 23}[split])
    voices = VOICES[split]
    audio, labels = [], []
    for i in range(SIGNALS[split]):
        clean, active = _place(rng, voices[i % len(voices)])
        rms = np.sqrt((clean[active] ** 2).mean()) if active.any() else 0.1
        snr = rng.uniform(5, 30)
        mix = clean + noise(rng, len(clean)) * rms / 10 ** (snr / 20)
        mix *= rng.uniform(0.3, 1.0) / max(np.abs(mix).max(), 1e-6)
        audio.append(mix.astype(np.float32))
        frames = active.reshape(-1, silero.CHUNK).mean(1) > 0.5
        labels.append(frames)
    return torch.from_numpy(np.stack(audio)), torch.from_numpy(np.stack(labels))


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    s, y = scores.reshape(-1).double(), labels.reshape(-1).bool()
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = torch.cat([pos, neg]).argsort()
    ranks = torch.empty(len(order), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(order) + 1, dtype=torch.float64)
    values = torch.cat([pos, neg])
    for v in values.unique():  # average ranks of ties
        tie = values == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


class SileroVad(Task):
    name = "silero-vad"
    metric = "agreement"
    outputs = "regression"

    def make(self, **kwargs: Any) -> nn.Module:
        return silero.SileroVAD()

    def train_baseline(self, model: nn.Module) -> None:
        """Nothing to train: the original's weights (see `silero.pretrained_state`)."""
        assert isinstance(model, silero.SileroVAD)
        silero.load_pretrained(model)

    def model(self) -> nn.Module:
        model = self.build()
        self.train_baseline(model)
        return model.eval()

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split in ("train", "test"):
            audio, labels = signals(split)
            out[split], out[f"{split}_labels"] = audio, labels
            out[f"{split}_ref"] = silero.reference_stream(audio)
        steps: list[Any] = []
        silero.stream(self.model(), out["train"], inputs=steps)
        out["steps"] = steps
        return out

    def probabilities(self, model: nn.Module, split: str = "test") -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return silero.stream(model, self.data[split])
        finally:
            model.train(was_training)

    def evaluate(self, model: nn.Module) -> float:
        """Fraction of test frames whose speech decision (p > 0.5) is the original model's."""
        return self.scores(model)["agreement"]

    def scores(self, model: nn.Module) -> dict[str, float]:
        p, ref = self.probabilities(model), self.data["test_ref"]
        labels = self.data["test_labels"]
        return {
            "agreement": float(((p > 0.5) == (ref > 0.5)).float().mean()),
            "mean_abs_diff": float((p - ref).abs().mean()),
            "roc_auc": roc_auc(p, labels),
            "roc_auc_original": roc_auc(ref, labels),
        }

    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True, holdout: float = 0.0
    ) -> Iterable[Any]:
        """Streaming steps of the training signals, `((x, h, c), p_original)`, shuffled by `seed`."""
        steps, ref = self.data["steps"], self.data["train_ref"]
        order = torch.randperm(len(steps), generator=torch.Generator().manual_seed(seed)).tolist()
        for i in order:
            yield steps[i], ref[:, i : i + 1]

    def test_loader(self, batch_size: int | None = None) -> Iterable[Any]:
        steps: list[Any] = []
        silero.stream(self.model(), self.data["test"], inputs=steps)
        ref = self.data["test_ref"]
        return [(s, ref[:, i : i + 1]) for i, s in enumerate(steps)]

    @property
    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One streaming step at batch 1: 576 samples (context + a 32 ms chunk) and the LSTM state."""
        context, h, c = silero.initial_state(1)
        return torch.cat([context, torch.zeros(1, silero.CHUNK)], 1), h, c

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        prob = output[0] if isinstance(output, tuple) else output
        return F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), target)
