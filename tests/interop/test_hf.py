"""Transformers models end to end: pruning keeps the config, the `hf` output loads with
`from_pretrained`, GPT-2's Conv1D quantizes, distillation takes ModelOutputs, ONNX takes any length.

Tiny random configs (hidden 32, 2 layers), built offline; `use_cache` is left at its default so the
cache paths (DynamicCache) are exercised."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from tiny_hf import bert, gpt2, llama, vit
from torchslim import zoo
from torchslim.data import main_output
from torchslim.distill.losses import SOFT_LOSSES
from torchslim.interop import EXPORTERS
from torchslim.zoo.base import Task

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TOKENS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# builder, inputs, what BERT/GPT-2 must leave whole (their configs tie head size to hidden size),
# the config fields pruning at 0.5 must set, distillation loss
MODELS: dict[str, tuple[Callable[[], nn.Module], torch.Tensor, tuple[str, ...], dict[str, int], str]] = {
    "bert": (
        bert,
        TOKENS,
        ("*.attention",),
        {"intermediate_size": 32, "num_attention_heads": 4},
        "embedding",
    ),
    "gpt2": (gpt2, TOKENS, ("*.attn",), {"n_inner": 64, "n_head": 4}, "logits"),
    "llama": (
        llama,
        TOKENS,
        (),
        {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32},
        "logits",
    ),
    "vit": (vit, IMAGES, (), {"num_attention_heads": 2, "head_dim": 8, "intermediate_size": 32}, "logits"),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    return MODELS[name][0]().eval(), MODELS[name][1]


def gap(student: nn.Module, teacher: nn.Module, x: torch.Tensor, kind: str) -> float:
    """The distillation term between the two on `x` (what ts.distill minimises)."""
    return float(SOFT_LOSSES.get(kind)(out(student, x), out(teacher, x), 4.0))


def distill(student: nn.Module, teacher: nn.Module, x: torch.Tensor, kind: str) -> list[dict[str, float]]:
    batches = [(x, None), (x.flip(0), None)]
    return ts.distill(student, teacher, batches, ts.DistillConfig(epochs=4, lr=5e-3), outputs=kind)


def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return main_output(model(x))


def reload(path: Path) -> nn.Module:
    """What a user of the checkpoint does: the Auto class for its kind, no torchslim involved."""
    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    auto = transformers.AutoModelForCausalLM if arch.endswith("CausalLM") or "LMHead" in arch else None
    auto = auto or (transformers.AutoModelForImageClassification if "ImageClassification" in arch else None)
    return (auto or transformers.AutoModel).from_pretrained(path).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_config_survives_hf_output_and_ts_load(name: str, tmp_path: Path) -> None:
    model, x = build(name)
    exclude, fields = MODELS[name][2], MODELS[name][3]
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=exclude), example_inputs=x)
    assert {k: getattr(model.config, k) for k in fields} == fields
    assert model.config.to_dict().get("hidden_size", model.config.to_dict().get("n_embd")) == 32
    path = EXPORTERS.get("hf")(model, x, tmp_path)
    again = reload(path)
    assert {k: getattr(again.config, k) for k in fields} == fields
    assert torch.allclose(out(again, x), out(model, x), atol=1e-5)
    ts.save(model, tmp_path / "ts")  # a transformers model records its own source (class + config)
    loaded = ts.load(tmp_path / "ts")
    assert {k: getattr(loaded.config, k) for k in fields} == fields
    assert torch.allclose(out(loaded, x), out(model, x), atol=1e-6)


@pytest.mark.parametrize(("ratio", "kv"), [(0.25, 2), (0.5, 1), (0.75, 1)])
def test_grouped_query_attention_keeps_its_grouping(ratio: float, kv: int) -> None:
    model, x = build("llama")
    report = ts.prune_(model, ts.ChannelConfig(ratio=ratio), example_inputs=x)
    att = model.model.layers[0].self_attn
    assert (att.q_proj.out_features, att.k_proj.out_features) == (16 * kv, 8 * kv)  # 2 query heads per kv
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2 * kv, kv)
    if ratio != 0.5:  # two kv groups: 0.25 keeps both, 0.75 keeps one, and the report says so
        note = report.notes()["adjusted"]["model.layers.0.self_attn"]
        assert note == f"removed {2 - kv} of 2 units of 16 channels (ratio {ratio:g} rounds to whole units)"
    assert out(model, x).shape == (2, 12, 64)


@pytest.mark.parametrize(
    ("name", "config", "field"),
    [("bert", "BertConfig", "num_attention_heads"), ("gpt2", "GPT2Config", "n_head")],
)
def test_heads_a_config_cannot_hold_refuse_hf_output(
    name: str, config: str, field: str, tmp_path: Path
) -> None:
    """transformers 5 removed `prune_heads` and `config.pruned_heads`: nothing can record fewer heads."""
    model, x = build(name)
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=x)
    if hasattr(model, "prune_heads"):
        pytest.skip("transformers 4: config.pruned_heads could record the heads (not written yet)")
    match = (
        rf"{config} derives the head size from the hidden size and {field}, so 2 heads of 4 cannot be "
        r"written into it; .*exclude the attention.* has no prune_heads / config.pruned_heads"
    )
    with pytest.raises(ts.UserError, match=match):
        EXPORTERS.get("hf")(model, x, tmp_path)
    assert not (tmp_path / "hf").exists()


def test_uneven_block_sizes_refuse_hf_output(tmp_path: Path) -> None:
    model, x = build("llama")
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=("model.layers.0.mlp",)), example_inputs=x)
    assert model.config.intermediate_size == 64  # the blocks disagree: left as it was
    with pytest.raises(ts.UserError, match=r"different intermediate_size \(\[32, 64\]\).*scope='layer'"):
        EXPORTERS.get("hf")(model, x, tmp_path)


def test_gpt2_conv1d_quantizes_like_linear(tmp_path: Path) -> None:
    model, x = build("gpt2")
    ref = out(model, x)
    config = ts.QuantConfig(bits=8, weights="per_channel", activations=None, include=("*.attn.c_attn",))
    result = ts.quantize_(model, config)
    assert sorted(result.quantized) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    result = ts.quantize_(model, ts.QuantConfig(bits=8, weights="per_channel", activations=None))
    assert "transformer.h.1.mlp.c_proj" in result.quantized and "transformer.wte" in result.quantized
    quantized = out(model, x)
    cosine = torch.nn.functional.cosine_similarity(quantized.flatten(), ref.flatten(), dim=0)
    assert 0.999 < cosine < 1.0
    ts.save(model, tmp_path / "ts")
    assert torch.allclose(out(ts.load(tmp_path / "ts"), x), quantized, atol=1e-6)
    path = EXPORTERS.get("hf")(model, x, tmp_path)  # weights-only int8: dequantized, same outputs
    notes = json.loads((path / "torchslim.json").read_text())
    assert "transformer.h.0.attn.c_attn" in notes["dequantized"]
    assert torch.allclose(out(reload(path), x), quantized, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_prune_distill_quantize_hf_round_trip(name: str, tmp_path: Path) -> None:
    teacher, x = build(name, seed=1)
    student, _ = build(name)
    ts.prune_(student, ts.ChannelConfig(ratio=0.5, exclude=MODELS[name][2]), example_inputs=x)
    kind = MODELS[name][4]
    before = gap(student, teacher, x, kind)
    assert len(distill(student, teacher, x, kind)) == 4
    assert gap(student, teacher, x, kind) < 0.8 * before
    ts.quantize_(student, ts.QuantConfig(bits=8, weights="per_channel", activations=None))
    ts.save(student, tmp_path / "ts")
    assert torch.allclose(out(ts.load(tmp_path / "ts"), x), out(student, x), atol=1e-6)
    path = EXPORTERS.get("hf")(student, x, tmp_path)
    assert torch.allclose(out(reload(path), x), out(student, x), atol=1e-5)


def test_distill_takes_model_outputs() -> None:
    teacher, x = build("llama", seed=1)
    student, _ = build("llama")
    ts.prune_(student, ts.ChannelConfig(ratio=0.5), example_inputs=x)
    before = gap(student, teacher, x, "logits")
    distill(student, teacher, x, "logits")  # CausalLMOutputWithPast from both: their logits compared
    assert gap(student, teacher, x, "logits") < 0.8 * before


def test_main_output_picks_logits_then_hidden_state() -> None:
    t = torch.ones(1)
    assert main_output(t) is t
    assert main_output(transformers.modeling_outputs.CausalLMOutputWithPast(logits=t)) is t
    assert main_output(transformers.modeling_outputs.BaseModelOutput(last_hidden_state=t)) is t
    assert main_output((t,)) == (t,)


def _onnx_matches(name: str, tmp_path: Path, lengths: tuple[int, ...]) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x = build(name)
    path = ts.export_onnx(model, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["pixel_values" if name == "vit" else "input_ids"]
    for batch, length in ((2, lengths[0]), (3, lengths[1])):
        inputs: Any = (
            torch.randint(0, 64, (batch, length)) if name != "vit" else torch.randn(batch, 3, 32, 32)
        )
        (got,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
        want = out(model, inputs)
        assert got.shape == tuple(want.shape)
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)


@pytest.mark.slow  # each export takes tens of seconds here
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_any_batch_and_length(name: str, tmp_path: Path) -> None:
    _onnx_matches(name, tmp_path, (12, 5))


def test_hf_output_refuses_other_models(tmp_path: Path) -> None:
    with pytest.raises(ts.UserError, match="needs a transformers PreTrainedModel"):
        EXPORTERS.get("hf")(nn.Linear(2, 2), torch.randn(1, 2), tmp_path)
    recipe = {"model": "conftest:make_digits_mlp", "task": "tiny-digits", "output": {"formats": ["hf"]}}
    with pytest.raises(ts.UserError, match="needs a transformers PreTrainedModel; this model is a DigitsMLP"):
        ts.run_recipe(recipe, tmp_path / "out")  # before the run starts
    assert not any(tmp_path.iterdir())


def test_hf_path_model_spec(tmp_path: Path) -> None:
    from torchslim.pipeline import resolve_model

    model, x = build("llama")
    model.save_pretrained(tmp_path / "ckpt")
    again = resolve_model(f"hf:{tmp_path / 'ckpt'}")
    assert type(again).__name__ == "LlamaForCausalLM"
    assert torch.allclose(out(again, x), out(model, x), atol=1e-6)
    with pytest.raises(ts.UserError, match="no config.json"):
        resolve_model(f"hf:{tmp_path}")


class TinyImages(Task):
    """Random 32x32 images, 10 classes: enough for a recipe to run a transformers ViT end to end."""

    name = "tests-hf-images"

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(48, 3, 32, 32, generator=gen), torch.randint(0, 10, (48,), generator=gen)

    def make(self, **kwargs: Any) -> nn.Module:
        return vit()

    def train_baseline(self, model: nn.Module) -> None: ...

    def evaluate(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float((out(model.eval(), self.x).argmax(-1) == self.y).float().mean())

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, target)

    @property
    def example_inputs(self) -> torch.Tensor:
        return self.x[:2]

    def train_loader(self, batch_size: int | None = None, seed: int = 0, **kwargs: Any) -> Iterable[Any]:
        return [(self.x[i : i + 16], self.y[i : i + 16]) for i in range(0, 48, 16)]

    def test_loader(self, batch_size: int | None = None) -> Iterable[Any]:
        return self.train_loader()


@pytest.mark.slow  # a whole run: every stage saved, loaded, measured and timed
def test_recipe_on_hf_checkpoint_writes_hf_output(tmp_path: Path) -> None:
    if TinyImages.name not in zoo.TASKS:
        zoo.TASKS.register(TinyImages.name, TinyImages)
    model, x = build("vit")
    model.save_pretrained(tmp_path / "ckpt")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "ckpt")
    recipe = {
        "model": f"hf:{tmp_path / 'ckpt'}",
        "task": TinyImages.name,
        "stages": [
            {"prune": {"kind": "channel", "ratio": 0.5}},
            {"finetune": {"epochs": 1}},
            {"quantize": {"bits": 8, "weights": "per_channel"}},
        ],
        "output": {"formats": ["torchslim", "hf"]},
    }
    report = ts.run_recipe(recipe, tmp_path / "out")
    assert report["stages"][-1]["params"] < report["stages"][0]["params"]
    final = ts.load(tmp_path / "out" / "model")  # every stage went through ts.save / ts.load (hf source)
    again = reload(tmp_path / "out" / "hf")
    assert again.config.num_attention_heads == final.config.num_attention_heads == 2
    assert torch.allclose(out(again, x), out(final, x), atol=1e-5)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out" / "hf")  # copied over
    assert processor.size == {"height": 32, "width": 32}


def test_manifest_fields_of_hf_transforms_are_checked(tmp_path: Path) -> None:
    model, x = build("gpt2")
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=("*.attn",)), example_inputs=x)
    ts.quantize_(model, ts.QuantConfig(bits=8, weights="per_channel", activations=None))
    ts.save(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "hf" and manifest["source"]["architecture"] == "GPT2LMHeadModel"
    steps = {s["name"]: s["params"] for s in manifest["transforms"]}
    assert steps["channel_prune"]["config"] == {"n_inner": 64}
    for name, params, match in (
        ("channel_prune", {"config": {"vocab_size": 1}}, "vocab_size"),
        ("conv1d_as_linear", {"layers": ["transformer.wte"]}, "not a transformers Conv1D"),
    ):
        bad = dict(manifest, transforms=[{"name": name, "params": params}])
        (tmp_path / "m" / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ts.ManifestError, match=match):
            ts.load(tmp_path / "m")
