"""Quantizing a causal-LM checkpoint larger than memory, written as a compressed-tensors checkpoint.

The model is opened on the meta device (`checkpoint.open_checkpoint`), each decoder block is read from
the shards, quantized by the engine (`llm.quant.quantize_layerwise`) and written out at once in the
compressed-tensors layout (`interop.hf_compressed`): packed integers and scales in the checkpoint's
dtype. What lies outside the blocks is copied as stored; `config.json` gains the
`quantization_config` transformers reads, so `from_pretrained` loads the output directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.atomic import replace_dir, share_modes, temp_dir_beside
from torchslim.config import QuantConfig
from torchslim.errors import UserError
from torchslim.interop import hf_compressed
from torchslim.llm.checkpoint import ShardStore, open_checkpoint
from torchslim.quant.ptq import QuantResult


class CompressedShardStore(ShardStore):
    """A `ShardStore` whose blocks are written in the compressed-tensors layout."""

    def block_state(self, index: int, block: nn.Module) -> dict[str, torch.Tensor]:
        prefix = f"{self.stack.name(index)}."
        stored = [d for k, d in self.dtypes.items() if k.startswith(prefix)]
        dtype = stored[0] if stored else torch.float32
        return hf_compressed.state_dict(block, dtype, prefix)

    def finish_config(self, model: nn.Module) -> None:
        assert self.out is not None
        path = self.out / "config.json"
        config = json.loads(path.read_text())
        config["quantization_config"] = hf_compressed.quantization_config(model)
        path.write_text(json.dumps(config, indent=2))


def quantize_checkpoint(
    source: str | Path,
    out: str | Path,
    config: QuantConfig,
    data: Iterable[Any],
    batches: int | None = None,
) -> QuantResult:
    """Quantize a Hugging Face causal-LM checkpoint on disk into `out`, one block in memory at a time.

    `data`: calibration batches of token ids. The blocks' Linears are quantized (embeddings and
    `lm_head` are copied as stored); the result's `chosen` carries the engine's peak resident memory.
    """
    from torchslim.llm.quant import quantize_layerwise

    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise UserError(f"{out}: the output must not be the source checkpoint")
    if config.include:
        raise UserError("quantize_checkpoint quantizes the decoder blocks; include is not supported here")
    if config.weights == "per_tensor" or (config.activations == "dynamic" and config.bits != 8):
        raise UserError("quantize_checkpoint writes compressed-tensors: per_channel or per_group weights, "
                        "dynamic activations with 8-bit weights only")  # fmt: skip
    model = open_checkpoint(source)
    store = CompressedShardStore(model, source)
    with temp_dir_beside(out) as tmp:
        store.out = tmp
        result = quantize_layerwise(model, config, data, store=store, calibration_batches=batches)
        store.finish()
        store.finish_config(model)
        share_modes(tmp)
        replace_dir(tmp, out)
    return result
