"""Import-time names only: timm's data pipeline is not used by the benchmarks."""

from __future__ import annotations

from typing import Any

from torchvision.transforms import functional as functional
from torchvision.transforms.functional import InterpolationMode as InterpolationMode


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)

    class _Unavailable:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"torchvision.transforms.{name} is not available in the benchmark stub")

    _Unavailable.__name__ = name
    return _Unavailable
