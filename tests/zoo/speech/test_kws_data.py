from pathlib import Path

import numpy as np
import pytest

from torchslim.zoo.speech import kws_data
from torchslim.zoo.speech.kws_data import CLIP, NOISE_CLASS, Clip, clips, render


def _variant(voice: str) -> str:
    return voice.partition("+")[2]


def test_split_by_voice_is_disjoint_and_balanced() -> None:
    train, test = clips("train"), clips("test")
    train_variants, test_variants = {_variant(c.voice) for c in train}, {_variant(c.voice) for c in test}
    assert train_variants and test_variants and not train_variants & test_variants
    assert not {c.voice for c in train} & {c.voice for c in test}
    assert {c.seed for c in train}.isdisjoint(c.seed for c in test)
    counts = np.bincount([c.label for c in train])
    assert len(counts) == 11 and counts.min() == counts.max()


def test_word_clip_is_one_second_with_speech_in_it() -> None:
    clip = Clip("seven", 7, "en-us+m3", seed=5)
    audio = render(clip)
    assert audio.shape == (CLIP,) and audio.dtype == np.float32
    energy = np.convolve(audio**2, np.ones(3200) / 3200, mode="valid")  # 0.2 s windows
    assert energy.max() > 2 * energy.min() and energy.max() > 1e-4  # a word above noise of >= 5 dB SNR
    assert np.array_equal(audio, render(clip))


def test_noise_clips_differ_by_seed_and_carry_no_word() -> None:
    a, b = render(Clip("", NOISE_CLASS, "en+m1", 1)), render(Clip("", NOISE_CLASS, "en+m1", 2))
    assert not np.array_equal(a, b)
    for audio in (a, b):
        energy = np.convolve(audio**2, np.ones(1600) / 1600, mode="valid")
        assert energy.max() < 4 * energy.mean() + 1e-12  # stationary: no word-shaped burst


def test_arrays_are_cached_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    few = {s: clips(s)[:: 700 if s == "train" else 400] for s in ("train", "test")}
    monkeypatch.setattr(kws_data, "clips", lambda split: few[split])
    arrays = kws_data.load_arrays()
    assert arrays["x_train"].shape == (len(few["train"]), 31, 40)
    assert arrays["y_test"].tolist() == [c.label for c in few["test"]]
    assert kws_data.data_path().exists() and kws_data.data_path().parent == tmp_path / "torchslim"
    monkeypatch.setattr(kws_data, "featurize", lambda split: pytest.fail("regenerated"))
    np.testing.assert_array_equal(kws_data.load_arrays()["x_train"], arrays["x_train"])
