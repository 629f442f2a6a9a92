"""Models from other frameworks: importers keyed by file suffix, rebuild sources for `ts.load`, and
exporters keyed by output format. Each converter module imports its framework only when used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from torchslim.errors import UserError
from torchslim.io import SOURCE_FALLBACKS, SOURCES
from torchslim.registry import Registry

Importer = Callable[[Path], nn.Module]
Exporter = Callable[[nn.Module, Any, Path], Path]

IMPORTERS: Registry[Importer] = Registry("model file type")
"""File suffix → function that reads the file into a torch module (with its source recorded)."""
EXPORTERS: Registry[Exporter] = Registry("output format")
"""Output format → function(model, example_inputs, out_dir) writing `OUT/model.<ext>`."""
FORMAT_CHECKS: Registry[Callable[[nn.Module], None]] = Registry("output format check")
"""Output format → a check of the recipe's model before the run starts: a model the format can never
write (`hf` needs a transformers model) fails before any stage runs, not after the last one."""


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = attr
    return call


IMPORTERS.register(".onnx", _lazy("torchslim.interop.onnx_import", "import_onnx"))
IMPORTERS.register(".keras", _lazy("torchslim.interop.keras", "import_keras"))
SOURCES.register("onnx", _lazy("torchslim.interop.onnx_import", "build_from_structure"))
SOURCES.register("keras", _lazy("torchslim.interop.keras", "build_from_config"))
EXPORTERS.register("onnx", _lazy("torchslim.interop.outputs", "write_onnx"))
EXPORTERS.register("keras", _lazy("torchslim.interop.keras", "write_keras"))
SOURCES.register("hf", _lazy("torchslim.interop.hf", "build"))
EXPORTERS.register("hf", _lazy("torchslim.interop.hf", "write_hf"))
SOURCE_FALLBACKS.append(_lazy("torchslim.interop.hf", "record_source"))
FORMAT_CHECKS.register("hf", _lazy("torchslim.interop.hf", "require_transformers"))
EXPORTERS.register("gguf", _lazy("torchslim.interop.gguf_out", "write_gguf"))
FORMAT_CHECKS.register("gguf", _lazy("torchslim.interop.gguf_out", "check_gguf"))


def check_formats(model: nn.Module, formats: list[str]) -> None:
    """Run the registered checks of `formats` on the model a run starts from (UserError if unfit)."""
    for fmt in formats:
        if fmt in FORMAT_CHECKS:
            FORMAT_CHECKS.get(fmt)(model)


def import_model(path: str | Path) -> nn.Module:
    """Read a model file of another framework (`.onnx`, `.keras`) into a torch module."""
    path = Path(path)
    if path.suffix not in IMPORTERS:
        raise UserError(f"model {str(path)!r}: {IMPORTERS.unknown_message(path.suffix)}")
    if not path.is_file():
        raise UserError(f"model {str(path)!r}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"model {str(path)!r}: the file is empty (0 bytes)")
    return IMPORTERS.get(path.suffix)(path)


__all__ = ["EXPORTERS", "FORMAT_CHECKS", "IMPORTERS", "check_formats", "import_model"]
