"""Structured pruning of Llama-family decoders (Llama, Mistral, Qwen2): attention heads, MLP width and the
hidden dimension, by Minitron's activation-based importance (Muralidharan et al. 2024).

Importance comes from one calibration pass through the layer-by-layer engine, which hands every
block's Linear inputs to `ActivationImportance`:
- a query head: the L2 norm of its slice of the output projection's input (the attention output);
- an MLP neuron: the L2 norm of its channel of the down projection's input (gate(x) * up(x));
- a hidden (embedding) channel: the L2 norm of the normalised residual stream read by the
  attention and the MLP (the RMSNorm outputs), summed over all blocks.
Norms are over every calibration token. Grouped-query attention stays valid: the key/value groups
kept are those whose query heads score highest, then each kept group keeps its best query heads, so
every layer has `heads / kv_heads` query heads per group. transformers' configs hold one size per
model, so every layer keeps the same counts. The cut updates the config (`num_attention_heads`,
`num_key_value_heads`, `intermediate_size`, `hidden_size`, and `head_dim` written explicitly), so the
result saves with `save_pretrained` and reloads with `from_pretrained`; it is recorded as the
`llm_width` transform, so `ts.load` rebuilds the shapes before the weights load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn as nn
from pydantic import Field

from torchslim.errors import UserError
from torchslim.io import TRANSFORMS, add_transform
from torchslim.llm.engine import run
from torchslim.llm.layers import find_layers
from torchslim.manifest import TRANSFORM_PARAMS, Strict


@dataclass(frozen=True)
class WidthTarget:
    """The sizes kept; None keeps a dimension whole."""

    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None
    hidden: int | None = None


class ActivationImportance:
    """Engine method that only observes: per-channel sums of squared Linear inputs (Minitron)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        squares = x.detach().float().reshape(-1, x.shape[-1]).square().sum(0)
        self.sums[name] = self.sums[name] + squares if name in self.sums else squares

    def apply(self, name: str, module: nn.Module) -> None:
        pass  # nothing changes during the pass: the cut comes after every block was seen


@dataclass
class Scores:
    heads: list[torch.Tensor]
    """Per layer, one score per query head."""
    neurons: list[torch.Tensor]
    """Per layer, one score per MLP neuron."""
    hidden: torch.Tensor
    """One score per hidden channel."""


def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    needed = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "hidden_size")
    if config is None or not all(hasattr(config, k) for k in needed):
        raise UserError(
            f"{type(model).__name__}: width pruning needs a Llama-family transformers model "
            "(config with num_attention_heads, num_key_value_heads, intermediate_size, hidden_size)"
        )
    return config


def head_dim(model: nn.Module) -> int:
    config = _config(model)
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def activation_scores(model: nn.Module, data: Iterable[Any], batches: int | None = None) -> Scores:
    """Minitron's importance of every head, neuron and hidden channel from one calibration pass."""
    stack = find_layers(model)
    names = [stack.name(i) for i in range(len(stack.layers))]
    reads = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
    selected = {f"{p}.{r}" for p in names for r in reads}
    method = ActivationImportance()
    run(model, data, method, selected, batches=batches)
    dim = head_dim(model)
    missing = sorted(selected - set(method.sums))
    if missing:
        raise UserError(f"width pruning: these layers never ran on the calibration data: {missing[:3]}")
    s = method.sums
    return Scores(
        heads=[s[f"{p}.self_attn.o_proj"].reshape(-1, dim).sum(1).sqrt() for p in names],
        neurons=[s[f"{p}.mlp.down_proj"].sqrt() for p in names],
        # q_proj and gate_proj read the two RMSNorm outputs of each block (k, v share q's input)
        hidden=torch.stack([s[f"{p}.{r}"].sqrt() for p in names for r in reads[::2]]).sum(0),
    )


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """The `k` best indices, in their original order."""
    return sorted(torch.topk(scores, k).indices.tolist())


def choose_heads(scores: torch.Tensor, kv_heads: int, target: WidthTarget) -> list[int]:
    """Query heads kept in one layer (their original indices), grouped-query aware: the best key/value
    groups by their query heads' summed score, then the best query heads of each kept group."""
    per_group = len(scores) // kv_heads
    groups = scores.reshape(kv_heads, per_group)
    new_kv = target.kv_heads or kv_heads
    new_heads = target.heads or new_kv * per_group
    if new_heads % new_kv or not 1 <= new_kv <= kv_heads or not new_kv <= new_heads <= new_kv * per_group:
        raise UserError(
            f"width pruning: {new_heads} query heads over {new_kv} key/value heads does not fit "
            f"{len(scores)} heads over {kv_heads} (heads must be a multiple of kv_heads, at most "
            f"{per_group} per group)"
        )
    kept = []
    for g in _top(groups.sum(1), new_kv):
        kept += [g * per_group + h for h in _top(groups[g], new_heads // new_kv)]
    return kept


@dataclass(frozen=True)
class Plan:
    """Original indices kept: query heads and MLP neurons per layer, hidden channels once."""

    heads: list[list[int]]
    neurons: list[list[int]]
    hidden: list[int]


def plan(model: nn.Module, scores: Scores, target: WidthTarget) -> Plan:
    config = _config(model)
    kv = int(config.num_key_value_heads)
    width = target.intermediate or int(config.intermediate_size)
    hidden = target.hidden or int(config.hidden_size)
    if not 1 <= width <= config.intermediate_size or not 1 <= hidden <= config.hidden_size:
        raise UserError(
            f"width pruning: intermediate {width} / hidden {hidden} must be within the model's "
            f"{config.intermediate_size} / {config.hidden_size}"
        )
    heads = [choose_heads(h, kv, target) for h in scores.heads]
    if hidden % len(heads[0]):
        raise UserError(
            f"width pruning: hidden {hidden} must be a multiple of the {len(heads[0])} query heads kept "
            "(transformers' Llama config checks hidden_size % num_attention_heads even with head_dim)"
        )
    return Plan(
        heads=heads, neurons=[_top(n, width) for n in scores.neurons], hidden=_top(scores.hidden, hidden)
    )


def _rows(dim: int, heads: list[int]) -> torch.Tensor:
    return torch.tensor([h * dim + i for h in heads for i in range(dim)], dtype=torch.long)


def _cut(linear: Any, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> None:
    """Keep rows `out` and columns `inp` of a Linear (in place, new Parameters)."""
    w = linear.weight.detach()
    w = w if out is None else w.index_select(0, out)
    w = w if inp is None else w.index_select(1, inp)
    linear.weight = nn.Parameter(w.contiguous())
    linear.out_features, linear.in_features = w.shape
    bias = getattr(linear, "bias", None)
    if bias is not None and out is not None:
        linear.bias = nn.Parameter(bias.detach().index_select(0, out).contiguous())


def _cut_norm(norm: Any, keep: torch.Tensor) -> None:
    norm.weight = nn.Parameter(norm.weight.detach().index_select(0, keep).contiguous())


def apply_plan(model: nn.Module, p: Plan) -> nn.Module:
    """Cut `model` in place to the plan and update its config (see the module docstring)."""
    config, dim = _config(model), head_dim(model)
    kv, per_group = int(config.num_key_value_heads), config.num_attention_heads // config.num_key_value_heads
    hidden = torch.tensor(p.hidden, dtype=torch.long)
    blocks: list[Any] = list(find_layers(model).layers)  # transformers decoder layers
    for block, heads, neurons in zip(blocks, p.heads, p.neurons, strict=True):
        attn, mlp = block.self_attn, block.mlp
        groups = sorted({h // per_group for h in heads})
        kv_rows = _rows(dim, groups)
        _cut(attn.q_proj, _rows(dim, heads), hidden)
        _cut(attn.k_proj, kv_rows, hidden)
        _cut(attn.v_proj, kv_rows, hidden)
        _cut(attn.o_proj, hidden, _rows(dim, heads))
        attn.num_key_value_groups = len(heads) // len(groups)
        keep = torch.tensor(neurons, dtype=torch.long)
        _cut(mlp.gate_proj, keep, hidden)
        _cut(mlp.up_proj, keep, hidden)
        _cut(mlp.down_proj, hidden, keep)
        mlp.intermediate_size, mlp.hidden_size = len(neurons), len(p.hidden)
        _cut_norm(block.input_layernorm, hidden)
        _cut_norm(block.post_attention_layernorm, hidden)
        kv = len(groups)
    _cut_hidden_ends(model, hidden)
    config.num_attention_heads, config.num_key_value_heads = len(p.heads[0]), kv
    config.intermediate_size, config.hidden_size, config.head_dim = len(p.neurons[0]), len(p.hidden), dim
    return model


def _cut_hidden_ends(model: Any, hidden: torch.Tensor) -> None:
    """The embedding's columns, the final norm and the head's input columns (a tied head follows)."""
    embed = model.get_input_embeddings()
    embed.weight = nn.Parameter(embed.weight.detach().index_select(1, hidden).contiguous())
    embed.embedding_dim = len(hidden)
    _cut_norm(model.get_submodule("model.norm"), hidden)
    head = model.get_output_embeddings()
    if head is None:
        return
    if getattr(_config(model), "tie_word_embeddings", False):
        head.weight = embed.weight
        head.in_features = len(hidden)
    else:
        _cut(head, None, hidden)


def prune_width(
    model: nn.Module, target: WidthTarget, data: Iterable[Any], batches: int | None = None
) -> Plan:
    """Score on `data`, cut `model` in place to `target`, record the `llm_width` transform."""
    for field in ("heads", "kv_heads", "intermediate", "hidden"):
        value = getattr(target, field)
        if value is not None and value < 1:
            raise UserError(f"width pruning: {field} must be >= 1, got {value}")
    chosen = plan(model, activation_scores(model, data, batches), target)
    apply_plan(model, chosen)
    config = _config(model)
    add_transform(model, "llm_width", {
        "heads": int(config.num_attention_heads), "kv_heads": int(config.num_key_value_heads),
        "intermediate": int(config.intermediate_size), "hidden": int(config.hidden_size),
    })  # fmt: skip
    return chosen


Size = Annotated[int, Field(ge=1, le=1 << 20)]


@TRANSFORM_PARAMS.register("llm_width")
class WidthParams(Strict):
    heads: Size
    kv_heads: Size
    intermediate: Size
    hidden: Size


@TRANSFORMS.register("llm_width")
def _replay_width(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Shapes only (the first indices of every dimension): the saved weights fill them next."""
    config = _config(model)
    kv, heads = int(config.num_key_value_heads), int(config.num_attention_heads)
    per_group, new_per_group = heads // kv, params["heads"] // params["kv_heads"]
    if params["heads"] % params["kv_heads"] or params["kv_heads"] > kv or new_per_group > per_group:
        raise UserError(f"llm_width: {params} does not fit {heads} heads over {kv} key/value heads")
    if params["intermediate"] > config.intermediate_size or params["hidden"] > config.hidden_size:
        raise UserError(f"llm_width: {params} exceeds the model's sizes")
    query = [g * per_group + h for g in range(params["kv_heads"]) for h in range(new_per_group)]
    layers = len(find_layers(model).layers)
    return apply_plan(model, Plan(
        heads=[query] * layers,
        neurons=[list(range(params["intermediate"]))] * layers,
        hidden=list(range(params["hidden"])),
    ))  # fmt: skip
