"""The `gguf` output: a tiny random Llama written and read back with gguf's own reader."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

import tiny_hf
import torchslim as ts
from tiny_hf import gpt2
from torchslim.errors import UserError
from torchslim.interop import EXPORTERS, check_formats
from torchslim.interop.gguf_out import NOTES_KEY, save_gguf
from torchslim.interop.gguf_tensors import rope_rows
from torchslim.resolve import resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

ARCH = dict(  # tiny_hf.llama's 2 layers, 4 query heads over 2 kv heads, wider for 32-blocks
    vocab_size=320,  # more rows than the tokenizer has entries: padding tokens
    hidden_size=64,
    intermediate_size=96,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    rms_norm_eps=1e-6,
    rope_theta=50000.0,
)
Q4 = dict(bits=4, weights="per_group", group_size=32, symmetric=True, method="rtn")


def _checkpoint(path: Path, tied: bool = True) -> Path:
    from torchslim.zoo.text.tokenizer import train, wrap

    torch.manual_seed(0)
    model = tiny_hf.llama(**ARCH, tie_word_embeddings=tied)
    model.save_pretrained(str(path))
    wrap(train(["Return the sum of a and b.", "Open the file and read it."] * 4, 300)).save_pretrained(
        str(path)
    )
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("gguf") / "ckpt")


def _model(ckpt: Path, fp16_scales: bool = False, **quant: Any) -> nn.Module:
    model = resolve_model(f"hf:{ckpt}")
    if quant:
        ts.quantize_(model, ts.QuantConfig(**quant))
    if fp16_scales:  # scales that fp16 holds exactly: the GGUF then dequantizes to our very values
        for mod in model.modules():
            if hasattr(mod, "w_scale"):
                mod.w_scale = mod.w_scale.half().float()
                mod.refresh()
    return model


def _read(path: Path) -> tuple[Any, dict[str, Any]]:
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def _values(t: Any) -> np.ndarray:
    """A tensor's float values as [rows, cols] (the reader's shapes are in ggml's reversed order)."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])


def _ours(model: nn.Module, layer: str, heads: int | None = None) -> np.ndarray:
    weight = model.get_submodule(layer).weight.detach()
    return (weight[rope_rows(weight.shape[0], heads)] if heads else weight).numpy()


def _field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


@pytest.mark.parametrize(
    ("bits", "symmetric", "qtype"),
    [(4, True, "Q4_0"), (8, True, "Q8_0"), (3, True, "Q4_0"), (5, False, "Q8_0")],
)
def test_grids_read_back_as_our_exact_values(
    ckpt: Path, tmp_path: Path, bits: int, symmetric: bool, qtype: str
) -> None:
    model = _model(ckpt, fp16_scales=True, **{**Q4, "bits": bits, "symmetric": symmetric})
    notes = save_gguf(model, tmp_path / "m.gguf")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert notes == {"dequantized": {}}
    for name, t in tensors.items():  # quant/ keeps embeddings float unless included: token_embd is F32
        want = qtype if len(t.shape) == 2 and name != "token_embd.weight" else "F32"
        assert t.tensor_type.name == want, name
    assert "output.weight" not in tensors  # lm_head tied to the embedding: one tensor
    layer = "model.layers.1"
    pairs = {
        "blk.1.attn_q.weight": _ours(model, f"{layer}.self_attn.q_proj", 4),
        "blk.1.attn_k.weight": _ours(model, f"{layer}.self_attn.k_proj", 2),
        "blk.1.attn_v.weight": _ours(model, f"{layer}.self_attn.v_proj"),
        "blk.1.ffn_down.weight": _ours(model, f"{layer}.mlp.down_proj"),
        "token_embd.weight": _ours(model, "model.embed_tokens"),
    }
    for name, ours in pairs.items():
        assert np.array_equal(_values(tensors[name]), ours), name
    norm = model.get_submodule(f"{layer}.input_layernorm").weight.detach().numpy()
    assert np.array_equal(tensors["blk.1.attn_norm.weight"].data, norm)
    assert _field(reader, "general.file_type") == {"Q4_0": 2, "Q8_0": 7}[qtype]


def test_q4_0_blocks_hold_our_integers_and_fp16_scales(ckpt: Path, tmp_path: Path) -> None:
    model = _model(ckpt, **Q4)  # scales as quantized (float32): each rounded once to fp16
    save_gguf(model, tmp_path / "m.gguf")
    _, tensors = _read(tmp_path / "m.gguf")
    mod: Any = model.get_submodule("model.layers.0.mlp.up_proj")
    raw = np.asarray(tensors["blk.0.ffn_up.weight"].data).reshape(96, 2, 18)  # 2 blocks of 2 + 16 bytes
    d = raw[..., :2].copy().view(np.float16).reshape(96, 2)
    qs = raw[..., 2:]
    nibbles = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(96, 64).astype(np.int32) - 8
    assert np.array_equal(nibbles, mod.int_weight().numpy())
    assert np.array_equal(d, mod.w_scale.reshape(96, 2).half().numpy())
    ours, theirs = mod.weight.detach().numpy(), _values(tensors["blk.0.ffn_up.weight"])
    bound = 7 * mod.w_scale.reshape(96, 2).repeat_interleave(32, 1).numpy() * 2.0**-11
    assert np.abs(theirs - ours).max() > 0 and np.all(np.abs(theirs - ours) <= bound)


def test_asymmetric_4_bit_is_q4_1_close_to_ours(ckpt: Path, tmp_path: Path) -> None:
    model = _model(ckpt, fp16_scales=True, **{**Q4, "symmetric": False})
    save_gguf(model, tmp_path / "m.gguf")
    _, tensors = _read(tmp_path / "m.gguf")
    t = tensors["blk.0.ffn_gate.weight"]
    assert t.tensor_type.name == "Q4_1"
    ours = _ours(model, "model.layers.0.mlp.gate_proj")
    err = np.abs(_values(t) - ours).max()
    assert err <= np.abs(ours).max() * 2.0**-10  # m = -zero * d rounded to fp16
    assert err < 0.05 * np.abs(ours).mean()


def test_grids_without_a_gguf_type_are_written_as_exact_f32_with_a_note(ckpt: Path, tmp_path: Path) -> None:
    model = _model(ckpt, **{**Q4, "group_size": 16, "include": ("model.layers.0.*",)})
    ts.quantize_(
        model, ts.QuantConfig(bits=8, symmetric=False, method="rtn", include=("model.layers.1.mlp.*",))
    )
    notes = save_gguf(model, tmp_path / "m.gguf")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert "groups of 16 inputs are not whole GGUF blocks" in notes["dequantized"]["blk.0.attn_q.weight"]
    assert "8-bit asymmetric has no GGUF type" in notes["dequantized"]["blk.1.ffn_up.weight"]
    assert json.loads(_field(reader, NOTES_KEY)) == notes
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "F32"
    assert np.array_equal(
        _values(tensors["blk.0.attn_q.weight"]), _ours(model, "model.layers.0.self_attn.q_proj", 4)
    )
    assert np.array_equal(_values(tensors["blk.1.ffn_up.weight"]), _ours(model, "model.layers.1.mlp.up_proj"))
    assert tensors["blk.1.attn_q.weight"].tensor_type.name == "F32"  # never quantized: plain float


def test_dense_model_f32_exact_f16_halved_and_untied_head(tmp_path: Path) -> None:
    model = resolve_model(f"hf:{_checkpoint(tmp_path / 'untied', tied=False)}")
    save_gguf(model, tmp_path / "f32.gguf")
    save_gguf(model, tmp_path / "f16.gguf", float_type="f16")
    reader, f32 = _read(tmp_path / "f32.gguf")
    _, f16 = _read(tmp_path / "f16.gguf")
    head = model.lm_head.weight.detach().numpy()
    assert np.array_equal(_values(f32["output.weight"]), head)
    assert (
        f16["output.weight"].tensor_type.name == "F16" and f16["output_norm.weight"].tensor_type.name == "F32"
    )
    assert np.array_equal(_values(f16["output.weight"]), head.astype(np.float16).astype(np.float32))
    assert _field(reader, "general.file_type") == 0


def test_metadata_and_tokenizer(ckpt: Path, tmp_path: Path) -> None:
    save_gguf(_model(ckpt), tmp_path / "m.gguf")
    reader, _ = _read(tmp_path / "m.gguf")
    expected = {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 96,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.context_length": 64,
        "llama.vocab_size": 320,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
    }
    assert {k: _field(reader, k) for k in expected} == expected
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(50000.0)
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get)
    tokens, types = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    n = len(vocab)  # the few training strings allow fewer merges than asked: more padding rows
    assert 256 < n < 320 and tokens[:n] == vocab and tokens[n:] == [f"[PAD{i}]" for i in range(n, 320)]
    assert types[0] == 3 and set(types[1:n]) == {1} and set(types[n:]) == {5}
    merges = _field(reader, "tokenizer.ggml.merges")
    assert merges == [" ".join(m) for m in tok["model"]["merges"]] and len(merges) > 10


def test_permuted_q_k_give_llama_cpp_rope_the_same_attention_scores() -> None:
    """llama.cpp rotates interleaved pairs (2i, 2i+1), transformers halves (i, i + d/2): on rows
    reordered by `rope_rows` the two give the same q.k for every pair of positions."""
    torch.manual_seed(0)
    heads, dim, pos = 2, 8, torch.arange(5.0)
    q, k = torch.randn(5, heads * dim), torch.randn(5, heads * dim)
    angle = pos[:, None] * 10000.0 ** (-torch.arange(0, dim, 2) / dim)  # [pos, dim / 2]
    cos, sin = angle.cos(), angle.sin()

    def halves(x: torch.Tensor) -> torch.Tensor:
        a, b = x.reshape(5, heads, 2, dim // 2).unbind(2)
        c, s = cos[:, None], sin[:, None]
        return torch.cat([a * c - b * s, b * c + a * s], -1)

    def pairs(x: torch.Tensor) -> torch.Tensor:
        a, b = x.reshape(5, heads, dim // 2, 2).unbind(-1)
        c, s = cos[:, None], sin[:, None]
        return torch.stack([a * c - b * s, b * c + a * s], -1).reshape(5, heads, dim)

    rows = rope_rows(heads * dim, heads)
    ours = torch.einsum("phd,qhd->hpq", halves(q), halves(k))
    theirs = torch.einsum("phd,qhd->hpq", pairs(q[:, rows]), pairs(k[:, rows]))
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, torch.einsum("phd,qhd->hpq", pairs(q), pairs(k)), atol=1e-2)


def test_refusals_name_what_is_wrong(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="writes LlamaForCausalLM models.*GPT2LMHeadModel"):
        check_formats(gpt2(), ["gguf"])
    bare = tiny_hf.llama(**ARCH)
    with pytest.raises(UserError, match="includes the tokenizer"):
        check_formats(bare, ["gguf"])
    wordpiece = tmp_path / "wp"
    _checkpoint(wordpiece)
    tok = json.loads((wordpiece / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (wordpiece / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match="no pre-tokenizer known"):
        check_formats(resolve_model(f"hf:{wordpiece}"), ["gguf"])
    scaled = resolve_model(f"hf:{ckpt}")
    scaled.config.rope_parameters = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    with pytest.raises(UserError, match="rope scaling 'llama3'"):
        save_gguf(scaled, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written left behind


def test_exporter_writes_out_model_gguf(ckpt: Path, tmp_path: Path) -> None:
    path = EXPORTERS.get("gguf")(_model(ckpt, **Q4), None, tmp_path)
    assert (
        path == tmp_path / "model.gguf" and _read(path)[1]["blk.0.attn_v.weight"].tensor_type.name == "Q4_0"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_shipped_llama_int4_recipe_validates_and_asks_for_q4_0_compatible_grids() -> None:
    from torchslim.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "llama-int4.yaml")
    assert recipe.model == "zoo:llama-pydocs" and {"hf", "gguf"} <= set(recipe.output.formats)
    (name, spec), *_ = recipe.stages
    assert name == "quantize"
    assert (spec.bits, spec.weights, spec.symmetric) == (4, "per_group", True) and spec.group_size % 32 == 0
