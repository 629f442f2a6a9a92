"""The `gguf` output format: `OUT/model.gguf`, a file llama.cpp loads and generates with.

Written with the `gguf` package (extra `llm`) for transformers' `LlamaForCausalLM` (the `llama-pydocs`
zoo model, `hf:PATH` Llama checkpoints); other architectures are refused before the run starts
(`require_gguf`). What goes in:
- tensors under llama.cpp's names; quantized layers as GGUF block types holding our integers
  (`gguf_tensors`: Q4_0, Q4_1, Q8_0), the rest F32 (`float_type="f16"` for 2-D floats through
  `save_gguf`); q/k projection rows reordered as llama.cpp's rope expects (`rope_rows`);
- `output.weight` only when it differs from the embedding (llama.cpp ties them when it is absent);
- hyperparameters: context length, widths, depth, heads and key/value heads (GQA), head size, rope
  theta, RMSNorm epsilon;
- the tokenizer (`gguf_vocab`), BOS/EOS ids from the model config;
- `torchslim.notes`: JSON naming each quantized tensor written dequantized, and why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchslim.atomic import temp_file_beside
from torchslim.errors import UserError
from torchslim.interop import gguf_tensors as gt
from torchslim.interop import gguf_vocab
from torchslim.registry import Registry

log = logging.getLogger(__name__)

OUTPUT_FILE = "model.gguf"
FLOAT_TYPES = ("f32", "f16")
NOTES_KEY = "torchslim.notes"
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}  # gguf.LlamaFileType
ROPE_TYPES = ("default",)


@dataclass(frozen=True)
class Encoded:
    array: np.ndarray
    qtype: str  # GGMLQuantizationType member name
    note: str = ""


@dataclass(frozen=True)
class Architecture:
    gguf_arch: str
    hparams: Callable[[Any, Any], None]  # (config, GGUFWriter)
    rope_heads: Callable[[Any, str], int | None]  # (config, state key) -> heads to reorder rows by


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _rope_theta(config: Any) -> float:
    """transformers 5 keeps rope settings in `rope_parameters`, 4 in `rope_theta`/`rope_scaling`."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UserError(f"output format 'gguf': rope scaling {kind!r} is not written yet (only plain rope)")
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _llama_hparams(config: Any, writer: Any) -> None:
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads or config.num_attention_heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(int(config.vocab_size))


def _llama_rope_heads(config: Any, key: str) -> int | None:
    if ".self_attn.q_proj." in key:
        return int(config.num_attention_heads)
    if ".self_attn.k_proj." in key:
        return int(config.num_key_value_heads or config.num_attention_heads)
    return None


ARCHITECTURES: Registry[Architecture] = Registry("architecture the gguf output writes")
"""transformers class name -> how its hyperparameters and tensors go into GGUF."""
ARCHITECTURES.register("LlamaForCausalLM", Architecture("llama", _llama_hparams, _llama_rope_heads))


def require_gguf(model: nn.Module) -> Architecture:
    """The model's architecture entry, or a UserError naming the ones written."""
    name = type(model).__name__
    if name not in ARCHITECTURES or not hasattr(model, "config"):
        raise UserError(
            f"output format 'gguf' writes {', '.join(ARCHITECTURES.names())} models (transformers); "
            f"this model is a {name}"
        )
    return ARCHITECTURES.get(name)


def check_gguf(model: nn.Module) -> None:
    """Before a run: the architecture is one we write and its tokenizer is there and convertible."""
    require_gguf(model)
    config: Any = model.config
    gguf_vocab.vocab(gguf_vocab.tokenizer_json(model), int(config.vocab_size))


def write_gguf(model: nn.Module, example_inputs: Any, out_dir: Path) -> Path:
    """The exporter of format `gguf`: `OUT/model.gguf` (F32 for unquantized tensors)."""
    dest = Path(out_dir) / OUTPUT_FILE
    notes = save_gguf(model, dest)
    for tensor, why in notes.get("dequantized", {}).items():
        log.warning("gguf: %s written dequantized as F32: %s", tensor, why)
    return dest


def save_gguf(model: nn.Module, path: str | Path, float_type: str = "f32") -> dict[str, Any]:
    """Write `model` as a GGUF file at `path` (temporary name, then renamed); returns the notes."""
    import gguf

    arch = require_gguf(model)
    if float_type not in FLOAT_TYPES:
        raise UserError(f"gguf float_type must be one of {FLOAT_TYPES}, got {float_type!r}")
    _check_config(model)
    config: Any = model.config
    vocab = gguf_vocab.vocab(gguf_vocab.tokenizer_json(model), int(config.vocab_size))
    with torch.no_grad():
        tensors = encode_tensors(model, arch, float_type)
    notes = {"dequantized": {n: e.note for n, e in tensors.items() if e.note}}
    dest = Path(path)
    with temp_file_beside(dest) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch.gguf_arch)
        _metadata(writer, model, arch, vocab, tensors, notes)
        for name, enc in tensors.items():
            raw = getattr(gguf.GGMLQuantizationType, enc.qtype) if enc.array.dtype == np.uint8 else None
            writer.add_tensor(name, enc.array, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dest)
    return notes


def _check_config(model: nn.Module) -> None:
    from torchslim.prune.heads import config_problems

    problems = config_problems(model)
    if problems:
        raise UserError(f"output format 'gguf': {problems[0]}")


def _metadata(
    writer: Any,
    model: nn.Module,
    arch: Architecture,
    vocab: gguf_vocab.Vocab,
    tensors: dict[str, Encoded],
    notes: dict[str, Any],
) -> None:
    config: Any = model.config
    writer.add_name(_model_name(model))
    arch.hparams(config, writer)
    writer.add_file_type(FILE_TYPES[_main_type(tensors)])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for field, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):
        value = getattr(config, field, None)
        if isinstance(value, int):
            add(value)
    writer.add_add_bos_token(isinstance(getattr(config, "bos_token_id", None), int))
    writer.add_string(NOTES_KEY, json.dumps(notes))


def _model_name(model: nn.Module) -> str:
    from torchslim import io

    source = io.record_of(model).source or {}
    name = source.get("name") or getattr(model.config, "name_or_path", "") or type(model).__name__
    return Path(str(name)).name or type(model).__name__


def _main_type(tensors: dict[str, Encoded]) -> str:
    """The type holding most elements of the 2-D tensors (llama.cpp's `general.file_type`)."""
    counts: dict[str, int] = {}
    for enc in tensors.values():
        if enc.array.ndim > 1:
            counts[enc.qtype] = counts.get(enc.qtype, 0) + enc.array.size
    return max(counts, key=lambda k: counts[k]) if counts else "F32"


def encode_tensors(model: nn.Module, arch: Architecture, float_type: str) -> dict[str, Encoded]:
    """GGUF name -> encoded tensor, for every tensor of a fresh model of the same class and config."""
    import gguf

    config: Any = model.config
    with torch.device("meta"):
        keys = list(type(model)(config).state_dict())
    names = gguf.get_tensor_name_map(
        getattr(gguf.MODEL_ARCH, arch.gguf_arch.upper()), config.num_hidden_layers
    )
    live = dict(model.named_modules())
    out: dict[str, Encoded] = {}
    for key in keys:
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        owner, _, attr = key.rpartition(".")
        if gguf_name is None or owner not in live:
            raise UserError(f"output format 'gguf': no GGUF tensor for {key!r} of {type(model).__name__}")
        out[gguf_name] = _encode(live[owner], attr, arch.rope_heads(config, key), float_type)
    if _tied(out):
        del out["output.weight"]
    return out


def _encode(module: nn.Module, attr: str, heads: int | None, float_type: str) -> Encoded:
    note = ""
    if attr == "weight" and hasattr(module, "spec"):
        grid, note = gt.quantized_grid(module)
        kind = gt.block_type(grid) if grid is not None else None
        if grid is not None and kind is None:
            note = f"{grid.bits}-bit {'symmetric' if grid.zero is None else 'asymmetric'} has no GGUF type"
        if grid is not None and kind is not None:
            if heads is not None:
                grid = grid.permuted(gt.rope_rows(grid.q.shape[0], heads))
            return Encoded(kind.encode(grid), kind.name)
    value = _float_value(module, attr)
    if heads is not None:
        value = value[gt.rope_rows(value.shape[0], heads)]
    array = gt.float_array(value, "f32" if note else float_type)
    return Encoded(array, "F16" if array.dtype == np.float16 else "F32", note)


def _float_value(module: nn.Module, attr: str) -> torch.Tensor:
    from torchslim.interop.hf import _tensor

    if attr == "weight" and hasattr(module, "smooth"):  # stored as w * s for inputs x / s: back to w
        return module._float_weight()  # type: ignore[operator]
    value, _ = _tensor(module, attr)
    if value is None:
        raise UserError(f"output format 'gguf': module {type(module).__name__} has no tensor {attr!r}")
    return value


def _tied(tensors: dict[str, Encoded]) -> bool:
    out, emb = tensors.get("output.weight"), tensors.get("token_embd.weight")
    return (
        out is not None
        and emb is not None
        and out.qtype == emb.qtype
        and out.array.shape == emb.array.shape
        and bool(np.array_equal(out.array, emb.array))
    )
