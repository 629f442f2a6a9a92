"""Readers of the data files a recipe's task mapping names; each returns raw splits of tensors.

A reader returns `{split: (inputs, targets)}` with split names `train`, `test` and optionally `val`;
`spec.build_task` turns the targets into what the metric needs and splits off a test set if absent.
Every failure is a UserError that names the file and what to change.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchslim.errors import UserError
from torchslim.registry import Registry

if TYPE_CHECKING:
    from torchslim.tasks.spec import DataTaskSpec

Raw = dict[str, tuple[Any, Any]]
"""split -> (inputs: tensor or dict of tensors, targets: tensor or list of labels)."""
READERS: Registry[Callable[[DataTaskSpec], Raw]] = Registry("data format")
SPLITS = {"train": "train", "test": "test", "val": "val", "validation": "val"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _arrays_to_raw(arrays: dict[str, torch.Tensor], source: Path) -> Raw:
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise UserError(
            f"{source}: missing arrays {', '.join(missing)} (expected x_train, y_train, x_test, y_test, "
            f"optionally x_val, y_val; found {', '.join(sorted(arrays)) or 'none'})"
        )
    return {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test", "val") if f"x_{s}" in arrays}


@READERS.register("npz")
def read_npz(spec: DataTaskSpec) -> Raw:
    path = _file(spec.data)
    try:
        with np.load(path, allow_pickle=False) as npz:  # object arrays would need a pickle: refused
            arrays = {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: cannot read as .npz of numeric arrays ({exc})") from None
    return _arrays_to_raw(arrays, path)


@READERS.register("safetensors")
def read_safetensors(spec: DataTaskSpec) -> Raw:
    from safetensors.torch import load_file

    path = _file(spec.data)
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a malformed header
        raise UserError(f"{path}: cannot read as safetensors ({exc})") from None
    return _arrays_to_raw(arrays, path)


@READERS.register("csv")
def read_csv(spec: DataTaskSpec) -> Raw:
    files = spec.data if isinstance(spec.data, dict) else {"train": spec.data}
    out: Raw = {}
    features: list[str] | None = spec.features
    for split in sorted(files, key=lambda s: s != "train"):  # train first: its columns are the features
        name = files[split]
        header, table = _csv_table(_file(name))
        features = features or [c for c in header if c != spec.target]
        for col in [spec.target, *features]:
            if col not in header:
                raise UserError(f"{name}: no column {col!r} (columns: {', '.join(header)})")
        index = [header.index(c) for c in features]
        x = torch.tensor([[_number(row[i], name, header[i], n) for i in index] for n, row in table])
        out[SPLITS[split]] = (x, [row[header.index(spec.target)] for _, row in table])
    return out


def _csv_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise UserError(f"{path}: empty CSV; the first row must name the columns")
        table = [(n, row) for n, row in enumerate(reader, start=2) if row]
    if not table:
        raise UserError(f"{path}: no data rows under the header")
    for n, row in table:
        if len(row) != len(header):
            raise UserError(f"{path}, line {n}: {len(row)} fields where the header names {len(header)}")
    return [h.strip() for h in header], table


def _number(text: str, path: str, column: str, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(
            f"{path}, line {line}: column {column!r} is not numeric ({text!r}); feature columns must be "
            "numbers: list the numeric ones under `features:`"
        ) from None


@READERS.register("images")
def read_images(spec: DataTaskSpec) -> Raw:
    """`DIR/<class>/*.png` (split by `test_fraction`), or `DIR/train/<class>/...` and
    `DIR/test/<class>/...` (and `DIR/val/...`)."""
    root = _dir(spec.data)
    splits = {SPLITS[p.name]: p for p in root.iterdir() if p.is_dir() and p.name in SPLITS}
    if "train" in splits and "test" not in splits:
        raise UserError(f"{root}: has train/ but no test/ (add test/, or put the class folders at the top)")
    parts = splits or {"train": root}
    classes = sorted(p.name for p in parts["train"].iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"{parts['train']}: expected one sub-folder per class (found {len(classes)})")
    size = _image_size(spec, parts["train"], classes)
    out: Raw = {}
    for split, folder in parts.items():
        images, labels = [], []
        for label in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            if label not in classes:
                raise UserError(f"{folder / label}: class {label!r} is not among the training classes")
            for file in sorted(f for f in (folder / label).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
                images.append(_image(file, size, spec.channels))
                labels.append(classes.index(label))
        if not images:
            raise UserError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
        out[split] = (torch.stack(images), torch.tensor(labels))  # class i is the i-th folder name, sorted
    return out


def _image_size(spec: DataTaskSpec, folder: Path, classes: list[str]) -> tuple[int, int]:
    if spec.image_size is not None:
        s = spec.image_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])
    from PIL import Image

    for label in classes:
        for file in sorted((folder / label).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(file) as im:
                    return im.height, im.width  # every image is resized to the first one's size
    raise UserError(f"{folder}: no images in the class folders")


def _image(file: Path, size: tuple[int, int], channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            mode = "L" if channels == 1 else "RGB"
            resized = im.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(resized, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{file}: cannot read the image ({exc})") from None
    t = torch.from_numpy(array.copy())
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)


@READERS.register("datasets")
def read_datasets(spec: DataTaskSpec) -> Raw:
    """A Hugging Face `datasets` directory written by `save_to_disk` (a DatasetDict of splits)."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            "reading a `datasets` directory needs the `datasets` package: pip install 'torchslim[data]'"
        ) from None
    root = _dir(spec.data)
    try:
        loaded = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{root}: not a directory written by save_to_disk ({exc})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    unknown = sorted(set(loaded) - set(SPLITS))
    if unknown:
        raise UserError(f"{root}: unknown split {unknown[0]!r} (use train, test and validation)")
    tokenizer = _tokenizer(spec.tokenizer) if spec.text else None
    return {SPLITS[name]: _dataset_split(ds, spec, tokenizer, root) for name, ds in loaded.items()}


def _dataset_split(ds: Any, spec: DataTaskSpec, tokenizer: Any, root: Path) -> tuple[Any, Any]:
    columns = list(ds.column_names)
    if spec.text is not None:
        if spec.text not in columns:
            raise UserError(f"{root}: no text column {spec.text!r} (columns: {', '.join(columns)})")
        tokens = tokenizer(
            list(ds[spec.text]),
            padding="longest",
            truncation=True,
            max_length=spec.max_length,
            return_tensors="pt",
        )
        inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        if spec.metric == "perplexity":
            return inputs, tokens["input_ids"].masked_fill(tokens["attention_mask"] == 0, -100)
        return inputs, _column(ds, spec.target, root)
    features = spec.features or [c for c in columns if c != spec.target]
    missing = [c for c in features if c not in columns]
    if missing:
        raise UserError(f"{root}: no column {missing[0]!r} (columns: {', '.join(columns)})")
    x = [torch.as_tensor(np.asarray(ds[c], dtype=np.float32)) for c in features]
    x = [t.reshape(len(t), -1) for t in x]
    return torch.cat(x, dim=1) if len(x) > 1 else x[0], _column(ds, spec.target, root)


def _column(ds: Any, name: str, root: Path) -> list[Any]:
    if name not in ds.column_names:
        raise UserError(f"{root}: no target column {name!r} (columns: {', '.join(ds.column_names)})")
    return list(ds[name])


def _tokenizer(path: str | None) -> Any:
    if path is None:
        raise UserError("task.tokenizer: a text column needs a tokenizer (a local tokenizer directory)")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"task.tokenizer: cannot load a tokenizer from {path!r} ({exc})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _file(name: Any) -> Path:
    path = Path(str(name))
    if not path.is_file():
        raise UserError(f"task.data: no such file {path} (paths are relative to the working directory)")
    return path


def _dir(name: Any) -> Path:
    path = Path(str(name))
    if not path.is_dir():
        raise UserError(f"task.data: no such directory {path} (paths are relative to the working directory)")
    return path


def guess_format(data: str | dict[str, str]) -> str:
    """The reader for `data`: by file suffix, or by what a directory holds."""
    if isinstance(data, dict):
        return "csv"
    path = Path(data)
    by_suffix = {".npz": "npz", ".safetensors": "safetensors", ".csv": "csv"}
    if path.suffix.lower() in by_suffix:
        return by_suffix[path.suffix.lower()]
    if path.is_dir():
        marks = ("dataset_dict.json", "dataset_info.json", "state.json")
        return "datasets" if any((path / m).is_file() for m in marks) else "images"
    raise UserError(
        f"task.data: cannot tell the format of {data!r} (.npz, .safetensors, .csv, an image folder or a "
        "save_to_disk directory); set `format:`"
    )


def describe(raw: Raw) -> dict[str, Any]:
    return {s: {"rows": len(t), "inputs": _shape(x)} for s, (x, t) in raw.items()}


def _shape(x: Any) -> Any:
    return {k: list(v.shape) for k, v in x.items()} if isinstance(x, dict) else list(x.shape)


__all__ = ["READERS", "describe", "guess_format"]
