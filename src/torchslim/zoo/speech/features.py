"""Log-mel features in torch (no torchaudio): a Hann-windowed STFT and a triangular mel filterbank.

Defaults suit 1 s keyword clips at 16 kHz: 40 ms windows every 32 ms (so each new 32 ms chunk of a
stream adds exactly one frame), 40 mel bands from 20 Hz to 8 kHz on the HTK mel scale.
"""

from __future__ import annotations

import torch

SAMPLE_RATE = 16000
WINDOW = 640
"""40 ms."""
HOP = 512
"""32 ms: one frame per streaming chunk."""
N_MELS = 40
F_MIN, F_MAX = 20.0, 8000.0
LOG_FLOOR = 1e-6


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[n_freqs, n_mels] triangles with peaks equally spaced in mel, each peaking at 1."""
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64)).tolist()
    edges = mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (center - lower)
    falling = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(dtype)


def frames(audio: torch.Tensor, window: int = WINDOW, hop: int = HOP) -> int:
    """How many whole frames `log_mel` makes of `audio` samples (no padding at the ends)."""
    return 1 + (audio.shape[-1] - window) // hop


def log_mel(
    audio: torch.Tensor,
    window: int = WINDOW,
    hop: int = HOP,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """[..., samples] float audio -> [..., frames, n_mels] natural-log mel power."""
    n_fft = window  # any length: an FFT of 640 points is as cheap as one of 1024
    spec = torch.stft(
        audio.reshape(-1, audio.shape[-1]),
        n_fft=n_fft,
        hop_length=hop,
        window=torch.hann_window(window, periodic=True, dtype=audio.dtype),
        center=False,
        return_complex=True,
    )
    power = spec.abs().square().transpose(1, 2)  # [batch, frames, freqs]
    mel = power @ mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, dtype=audio.dtype)
    return torch.log(mel + LOG_FLOOR).reshape(*audio.shape[:-1], -1, n_mels)
