"""`task:` as a mapping in a recipe: data files, a metric and training defaults, no code.

    task: {data: data.npz, metric: accuracy}
    task: {data: {train: train.csv, test: test.csv}, target: label, metric: mse}
    task: {data: images/, image_size: 32, metric: f1}
    task: {data: ds_dir/, text: sentence, tokenizer: tok_dir/, metric: accuracy}
    task: {text: "docs/*.txt", tokenizer: tok_dir/, metric: perplexity}   (`torchslim.tasks.text`)

Paths are relative to the working directory. Validation errors name the key and line like the rest of
the recipe (`recipe.parse_recipe` validates the mapping with `DataTaskSpec`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from torchslim.errors import UserError
from torchslim.tasks.metrics import METRICS
from torchslim.tasks.protocol import Task
from torchslim.tasks.readers import READERS, Raw, describe, guess_format
from torchslim.tasks.tensors import Defaults, Split, TensorTask, rows, select
from torchslim.zoo.base import holdout_split


class DataTaskSpec(BaseModel):
    """A task read from data files; only `data` is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str | dict[str, str]
    """A `.npz` or `.safetensors` file of x_train, y_train, x_test, y_test (x_val, y_val optional), a
    CSV file or `{train: a.csv, test: b.csv}`, an image folder of class sub-folders, or a `datasets`
    directory written by `save_to_disk`."""
    format: Literal["auto", "npz", "safetensors", "csv", "images", "datasets"] = "auto"
    """How to read `data`; `auto` goes by the suffix or by what the directory holds."""
    metric: str = "accuracy"
    """accuracy, top_k_accuracy, f1 (macro), mse, mae, perplexity (these three: lower is better), cosine."""
    name: str | None = None
    """Task name in reports (default: the data file's name)."""
    target: str = "label"
    """The target column (CSV and `datasets`)."""
    features: list[str] | None = None
    """Feature columns (CSV and `datasets`; default: every column but the target)."""
    text: str | None = None
    """A `datasets` text column to tokenize with `tokenizer` (inputs become input_ids, attention_mask)."""
    tokenizer: str | None = None
    """A local tokenizer directory (`AutoTokenizer.from_pretrained`)."""
    max_length: int = Field(128, ge=2)
    """Tokens per text at most."""
    image_size: int | tuple[int, int] | None = None
    """Images are resized to this (height, width); default: the size of the first image."""
    channels: Literal[1, 3] = 3
    """1 reads images as grayscale, 3 as RGB."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of the rows held out as the test split when the data has no test split."""
    top_k: int = Field(5, ge=1)
    """k of `top_k_accuracy`."""
    batch_size: int = Field(64, ge=1)
    """Training batch size of `finetune` and `distill` (a stage's `batch_size` overrides it)."""
    eval_batch_size: int = Field(256, ge=1)
    calibration_batch_size: int | None = Field(None, ge=1)
    """Batch size of calibration batches (default: `batch_size`); stages choose how many batches."""
    lr: float = Field(1e-3, gt=0, le=10)
    """Peak learning rate of `finetune` and `distill` when the stage gives none."""

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"train", "test", "val"})
            if unknown or "train" not in value:
                raise ValueError(
                    "split files are a mapping {train: FILE, test: FILE, val: FILE} (train required; "
                    "without test, `test_fraction` of the training rows are held out)"
                )
            if not all(isinstance(v, str) for v in value.values()):
                raise ValueError("each split is a file path")
        elif not isinstance(value, str) or not value:
            raise ValueError("a file or directory path, or {train: FILE, test: FILE}")
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        if name not in METRICS:
            raise ValueError(METRICS.unknown_message(name))
        return name


def spec_class(data: dict[str, Any]) -> type[BaseModel]:
    """The schema of a task mapping: text files to model (`text:` without `data:`), or data files."""
    if "data" not in data and "text" in data:
        from torchslim.tasks.text import TextTaskSpec

        return TextTaskSpec
    return DataTaskSpec


def parse_task_spec(data: dict[str, Any]) -> BaseModel:
    return spec_class(data).model_validate(data)


def build_task(spec: BaseModel) -> Task:
    """Read the files and make the task; every problem with the data is a UserError naming the file."""
    if not isinstance(spec, DataTaskSpec):
        from torchslim.tasks.text import TextTaskSpec, build_text_task

        assert isinstance(spec, TextTaskSpec)
        return build_text_task(spec)
    return _build_data_task(spec)


def _build_data_task(spec: DataTaskSpec) -> TensorTask:
    data = spec.data
    fmt = guess_format(data) if spec.format == "auto" else spec.format
    raw = READERS.get(fmt)(spec)
    if "test" not in raw:
        raw = _split_off_test(raw, spec.test_fraction)
    kind = METRICS.get(spec.metric).target
    classes = _classes(raw) if kind == "class" else None
    splits = {s: Split(_inputs(x), _targets(t, kind, classes, s)) for s, (x, t) in raw.items()}
    defaults = Defaults(
        batch_size=spec.batch_size,
        eval_batch_size=spec.eval_batch_size,
        calibration_batch_size=spec.calibration_batch_size,
        lr=spec.lr,
        top_k=spec.top_k,
    )
    info: dict[str, Any] = {"format": fmt, "data": data, "splits": describe(raw)}
    if classes is not None:
        info["classes"] = classes
    return TensorTask(spec.name or _name(data), splits, spec.metric, defaults, info)


def _split_off_test(raw: Raw, fraction: float) -> Raw:
    x, t = raw["train"]
    n = rows(x) if isinstance(x, (dict, torch.Tensor)) else len(x)
    train, test = holdout_split(n, fraction)
    pick = (lambda v, i: [v[j] for j in i.tolist()]) if isinstance(t, list) else (lambda v, i: v[i])
    return {**raw, "train": (select(x, train), pick(t, train)), "test": (select(x, test), pick(t, test))}


def _classes(raw: Raw) -> list[Any] | None:
    """Class names when targets are labels that are not already integers 0..C-1 (strings, say)."""
    labels = raw["train"][1]
    if isinstance(labels, torch.Tensor):
        return None
    if all(_is_int(v) for v in labels):
        return None
    return sorted({str(v) for v in labels})


def _is_int(v: Any) -> bool:
    try:
        return float(v) == int(float(v))
    except (TypeError, ValueError):
        return False


def _inputs(x: Any) -> Any:
    """Floats as float32; int64 (token ids) kept; other integer types (uint8 pixels) become float32."""
    if isinstance(x, dict):
        return {k: _inputs(v) for k, v in x.items()}
    return x if x.dtype == torch.int64 else x.to(torch.float32)


def _targets(t: Any, kind: str, classes: list[Any] | None, split: str) -> torch.Tensor:
    if kind == "tokens":
        return torch.as_tensor(t, dtype=torch.int64)
    if kind == "value":
        return torch.as_tensor(
            t if isinstance(t, torch.Tensor) else [float(v) for v in t], dtype=torch.float32
        )
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(v) for v in t} - set(index))
        if unknown:
            raise UserError(f"task.data: {split} split has label {unknown[0]!r} not seen in training")
        return torch.tensor([index[str(v)] for v in t], dtype=torch.int64)
    values = t if isinstance(t, torch.Tensor) else torch.tensor([int(float(v)) for v in t])
    if values.is_floating_point() and not bool((values == values.round()).all()):
        raise UserError(f"task.data: {split} targets are not class numbers; use metric mse or mae for values")
    return values.to(torch.int64).reshape(-1)


def _name(data: str | dict[str, str]) -> str:
    return Path(data if isinstance(data, str) else data["train"]).stem or "data"
