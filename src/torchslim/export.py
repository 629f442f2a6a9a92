"""ONNX export through torch's exporter (torch.export based), batch dimension (and a transformers
model's sequence dimension) left dynamic.

The file never depends on the example's batch size: torch.export specializes a dynamic axis whose
example size is 1 (and then fails: "Constraints violated (batch)"), so such an axis is traced on the
example repeated to size 2; the graph is the same for any size. Only a model whose code truly pins an
axis (a reshape to a fixed batch, say) is written with static shapes, and a warning says so.
"""

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
from torch.utils._pytree import tree_leaves

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


def _widen(args: tuple[Any, ...], per_arg: tuple[Any, ...]) -> tuple[Any, ...]:
    """Each tensor repeated to size 2 along its dynamic axes of size 1 (a size-1 axis is specialized)."""
    out, changed = [], False
    for arg, spec in zip(args, per_arg, strict=True):
        if isinstance(arg, torch.Tensor) and isinstance(spec, dict):
            for axis in spec:
                if arg.shape[axis] == 1:
                    arg, changed = torch.cat([arg, arg], dim=axis), True
        out.append(arg)
    return tuple(out) if changed else args


def _size_one_differs(program: Any, target: nn.Module, args: tuple[Any, ...]) -> str | None:
    """Why the graph traced at size 2 is wrong at size 1 (a squeeze of the batch, say), or None:
    the output shapes of the example itself are compared."""
    with torch.no_grad():
        expected = [tuple(t.shape) for t in tree_leaves(target(*args)) if isinstance(t, torch.Tensor)]
    got = [tuple(t.shape) for t in tree_leaves(program(*args)) if isinstance(t, torch.Tensor)]
    return None if got == expected else f"outputs of shape {got} at size 1, {expected} expected"


def _export(target: nn.Module, args: tuple[Any, ...], names: dict[str, Any]) -> Any:
    """The exported program, dynamic where it can be, else static with a warning naming why."""
    from torchslim.interop.hf_onnx import MainOutput

    for module in target.modules():  # quantized layers' ONNX constants made now, outside the trace
        getattr(module, "export_constants", None)

    dynamic = names["dynamic_shapes"]
    per_arg = dynamic[0] if isinstance(target, MainOutput) else dynamic  # the wrapper takes *args
    widened = _widen(args, per_arg)
    try:
        program = torch.onnx.export(target, widened, dynamo=True, verbose=False, **names)
        reason = _size_one_differs(program, target, args) if widened is not args else None
        if reason is None:
            return program
    except Exception as exc:  # the exporter raises many types; any of them means "not dynamic here"
        lines = str(exc).strip().splitlines()
        reason = lines[0][:300] if lines else type(exc).__name__
    static = {k: v for k, v in names.items() if k != "dynamic_shapes"}
    program = torch.onnx.export(target, args, dynamo=True, verbose=False, **static)
    shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
    warnings.warn(
        f"export_onnx: the model does not export with a dynamic batch axis ({reason}); "
        f"the ONNX file takes inputs of shape {shapes} only",
        UserWarning,
        stacklevel=3,
    )
    return program


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> Path:
    """Write `model` as a single self-contained .onnx file (atomically) and return its path.

    Axis 0 of every input is dynamic, whatever the example's batch size; a transformers model is
    exported without its cache, returns its main tensor (logits or last hidden state) and takes any
    sequence length too."""
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
            program = _export(target, args, names)
            assert program is not None
            program.save(str(tmp), external_data=False)
            os.replace(tmp, path)
    finally:
        model.train(was_training)
    return path
