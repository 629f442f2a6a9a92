"""torchslim: make trained PyTorch networks smaller and faster while keeping their accuracy."""

from __future__ import annotations

__version__ = "0.1.0"

from torchslim import interop, llm, prune, zoo
from torchslim.config import ChannelConfig, DistillConfig, QuantConfig, SparsityConfig
from torchslim.distill.api import distill
from torchslim.errors import ManifestError, UserError
from torchslim.export import export_onnx
from torchslim.io import load, register_model, save
from torchslim.metrics import Measurement, measure
from torchslim.pipeline import run_recipe
from torchslim.prune import make_permanent, prune_, register_importance
from torchslim.quant import quantize_
from torchslim.tasks import Task, register_task

__all__ = [
    "ChannelConfig",
    "DistillConfig",
    "ManifestError",
    "Measurement",
    "QuantConfig",
    "SparsityConfig",
    "Task",
    "UserError",
    "__version__",
    "distill",
    "export_onnx",
    "interop",
    "llm",
    "load",
    "make_permanent",
    "measure",
    "prune",
    "prune_",
    "quantize_",
    "register_importance",
    "register_model",
    "register_task",
    "run_recipe",
    "save",
    "zoo",
]
