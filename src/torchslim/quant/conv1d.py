"""transformers' GPT-2 `Conv1D` quantizes as the `nn.Linear` it is.

`Conv1D` computes `x @ W + b` with `W` stored `[in, out]`, the transpose of nn.Linear's layout. Rather
than teach every quantization path (PTQ, GPTQ, SmoothQuant, QAT, mixed precision, codebooks, the ONNX
lowering) a second layout, each selected `Conv1D` becomes an `nn.Linear` holding the transposed weight
before layers are chosen: the same function, then quantized like any Linear. The swap is recorded as the
`conv1d_as_linear` transform, replayed on load before the quantized modules are; the `hf` output turns
the weights back into Conv1D's layout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from torchslim import io, safe
from torchslim.errors import ManifestError
from torchslim.manifest import TRANSFORM_PARAMS, ModulePath, Strict
from torchslim.targeting import is_selected

TRANSFORM = "conv1d_as_linear"


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D, also when pruning's parametrize has subclassed it (`ParametrizedConv1D`)."""
    return any(c.__name__ == "Conv1D" for c in type(module).__mro__) and hasattr(module, "nf")


def as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear computing what the Conv1D `module` computes (its weight transposed, bias shared)."""
    weight, bias = module.weight, module.bias  # a masked weight comes out of its parametrization masked
    assert isinstance(weight, torch.Tensor)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().t().contiguous())
    if isinstance(bias, torch.Tensor):
        linear.bias = nn.Parameter(bias.detach().clone())
    return linear.train(module.training)


def linearize_(model: nn.Module, include: Any = (), exclude: Any = ()) -> list[str]:
    """Swap every selected Conv1D for its nn.Linear; returns (and records) the names swapped."""
    names = [n for n, m in model.named_modules() if is_conv1d(m) and is_selected(n, include, exclude)]
    for name in names:
        model.set_submodule(name, as_linear(model.get_submodule(name)))
    if names:
        io.add_transform(model, TRANSFORM, {"layers": names})
    return names


@TRANSFORM_PARAMS.register(TRANSFORM)
class Conv1dParams(Strict):
    layers: list[ModulePath]


@io.TRANSFORMS.register(TRANSFORM)
def _replay(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    for name in params["layers"]:
        module = safe.submodule(model, name, TRANSFORM)
        if not is_conv1d(module):
            raise ManifestError(
                f"{TRANSFORM}: {name!r} is a {type(module).__name__}, not a transformers Conv1D"
            )
        model.set_submodule(name, as_linear(module))
    return model
