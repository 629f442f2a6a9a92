"""Recipe stage `quantize`: the QuantConfig fields, a `calibration` block, rounding and runtime."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from torchslim.config import QuantConfig
from torchslim.quant.api import quantize_
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
    """Where this and later stages' latency is measured; the baseline is re-timed there too."""

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
        )


@register_stage("quantize", QuantizeSpec)
def quantize(ctx: Any, spec: QuantizeSpec) -> None:
    config = spec.config()
    needs_data = config.activations == "static" or spec.rounding == "gptq" or spec.smoothing > 0
    data = ctx.task.calibration_loader(batches=spec.calibration.batches) if needs_data else None
    result = quantize_(ctx.model, config, data, rounding=spec.rounding, smoothing=spec.smoothing)
    ctx.note(**result.notes())
    ctx.runtime = spec.runtime  # the pipeline also times the baseline there, for a like-with-like speedup
