"""Quantization: integer grids (2-8 bits), calibration observers, PTQ, QAT, codebooks, ONNX deployment."""

from __future__ import annotations

from torchslim.quant.api import quantize_
from torchslim.quant.observers import OBSERVERS
from torchslim.quant.ptq import QuantResult
from torchslim.quant.rounding import ROUNDING

__all__ = ["OBSERVERS", "ROUNDING", "QuantResult", "quantize_"]
