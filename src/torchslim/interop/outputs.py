"""The `onnx` output format: OUT/model.onnx through torch's exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from torchslim.export import export_onnx


def write_onnx(model: nn.Module, example_inputs: Any, out_dir: Path) -> Path:
    return export_onnx(model, example_inputs, out_dir / "model.onnx")
