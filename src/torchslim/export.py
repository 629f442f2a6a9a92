"""ONNX export through torch's exporter (torch.export based), batch dimension left dynamic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.data import as_tuple
from torchslim.errors import UserError


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> Path:
    """Write `model` as a single self-contained .onnx file (atomically) and return its path."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with an install hint instead)
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'torchslim[onnx]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = as_tuple(example_inputs)
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in args)
    was_training = model.training
    model.eval()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic, verbose=False)
        assert program is not None
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
