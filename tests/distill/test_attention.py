"""Attention-map transfer: the recomputed maps are the ones layers attend with, and distilling them works."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.distill.api import attention_gap
from torchslim.distill.attention import AttentionCapture
from torchslim.errors import UserError
from torchslim.zoo.minilm import SentenceEncoder

LAYER = "encoder.layer.{}.attention.self"


def _config(kind: str, heads: int = 4, layers: int = 2, **extra: Any) -> Any:
    import transformers

    config_class = getattr(transformers, f"{kind}Config")
    sizes = {"hidden_size": 32, "num_attention_heads": heads, "num_hidden_layers": layers}
    if kind == "Electra":
        sizes["embedding_size"] = 32
    return config_class(vocab_size=50, intermediate_size=64, max_position_embeddings=64, **sizes, **extra)


def _model(kind: str = "Bert", attn: str = "eager", **config: Any) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, f"{kind}Model")(_config(kind, attn_implementation=attn, **config)).eval()


def _batch(seed: int = 0, batch: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 4:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def _captured(model: nn.Module, names: list[str], inputs: dict[str, torch.Tensor]) -> AttentionCapture:
    modules = dict(model.named_modules())
    capture = AttentionCapture({n: modules[n] for n in names})
    with torch.no_grad():
        model(**inputs)
    for handle in capture.handles:
        handle.remove()
    return capture


@pytest.mark.parametrize("kind", ["Bert", "Roberta", "Electra"])
def test_bert_style_maps_equal_output_attentions(kind: str) -> None:
    model, inputs = _model(kind), _batch()
    names = [LAYER.format(i) for i in range(2)]
    maps = _captured(model, names, inputs).maps
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).attentions
    for name, expected in zip(names, reference, strict=True):
        assert maps[name].probs.shape == (3, 4, 7, 7)
        assert (maps[name].probs - expected).abs().max() < 1e-5
    assert maps[names[0]].valid is not None and maps[names[0]].valid.tolist()[1] == [True] * 4 + [False] * 3


def test_sdpa_models_give_the_eager_maps() -> None:
    """SDPA never materialises the probabilities; the hook recomputes them all the same."""
    eager, sdpa, inputs = _model(), _model(attn="sdpa"), _batch()
    with torch.no_grad():
        reference = eager(**inputs, output_attentions=True).attentions[1]
    maps = _captured(sdpa, [LAYER.format(1)], inputs).maps
    assert (maps[LAYER.format(1)].probs - reference).abs().max() < 1e-5
    unpadded = {"input_ids": inputs["input_ids"], "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    assert _captured(sdpa, [LAYER.format(1)], unpadded).maps[LAYER.format(1)].valid is None


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_multihead_attention_maps_equal_need_weights(batch_first: bool, kdim: int | None) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim, batch_first=batch_first).eval()
    q, kv = torch.randn(3, 5, 8), torch.randn(3, 4, kdim or 8)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.tensor([[False] * 4, [False, False, True, True], [False] * 4])
    capture = AttentionCapture({"mha": mha})
    with torch.no_grad():
        _, expected = mha(q, kv, kv, key_padding_mask=padding, need_weights=True, average_attn_weights=False)
    got = capture.maps["mha"]
    capture.close()
    assert got.probs.shape == (3, 2, 5, 4) and (got.probs - expected).abs().max() < 1e-6
    assert got.valid is not None and got.valid.tolist()[1] == [True, True, False, False]


class _Attend(nn.Module):
    """Embedding, one nn.MultiheadAttention, mean pooling; `stride` subsamples the sequence first."""

    def __init__(self, heads: int, stride: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.attn = nn.MultiheadAttention(8, heads, batch_first=True)
        self.stride = stride

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids[:, :: self.stride])
        return self.attn(x, x, x, need_weights=False)[0].mean(dim=1)


def _ids_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(0)), torch.zeros(4, 8))]


def test_bad_layers_and_lengths_are_clear_errors() -> None:
    teacher, student = _Attend(heads=4), _Attend(heads=2)
    run = lambda s, *attention: ts.distill(  # noqa: E731
        s, teacher, _ids_loader(), ts.DistillConfig(epochs=1, attention=attention), outputs="embedding"
    )
    with pytest.raises(UserError, match=r"attention: the student has no layer 'atn'; close matches: attn"):
        run(student, "atn:attn")
    with pytest.raises(UserError, match=r"'embed' is a Embedding, which has no attention-map extractor"):
        run(student, "embed:attn")
    with pytest.raises(UserError, match="student_layer:teacher_layer"):
        run(student, "attn")
    with pytest.raises(UserError, match=r"attends 3 queries over 3 keys, .* 6 over 6; sequence lengths must"):
        run(_Attend(heads=2, stride=2), "attn:attn")
    with pytest.raises(UserError, match="attention_weight"):
        ts.DistillConfig(attention_weight=-1.0)
    assert not any(m._forward_hooks for model in (student, teacher) for m in model.modules())


def test_different_head_counts_distill() -> None:
    teacher, student = _Attend(heads=4), _Attend(heads=2)
    config = ts.DistillConfig(epochs=2, attention=("attn:attn",), attention_weight=0.5)
    history = ts.distill(student, teacher, _ids_loader(), config, outputs="embedding", hard_loss=None)
    assert len(history) == 2 and history[-1]["loss"] > 0


def test_distilling_attention_brings_the_maps_closer() -> None:
    """A tiny BERT pair (teacher 4 heads, student 2): the attention term falls, and only because of it."""
    teacher = SentenceEncoder(_model(initializer_range=0.3))  # larger weights: peaked, non-uniform maps
    pairs = (f"bert.{LAYER.format(0)}:bert.{LAYER.format(1)}",)
    batches = [_batch(seed, batch=8) for seed in range(2)]
    loader = [((b["input_ids"], b["attention_mask"]), None) for b in batches]
    gaps = []
    for weight in (0.0, 1.0):
        student = SentenceEncoder(_model(heads=2, layers=1))
        before = attention_gap(student, teacher, batches[0], pairs)
        config = ts.DistillConfig(epochs=6, lr=1e-2, attention=pairs, attention_weight=weight)
        ts.distill(student, teacher, loader, config, outputs="embedding", hard_loss=None)
        gaps.append(attention_gap(student, teacher, batches[0], pairs) / before)
    assert gaps[0] > 0.9 and gaps[1] < 0.8, gaps  # embedding loss alone leaves the maps where they were
    assert not any(m._forward_hooks for model in (student, teacher) for m in model.modules())


def test_the_recipe_stage_passes_attention_pairs(tmp_path) -> None:
    recipe = {"model": "zoo:tiny-digits", "stages": [{"distill": {"epochs": 1, "attention": ["fc1:fc1"]}}]}
    with pytest.raises(UserError, match="'fc1' is a Linear, which has no attention-map extractor"):
        ts.run_recipe(recipe, tmp_path / "run")
