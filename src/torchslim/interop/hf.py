"""Hugging Face transformers models: the `hf` source, the `hf` output format, `hf:PATH` models.

- Source `hf`: a transformers model is rebuilt from its architecture name (a class transformers
  exports) and its config as JSON; no code runs but transformers' own. `ts.save` records it for any
  `PreTrainedModel` that has no other source, so pruned and quantized transformers models save and
  load like zoo models (the `channel_prune` transform also restores the config fields it changed).
- Output `hf`: `OUT/hf/`, a `save_pretrained` directory that `AutoModel*.from_pretrained` loads with
  no size mismatch. The weights go through a fresh model of the same class built (on the meta device)
  from the pruned config, so a config that cannot describe the pruned shapes is a clear error here,
  not at load time. Quantized layers are written dequantized (float weights on the integer grid; the
  activation quantization is not representable and is dropped): `torchslim.json` in the directory says
  which, unless every quantized layer is a Linear compressed-tensors can describe: then the integers
  are written as they are in its format (`hf_compressed`), which transformers loads and runs. GPT-2's
  Conv1D layers, linearized for quantization, get their [in, out] layout back. The
  tokenizer and processor files of the checkpoint the model was loaded from are copied beside
  (`hf_files`; `torchslim.json` lists them); a zoo model without one gets its task's tokenizer
  (`hf_causal.write_tokenizer`). `hf:PATH` checkpoints load through `hf_causal.load`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, StringConstraints

from torchslim.atomic import replace_dir, temp_dir_beside
from torchslim.errors import ManifestError, UserError
from torchslim.interop import hf_compressed, hf_files
from torchslim.interop.hf_causal import write_tokenizer
from torchslim.io import set_source
from torchslim.manifest import SOURCE_PARAMS, Strict
from torchslim.prune.heads import config_problems, config_sizes
from torchslim.quant.conv1d import is_conv1d

SOURCE = "hf"
OUTPUT_DIR = "hf"
NOTES = "torchslim.json"


def is_transformers(model: nn.Module) -> bool:
    """A transformers `PreTrainedModel` (checked by class name: transformers is not imported here)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def record_source(model: nn.Module) -> bool:
    """Record the `hf` source of a transformers model that has none; False when it is not one."""
    if not is_transformers(model):
        return False
    config: Any = model.config
    set_source(
        model,
        SOURCE,
        architecture=type(model).__name__,
        config_class=type(config).__name__,
        config=json.loads(config.to_json_string(use_diff=False)),
    )
    return True


Identifier = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]


@SOURCE_PARAMS.register(SOURCE)
class HfSource(Strict):
    """A transformers class and config: `build` only instantiates PreTrainedModel classes."""

    kind: Literal["hf"]
    architecture: Identifier
    config_class: Identifier
    config: Annotated[dict[Annotated[str, StringConstraints(max_length=128)], Any], Field(max_length=1024)]


def build(architecture: str, config_class: str, config: dict[str, Any]) -> nn.Module:
    """The `hf` source: `transformers.<architecture>(transformers.<config_class>.from_dict(config))`."""
    import transformers

    cls: Any = getattr(transformers, architecture, None)
    cfg_cls: Any = getattr(transformers, config_class, None)
    if not (isinstance(cls, type) and is_transformers_class(cls) and hasattr(cfg_cls, "from_dict")):
        raise ManifestError(
            f"hf source names {architecture!r} / {config_class!r}, which this transformers "
            f"({transformers.__version__}) does not provide as a model and config class"
        )
    return set_source(
        cls(cfg_cls.from_dict(config)),
        SOURCE,
        architecture=architecture,
        config_class=config_class,
        config=config,
    )


def is_transformers_class(cls: type) -> bool:
    return any(c.__name__ == "PreTrainedModel" for c in cls.__mro__)


def load_pretrained(path: str | Path) -> nn.Module:
    """`model: hf:PATH`: a local checkpoint directory, as the class its config names (`hf_causal.load`)."""
    from torchslim.interop import hf_causal

    model = hf_causal.load(Path(path))
    record_source(model)
    return model


# -- the `hf` output format ---------------------------------------------------------------------
def require_transformers(model: nn.Module) -> None:
    if not is_transformers(model):
        raise UserError(
            f"output format 'hf' needs a transformers PreTrainedModel; this model is a {type(model).__name__}"
        )


def write_hf(model: nn.Module, example_inputs: Any, out_dir: Path) -> Path:
    """Write `OUT/hf/` with `save_pretrained` (see the module docstring)."""
    require_transformers(model)
    problems = config_problems(model)
    if problems:
        raise UserError(f"output format 'hf': {problems[0]}{_why_no_pruned_heads(model)}")
    dest = Path(out_dir) / OUTPUT_DIR
    source = hf_files.source_dir(model)
    why_not = hf_compressed.representable(model) if hf_compressed.quantized_layers(model) else "float"
    with temp_dir_beside(dest) as tmp:
        if why_not is None:
            notes = hf_compressed.save(model, tmp)
        else:
            fresh, notes = float_copy(model)
            fresh.save_pretrained(str(tmp))
            if notes:
                notes["compressed_tensors"] = f"not written: {why_not}"
        if source is not None:
            notes["tokenizer_files"] = hf_files.copy_files(source, tmp)
        else:
            notes.update(write_tokenizer(model, tmp))
        if notes:
            (tmp / NOTES).write_text(json.dumps(notes, indent=1))
        replace_dir(tmp, dest)
    return dest


def _why_no_pruned_heads(model: nn.Module) -> str:
    """transformers 4 recorded removed heads in `config.pruned_heads` (rebuilt by `prune_heads`);
    transformers 5 dropped both, so BERT's and GPT-2's configs can only hold all heads."""
    import transformers

    config: Any = model.config
    cut = any(
        key.startswith("=") and getattr(config, key[1:], None) != min(values)
        for key, values in config_sizes(model).items()
    )
    if not cut:
        return ""
    if hasattr(model, "prune_heads"):
        return " (the hf output does not write transformers 4's config.pruned_heads)"
    return f" (transformers {transformers.__version__} has no prune_heads / config.pruned_heads to record it)"


def float_copy(model: nn.Module) -> tuple[Any, dict[str, Any]]:
    """A plain transformers model of `model`'s class and config holding its float weights (quantized
    layers dequantized, masks applied), and notes on what was dequantized."""
    config = copy.deepcopy(model.config)
    with torch.device("meta"):
        fresh: Any = type(model)(config)
    state, dequantized = _float_state(model, fresh)
    _tie_or_untie(fresh, state)
    try:
        fresh.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise UserError(
            f"output format 'hf': the config does not describe the model's sizes ({exc})"
        ) from None
    fresh.eval()
    notes: dict[str, Any] = {}
    if dequantized:
        notes = {
            "dequantized": sorted(dequantized),
            "note": "quantized layers are stored as float weights on their integer grid; activation "
            "quantization is not part of this checkpoint (use the onnx or torchslim format for that)",
        }
    return fresh, notes


def _float_state(model: nn.Module, fresh: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    live = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    dequantized: set[str] = set()
    for key in fresh.state_dict():
        owner, _, name = key.rpartition(".")
        module = live.get(owner)
        if module is None:
            raise UserError(f"output format 'hf': the model has no module {owner!r} that {key!r} belongs to")
        value, quantized = _tensor(module, name)
        if value is None:
            raise UserError(f"output format 'hf': module {owner!r} has no tensor {name!r}")
        if quantized:
            dequantized.add(owner)
        if name == "weight" and is_conv1d(fresh.get_submodule(owner)) and not is_conv1d(module):
            value = value.t()  # linearized for quantization: back to Conv1D's [in, out]
        state[key] = value.detach().contiguous()
    return state, dequantized


def _tensor(module: nn.Module, name: str) -> tuple[torch.Tensor | None, bool]:
    """(float value of `module.<name>`, whether it came from a quantized layer)."""
    effective = getattr(module, "effective_weights", None)
    if callable(effective):
        value = dict(effective()).get(name)
        if value is not None:
            return value, True
    value = getattr(module, name, None)  # a parametrized (masked) weight comes out masked
    return (value, False) if isinstance(value, torch.Tensor) else (None, False)


def _tie_or_untie(fresh: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Tied embeddings stay tied when their values agree; quantized apart, they are written untied."""
    tied = getattr(fresh, "_tied_weights_keys", None)
    config: Any = fresh.config
    if not isinstance(tied, dict) or not getattr(config, "tie_word_embeddings", False):
        return
    for target, source in tied.items():
        if target in state and source in state:
            if torch.equal(state[target], state[source]):
                state[target] = state[source]
            else:
                config.tie_word_embeddings = False
