"""The layer-by-layer calibration engine: every LLM method (Wanda, SparseGPT; GPTQ, AWQ, SmoothQuant
next) is fed one block of a transformer at a time, apart from the loop that feeds it.

The loop (llm-compressor's "layer sequential" pipeline, without its session globals):
1. the calibration batches run through the model until they reach the first repeated block, where a
   pre-hook keeps that block's inputs (hidden states and every keyword: attention mask, position
   embeddings, position ids) and stops the forward pass;
2. for each block in turn: it is materialised (`LayerStore.load`; a checkpoint store reads it from its
   safetensors shards), the method's hooks watch its Linear inputs while the cached inputs run through
   it, the method compresses it (`Method.apply`), the inputs run through the compressed block, and
   those outputs become the next block's inputs (errors of earlier blocks are seen and compensated
   by later ones, as in SparseGPT and GPTQ); the block is then released (`LayerStore.release`: written
   out and offloaded to the meta device by a checkpoint store).
   A `BlockTuner` method (`gptq+tune`) also refines each compressed block towards the uncompressed
   model's own block outputs, from a second stream of hidden states the loop carries beside.
Only one block's weights and the cached hidden states are ever resident (the embeddings only until the
first block loads); nothing of a block is referenced once it is released, and with a store the heap is
kept from holding freed pages (`bound_heap`, `return_freed_memory`).
Peak resident memory is the process's high-water mark (`resource.getrusage`), reported with the run.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from torchslim.data import call, limit, split
from torchslim.errors import UserError
from torchslim.llm.layers import LayerStack, find_layers, linears


class Method(Protocol):
    """One algorithm the engine feeds (llm-compressor's modifier shape, without lifecycle globals)."""

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        """See one input batch `x` (`[..., in_features]`) of the Linear `name` (its full model name); the
        same tensor object reaches every layer that reads it (q, k and v of one attention)."""
        ...

    def apply(self, name: str, module: nn.Module) -> None:
        """Compress `module` from what was observed; called once per Linear after the block's pass."""
        ...


@runtime_checkable
class BlockTuner(Protocol):
    """A method that also refines each whole block after `apply` (`torchslim.quant.tune`)."""

    def refine(
        self, block: nn.Module, run: Callable[[int], torch.Tensor], targets: list[torch.Tensor]
    ) -> None:
        """Adjust the compressed `block` so that `run(i)` (it on calibration batch `i`, whose inputs
        are the compressed earlier blocks' outputs) approaches `targets[i]`, the uncompressed model's
        own output of this block on that batch."""
        ...


class LayerStore(Protocol):
    """Where blocks live between uses: in the live model, or in checkpoint shards on disk."""

    def load(self, index: int, block: nn.Module) -> nn.Module:
        """Block `index` ready to run (materialised, in the compute dtype)."""
        ...

    def release(self, index: int, block: nn.Module) -> None:
        """Done with block `index` (a disk store writes it out and frees it)."""
        ...


class InMemory:
    """The model is already in memory: blocks are used where they are."""

    def load(self, index: int, block: nn.Module) -> nn.Module:
        return block

    def release(self, index: int, block: nn.Module) -> None:
        pass


@dataclass
class Captured:
    """One batch's inputs of a block: positional arguments (hidden states first) and keywords."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def hidden(self) -> torch.Tensor:
        value = self.args[0] if self.args else self.kwargs["hidden_states"]
        assert isinstance(value, torch.Tensor)
        return value

    def with_hidden(self, hidden: torch.Tensor) -> Captured:
        if self.args:
            return Captured((hidden, *self.args[1:]), self.kwargs)
        return Captured((), {**self.kwargs, "hidden_states": hidden})


@dataclass
class EngineReport:
    blocks: int
    batches: int
    seconds: float
    peak_rss_bytes: int
    """The process's resident-memory high-water mark at the end of the run (ru_maxrss)."""
    output_error: dict[str, float] = field(default_factory=dict)
    """Per block: ||out_compressed - out_uncompressed||^2 / ||out_uncompressed||^2 on the calibration
    inputs it received (the compressed earlier blocks' outputs)."""

    def notes(self) -> dict[str, Any]:
        return {
            "engine": "layer-by-layer",
            "blocks": self.blocks,
            "calibration_batches": self.batches,
            "peak_rss_mb": round(self.peak_rss_bytes / 2**20, 1),
            "block_output_error": {k: round(v, 6) for k, v in self.output_error.items()},
        }


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number for the size above which an allocation is its own mapping."""
MMAP_THRESHOLD = 1 << 20


def bound_heap() -> None:
    """Every allocation of 1 MiB or more its own mapping, unmapped when freed (glibc `mallopt`).

    glibc raises its mmap threshold each time a mapped chunk is freed (up to 32 MiB), so once a block's
    16 MB weights are freed, later tensors of that size come from the heap arenas and the pages they
    leave behind stay resident: at the 1 B shape the high-water mark rose by ~150 MB within a block and
    more with every block. A fixed threshold turns that adjustment off for the rest of the process."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def return_freed_memory() -> None:
    """Give freed heap pages back to the system after each block (glibc's `malloc_trim`): blocks free
    hundreds of MB of tensors whose pages otherwise stay resident and mapped in the allocator's arenas."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Stop(Exception):
    """Raised by the capture hook: the rest of the model is not needed."""


def _no_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keywords for re-running a block alone: no KV cache object (each pass is a fresh prefill)."""
    out = {k: (None if type(v).__name__.endswith("Cache") else v) for k, v in kwargs.items()}
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def capture(model: nn.Module, stack: LayerStack, data: Iterable[Any], batches: int | None) -> list[Captured]:
    """The first block's inputs for every calibration batch (the model stops there)."""
    found: list[Captured] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        found.append(Captured(tuple(args), _no_cache(dict(kwargs))))
        raise _Stop

    handle = stack.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in limit(data, batches):
                try:
                    call(model, split(batch)[0])
                except _Stop:
                    continue
                raise UserError(f"calibration forward never reached {stack.name(0)!r}; is it used?")
    finally:
        handle.remove()
    if not found:
        raise UserError("calibration data yielded no batches")
    return found


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


def _cast_inputs(inp: Captured, dtype: torch.dtype) -> Captured:
    return Captured(_cast(inp.args, dtype), {k: _cast(v, dtype) for k, v in inp.kwargs.items()})


def run_block(block: nn.Module, inp: Captured) -> torch.Tensor:
    out = block(*inp.args, **inp.kwargs)
    if not isinstance(out, torch.Tensor):  # older blocks return (hidden, attentions, ...)
        out = out[0]
    assert isinstance(out, torch.Tensor)
    return out


def _watch(method: Method, targets: dict[str, nn.Module]) -> Iterator[Any]:
    for name, module in targets.items():

        def hook(m: nn.Module, args: tuple[Any, ...], _name: str = name) -> None:
            # the tensor itself (runs under no_grad): layers fed the same object can tell they share it
            method.observe(_name, m, args[0])

        yield module.register_forward_pre_hook(hook)


def run(
    model: nn.Module,
    data: Iterable[Any],
    method: Method,
    selected: set[str],
    *,
    store: LayerStore | None = None,
    batches: int | None = None,
) -> EngineReport:
    """Feed `method` the Linear layers named in `selected` (full model names), one block at a time."""
    start = time.perf_counter()
    stack = find_layers(model)
    store = store or InMemory()
    was_training = model.training
    model.eval()
    report = EngineReport(blocks=len(stack.layers), batches=0, seconds=0.0, peak_rss_bytes=0)
    if not isinstance(store, InMemory):  # bounded memory is the point of a store
        bound_heap()
    try:
        cache = capture(model, stack, data, batches)
        report.batches = len(cache)
        # a block tuner's targets: the uncompressed model's own stream of hidden states, kept beside
        reference = [c.hidden for c in cache] if isinstance(method, BlockTuner) else None
        for index in range(len(stack.layers)):
            cache, reference, report.output_error[stack.name(index)] = _one_block(
                stack, index, cache, method, selected, store, reference
            )
            return_freed_memory()  # after the block's locals are gone: nothing of it is referenced
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    report.peak_rss_bytes = peak_rss_bytes()
    return report


def _reference_outputs(
    block: nn.Module, cache: list[Captured], reference: list[torch.Tensor], dtype: torch.dtype
) -> list[torch.Tensor]:
    """The uncompressed block on the uncompressed stream's inputs (before `apply` touches it)."""
    with torch.no_grad():
        return [run_block(block, c.with_hidden(h.to(dtype))) for c, h in zip(cache, reference, strict=True)]


def _one_block(
    stack: LayerStack,
    index: int,
    cache: list[Captured],
    method: Method,
    selected: set[str],
    store: LayerStore,
    reference: list[torch.Tensor] | None,
) -> tuple[list[Captured], list[torch.Tensor] | None, float]:
    """Load, process and release block `index`; a function of its own so that no reference to the block
    or its layers (a method may swap a Linear out: the old one keeps its float weight) outlives it."""
    block = store.load(index, stack.layers[index])
    block.eval()
    dtype = next(block.parameters()).dtype
    cache = [_cast_inputs(c, dtype) for c in cache]
    prefix = stack.name(index)
    targets = {f"{prefix}.{n}": m for n, m in linears(block).items() if f"{prefix}.{n}" in selected}
    if reference is not None:
        reference = _reference_outputs(block, cache, reference, dtype)
    cache, error = _process(block, cache, method, targets, reference)
    store.release(index, block)
    return cache, reference, error


def _process(
    block: nn.Module,
    cache: list[Captured],
    method: Method,
    targets: dict[str, nn.Module],
    reference: list[torch.Tensor] | None = None,
) -> tuple[list[Captured], float]:
    """Observe, compress, re-run: the block's new outputs as the next inputs, and its relative error.
    With `reference` (the uncompressed block's outputs), a `BlockTuner` refines the block after `apply`.
    `targets` is emptied as each layer is compressed: a layer a method replaces is then referenced by
    nothing, and its float weight is freed before the next layer's work (not at the end of the block)."""
    if not targets:  # nothing selected here: one pass carries the inputs on
        with torch.no_grad():
            return [c.with_hidden(run_block(block, c)) for c in cache], 0.0
    handles = list(_watch(method, targets))
    try:
        with torch.no_grad():
            dense = [run_block(block, c) for c in cache]
    finally:
        for h in handles:
            h.remove()
    while targets:
        name = next(iter(targets))
        method.apply(name, targets.pop(name))
    if reference is not None and isinstance(method, BlockTuner):
        method.refine(block, lambda i: run_block(block, cache[i]), reference)
    num = den = 0.0
    out = []
    with torch.no_grad():
        for c, ref in zip(cache, dense, strict=True):
            new = run_block(block, c)
            num += float((new.float() - ref.float()).square().sum())
            den += float(ref.float().square().sum())
            out.append(c.with_hidden(new))
    return out, num / max(den, 1e-30)
