"""Pruning. Unstructured: `ts.prune_(model, ts.SparsityConfig(...), data=...)` masks single weights.

Modules: `targets` (which layer types and tensors are prunable), `masks` (hard/soft masks, save/load
replay), `importance` (criteria registry), `select` (scores -> masks), `sensitivity` (scan and
automatic per-layer sparsity), `schedule` (cubic schedule, gradual pruning callback), `codecs`
(compact sparse storage), `regularize` (sparsity-inducing penalties), `api` (`prune_`), `stage`
(the recipe stage).
"""

from __future__ import annotations

from torchslim.prune import blocks_stage as blocks_stage  # kind: blocks (depth pruning)
from torchslim.prune import channel_stage as channel_stage  # ChannelConfig, kind: channel, channel_prune
from torchslim.prune import codecs as codecs
from torchslim.prune import recurrent as recurrent  # layer rules: LSTM/GRU hidden units
from torchslim.prune.api import PRUNERS, PruneReport, prune_, prune_unstructured
from torchslim.prune.importance import IMPORTANCE, ImportanceInput, elementwise, register_importance
from torchslim.prune.masks import Mask, harden, iter_masks, make_permanent
from torchslim.prune.mha import PrunedMultiheadAttention
from torchslim.prune.regularize import Regularizer
from torchslim.prune.schedule import GradualPruner, cubic_sparsity, iterative_targets
from torchslim.prune.sensitivity import allocate, scan
from torchslim.prune.targets import LAYER_KINDS, LayerKind, Target, find_targets

__all__ = [
    "IMPORTANCE",
    "LAYER_KINDS",
    "PRUNERS",
    "GradualPruner",
    "ImportanceInput",
    "LayerKind",
    "Mask",
    "PruneReport",
    "PrunedMultiheadAttention",
    "Regularizer",
    "Target",
    "allocate",
    "cubic_sparsity",
    "elementwise",
    "find_targets",
    "harden",
    "iter_masks",
    "iterative_targets",
    "make_permanent",
    "prune_",
    "prune_unstructured",
    "register_importance",
    "scan",
]
