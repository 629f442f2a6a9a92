"""Structured LLM pruning in a recipe: `prune: {kind: width, ...}` narrows a Llama-family decoder
(attention heads, MLP width, hidden dimension) by Minitron's activation importance
(`torchslim.llm.structured`); follow it with a `distill` stage from the dense model.

    - prune: {kind: width, heads: 4, kv_heads: 1, intermediate: 344}
    - distill: {teacher: baseline, tokens: 61440, features: [...]}   # logits + hidden states
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from torchslim.llm.structured import WidthTarget, prune_width
from torchslim.prune.stage import register_prune_kind
from torchslim.recipe import StageSpec


class WidthSpec(StageSpec):
    kind: Literal["width"] = "width"
    heads: int | None = Field(None, ge=1)
    """Query heads kept per layer (a multiple of kv_heads); null keeps the groups' query heads."""
    kv_heads: int | None = Field(None, ge=1)
    """Key/value heads (groups) kept per layer; null keeps them all."""
    intermediate: int | None = Field(None, ge=1)
    """MLP neurons kept per layer (SwiGLU gate/up rows with the down projection's columns)."""
    hidden: int | None = Field(None, ge=1)
    """Hidden (embedding) channels kept: the embedding, every norm and every projection."""
    batches: int = Field(8, ge=1, le=1024)
    """Calibration batches the importance is measured on."""

    @model_validator(mode="after")
    def _something(self) -> WidthSpec:
        if all(v is None for v in (self.heads, self.kv_heads, self.intermediate, self.hidden)):
            raise ValueError("give at least one of heads, kv_heads, intermediate, hidden")
        return self


@register_prune_kind("width", WidthSpec)
def run_width(ctx: Any, spec: WidthSpec) -> None:
    data = ctx.task.calibration_loader(batches=spec.batches)
    target = WidthTarget(spec.heads, spec.kv_heads, spec.intermediate, spec.hidden)
    prune_width(ctx.model, target, data)
    config = ctx.model.config
    ctx.note(
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        hidden_size=config.hidden_size,
    )
