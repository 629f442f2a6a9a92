"""`torchslim inspect`: per-layer table and totals of MACs, effective MACs (nonzero weights) and params."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import UserError
from torchslim.metrics import count_macs, layer_table
from torchslim.metrics.size import nonzero_params, param_count

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


def parse_shape(text: str) -> tuple[int, ...]:
    """`1,3,224,224` (or `1x3x224x224`) as a shape."""
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise UserError(
            f"--input-shape {text!r}: expected comma-separated sizes such as 1,3,224,224"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise UserError(f"--input-shape {text!r}: every size must be a positive integer")
    return shape


def example_from_shapes(shapes: list[str], dtype: str) -> Any:
    """Zeros of each `--input-shape` (one tensor, or a tuple passed positionally)."""
    tensors = [torch.zeros(parse_shape(s), dtype=DTYPES[dtype]) for s in shapes]
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def inspect_model(model: nn.Module, example_inputs: Any | None) -> dict[str, Any]:
    """Layers and totals; without example inputs there are no MACs (None)."""
    try:
        rows = layer_table(model, example_inputs)
        macs = count_macs(model, example_inputs) if example_inputs is not None else None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"the model's forward failed on the example inputs ({exc})".split("\n")[0]) from None
    effective = None
    if macs is not None:  # multiplies outside weight layers (attention scores) are not sparse
        effective = macs - sum(r["macs"] - r["effective_macs"] for r in rows)
    return {
        "params": param_count(model),
        "nonzero_params": nonzero_params(model),
        "macs": macs,
        "effective_macs": effective,
        "layers": rows,
    }
