"""Small saved models and manifest editors for the hostile-input tests (test_io_hostile, test_io_fuzz)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import torchslim as ts
from torchslim import zoo

MARKER_ENV = "TORCHSLIM_HOSTILE_MARKER"


def write_marker(path: str = "", **unused: Any) -> None:
    """A 'factory' with a visible side effect: proves whether loading ran the code a manifest named."""
    Path(path).write_text("ran")


def compressed_tiny(directory: Path) -> Path:
    """The tiny digits MLP (zoo source), channel-pruned, unstructured-pruned and int4-quantized, saved."""
    task = zoo.get("tiny-digits")
    torch.manual_seed(0)
    model = task.build(width=0.5)
    x = task.example_inputs
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, importance="l2", round_to=4), example_inputs=x)
    ts.prune_(model, ts.SparsityConfig(sparsity=0.7, importance="magnitude", scope="layer"))
    ts.quantize_(model, ts.QuantConfig(bits=4, weights="per_channel", activations=None, exclude=["fc2"]))
    return ts.save(model, directory)


def manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "manifest.json").read_text())


def write_manifest(directory: Path, data: Any) -> None:
    (directory / "manifest.json").write_text(json.dumps(data))


def edit(directory: Path, **changes: Any) -> None:
    data = manifest(directory)
    data.update(changes)
    write_manifest(directory, data)
