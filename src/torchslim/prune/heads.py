"""Transformer blocks: attention heads and MLP hidden sizes, registered per block class name.

The residual stream of a transformer is left whole (it runs through every block, the embeddings
and the head, and cutting it gains little), so a block's inner channels couple only inside the
block: q/k/v rows and output-projection columns of one head go together; the MLP's up (and gate)
rows go with the down projection's columns. A `BlockRule` lists those tensor sides with the unit of
every position, and fixes the module's head-count attributes after surgery. Grouped-query attention
(Llama) prunes whole key/value groups, a kv head with the query heads that share it, so the
query-per-kv ratio stays what the model's config says. The rules key on class names, so
transformers is never imported here. torch.nn's own transformer layers are registered in
`torch_blocks.py`; a block whose class cannot hold fewer heads names a replacement module (`replace`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn as nn

from torchslim.prune.graph import Group, Key
from torchslim.prune.transform import REPLACEMENTS
from torchslim.registry import Registry

Sides = Callable[[str, Any], tuple[int, dict[Key, np.ndarray], int]]
"""(path, module) -> (units, unit of each position per tensor side, channels per unit)."""


@dataclass(frozen=True)
class BlockRule:
    sides: Sides
    fix: Callable[[Any], None] = lambda m: None
    """Called on every block of the model after each cut: sets size attributes from the tensors."""
    config: Callable[[Any], dict[str, int]] = lambda m: {}
    """Config fields that describe this block's pruned sizes (for `sync_config`); a name starting
    with `=` is a field the config cannot change (it must keep its value for the sizes to match)."""
    replace: str | None = None
    """A `transform.REPLACEMENTS` entry that swaps the block, before its units are cut, for a module
    that can hold fewer of them (torch's MultiheadAttention cannot lose a head); load replays it."""
    on_cut: Callable[[Any, np.ndarray], None] = lambda m, kept: None
    """Called with the indices of the units kept, before the cut: bookkeeping the tensors do not show."""


BLOCKS: Registry[BlockRule] = Registry("transformer block rule")


def _heads(n: int, d: int) -> np.ndarray:
    return np.repeat(np.arange(n), d)


def _mlp(up: tuple[str, ...], down: str) -> Sides:
    def sides(path: str, m: Any) -> tuple[int, dict[Key, np.ndarray], int]:
        first = m.get_submodule(up[0])
        n = first.weight.shape[1] if type(first).__name__ == "Conv1D" else first.weight.shape[0]
        units = np.arange(n)
        keys: dict[Key, np.ndarray] = {(f"{path}.{u}", "out"): units for u in up}
        keys[(f"{path}.{down}", "in")] = units
        return n, keys, 1

    return sides


# -- BERT / ViT: separate query, key, value; output projection in a sibling module ---------------
def _bert_like(inner: str) -> BlockRule:
    def sides(path: str, m: Any) -> tuple[int, dict[Key, np.ndarray], int]:
        att = m.get_submodule(inner)
        h, d = att.num_attention_heads, att.attention_head_size
        pos = _heads(h, d)
        keys: dict[Key, np.ndarray] = {(f"{path}.{inner}.{p}", "out"): pos for p in ("query", "key", "value")}
        keys[(f"{path}.output.dense", "in")] = pos
        return h, keys, d

    def fix(m: Any) -> None:
        att = m.get_submodule(inner)
        att.all_head_size = att.query.out_features
        att.num_attention_heads = att.all_head_size // att.attention_head_size

    # head size is hidden / heads in these configs: fewer heads cannot be written into the config
    return BlockRule(
        sides, fix, config=lambda m: {"=num_attention_heads": m.get_submodule(inner).num_attention_heads}
    )


BLOCKS.register("BertAttention", _bert_like("self"))
BLOCKS.register(
    "BertLayer",
    BlockRule(
        _mlp(("intermediate.dense",), "output.dense"),
        config=lambda m: {"intermediate_size": m.intermediate.dense.out_features},
    ),
)


# -- GPT-2: fused c_attn (Conv1D, [in, 3 * heads * head_dim]) -------------------------------------
def _gpt2_sides(path: str, m: Any) -> tuple[int, dict[Key, np.ndarray], int]:
    h, d = m.num_heads, m.head_dim
    pos = _heads(h, d)
    return h, {(f"{path}.c_attn", "out"): np.concatenate([pos, pos, pos]), (f"{path}.c_proj", "in"): pos}, d


def _width(layer: Any) -> int:
    """Output width of a transformers Conv1D, or of the nn.Linear quantization turns it into."""
    return int(layer.nf if hasattr(layer, "nf") else layer.out_features)


def _gpt2_fix(m: Any) -> None:
    m.split_size = _width(m.c_attn) // 3
    m.num_heads = m.split_size // m.head_dim


BLOCKS.register("GPT2Attention", BlockRule(_gpt2_sides, _gpt2_fix, config=lambda m: {"=n_head": m.num_heads}))
BLOCKS.register("GPT2MLP", BlockRule(_mlp(("c_fc",), "c_proj"), config=lambda m: {"n_inner": _width(m.c_fc)}))


# -- Llama-style: q/k/v/o projections, grouped-query attention ------------------------------------
def _llama_sides(path: str, m: Any) -> tuple[int, dict[Key, np.ndarray], int]:
    d = m.head_dim
    kv = m.k_proj.out_features // d
    rep = getattr(m, "num_key_value_groups", 1)
    q = _heads(kv * rep, d) // rep
    keys: dict[Key, np.ndarray] = {
        (f"{path}.q_proj", "out"): q,
        (f"{path}.k_proj", "out"): _heads(kv, d),
        (f"{path}.v_proj", "out"): _heads(kv, d),
        (f"{path}.o_proj", "in"): q,
    }
    return kv, keys, d * rep


def _llama_fix(m: Any) -> None:
    if hasattr(m, "num_attention_heads"):
        m.num_attention_heads = m.q_proj.out_features // m.head_dim


def _llama_config(m: Any) -> dict[str, int]:
    heads = m.q_proj.out_features // m.head_dim
    out = {"num_attention_heads": heads, "head_dim": m.head_dim}
    if hasattr(m, "num_key_value_groups"):
        out["num_key_value_heads"] = heads // m.num_key_value_groups
    return out


# transformers 5 gives ViT the same q/k/v/o layout (no grouped kv: one kv head per query head)
for _prefix in ("Llama", "Mistral", "Qwen2", "ViT"):
    BLOCKS.register(f"{_prefix}Attention", BlockRule(_llama_sides, _llama_fix, config=_llama_config))
for _prefix in ("Llama", "Mistral", "Qwen2"):
    BLOCKS.register(
        f"{_prefix}MLP",
        BlockRule(
            _mlp(("gate_proj", "up_proj"), "down_proj"),
            config=lambda m: {"intermediate_size": m.up_proj.out_features},
        ),
    )
BLOCKS.register(
    "ViTMLP", BlockRule(_mlp(("fc1",), "fc2"), config=lambda m: {"intermediate_size": m.fc1.out_features})
)


# -- used by channel.py ------------------------------------------------------------------------------
def block_paths(model: nn.Module, opaque: set[str]) -> dict[str, BlockRule]:
    """Registered blocks not inside an excluded module and with none of their layers excluded."""
    out: dict[str, BlockRule] = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind not in BLOCKS or any(name == o or name.startswith(o + ".") for o in opaque):
            continue
        rule = BLOCKS.get(kind)
        _, sides, _ = rule.sides(name, module)
        if not any(path in opaque for path, _ in sides):
            out[name] = rule
    return out


def block_groups(model: nn.Module, blocks: dict[str, BlockRule]) -> list[Group]:
    """One group per block that has units (a container block may only fix attributes after a cut)."""
    groups = []
    for name, rule in blocks.items():
        units, sides, per_unit = rule.sides(name, model.get_submodule(name))
        if units:
            groups.append(Group(name, units, sides, per_unit, block=True))
    return groups


def block_cuts(groups: list[Group], removed: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Block path -> indices of the units it keeps, for the blocks that lose units."""
    return {
        groups[gi].name: np.setdiff1d(np.arange(groups[gi].units), units)
        for gi, units in removed.items()
        if groups[gi].block and len(units)
    }


def replace_blocks(model: nn.Module, cuts: dict[str, np.ndarray]) -> dict[str, str]:
    """Swap the blocks about to be cut whose rule names a replacement; returns path -> replacement."""
    done: dict[str, str] = {}
    for path in cuts:
        rule = BLOCKS.get(type(model.get_submodule(path)).__name__)
        if rule.replace is not None:
            model.set_submodule(path, REPLACEMENTS.get(rule.replace)(model.get_submodule(path)))
            done[path] = rule.replace
    return done


def note_cuts(model: nn.Module, cuts: dict[str, np.ndarray]) -> None:
    for path, kept in cuts.items():
        module = model.get_submodule(path)
        BLOCKS.get(type(module).__name__).on_cut(module, kept)


def fix_blocks(model: nn.Module) -> None:
    for module in model.modules():
        if type(module).__name__ in BLOCKS:
            BLOCKS.get(type(module).__name__).fix(module)


def config_sizes(model: nn.Module) -> dict[str, set[int]]:
    """Every config field the registered blocks describe -> the values the model's blocks hold."""
    seen: dict[str, set[int]] = {}
    for module in model.modules():
        kind = type(module).__name__
        if kind in BLOCKS:
            for key, value in BLOCKS.get(kind).config(module).items():
                seen.setdefault(key, set()).add(value)
    return seen


def sync_config(model: nn.Module) -> dict[str, Any]:
    """Write each block size that every block agrees on into `model.config` (so save_pretrained /
    from_pretrained rebuild the pruned shapes); returns the fields set. Sizes that differ between
    blocks, or that the config cannot hold, are left: `config_problems` names them."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    fields = {k: min(v) for k, v in config_sizes(model).items() if len(v) == 1 and not k.startswith("=")}
    for key, value in fields.items():
        setattr(config, key, value)
    return fields


def config_problems(model: nn.Module) -> list[str]:
    """Why `model.config` cannot describe the model's block sizes (empty when it can)."""
    config = getattr(model, "config", None)
    out = []
    for key, values in config_sizes(model).items():
        name = key.lstrip("=")
        if len(values) > 1:
            out.append(
                f"blocks hold different {name} ({sorted(values)}) and {type(config).__name__} holds one; "
                "prune with scope='layer' (every block keeps the same count) or exclude the blocks"
            )
        elif key.startswith("=") and getattr(config, name, None) != min(values):
            out.append(
                f"{type(config).__name__} derives the head size from the hidden size and {name}, so "
                f"{min(values)} heads of {getattr(config, name, None)} cannot be written into it; prune "
                "only the MLPs (exclude the attention modules) or save with ts.save"
            )
    return out
