"""Streaming latency: what one step of a streaming model costs, against the audio it consumes.

A streaming speech model is called once per new chunk of audio (32 ms for `kws-digits`) at batch 1.
Per-chunk latency is the median ms of that call on one thread in the runtime it is deployed in
(`metrics.runtimes`); the real-time factor is latency / chunk duration (below 1 keeps up with live
audio; 0.01 leaves 99% of a core free). Several models are timed round-robin so their ratios hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from torchslim.metrics.runtimes import paired_latency


@dataclass(frozen=True)
class StreamingLatency:
    runtime: str
    chunk_ms: float
    """Audio per call."""
    latency_ms: float
    """Median ms of one call on one chunk's input, batch 1, one thread."""

    @property
    def rtf(self) -> float:
        """Real-time factor: compute time per second of audio."""
        return self.latency_ms / self.chunk_ms


def streaming_latency(
    entries: Sequence[tuple[nn.Module | str | Path, str]],
    chunk_inputs: Any,
    chunk_ms: float,
    *,
    rounds: int = 200,
) -> list[StreamingLatency]:
    """Per-chunk latency and real-time factor of each `(model, runtime)` on `chunk_inputs` (batch 1)."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
    ms = paired_latency(entries, chunk_inputs, rounds=rounds)
    return [StreamingLatency(runtime, chunk_ms, t) for (_, runtime), t in zip(entries, ms, strict=True)]
