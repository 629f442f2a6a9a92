"""The layer-by-layer engine: where the blocks are, what it feeds a method, and that its chain of
blocks computes what the whole model computes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

import tiny_hf
from torchslim.errors import UserError
from torchslim.llm import engine
from torchslim.llm.layers import find_layers, linears


class Recorder:
    """A method that compresses nothing: it keeps every input it is shown."""

    def __init__(self) -> None:
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.applied: list[str] = []

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        self.inputs.setdefault(name, []).append(x.clone())

    def apply(self, name: str, module: nn.Module) -> None:
        self.applied.append(name)


def _batches(n: int = 3, vocab: int = 64) -> list[Any]:
    return tiny_hf.token_batches(n, (2, 12), seed=1, vocab=vocab)


@pytest.mark.parametrize(
    ("build", "path", "count"),
    [
        (tiny_hf.llama, "model.layers", 2),
        (tiny_hf.gpt2, "transformer.h", 2),
        (tiny_hf.bert, "encoder.layer", 2),
    ],
)
def test_find_layers_locates_the_repeated_blocks(build: Any, path: str, count: int) -> None:
    stack = find_layers(build())
    assert stack.path == path and len(stack.layers) == count
    assert stack.name(1) == f"{path}.1"


def test_find_layers_refuses_a_model_without_blocks() -> None:
    with pytest.raises(UserError, match="no list of repeated layers"):
        find_layers(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_llama_blocks_have_their_seven_linears() -> None:
    names = sorted(linears(find_layers(tiny_hf.llama()).layers[0]))
    attention = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    assert names == sorted([*attention, "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])


def test_capture_keeps_the_first_blocks_keywords() -> None:
    torch.manual_seed(0)
    model = tiny_hf.llama().eval()
    cache = engine.capture(model, find_layers(model), _batches(2), None)
    assert len(cache) == 2
    assert cache[0].hidden.shape == (2, 12, 32)
    cos, sin = cache[0].kwargs["position_embeddings"]
    assert cos.shape[-2:] == (12, 8) and sin.shape == cos.shape
    assert all(not type(v).__name__.endswith("Cache") for v in cache[0].kwargs.values())


@pytest.mark.parametrize("build", [tiny_hf.llama, tiny_hf.gpt2, tiny_hf.bert])
def test_each_block_sees_what_it_sees_inside_the_whole_model(build: Any) -> None:
    """With a method that changes nothing, block k's Linear inputs equal the full forward's."""
    torch.manual_seed(0)
    model = build().eval()
    stack = find_layers(model)
    last = stack.name(len(stack.layers) - 1)
    name = next(f"{last}.{n}" for n in linears(stack.layers[-1]))
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    data = _batches(2)
    with torch.no_grad():
        for x, _ in data:
            model(x)
    handle.remove()
    rec = Recorder()
    report = engine.run(model, data, rec, {name})
    assert rec.applied == [name]
    assert len(rec.inputs[name]) == 2
    for got, want in zip(rec.inputs[name], seen, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert report.blocks == 2 and report.batches == 2
    assert all(e == 0.0 for e in report.output_error.values())
    assert report.peak_rss_bytes > 10 * 2**20


def test_calibration_that_never_reaches_the_blocks_is_refused() -> None:
    model = tiny_hf.llama().eval()
    with pytest.raises(UserError, match="no batches"):
        engine.run(model, [], Recorder(), set())
