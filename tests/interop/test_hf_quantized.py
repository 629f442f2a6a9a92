"""Quantized transformers models: every layer quantizes (ViT's patch projection included, whose
`weight.dtype` transformers reads in the forward), runs, saves and loads, and goes out as `hf`.

Tiny random configs (tests/tiny_hf.py); thresholds are cosine similarity of the main output to the
float model's on the same inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from tiny_hf import bert, gpt2, vit
from torchslim.data import main_output
from torchslim.interop import EXPORTERS
from torchslim.quant.qat import convert_, prepare_qat

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TOKENS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
MODELS: dict[str, tuple[Any, torch.Tensor, str, int]] = {  # builder, inputs, a quantized layer, layers
    "vit": (vit, IMAGES, "vit.embeddings.patch_embeddings.projection", 14),
    "bert": (bert, TOKENS, "encoder.layer.0.attention.self.query", 16),
    "gpt2": (gpt2, TOKENS, "transformer.h.0.attn.c_attn", 11),
}
GRIDS: dict[str, tuple[ts.QuantConfig, float]] = {  # config, lowest cosine to the float output
    "int8": (ts.QuantConfig(bits=8, weights="per_channel", activations=None), 0.9995),
    "int4": (ts.QuantConfig(bits=4, weights="per_group", group_size=16, activations=None), 0.98),
    "codebook4": (ts.QuantConfig(kind="codebook", bits=4, activations=None), 0.97),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return MODELS[name][0]().eval(), MODELS[name][1]


def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return main_output(model(x))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def reload(path: Path) -> nn.Module:
    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(path).eval()


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("name", list(MODELS))
def test_quantized_transformers_run_save_load_and_write_hf(name: str, grid: str, tmp_path: Path) -> None:
    model, x = build(name)
    ref = out(model, x)
    config, lowest = GRIDS[grid]
    result = ts.quantize_(model, config)
    assert not result.kept_float and len(result.quantized) == MODELS[name][3]
    layer = model.get_submodule(MODELS[name][2])
    weight = layer.weight  # an attribute, as on the float layer: transformers reads .dtype/.shape
    assert isinstance(weight, torch.Tensor) and weight.dtype == torch.float32
    assert weight.shape == layer.weight_shape
    quantized = out(model, x)
    assert lowest < cosine(quantized, ref) < 1.0
    ts.save(model, tmp_path / "ts")
    assert torch.equal(out(ts.load(tmp_path / "ts"), x), quantized)
    path = EXPORTERS.get("hf")(model, x, tmp_path)  # weight-only: dequantized, the same outputs
    assert set(json.loads((path / "torchslim.json").read_text())["dequantized"]) == set(result.quantized)
    assert torch.allclose(out(reload(path), x), quantized, atol=1e-5)


def test_vit_trains_quantization_aware_and_converts(tmp_path: Path) -> None:
    model, x = build("vit")
    ref = out(model, x)
    prepare_qat(model, ts.QuantConfig(bits=8, weights="per_channel", activations=None))
    projection = model.get_submodule(MODELS["vit"][2])
    assert projection.weight.dtype == torch.float32 and projection.out_channels == 32
    assert 0.9995 < cosine(out(model, x), ref) < 1.0
    fake = out(model, x)
    convert_(model)
    assert torch.allclose(out(model, x), fake, atol=1e-5)  # the grid it trained on
    path = EXPORTERS.get("hf")(model, x, tmp_path)
    assert torch.allclose(out(reload(path), x), fake, atol=1e-5)
