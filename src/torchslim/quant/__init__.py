"""Quantization: integer grids (2-8 bits), calibration observers, PTQ, QAT, codebooks, ONNX deployment."""

from __future__ import annotations

from torchslim.quant.api import KINDS, quantize_
from torchslim.quant.codebook import CodebookModule
from torchslim.quant.dequantized import float_compute_
from torchslim.quant.observers import OBSERVERS
from torchslim.quant.ptq import QuantResult
from torchslim.quant.qat import FakeQuant, convert_
from torchslim.quant.rounding import ROUNDING

__all__ = [
    "KINDS",
    "OBSERVERS",
    "ROUNDING",
    "CodebookModule",
    "FakeQuant",
    "QuantResult",
    "convert_",
    "float_compute_",
    "quantize_",
]
