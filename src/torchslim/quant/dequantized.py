"""The float-compute deployment of a quantized model: integer storage, float kernels.

Where no installed runtime runs a model's integer layers faster than its float original (eager
PyTorch dequantizes on the fly; onnxruntime's int8 kernels on x86 without VNNI barely match fp32),
the deployed model is the quantized one with each layer's weight dequantized once, at load, and its
activations left in float: the file keeps the packed integers (the size win), the forward pass is
the float layer's. Recorded as the `dequantize` transform, so `ts.load` rebuilds the same form.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import torch.nn as nn
from pydantic import Field

from torchslim import io, safe
from torchslim.errors import ManifestError
from torchslim.manifest import TRANSFORM_PARAMS, ModulePath, Strict
from torchslim.quant.codebook import CodebookModule
from torchslim.quant.modules import QuantModule

TRANSFORM = "dequantize"
LAYERS = (QuantModule, CodebookModule)
"""Integer-grid layers and codebook (weight-sharing) layers: both store compact weights and can
compute with the float weight they stand for."""


def _switchable(module: nn.Module) -> bool:
    return isinstance(module, LAYERS) and module.compute != "float"


def float_compute_(model: nn.Module) -> list[str]:
    """Switch every quantized or codebook layer of `model` to float compute, in place; returns their
    names. A codebook layer's float form skips the centroid lookup of training and gradient mode."""
    names = [n for n, m in model.named_modules() if _switchable(m)]
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, LAYERS)
        layer.set_compute("float")
    if names:
        io.add_transform(model, TRANSFORM, {"layers": names})
    return names


def float_compute(model: nn.Module) -> nn.Module:
    """A copy of `model` in the float-compute form (`model` itself is left as it is)."""
    twin = copy.deepcopy(model)
    float_compute_(twin)
    return twin


def has_quantized_layers(model: nn.Module) -> bool:
    return any(_switchable(m) for m in model.modules())


@TRANSFORM_PARAMS.register(TRANSFORM)
class DequantizeParams(Strict):
    layers: Annotated[list[ModulePath], Field(max_length=1 << 20)]


@io.TRANSFORMS.register(TRANSFORM)
def _replay(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    for name in params["layers"]:
        layer = safe.submodule(model, name, TRANSFORM)
        if not isinstance(layer, LAYERS):
            raise ManifestError(f"{TRANSFORM}: layer {name!r} is not a quantized layer (integer or codebook)")
        layer.compute = "float"  # the weight is dequantized when the integers load (refresh, _unpack)
    return model
