"""Wanda and SparseGPT: pruning criteria for transformers that run through the layer-by-layer engine.

- `wanda` (Sun et al. 2023): score |W_ij| * ||X_j||_2, the weight times the L2 norm of its input
  feature over the calibration tokens; each output row loses the same count (the paper's comparison
  group), or with a pattern the lowest of every group of M. No weight is updated.
- `sparsegpt` (Frantar & Alistarh 2023): Optimal Brain Surgeon made cheap. With H = X^T X of the
  layer's inputs (dampened by 1% of its mean diagonal), columns are processed left to right in blocks
  of 128; at each block start the weights with the lowest w^2 / [H^-1]_jj^2 are chosen (an exact
  count per block; with a pattern the lowest M - N of every group of M, chosen as the group starts),
  and every pruned or kept column's error is spread over the columns not yet processed through the
  Cholesky factor of H^-1, so the kept weights are reconstructed to preserve the layer's output.

Both prune the Linear layers of the model's repeated blocks (selected by include/exclude), each
block seeing the outputs of the blocks pruned before it. Masks are the usual hard masks
(`torchslim.prune.masks`), so saving, loading and `make_permanent` work as for any pruned model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim.config import SparsityConfig
from torchslim.errors import UserError
from torchslim.llm import engine
from torchslim.llm.layers import find_layers, linears
from torchslim.llm.stats import ColumnNorms, Hessian, rows_of, store_rows
from torchslim.prune import pattern as nm
from torchslim.prune.api import PruneReport, report
from torchslim.prune.importance import ImportanceInput, register_importance
from torchslim.prune.masks import get_mask, record, set_mask
from torchslim.prune.targets import LAYER_KINDS, Target, find_targets
from torchslim.quant.conv1d import is_conv1d
from torchslim.targeting import is_selected


def keep_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask pruning exactly round(sparsity * row length) lowest scores of every row."""
    cols = scores.shape[1]
    pruned = round(sparsity * cols)
    order = torch.argsort(scores, dim=1, stable=True)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, :pruned], False)
    return keep


class _Base:
    def __init__(self, config: SparsityConfig, targets: dict[str, Target]) -> None:
        assert config.sparsity is not None
        self.sparsity = config.sparsity
        self.pattern = nm.parse(config.pattern) if config.pattern else None
        self.targets = targets

    def weight_rows(self, name: str) -> torch.Tensor:
        t = self.targets[name]
        return rows_of(t.module, t.weight().detach()).float()

    def write(self, name: str, rows: torch.Tensor, keep: torch.Tensor) -> None:
        """New weight values (`[out, in]`) and keep-mask into the module, as a hard mask."""
        t = self.targets[name]
        leaf = t.leaf()
        with torch.no_grad():
            leaf.copy_(store_rows(t.module, rows * keep).to(leaf.dtype))
        self.new_masks[t.key] = set_mask(t.module, t.param, store_rows(t.module, keep), soft=False)

    new_masks: dict[str, bool]


class Wanda(_Base):
    def __init__(self, config: SparsityConfig, targets: dict[str, Target]) -> None:
        super().__init__(config, targets)
        self.norms: dict[str, ColumnNorms] = {}
        self.new_masks = {}

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        self.norms.setdefault(name, ColumnNorms()).update(x)

    def apply(self, name: str, module: nn.Module) -> None:
        w = self.weight_rows(name)
        scores = w.abs() * self.norms.pop(name).value()[None, :]
        scores = _already_pruned(self.targets[name], scores)
        if self.pattern is not None:
            keep = nm.keep_nm(scores, *self.pattern)
        else:
            keep = keep_per_row(scores, self.sparsity)
        self.write(name, w, keep)


def _already_pruned(t: Target, scores: torch.Tensor) -> torch.Tensor:
    """Entries a hard mask already prunes rank below everything (they stay pruned)."""
    mask = get_mask(t.module, t.param)
    if mask is None or mask.soft:
        return scores
    return torch.where(rows_of(t.module, mask.mask), scores, -torch.inf)


class SparseGPT(_Base):
    """Layers that read the same input tensor (q, k, v; gate, up) share one H and its inverse factor."""

    def __init__(
        self, config: SparsityConfig, targets: dict[str, Target], damp: float = 0.01, block: int = 128
    ) -> None:
        super().__init__(config, targets)
        self.hessians: dict[str, Hessian] = {}
        self.seen: dict[int, tuple[torch.Tensor, Hessian]] = {}  # this batch's inputs -> their H
        self.factors: dict[int, torch.Tensor] = {}
        self.damp, self.block = damp, block
        self.new_masks = {}

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        shared = self.seen.get(x.data_ptr())
        if shared is not None and shared[0] is x:  # the very tensor another layer saw: counted once
            self.hessians.setdefault(name, shared[1])
            return
        h = self.hessians.setdefault(name, Hessian())
        h.update(x)
        self.seen = {x.data_ptr(): (x, h)}

    def apply(self, name: str, module: nn.Module) -> None:
        self.seen = {}
        h = self.hessians.pop(name)
        key = id(h)
        if key not in self.factors:
            self.factors[key] = inverse_hessian_factor(h.take(), self.damp)
        hinv = self.factors[key]
        if not any(other is h for other in self.hessians.values()):
            del self.factors[key]  # the last layer of its input
        rows, keep = sparsegpt_prune(self.weight_rows(name), hinv, self.sparsity, self.pattern, self.block)
        self.write(name, rows, keep)


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; dead inputs get a unit diagonal.

    Changes `h` in place and keeps at most two matrices alive (a 5632-wide MLP input's H is 127 MB in
    float32, the precision SparseGPT's reference uses)."""
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag += damp * diag.mean()
    lower = torch.linalg.cholesky(h)
    del h, diag
    inv = torch.cholesky_inverse(lower)
    del lower
    return torch.linalg.cholesky(inv, upper=True)


def sparsegpt_prune(
    w: torch.Tensor,
    hinv: torch.Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None,
    block: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on `w` `[out, in]` with `hinv` the upper Cholesky factor of H^-1: (new weights, keep)."""
    rows, cols = w.shape
    if pattern is not None:  # blocks hold whole groups
        block = max(pattern[1], block - block % pattern[1])
    work = w.clone()
    keep = torch.ones(rows, cols, dtype=torch.bool)
    diag = torch.diag(hinv)
    done = 0  # weights pruned so far: per-block counts round the running total, so the layer is exact
    for start in range(0, cols, block):
        end = min(start + block, cols)
        if pattern is None:
            target = round(sparsity * rows * end) - done
            scores = work[:, start:end].square() / diag[start:end].square()[None, :]
            order = torch.argsort(scores.flatten(), stable=True)[:target]
            chosen = torch.ones(rows * (end - start), dtype=torch.bool)
            chosen[order] = False
            keep[:, start:end] = chosen.view(rows, end - start)
            done += target
        errs = torch.empty(rows, end - start)
        for i in range(start, end):
            if pattern is not None and i % pattern[1] == 0:
                n, m = pattern
                scores = work[:, i : i + m].square() / diag[i : i + m].square()[None, :]
                keep[:, i : i + m] = nm.keep_nm(scores, n, m)
            col = work[:, i]
            kept = torch.where(keep[:, i], col, torch.zeros_like(col))
            err = (col - kept) / hinv[i, i]
            work[:, i:end] -= err[:, None] * hinv[i, i:end][None, :]
            work[:, i] = kept
            errs[:, i - start] = err
        work[:, end:] -= errs @ hinv[start:end, end:]
    return work * keep, keep


METHODS: dict[str, Callable[[SparsityConfig, dict[str, Target]], Any]] = {
    "wanda": Wanda,
    "sparsegpt": SparseGPT,
}


def block_targets(model: nn.Module, config: SparsityConfig) -> list[Target]:
    """The selected Linear-like weights inside the model's repeated blocks (GPT-2's Conv1D included:
    `find_targets` does not know it, so its targets are made here, with the Linear kind)."""
    stack = find_layers(model)
    inside = {
        f"{stack.name(i)}.{name}": m
        for i, block in enumerate(stack.layers)
        for name, m in linears(block).items()
    }
    found = {
        t.module_name: t for t in find_targets(model, config.include, config.exclude) if t.param == "weight"
    }
    linear = LAYER_KINDS.get("linear")
    chosen = [
        found.get(name) or Target(name, name, module, "weight", linear)
        for name, module in inside.items()
        if name in found or (is_conv1d(module) and is_selected(name, config.include, config.exclude))
    ]
    if not chosen:
        raise UserError(
            f"importance {config.importance!r}: no Linear layer of {stack.path!r} is selected "
            f"(include={list(config.include)}, exclude={list(config.exclude)})"
        )
    return chosen


def prune_layerwise(
    model: nn.Module,
    config: SparsityConfig,
    data: Iterable[Any] | None,
    store: engine.LayerStore | None = None,
) -> PruneReport:
    """Prune `model` with `config.importance` (wanda or sparsegpt) one block at a time."""
    _check(config, data)
    assert data is not None
    targets = block_targets(model, config)
    if config.pattern is not None:
        m = nm.parse(config.pattern)[1]
        for t in targets:
            nm.check_rows(t.name, rows_of(t.module, t.weight()), m)
    method = METHODS[config.importance](config, {t.module_name: t for t in targets})
    run = engine.run(model, data, method, {t.module_name for t in targets}, store=store)
    record(model, {k: False for k, new in method.new_masks.items() if new})
    out = report(targets) if store is None else PruneReport(config.sparsity or 0.0, {})
    out.extra = run.notes()
    return out


def _check(config: SparsityConfig, data: Iterable[Any] | None) -> None:
    name = config.importance
    if data is None:
        raise UserError(
            f"importance {name!r} needs calibration data: pass data=<batches of (inputs, target)>"
        )
    if config.threshold is not None or config.allocation != "uniform" or config.soft:
        raise UserError(
            f"importance {name!r} prunes each layer to a sparsity (or pattern) with hard masks: "
            "threshold, allocation='auto' and soft masks do not apply"
        )


def _scores_unavailable(inp: ImportanceInput) -> dict[str, torch.Tensor]:
    raise UserError("wanda and sparsegpt prune one block at a time through ts.prune_ (no global scores)")


for _name in METHODS:
    register_importance(_name, _scores_unavailable, needs_data=True, layerwise=prune_layerwise)
