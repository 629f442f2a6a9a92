"""Unstructured masks as a `torch.nn.utils.parametrize` parametrization: `weight = original * mask`.

Why a parametrization: the masked weight is computed in the forward pass, so it survives deepcopy,
training, `torch.onnx.export(dynamo=True)` and `state_dict` round trips (keys become
`<layer>.parametrizations.weight.original` and `...weight.0.mask`), and `metrics.size.effective_weights`
reads the masked tensor through the attribute.

- hard masks (default): the product makes the gradient of every pruned entry exactly zero, so
  pruned weights stay zero through training. Whatever an optimizer does to `original` at pruned
  entries (weight decay, stale Adam momentum) is multiplied by zero in the effective weight; those
  entries are also zeroed in place when masks change and in `state_dict()` output, so files stay sparse.
- soft masks: the forward pass sees the masked weight, the backward pass a straight-through
  gradient to every entry, so pruned weights keep learning and can regrow when masks are recomputed
  (Dynamic Network Surgery / Lin et al. 2020); `harden` fixes the last mask.

`make_permanent` folds masks into plain weights. Structure changes are recorded with
`torchslim.io.add_transform` and replayed by `ts.load` before values load from safetensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from torchslim import io, safe
from torchslim.manifest import TRANSFORM_PARAMS, ModulePath, Strict

MASKS = "unstructured_masks"
FOLDED = "unstructured_masks_folded"


class Mask(nn.Module):
    """Parametrization multiplying a weight by a boolean mask (True = kept).

    `soft` is mirrored in a 0-d buffer, so a saved model restores it from its values (no structural
    record needed when masks are hardened, even by a callback that sees a wrapper of the model).
    """

    mask: torch.Tensor
    soft_flag: torch.Tensor

    def __init__(self, mask: torch.Tensor, soft: bool = False) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())
        self.register_buffer("soft_flag", torch.tensor(bool(soft)))
        self._soft = bool(soft)
        self.register_state_dict_post_hook(_store_pruned_as_zero)
        self.register_load_state_dict_post_hook(_read_soft_flag)

    @property
    def soft(self) -> bool:
        return self._soft

    @soft.setter
    def soft(self, value: bool) -> None:
        self._soft = bool(value)
        self.soft_flag.fill_(self._soft)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        masked = weight * self.mask
        if self._soft and weight.requires_grad:
            return weight + (masked - weight).detach()  # value masked, gradient straight through
        return masked

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"sparsity={1 - kept / max(self.mask.numel(), 1):.4f}, soft={self.soft}"


def _read_soft_flag(module: Mask, incompatible: Any) -> None:
    module._soft = bool(module.soft_flag)


def _store_pruned_as_zero(module: Mask, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """Hard masks: write `original` with zeros at pruned entries (their value never reaches the output)."""
    key = prefix[: -len("0.")] + "original"
    if module.soft or not prefix.endswith(".0.") or key not in state:
        return
    if not isinstance(state[key], nn.Parameter):  # keep_vars=True asks for the live objects: leave them
        state[key] = state[key] * module.mask


def plist(module: nn.Module, param: str) -> Any:
    """The `ParametrizationList` of `module.param` (holds `original` and the parametrizations)."""
    return module.parametrizations[param]  # type: ignore[index]


def get_mask(module: nn.Module, param: str) -> Mask | None:
    """Our mask on `module.param`, when it is the first parametrization (acting on the stored weight)."""
    if not parametrize.is_parametrized(module, param):
        return None
    first = plist(module, param)[0]
    return first if isinstance(first, Mask) else None


def iter_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Mask]]:
    """`(module_name, module, param, mask)` for every masked tensor."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for param in list(module.parametrizations.keys()):
                mask = get_mask(module, param)
                if mask is not None:
                    yield name, module, param, mask


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before its parametrizations change.

    torch keeps a parametrized tensor as a property of a generated class (`ParametrizedLinear`), and
    a deepcopy shares that class: adding or removing a parametrization on one copy would add or
    delete the property under the other (seen: `make_permanent` on a copy broke the original).
    """
    if parametrize.is_parametrized(module):
        cls = type(module)
        own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, cls.__bases__, own)


def set_mask(module: nn.Module, param: str, keep: torch.Tensor, soft: bool) -> bool:
    """Attach or update the mask of `module.param`; returns True when a new mask was attached."""
    mask = get_mask(module, param)
    changed = mask is None
    if mask is None:
        mask = Mask(keep, soft)
        _own_class(module)
        parametrize.register_parametrization(module, param, mask)
    else:
        mask.mask.copy_(keep)
        mask.soft = soft
    zero_pruned(module, param)
    return changed


def zero_pruned(module: nn.Module, param: str) -> None:
    """Zero `original` at pruned entries of a hard mask (keeps it sparse; no effect on outputs)."""
    mask = get_mask(module, param)
    if mask is not None and not mask.soft:
        with torch.no_grad():
            plist(module, param).original.mul_(mask.mask)


def zero_all_pruned(model: nn.Module) -> None:
    for _, module, param, _ in iter_masks(model):
        zero_pruned(module, param)


def record(model: nn.Module, layers: dict[str, bool]) -> None:
    """Record new masks (`{"module.param": soft}`) so that `ts.load` re-creates them."""
    if layers:
        io.add_transform(model, MASKS, {"layers": {k: {"soft": v} for k, v in layers.items()}})


def harden(model: nn.Module) -> int:
    """Turn every soft mask into a hard one (pruned weights are zeroed and get no more gradient)."""
    count = 0
    for _, module, param, mask in iter_masks(model):
        if mask.soft:
            mask.soft = False
            zero_pruned(module, param)
            count += 1
    return count


def make_permanent(model: nn.Module) -> int:
    """Fold every mask into its weight (`weight = original * mask`) and remove the parametrization."""
    folded = []
    for name, module, param, mask in list(iter_masks(model)):
        params = plist(module, param)
        with torch.no_grad():
            params.original.mul_(mask.mask)
        if len(params) == 1:
            _own_class(module)
            parametrize.remove_parametrizations(module, param, leave_parametrized=False)
        else:
            del params[0]
        folded.append(_key(name, param))
    if folded:
        io.add_transform(model, FOLDED, {"layers": folded})
    return len(folded)


def _key(module_name: str, param: str) -> str:
    return f"{module_name}.{param}" if module_name else param


def _locate(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_name, _, param = key.rpartition(".")
    module = safe.submodule(model, module_name, MASKS)
    return module, safe.tensor_name(module, param, f"{MASKS} {key!r}")


class _MaskOptions(Strict):
    soft: bool = False


@TRANSFORM_PARAMS.register(MASKS)
class MasksParams(Strict):
    layers: dict[ModulePath, _MaskOptions]


@TRANSFORM_PARAMS.register(FOLDED)
class FoldedParams(Strict):
    layers: list[ModulePath]


@io.TRANSFORMS.register(MASKS)
def _replay_masks(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Re-create masks (all kept for now: the saved mask values load afterwards)."""
    for key, options in params["layers"].items():
        module, param = _locate(model, key)
        mask = get_mask(module, param)
        if mask is None:
            weight = getattr(module, param)
            _own_class(module)
            parametrize.register_parametrization(
                module, param, Mask(torch.ones_like(weight, dtype=torch.bool))
            )
            mask = get_mask(module, param)
        assert mask is not None
        mask.soft = bool(options.get("soft", False))
    return model


@io.TRANSFORMS.register(FOLDED)
def _replay_fold(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    for key in params["layers"]:
        module, param = _locate(model, key)
        if get_mask(module, param) is not None:
            chain = plist(module, param)
            if len(chain) == 1:
                _own_class(module)
                parametrize.remove_parametrizations(module, param, leave_parametrized=False)
            else:
                del chain[0]
    return model
