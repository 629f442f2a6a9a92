import numpy as np
import pytest

from torchslim.errors import UserError
from torchslim.zoo.speech import espeak
from torchslim.zoo.speech.espeak import SAMPLE_RATE, resample, synthesize


def test_synthesis_is_speech_length_and_not_silent() -> None:
    audio = synthesize("seven", "en-us")
    assert audio.dtype == np.float32
    assert 0.2 * SAMPLE_RATE < len(audio) < 1.0 * SAMPLE_RATE
    assert float(np.sqrt(np.mean(audio**2))) > 0.02
    assert float(np.abs(audio).max()) <= 1.0


def test_voices_differ() -> None:
    a, b = synthesize("four", "en+f3"), synthesize("four", "en+m1")
    assert len(a) != len(b) or not np.allclose(a, b, atol=0.05)


def test_faster_rate_is_shorter() -> None:
    assert len(synthesize("seven", "en", rate=320)) < 0.8 * len(synthesize("seven", "en", rate=160))


def test_unknown_voice_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown eSpeak voice"):
        synthesize("one", "no-such-voice")


def test_native_rate_and_resample_keeps_a_tone() -> None:
    native = espeak.native_rate()
    assert native == 22050
    t = np.arange(native) / native
    out = resample(np.sin(2 * np.pi * 440 * t), native, SAMPLE_RATE)
    assert len(out) == SAMPLE_RATE
    expect = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    assert np.abs(out - expect).max() < 1e-3


def test_synthesis_is_deterministic_whatever_came_before() -> None:
    first = synthesize("four", "en+m1", rate=150)
    for voice in ("en+f3", "en-us", "en+m1"):
        synthesize("seven", voice, rate=200)
    assert np.array_equal(first, synthesize("four", "en+m1", rate=150))


def test_carried_state_is_found_in_the_symbol_table() -> None:
    assert len(espeak._carried_state()) == len(espeak._CARRIED_STATE)
