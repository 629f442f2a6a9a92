"""Import-time names only (timm's dataset factory imports these; the benchmarks build no datasets)."""

from __future__ import annotations

from typing import Any


class _Unavailable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f"torchvision.datasets.{type(self).__name__} is not available in the benchmark stub"
        )


class CIFAR10(_Unavailable): ...


class CIFAR100(_Unavailable): ...


class MNIST(_Unavailable): ...


class KMNIST(_Unavailable): ...


class FashionMNIST(_Unavailable): ...


class ImageFolder(_Unavailable): ...
