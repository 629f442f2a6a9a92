"""torchslim: make trained PyTorch networks smaller and faster while keeping their accuracy."""

from __future__ import annotations

__version__ = "0.1.0"

from torchslim import zoo
from torchslim.config import ChannelConfig, DistillConfig, QuantConfig, SparsityConfig
from torchslim.errors import ManifestError, UserError
from torchslim.export import export_onnx
from torchslim.io import load, save
from torchslim.metrics import Measurement, measure
from torchslim.pipeline import run_recipe

__all__ = [
    "ChannelConfig",
    "DistillConfig",
    "ManifestError",
    "Measurement",
    "QuantConfig",
    "SparsityConfig",
    "UserError",
    "__version__",
    "export_onnx",
    "load",
    "measure",
    "run_recipe",
    "save",
    "zoo",
]
