"""Weight sharing (Deep Compression, Han et al. 2016): per layer, k = 2**bits centroids found by k-means.

Each weight is stored as a `bits`-wide index into its layer's codebook (packed like integer weights)
and the codebook as float32. Centroids start linearly spaced over [min, max] (the paper's best
initialisation: large weights keep accurate centroids) and are refined by 1-D Lloyd iterations.

Pruned zeros: when a layer has exact zeros, index 0 is reserved for a centroid fixed at 0.0, so zeros
stay exactly zero, cost no centroid from the others, and every pruned position stores the same index
(runs of zero bytes that an entropy codec shrinks to almost nothing).

Fine-tuning: the centroids are a Parameter and the forward pass looks weights up (`centroids[index]`),
so the gradient of a centroid is the sum of the gradients of the weights sharing it, as in the paper;
the assignments stay fixed. ONNX export writes the looked-up float weight (computed when the module
goes to eval mode, outside the traced graph): the .onnx file is not smaller than fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import torch
import torch.nn as nn
from pydantic import Field

from torchslim import io, safe
from torchslim.config import QuantConfig
from torchslim.errors import ManifestError, UserError
from torchslim.manifest import TRANSFORM_PARAMS, ModulePath, Name, Strict
from torchslim.quant import ptq
from torchslim.quant.geometry import Geometry, copy_sizes, geometry_of
from torchslim.quant.primitives import check_bits, pack, packed_numel, unpack
from torchslim.quant.ptq import QuantResult

TRANSFORM = "quantize_codebook"
ITERS = 30


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (1-D, centroids sorted): bucketize on the midpoints."""
    return torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)


def kmeans_1d(values: torch.Tensor, k: int, iters: int = ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted centroids (linear init over [min, max]) and each value's index; Lloyd's algorithm."""
    values = values.detach().float().reshape(-1)
    centroids = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iters):
        idx = _assign(values, centroids)
        sums = torch.zeros(k).scatter_add_(0, idx, values)
        counts = torch.zeros(k).scatter_add_(0, idx, torch.ones_like(values))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)  # empty: keep (stays sorted)
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids, _assign(values, centroids)


def cluster(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """`(centroids [2**bits], indices like weight, has_zero)`; with exact zeros, index 0 is a fixed 0.0."""
    check_bits(bits)
    w = weight.detach().float().reshape(-1)
    k = 2**bits
    zero = w == 0
    if not bool(zero.any()):
        centroids, idx = kmeans_1d(w, k)
        return centroids, idx.reshape(weight.shape), False
    idx = torch.zeros_like(w, dtype=torch.int64)
    centroids = torch.zeros(k)
    if not bool(zero.all()):
        nonzero, nz_idx = kmeans_1d(w[~zero], k - 1)
        centroids[1:], idx[~zero] = nonzero, nz_idx + 1
    return centroids, idx.reshape(weight.shape), True


class CodebookModule(nn.Module):
    """A layer whose weight is `centroids[index]`: packed indices (buffer) + trainable centroids."""

    quantized_layer = True
    packed: torch.Tensor
    free: torch.Tensor
    index: torch.Tensor

    def __init__(self, layer: nn.Module, bits: int, has_zero: bool) -> None:
        super().__init__()
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        self.bits, self.has_zero, self.weight_shape = bits, has_zero, torch.Size(weight.shape)
        self.geometry: Geometry = geometry_of(layer)
        copy_sizes(layer, self)
        self.centroids = nn.Parameter(torch.zeros(2**bits))
        bias = getattr(layer, "bias", None)
        self.bias = nn.Parameter(bias.detach().clone()) if isinstance(bias, torch.Tensor) else None
        self.register_buffer("packed", torch.zeros(packed_numel(weight.numel(), bits), dtype=torch.uint8))
        free = torch.ones(2**bits)
        free[0] = 0.0 if has_zero else 1.0
        self.register_buffer(
            "free", free, persistent=False
        )  # 0 at the fixed zero centroid: no value, no grad
        self.register_buffer("index", torch.zeros(self.weight_shape, dtype=torch.int64), persistent=False)
        self.export_constants: dict[str, torch.Tensor] = {}
        self.compute = "codebook"
        """`float` (the deployed float-compute form): the looked-up weight is kept as a plain tensor and
        every forward uses it, in training or with gradients too (`torchslim.quant.dequantized`)."""
        self.float_weight: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(lambda mod, keys: mod._unpack())

    def set_codebook(self, centroids: torch.Tensor, index: torch.Tensor) -> None:
        with torch.no_grad():
            self.centroids.copy_(centroids * self.free)
        self.packed = pack(index, self.bits, 0)
        self._unpack()
        self.train(self.training)  # refresh the export constant when already in eval mode

    def _unpack(self) -> None:
        self.index = unpack(self.packed, self.bits, 0, self.weight_shape).to(torch.int64)
        self.export_constants = {}
        self.float_weight = self.weight.detach().clone() if self.compute == "float" else None

    def set_compute(self, compute: str) -> None:
        """`codebook`: weights looked up from the centroids; `float`: looked up once, then a float op."""
        if compute not in ("codebook", "float"):
            raise ValueError(f"compute must be codebook or float, got {compute!r}")
        self.compute = compute
        self._unpack()
        self.train(self.training)

    @property
    def weight(self) -> torch.Tensor:
        """The looked-up weight, an attribute like the float layer's (`.dtype`, `.shape` work)."""
        return (self.centroids * self.free)[self.index]

    def effective_weights(self) -> list[tuple[str, torch.Tensor]]:
        return [("weight", self.weight)] + ([("bias", self.bias)] if self.bias is not None else [])

    def train(self, mode: bool = True) -> CodebookModule:
        super().train(mode)
        if not mode:  # the exporter must see the weight as a constant, not trace the lookup
            self.export_constants = {"weight": self.weight.detach().clone()}
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_weight is not None:
            return self.geometry(x, self.float_weight, self.bias)
        cached = self.export_constants.get("weight")
        if cached is not None and (torch.onnx.is_in_onnx_export() or not torch.is_grad_enabled()):
            # eval-mode inference: the looked-up weight is a constant (the lookup each call made the
            # demo's codebook LeNet 0.8x the speed of fp32); training and eval with gradients look up
            return self.geometry(x, cached, self.bias)
        return self.geometry(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight_shape)}, bits={self.bits}, zero_centroid={self.has_zero}"


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    data: Iterable[Any] | None = None,
    *,
    layer_bits: dict[str, int] | None = None,
    **unused: Any,
) -> QuantResult:
    """Replace the selected layers by `CodebookModule`s in place (data-free: k-means on the weights)."""
    if config.activations is not None:
        raise UserError("kind 'codebook' quantizes weights only: set activations to null")
    layers, kept = ptq.select_layers(model, config)
    if not layers:
        raise UserError(
            "no quantizable layer selected (Linear, Conv1d, Conv2d, Embedding); check include/exclude"
        )
    result = QuantResult(kept_float=kept)
    for name, mod in layers.items():
        bits = (layer_bits or {}).get(name, config.bits)
        weight = mod.weight
        assert isinstance(weight, torch.Tensor)
        centroids, index, has_zero = cluster(weight, bits)
        cb = _swap(model, name, mod, bits, has_zero)
        cb.set_codebook(centroids, index)
        result.quantized[name] = {"type": ptq.handler_name(mod), "bits": bits, "zero_centroid": has_zero}
    io.add_transform(model, TRANSFORM, {"layers": result.quantized})
    return result


def _swap(model: nn.Module, name: str, mod: nn.Module, bits: int, has_zero: bool) -> CodebookModule:
    cb = CodebookModule(ptq.unwrap(mod), bits, has_zero)
    cb.train(mod.training)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, cb)
    return cb


class CodebookLayer(Strict):
    type: Name | None = None
    bits: Annotated[int, Field(ge=2, le=8)]
    zero_centroid: bool


@TRANSFORM_PARAMS.register(TRANSFORM)
class CodebookParams(Strict):
    layers: dict[ModulePath, CodebookLayer]


@io.TRANSFORMS.register(TRANSFORM)
def _replay(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Swap in empty codebook layers of the recorded widths; indices and centroids load afterwards."""
    for name, p in params["layers"].items():
        layer = safe.submodule(model, name, TRANSFORM)
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ManifestError(f"{TRANSFORM}: layer {name!r} has no weight tensor")
        safe.check_numel(weight.shape, f"{TRANSFORM} {name}")
        _swap(model, name, layer, int(p["bits"]), bool(p["zero_centroid"]))
    return model
