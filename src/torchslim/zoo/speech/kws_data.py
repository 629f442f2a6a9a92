"""The `kws-digits` clips: spoken digits synthesised with eSpeak NG, plus a silence/noise class.

A voice is an English accent plus a speaker variant (`en-gb-scotland+m3`). Training and test voices
differ in the variant, so no test speaker is ever heard in training, in any accent. Every clip is 1 s
at 16 kHz: the word at a random offset, a random gain, and additive white, pink or brown noise at a
random SNR, all drawn from a generator seeded by the clip's index, so the set is the same everywhere.
Clips are stored as log-mel features (`features.log_mel`), cached as a plain `.npz` keyed by a hash
of this module and the feature code: generating them takes about a minute.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchslim.atomic import temp_file_beside
from torchslim.zoo.base import cache_root
from torchslim.zoo.speech import espeak, features

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NOISE_CLASS = len(WORDS)
"""Label of the silence/noise class (10)."""
CLASSES = (*WORDS, "noise")
CLIP = features.SAMPLE_RATE
"""Samples per clip: 1 s."""
ACCENTS = (
    "en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp", "en-us-nyc",
)  # fmt: skip
TRAIN_VARIANTS = (
    "m1", "m2", "m4", "m5", "m6", "m7", "f1", "f3", "f4", "adam", "Andy", "Annie", "aunty", "boris",
    "david", "ed", "edward", "Gene", "grandma", "iven", "Jacky", "john", "max", "michel", "norbert",
    "pedro", "rob", "zac",
)  # fmt: skip
TEST_VARIANTS = ("m3", "m8", "f2", "f5", "linda", "paul", "steph", "travis")
CLIPS_PER_WORD = 1
"""Clips of each word per voice (each at its own rate, pitch, offset, gain and noise)."""
NOISE_PER_VOICE = 1
"""Silence/noise clips per voice, so the noise class is as frequent as a word."""


@dataclass(frozen=True)
class Clip:
    text: str
    """The word, or "" for a noise clip."""
    label: int
    voice: str
    seed: int


def voices(variants: tuple[str, ...]) -> list[str]:
    return [f"{accent}+{variant}" for variant in variants for accent in ACCENTS]


def clips(split: str) -> list[Clip]:
    """Every clip of `split` ("train" or "test"), in a fixed order with distinct seeds."""
    variants = TRAIN_VARIANTS if split == "train" else TEST_VARIANTS
    out: list[Clip] = []
    offset = 0 if split == "train" else 1_000_000
    for voice in voices(variants):
        for label, word in enumerate(WORDS):
            out += [Clip(word, label, voice, 0) for _ in range(CLIPS_PER_WORD)]
        out += [Clip("", NOISE_CLASS, voice, 0) for _ in range(NOISE_PER_VOICE)]
    return [Clip(c.text, c.label, c.voice, offset + i) for i, c in enumerate(out)]


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f²) noise."""
    color = rng.integers(3)
    white = rng.standard_normal(n)
    if color:
        spectrum = np.fft.rfft(white)
        f = np.maximum(np.arange(len(spectrum)), 1.0)
        white = np.fft.irfft(spectrum / f ** (0.5 * color), n=n)
    return white / (np.sqrt(np.mean(white**2)) + 1e-12)


def render(clip: Clip) -> np.ndarray:
    """The clip's 1 s of audio (float32 at 16 kHz)."""
    rng = np.random.default_rng(clip.seed)
    out = np.zeros(CLIP)
    if clip.text:
        rate, pitch = int(rng.integers(120, 260)), int(rng.integers(20, 81))
        word = espeak.synthesize(
            clip.text, clip.voice, rate=rate, pitch=pitch, pitch_range=int(rng.integers(20, 81))
        )
        word = word[:CLIP]
        start = int(rng.integers(0, CLIP - len(word) + 1))
        out[start : start + len(word)] = word
        out *= 10 ** rng.uniform(-1.2, 0.1) / (np.abs(out).max() + 1e-9)  # peak between 0.06 and 1.26
        rms = np.sqrt(np.mean(out[start : start + len(word)] ** 2))
        snr = rng.uniform(5, 40) if rng.random() < 0.8 else 80.0
        out += noise(rng, CLIP) * rms * 10 ** (-snr / 20)
    else:  # silence/noise: noise at a level from near-silence to loud
        out = noise(rng, CLIP) * 10 ** rng.uniform(-4.5, -0.8)
    return np.clip(out, -1, 1).astype(np.float32)


def batched(items: list[Clip], size: int) -> Iterator[list[Clip]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def featurize(split: str) -> tuple[np.ndarray, np.ndarray]:
    """[n, frames, mels] float32 log-mel features and [n] int64 labels of `split`."""
    feats, labels = [], []
    for part in batched(clips(split), 256):
        audio = torch.from_numpy(np.stack([render(c) for c in part]))
        feats.append(features.log_mel(audio).numpy())
        labels += [c.label for c in part]
    return np.concatenate(feats), np.asarray(labels, np.int64)


def data_path() -> Path:
    source = (
        inspect.getsource(features) + inspect.getsource(espeak) + inspect.getsource(sys.modules[__name__])
    )
    return cache_root() / f"kws-digits-data-{hashlib.sha256(source.encode()).hexdigest()[:12]}.npz"


def load_arrays() -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test: generated once and cached (written atomically)."""
    path = data_path()
    if not path.exists():
        arrays: dict[str, np.ndarray] = {}
        for split in ("train", "test"):
            arrays[f"x_{split}"], arrays[f"y_{split}"] = featurize(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        with temp_file_beside(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}
