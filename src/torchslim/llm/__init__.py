"""Methods for large transformers, fed one block at a time by one calibration engine.

Modules: `layers` (finding the repeated blocks), `engine` (the layer-by-layer loop and its `Method` /
`LayerStore` protocols), `stats` (input statistics methods share), `sparse` (the `wanda` and
`sparsegpt` criteria of `ts.SparsityConfig`), `checkpoint` (blocks read from and written to
safetensors shards, for models larger than memory), `structured` (Minitron width pruning: heads, MLP,
hidden), `width_stage` (its recipe kind `width`).
"""

from __future__ import annotations

from torchslim.llm import sparse as sparse
from torchslim.llm import structured as structured
from torchslim.llm import width_stage as width_stage  # prune: {kind: width}
from torchslim.llm.engine import EngineReport, InMemory, LayerStore, Method, run
from torchslim.llm.layers import LayerStack, find_layers

__all__ = [
    "EngineReport",
    "InMemory",
    "LayerStack",
    "LayerStore",
    "Method",
    "find_layers",
    "run",
    "sparse",
    "structured",
]
