"""ONNX export through torch's exporter (torch.export based), batch dimension (and a transformers
model's sequence dimension) left dynamic."""

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


def _plan(model: nn.Module, example_inputs: Any) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    """What to export, its positional inputs and the exporter's naming/dynamic-axes arguments;
    transformers models go through `hf_onnx.adapt` (no cache, main output, dynamic sequence)."""
    from torchslim.interop.hf_onnx import adapt

    adapted = adapt(model, example_inputs)
    if adapted is not None:
        return (
            adapted.module,
            adapted.args,
            {
                "dynamic_shapes": adapted.dynamic_shapes,
                "input_names": adapted.input_names,
                "output_names": adapted.output_names,
            },
        )
    args = as_tuple(example_inputs)
    batch = torch.export.Dim("batch", min=1)
    return model, args, {"dynamic_shapes": tuple({0: batch} for _ in args)}


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> Path:
    """Write `model` as a single self-contained .onnx file (atomically) and return its path.

    Axis 0 of every input is dynamic; a transformers model is exported without its cache, returns
    its main tensor (logits or last hidden state) and takes any sequence length too."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with an install hint instead)
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'torchslim[onnx]'") from None
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        target, args, names = _plan(model, example_inputs)
        with temp_file_beside(path) as tmp, _quiet_exporter():
            program = torch.onnx.export(target, args, dynamo=True, verbose=False, **names)
            assert program is not None
            program.save(str(tmp), external_data=False)
            os.replace(tmp, path)
    finally:
        model.train(was_training)
    return path
