"""Hugging Face checkpoints in and out, with what causal language models need.

In (`model: hf:PATH`): a local directory holding `config.json` and safetensors weights, one file or
shards with `model.safetensors.index.json`. Only transformers' own code runs: a config that asks for
remote code (`auto_map`) is refused, as are pickled weights (`pytorch_model.bin`) and anything that
would reach the hub. The class is the config's `architectures[0]`; without one, a causal LM for a
`model_type` transformers knows (else the bare `AutoModel`). Weights load as float32, the type every
method here computes in on CPU.

Out (format `hf`): the tokenizer files of the checkpoint a model came from are copied by `hf_files`;
a zoo model (`llama-pydocs`) has no checkpoint, so its task's tokenizer is written instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import UserError

PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
MAX_CONFIG_BYTES = 1_000_000


def read_config(path: Path) -> dict[str, Any]:
    """`config.json` of a checkpoint directory, with every refusal as a UserError naming the fix."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"model 'hf:{path}': no config.json there (not a save_pretrained directory)")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"model 'hf:{path}': config.json is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"model 'hf:{path}': config.json is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"model 'hf:{path}': config.json is not a JSON object")
    if config.get("auto_map"):
        raise UserError(
            f"model 'hf:{path}': its config asks for custom code (auto_map); torchslim runs only "
            "transformers' own model classes (no trust_remote_code)"
        )
    return config


def check_weights(path: Path) -> None:
    """Safetensors weights present (one file or an index of shards); pickled-only checkpoints refused."""
    if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
        return
    pickled = [name for name in PICKLED if (path / name).exists()]
    if pickled:
        raise UserError(
            f"model 'hf:{path}': only {pickled[0]} (pickle) is there; torchslim reads safetensors only. "
            "Convert it once where you trust the file: model.save_pretrained(dir, safe_serialization=True)"
        )
    raise UserError(f"model 'hf:{path}': no model.safetensors or model.safetensors.index.json there")


def model_class(path: Path, config: dict[str, Any]) -> Any:
    """The transformers class that `config` names, or the Auto class its `model_type` maps to."""
    import transformers

    names = config.get("architectures") or []
    if names:
        cls = getattr(transformers, str(names[0]), None)
        if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
            raise UserError(
                f"model 'hf:{path}': transformers {transformers.__version__} has no class {names[0]!r} "
                "(config architectures)"
            )
        return cls
    model_type = config.get("model_type")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM
    if model_type in MODEL_MAPPING_NAMES:
        return transformers.AutoModel
    raise UserError(
        f"model 'hf:{path}': config.json names no architectures and model_type {model_type!r} is not one "
        f"transformers {transformers.__version__} knows"
    )


def load(path: Path) -> nn.Module:
    """The checkpoint as its transformers class, in eval mode (see the module docstring)."""
    config = read_config(path)
    check_weights(path)
    cls = model_class(path, config)
    from safetensors import SafetensorError

    try:
        model = cls.from_pretrained(
            str(path),
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            dtype=torch.float32,
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"model 'hf:{path}': transformers could not load it ({first})") from None
    return model.eval()


# -- out ------------------------------------------------------------------------------------------
def write_tokenizer(model: nn.Module, dest: Path) -> dict[str, Any]:
    """For a zoo model (which no checkpoint directory came with), its task's tokenizer written into
    `dest` with `save_pretrained`; notes for `torchslim.json` (empty when there is none)."""
    from torchslim import io, zoo

    source = io.record_of(model).source or {}
    name = source.get("name")
    if source.get("kind") != "zoo" or not isinstance(name, str) or name not in zoo.TASKS:
        return {}
    tokenizer: Any = getattr(zoo.get(name), "tokenizer", None)
    if not hasattr(tokenizer, "save_pretrained"):
        return {}
    before = {p.name for p in dest.iterdir()}
    tokenizer.save_pretrained(str(dest))
    return {
        "tokenizer_files": {
            "from": f"zoo:{name}",
            "copied": sorted({p.name for p in dest.iterdir()} - before),
        }
    }
