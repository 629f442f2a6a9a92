"""Recipe stage `quantize`: the QuantConfig fields, a `calibration` block, rounding and runtime.

Quantization-aware training takes two `quantize` stages around the training:
`quantize: {bits: 4, qat: true}` inserts fake-quant layers, `finetune`/`distill` train through them,
and `quantize: {convert: true}` stores them as integers (packed weights, ONNX integer ops).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from torchslim.config import QuantConfig
from torchslim.quant.api import quantize_
from torchslim.quant.qat import convert_
from torchslim.recipe import StageSpec, register_stage


class CalibrationSpec(StageSpec):
    method: Literal["minmax", "moving_average", "percentile", "mse", "entropy"] = "minmax"
    """Activation range estimator (a registered observer)."""
    batches: int = Field(16, ge=1, le=100_000)
    """Batches of the task's calibration data read (static activations, GPTQ)."""


class QuantizeSpec(StageSpec):
    bits: int = Field(8, ge=2, le=8)
    """Weight bit width, 2 to 8."""
    weights: Literal["per_tensor", "per_channel", "per_group"] = "per_channel"
    group_size: int = Field(128, ge=1)
    symmetric: bool = True
    activations: Literal["dynamic", "static"] | None = None
    """null: weight-only; dynamic: per batch at run time; static: ranges from calibration."""
    calibration: CalibrationSpec = CalibrationSpec()
    kind: Literal["int", "codebook"] = "int"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    """Globs of layers kept in float (e.g. the first and last layers)."""
    rounding: Literal["nearest", "gptq"] = "nearest"
    """`gptq`: error-compensating weight rounding for Linear layers (uses calibration data)."""
    smoothing: float = Field(0.0, ge=0.0, le=1.0)
    """SmoothQuant alpha for Linear layers (0: off); uses calibration data."""
    runtime: Literal["torch", "torch.compile", "onnxruntime"] = "torch"
    """Where this and later stages' latency is measured; the baseline is re-timed there too.
    `torch.compile` first lowers quantized Linear layers to torchao int8 tensors (integer kernels; needs
    torchao); `onnxruntime` runs the QDQ export. See `torchslim.quant.backends` for which is fastest."""
    qat: bool = False
    """Insert fake-quant layers for the following training stages (kind int); convert them later."""
    convert: bool = False
    """Turn the fake-quant layers of an earlier `qat: true` stage into integer layers (takes no other key
    than `runtime`: the grid was fixed when they were inserted)."""
    size_target: float | None = Field(None, gt=0, le=1)
    """Mixed precision: per-layer widths from `bit_choices` by measured sensitivity so the weights take at
    most this fraction of their fp32 size (see `QuantConfig.size_target`)."""
    bit_choices: tuple[int, ...] = (8, 6, 4, 3, 2)
    """Widths mixed precision picks from; 32 keeps a sensitive layer in float."""
    reduce_range: bool | None = None
    """8-bit weights on half the grid so x86 u8s8 kernels without VNNI cannot saturate; null: on
    whenever activations are quantized (see `QuantConfig.reduce_range`)."""

    @model_validator(mode="after")
    def _convert_alone(self) -> QuantizeSpec:
        if self.convert and (self.model_fields_set - {"convert", "runtime"}):
            extra = sorted(self.model_fields_set - {"convert", "runtime"})
            raise ValueError(f"convert: true takes no other keys than runtime (got {extra})")
        if self.qat and self.kind == "codebook":
            raise ValueError("qat: codebook layers train their centroids directly; use qat with kind int")
        return self

    def config(self) -> QuantConfig:
        return QuantConfig(
            bits=self.bits,
            weights=self.weights,
            group_size=self.group_size,
            symmetric=self.symmetric,
            activations=self.activations,
            calibration=self.calibration.method,
            kind=self.kind,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            size_target=self.size_target,
            bit_choices=tuple(self.bit_choices),
            reduce_range=self.reduce_range,
        )


@register_stage("quantize", QuantizeSpec)
def quantize(ctx: Any, spec: QuantizeSpec) -> None:
    ctx.runtime = spec.runtime  # the pipeline also times the baseline there, for a like-with-like speedup
    if spec.convert:
        ctx.note(**convert_(ctx.model).notes(), converted=True)
        if spec.runtime == "torch.compile":
            ctx.note(**torchao_notes(ctx.model))
        return
    config = spec.config()
    needs = (config.activations == "static", spec.rounding == "gptq", spec.smoothing > 0, spec.size_target)
    data = ctx.task.calibration_loader(batches=spec.calibration.batches) if any(needs) else None
    options: dict[str, Any] = {"qat": spec.qat, "loss": ctx.task.loss}
    if config.kind == "int" and not spec.qat:
        options.update(rounding=spec.rounding, smoothing=spec.smoothing)
    result = quantize_(ctx.model, config, data, **options)
    ctx.note(**result.notes(), **({"qat": "fake-quant inserted; convert after training"} if spec.qat else {}))
    if spec.runtime == "torch.compile" and not spec.qat:
        ctx.note(**torchao_notes(ctx.model))


def torchao_notes(model: Any) -> dict[str, Any]:
    """What the `torch.compile` runtime lowers to torchao, and the quantized layers it leaves (why)."""
    from torchslim.quant.backends import torchao

    lowered, kept = torchao.plan(model)
    if not torchao.available():
        return {"torchao": torchao.MISSING + " (the dequantizing layers are compiled instead)"}
    return {"torchao_lowered_layers": len(lowered), "torchao_kept": kept}
