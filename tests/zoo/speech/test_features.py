import numpy as np
import torch

from torchslim.zoo.speech import features
from torchslim.zoo.speech.features import frames, log_mel, mel_filterbank


def _numpy_log_mel(audio: np.ndarray, window: int, hop: int, n_mels: int, rate: int) -> np.ndarray:
    """The same features the slow way: framed loops, numpy FFTs, a filterbank built point by point."""
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)
    n = 1 + (len(audio) - window) // hop
    power = np.stack([np.abs(np.fft.rfft(audio[i * hop : i * hop + window] * hann)) ** 2 for i in range(n)])
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(20.0), mel(rate / 2), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, rate / 2, window // 2 + 1)
    bank = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m : m + 3]
        for k, f in enumerate(freqs):
            if lo < f <= mid:
                bank[k, m] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                bank[k, m] = (hi - f) / (hi - mid)
    return np.log(power @ bank + features.LOG_FLOOR)


def test_log_mel_matches_a_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    ours = log_mel(torch.tensor(audio, dtype=torch.float64), window=400, hop=160, n_mels=20).numpy()
    ref = _numpy_log_mel(audio, 400, 160, 20, 16000)
    assert ours.shape == ref.shape == (23, 20)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_defaults_give_one_frame_per_32ms_chunk_and_31_per_second() -> None:
    audio = torch.zeros(2, 3, 16000)
    assert log_mel(audio).shape == (2, 3, 31, 40)
    assert frames(audio) == 31
    longer = torch.zeros(16000 + 512)
    assert frames(longer) == 32


def test_a_tone_peaks_in_the_band_around_its_frequency() -> None:
    t = torch.arange(16000, dtype=torch.float32) / 16000
    bank = mel_filterbank(features.WINDOW // 2 + 1)
    for hz in (300.0, 1000.0, 4000.0):
        band = int(log_mel(torch.sin(2 * torch.pi * hz * t)).mean(0).argmax())
        centre = bank[:, band].argmax().item() * 16000 / features.WINDOW
        assert abs(centre - hz) / hz < 0.15


def test_filterbank_triangles_peak_near_one_and_cover_the_band() -> None:
    bank = mel_filterbank(321)
    assert bank.shape == (321, 40)
    peaks = bank.max(0).values  # the lowest triangles are narrower than a 25 Hz bin: they peak lower
    assert bool((peaks > 0.75).all()) and bool((peaks[20:] > 0.9).all()) and bool((peaks <= 1).all())
    # neighbouring triangles sum to one between the first and the last peak
    covered = bank.sum(1)[int(bank[:, 0].argmax()) : int(bank[:, -1].argmax()) + 1]
    assert torch.allclose(covered, torch.ones_like(covered), atol=1e-5)
