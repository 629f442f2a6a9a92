"""ONNX export through torch's exporter (torch.export based), batch dimension left dynamic."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.atomic import temp_file_beside
from torchslim.data import as_tuple
from torchslim.errors import UserError


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs notes that concern neither the user nor the result (absent torchvision ops,
    deprecations inside torch); keep them off the user's terminal. Errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> Path:
    """Write `model` as a single self-contained .onnx file (atomically) and return its path."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with an install hint instead)
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'torchslim[onnx]'") from None
    path = Path(path)
    args = as_tuple(example_inputs)
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in args)
    was_training = model.training
    model.eval()
    try:
        with temp_file_beside(path) as tmp, _quiet_exporter():
            program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic, verbose=False)
            assert program is not None
            program.save(str(tmp), external_data=False)
            os.replace(tmp, path)
    finally:
        model.train(was_training)
    return path
