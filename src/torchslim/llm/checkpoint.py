"""Models larger than memory: blocks read from a checkpoint's shards and written out one at a time.

`open_checkpoint(path)` builds a transformers causal LM from its `config.json` on the meta device (no
weights allocated; non-persistent buffers such as rotary frequencies are computed for real). Modules
outside the repeated blocks (embeddings) are filled from the shards the first time they run, so a
calibration pass reads only what it reaches. `ShardStore` is the engine's `LayerStore` for it:
`load` reads one block's tensors (each shard opened and closed around the read, so its pages leave
the resident set), in float32 for the method; `release` folds masks, writes the block in its stored
dtype as a shard of the output checkpoint, and returns the block to the meta device. `finish` copies
the tensors outside the blocks and writes the index and config: the output directory is a checkpoint
`from_pretrained` loads (written to a temporary sibling and renamed when complete).
"""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from torchslim.atomic import replace_dir, share_modes, temp_dir_beside
from torchslim.config import SparsityConfig
from torchslim.errors import UserError
from torchslim.llm.layers import LayerStack, find_layers
from torchslim.prune.api import PruneReport

INDEX = "model.safetensors.index.json"
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json")  # fmt: skip


def weight_map(path: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index of a sharded checkpoint or its single file."""
    if (path / INDEX).is_file():
        found = json.loads((path / INDEX).read_text())["weight_map"]
        return {str(k): str(v) for k, v in found.items()}
    single = path / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{path}: no model.safetensors or {INDEX}; is it a Hugging Face checkpoint?")
    with safe_open(str(single), "pt") as f:
        return dict.fromkeys(f.keys(), single.name)


def each(path: Path, keys: Iterable[str], files: dict[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The named tensors one at a time, each shard opened once and closed after (its mapping released)."""
    by_file: dict[str, list[str]] = {}
    for key in keys:
        by_file.setdefault(files[key], []).append(key)
    for name, names in by_file.items():
        with safe_open(str(path / name), "pt") as f:
            for key in names:
                yield key, f.get_tensor(key)


def read(path: Path, keys: Iterable[str], files: dict[str, str]) -> dict[str, torch.Tensor]:
    return dict(each(path, keys, files))


def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[attr] = value


def _real_buffers(model: Any) -> None:
    """Non-persistent buffers (rotary frequencies, position ids) computed on the CPU, as transformers does."""
    for name, buffer in list(model.named_non_persistent_buffers()):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._buffers[attr] = torch.empty_like(buffer, device="cpu")
        model._init_weights(module)


def open_checkpoint(path: str | Path) -> nn.Module:
    """A causal LM with every weight on the meta device; modules outside the blocks load on first use."""
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; is it a Hugging Face checkpoint directory?")
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    config.use_cache = False
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    _real_buffers(model)
    model.eval()
    files = weight_map(path)
    stack = find_layers(model)
    for name, module in model.named_modules():
        if _inside(name, stack) or not any(p.is_meta for p in module.parameters(recurse=False)):
            continue
        module.register_forward_pre_hook(_loader(model, path, files, name))
    return model


def _inside(name: str, stack: LayerStack) -> bool:
    return name == stack.path or name.startswith(f"{stack.path}.")


def _loader(model: nn.Module, path: Path, files: dict[str, str], name: str) -> Any:
    def hook(module: nn.Module, args: Any) -> None:
        wanted = [f"{name}.{p}" for p, v in module._parameters.items() if v is not None and v.is_meta]
        for key, value in read(path, [k for k in wanted if k in files], files).items():
            _set_tensor(model, key, value)

    return hook


class ShardStore:
    """The engine's `LayerStore` over a checkpoint: one block resident at a time (see module docstring)."""

    def __init__(self, model: nn.Module, source: str | Path, compute: torch.dtype = torch.float32) -> None:
        self.model, self.source, self.compute = model, Path(source), compute
        self.files = weight_map(self.source)
        self.stack = find_layers(model)
        self.written: dict[str, str] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.replaced: set[str] = set()
        self.out: Path | None = None

    def load(self, index: int, block: nn.Module) -> nn.Module:
        if index == 0:  # the calibration inputs are captured: embeddings are not needed any more
            self._offload_outside()
        prefix = f"{self.stack.name(index)}."
        keys = [k for k in self.files if k.startswith(prefix)]
        for key, value in each(self.source, keys, self.files):  # converted one by one
            self.dtypes[key] = value.dtype
            _set_tensor(self.model, key, value.to(self.compute))
        return block

    def _offload_outside(self) -> None:
        for name, module in self.model.named_modules():
            if not _inside(name, self.stack):
                for key, p in list(module._parameters.items()):
                    if p is not None and not p.is_meta:
                        module._parameters[key] = nn.Parameter(p.to("meta"), requires_grad=False)
        gc.collect()

    def release(self, index: int, block: nn.Module) -> None:
        from torchslim.prune.masks import make_permanent

        assert self.out is not None, "ShardStore.release before begin()"
        make_permanent(block)
        state = self.block_state(index, block)
        name = f"model-block-{index:05d}.safetensors"
        save_file(state, str(self.out / name), metadata={"format": "pt"})
        self.written.update(dict.fromkeys(state, name))
        # the block's source tensors are replaced by what was written (a quantized layer's names differ)
        prefix = f"{self.stack.name(index)}."
        self.replaced.update(k for k in self.files if k.startswith(prefix))
        del state
        block.to("meta")
        gc.collect()

    def block_state(self, index: int, block: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors written for block `index`: its state in the checkpoint's dtypes."""
        prefix = f"{self.stack.name(index)}."
        return {prefix + k: v.detach().to(self.dtypes.get(prefix + k, v.dtype)).contiguous()
                for k, v in block.state_dict().items()}  # fmt: skip

    def finish(self) -> None:
        """The tensors outside the blocks (copied as stored), the index and the config files."""
        assert self.out is not None
        rest = [k for k in self.files if k not in self.written and k not in self.replaced]
        name = "model-rest.safetensors"
        save_file(read(self.source, rest, self.files), str(self.out / name), metadata={"format": "pt"})
        self.written.update(dict.fromkeys(rest, name))
        index = {"metadata": {}, "weight_map": dict(sorted(self.written.items()))}
        (self.out / INDEX).write_text(json.dumps(index, indent=1))
        for copied in COPIED:
            if (self.source / copied).is_file():
                shutil.copyfile(self.source / copied, self.out / copied)


def prune_checkpoint(
    source: str | Path,
    out: str | Path,
    config: SparsityConfig,
    data: Iterable[Any],
) -> PruneReport:
    """Prune a Hugging Face causal-LM checkpoint on disk into `out`, one block in memory at a time.

    `data`: calibration batches of token ids (`(input_ids, None)` or `{"input_ids": ...}`). The output
    holds the pruned weights in the checkpoint's dtypes, zeros stored (a transformers checkpoint);
    the report's notes carry the engine's peak resident memory.
    """
    from torchslim.llm.sparse import prune_layerwise

    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise UserError(f"{out}: the output must not be the source checkpoint")
    model = open_checkpoint(source)
    store = ShardStore(model, source)
    with temp_dir_beside(out) as tmp:
        store.out = tmp
        report = prune_layerwise(model, config, data, store=store)
        store.finish()
        share_modes(tmp)
        replace_dir(tmp, out)
    return report
