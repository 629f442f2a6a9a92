"""Recipe stage `quantize`: the QuantConfig fields, a `calibration` block, rounding and runtime.

Quantization-aware training takes two `quantize` stages around the training:
`quantize: {bits: 4, qat: true}` inserts fake-quant layers, `finetune`/`distill` train through them,
and `quantize: {convert: true}` stores them as integers (packed weights, ONNX integer ops).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from torchslim.config import QuantConfig
from torchslim.quant.api import quantize_
from torchslim.quant.dequantized import float_compute, float_compute_, has_quantized_layers
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
    group_size: int | None = Field(None, ge=1)
    """Weights per scale (per_group); null: 64 at 4 bits and below, 128 above."""
    symmetric: bool | None = None
    """null: asymmetric at 3 bits and below and for Linear/Embedding layers at 4, else symmetric."""
    activations: Literal["dynamic", "static"] | None = None
    """null: weight-only; dynamic: per batch at run time; static: ranges from calibration."""
    calibration: CalibrationSpec = CalibrationSpec()
    kind: Literal["int", "codebook"] = "int"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    """Globs of layers kept in float (e.g. the first and last layers)."""
    method: Literal["auto", "rtn", "gptq", "awq", "awq+gptq", "gptq+tune"] = "auto"
    """Weight rounding: rtn, gptq (error-compensating, Linear layers, uses calibration data), awq
    (activation-aware input scales searched per layer, then rtn; awq+gptq: then gptq), gptq+tune (gptq, then
    each transformer block's rounding and scales tuned for its output error), or auto: gptq at 4
    bits and below when calibration data is at hand, rtn above (see `QuantConfig.method`)."""
    rounding: Literal["nearest", "gptq"] | None = None
    """Deprecated name of `method` (nearest = rtn); a recipe giving both is refused."""
    smoothing: float | Literal["auto"] = "auto"
    """SmoothQuant alpha for Linear layers (0: off; uses calibration data); auto: for dynamic activations,
    the alpha whose output on a calibration batch is closest to float (see `QuantConfig.smoothing`)."""
    runtime: Literal["auto", "torch", "torch.compile", "onnxruntime"] = "auto"
    """Where this and later stages run and are timed; the baseline is re-timed there too. auto: the
    fastest installed runtime for the quantized model, measured on the example inputs (see
    `torchslim.metrics.deploy`). `torch.compile` first lowers quantized Linear layers to torchao int8
    tensors (integer kernels; needs torchao); `onnxruntime` runs the QDQ export."""
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

    @model_validator(mode="after")
    def _rounding_alias(self) -> QuantizeSpec:
        if self.rounding is None:
            return self
        if "method" in self.model_fields_set:
            raise ValueError("rounding is the deprecated name of method: give only method")
        warnings.warn(
            "quantize: rounding is deprecated, use method (rtn|gptq|awq)", DeprecationWarning, stacklevel=2
        )
        return self

    @field_validator("smoothing")
    @classmethod
    def _alpha(cls, value: float | str) -> float | str:
        if value != "auto" and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"must be auto or an alpha in [0, 1], got {value}")
        return value

    def config(self) -> QuantConfig:
        method = {"nearest": "rtn", "gptq": "gptq"}[self.rounding] if self.rounding else self.method
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
            method=method,  # type: ignore[arg-type]
            smoothing=self.smoothing,
        )

    def needs_data(self) -> bool:
        """Whether a calibration pass may be used: static ranges, GPTQ, smoothing or mixed precision."""
        config = self.config()
        low_bits = min((config.bits, *(config.bit_choices if config.size_target else ())))
        return config.size_target is not None or (
            config.kind == "int"
            and (
                config.activations == "static"
                or config.method in ("gptq", "awq", "awq+gptq", "gptq+tune")
                or (config.method == "auto" and low_bits <= 4)
                or (config.smoothing == "auto" and config.activations == "dynamic")
                or (config.smoothing != "auto" and float(config.smoothing) > 0)
            )
        )


@register_stage("quantize", QuantizeSpec)
def quantize(ctx: Any, spec: QuantizeSpec) -> None:
    if spec.convert:
        ctx.note(**convert_(ctx.model).notes(), converted=True)
    else:
        config = spec.config()
        data = ctx.task.calibration_loader(batches=spec.calibration.batches) if spec.needs_data() else None
        result = quantize_(ctx.model, config, data, qat=spec.qat, loss=ctx.task.loss)
        ctx.note(
            **result.notes(), **({"qat": "fake-quant inserted; convert after training"} if spec.qat else {})
        )
        if spec.qat:  # fake-quant layers train next; the convert stage chooses where they run
            ctx.runtime = "torch" if spec.runtime == "auto" else spec.runtime
            return
    deploy(ctx, spec.runtime)


def deploy(ctx: Any, runtime: str) -> None:
    """Set where this and later stages run (the pipeline also times the baseline there, like with like);
    `auto` measures the installed runtimes on the example inputs and takes the fastest; where none runs
    the integer layers faster than fp32, the model is deployed in its float-compute form (`dequantized`)."""
    if runtime == "auto":
        from torchslim.metrics.deploy import choose_runtime

        fallback = float_compute if has_quantized_layers(ctx.model) else None
        choice = choose_runtime(ctx.model, ctx.teacher, ctx.task.example_inputs, fallback=fallback)
        ctx.note(**choice.notes())
        if choice.use_fallback:
            float_compute_(ctx.model)
        runtime = choice.runtime
    ctx.runtime = runtime
    if runtime == "torch.compile":
        ctx.note(**torchao_notes(ctx.model))


def torchao_notes(model: Any) -> dict[str, Any]:
    """What the `torch.compile` runtime lowers to torchao, and the quantized layers it leaves (why)."""
    from torchslim.quant.backends import torchao

    lowered, kept = torchao.plan(model)
    if not torchao.available():
        return {"torchao": torchao.MISSING + " (the dequantizing layers are compiled instead)"}
    return {"torchao_lowered_layers": len(lowered), "torchao_kept": kept}
