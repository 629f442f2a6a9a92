"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint taken at the end of an epoch holds the model, the optimizer and scheduler state, the
RNG state and the history, so a resumed run continues exactly where the interrupted one stopped
(data order is a function of the epoch, so it needs no saving).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from torchslim.atomic import replace_dir, temp_dir_beside
from torchslim.errors import ManifestError

STATE = "trainer.json"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for pid, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{slot}"] = value.contiguous()
            else:
                plain.setdefault(str(pid), {})[slot] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, slot = key.split(".", 2)
            state.setdefault(int(pid), {})[slot] = value
    for pid, slots in meta["plain"].items():
        state.setdefault(int(pid), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


def _untie(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors stored once each: safetensors refuses shared memory (a tied embedding and lm_head), so
    each later name of the same tensor becomes an alias of the first."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, value in tensors.items():
        key = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if value.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen.setdefault(key, name)
            unique[name] = value
    return unique, aliases


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    epoch: int,
    step: int,
    history: list[dict[str, float]],
    best: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the state after `epoch` (0-based) completed, atomically replacing the previous one."""
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v.contiguous() for k, v in (best or {}).items()})
    tensors.update(optim_tensors)
    tensors["rng"] = torch.get_rng_state()
    tensors, aliases = _untie(tensors)
    meta = {
        "aliases": aliases,
        "epoch": epoch,
        "step": step,
        "history": history,
        "optimizer": optim_meta,
        "scheduler": scheduler.state_dict(),
    }
    with temp_dir_beside(directory) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / STATE).write_text(json.dumps(meta))
        replace_dir(tmp, directory)


def load_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore the states in place; returns `{"epoch", "step", "history", "best"}` of the checkpoint."""
    try:
        meta = json.loads((directory / STATE).read_text())
        tensors = load_file(str(directory / "state.safetensors"))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise ManifestError(f"training checkpoint {directory} is unreadable ({exc})") from None
    for alias, source in meta.get("aliases", {}).items():
        if source not in tensors:
            raise ManifestError(f"training checkpoint {directory}: {alias!r} names a missing {source!r}")
        tensors[alias] = tensors[source]
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return {"epoch": meta["epoch"], "step": meta["step"], "history": meta["history"], "best": best}


def has_checkpoint(directory: Path | None) -> bool:
    return directory is not None and (directory / STATE).is_file()
