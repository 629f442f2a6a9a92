"""`task: {text: PATH_OR_GLOB, tokenizer: PATH, metric: perplexity}`: causal language modelling on the
user's own text files, scored exactly like the `llama-pydocs` zoo task (`torchslim.tasks.lm`).

`text` is a file, a directory (its `*.txt` and `*.md` files, recursively), a glob, or a mapping
`{train: ..., test: ..., val: ...}` of those. Without a test split, `test_fraction` of the files
(a fixed random choice, at least one) is held out; a single file is split instead by its token
windows, the last `test_fraction` of them. Files are read as UTF-8 with bounded sizes.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator

from torchslim.errors import UserError
from torchslim.tasks import lm
from torchslim.tasks.metrics import logits_of, next_token_loss
from torchslim.tasks.protocol import Task
from torchslim.zoo.base import holdout_split

MAX_FILES = 10_000
MAX_TOTAL_BYTES = 64 << 20
SUFFIXES = (".txt", ".md")


class TextTaskSpec(BaseModel):
    """Text files, a tokenizer and windows; `text` and `tokenizer` are required."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str | dict[str, str]
    """A file, a directory (its .txt and .md files), a glob, or {train: ..., test: ..., val: ...}."""
    tokenizer: str
    """A local tokenizer directory (`AutoTokenizer.from_pretrained`, offline); it needs a BOS or EOS token."""
    metric: Literal["perplexity"] = "perplexity"
    """Token-level perplexity (lower is better), defined in `torchslim.tasks.lm`."""
    name: str | None = None
    window: int = Field(256, ge=2, le=32768)
    """Tokens per window, BOS included."""
    test_fraction: float = Field(0.1, gt=0, lt=1)
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int = Field(8, ge=1)
    calibration_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0, le=10)
    """Peak learning rate of `finetune` and `distill` when the stage gives none."""

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"train", "test", "val"})
            if unknown or "train" not in value or not all(isinstance(v, str) and v for v in value.values()):
                raise ValueError(
                    "split texts are a mapping {train: GLOB, test: GLOB, val: GLOB} (train required)"
                )
        elif not isinstance(value, str) or not value:
            raise ValueError("a file, directory or glob of text files, or {train: GLOB, test: GLOB}")
        return value


def files_of(pattern: str, what: str) -> list[Path]:
    """The files `pattern` names, sorted; a UserError when there are none or too many."""
    path = Path(pattern)
    if path.is_file():
        found = [path]
    elif path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    else:
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not found:
        raise UserError(
            f"{what}: no text files match {pattern!r} (paths are relative to the working directory)"
        )
    if len(found) > MAX_FILES:
        raise UserError(f"{what}: {len(found)} files match {pattern!r}, more than the {MAX_FILES} accepted")
    return found


def read_texts(files: list[Path], what: str, budget: list[int]) -> list[str]:
    """The files' UTF-8 text; `budget` (bytes left, shared by all splits) bounds what is read."""
    texts = []
    for file in files:
        size = file.stat().st_size
        if size > budget[0]:
            raise UserError(f"{what}: the text files add up to more than {MAX_TOTAL_BYTES} bytes (at {file})")
        budget[0] -= size
        data = file.read_bytes()
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"{what}: {file} is not UTF-8 text (byte offset {exc.start})") from None
    return texts


def _special_ids(tok: Any, path: str) -> tuple[int, int]:
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id if tok.eos_token_id is not None else bos
    if bos is None:
        raise UserError(f"task.tokenizer: the tokenizer in {path!r} has neither a BOS nor an EOS token")
    return int(bos), int(eos)


def build_text_task(spec: TextTaskSpec) -> TextTask:
    """Read and tokenize the files into windows; every problem is a UserError naming the key."""
    from torchslim.tasks.readers import _tokenizer

    tok = _tokenizer(spec.tokenizer)
    bos, eos = _special_ids(tok, spec.tokenizer)
    patterns = spec.text if isinstance(spec.text, dict) else {"train": spec.text}
    budget = [MAX_TOTAL_BYTES]
    files = {
        s: files_of(p, f"task.text.{s}" if isinstance(spec.text, dict) else "task.text")
        for s, p in patterns.items()
    }
    if "test" not in files and len(files["train"]) > 1:
        test = holdout_split(len(files["train"]), spec.test_fraction)[1]
        index = test if len(test) else torch.tensor([len(files["train"]) - 1])
        keep = sorted(set(range(len(files["train"]))) - set(index.tolist()))
        files["test"] = [files["train"][i] for i in index.tolist()]
        files["train"] = [files["train"][i] for i in keep]
    chunks = {}
    for split, paths in files.items():
        stream = lm.token_stream(tok, read_texts(paths, "task.text", budget), eos)
        chunks[split] = lm.windows(stream, spec.window, bos)
    if "test" not in chunks:  # one file: its last windows are the test split
        n = len(chunks["train"])
        k = max(1, round(spec.test_fraction * n))
        if n < 2:
            raise UserError("task.text: one window of text is too little to hold out a test split; add text")
        chunks["train"], chunks["test"] = chunks["train"][: n - k], chunks["train"][n - k :]
    name = spec.name or _name(patterns["train"])
    return TextTask(name, chunks, spec, tok)


def _name(pattern: str) -> str:
    """The file's stem, or for a glob the last folder before the first wildcard."""
    plain = [part for part in Path(pattern).parts if not glob.has_magic(part)]
    if len(plain) == len(Path(pattern).parts):
        return Path(pattern).stem or "text"
    return Path(*plain).name if plain else "text"


class TextTask(Task):
    """Windows of token ids per split; see the module docstring."""

    metric = "perplexity"
    higher_is_better = False
    outputs = "logits"

    def __init__(
        self, name: str, chunks: dict[str, list[torch.Tensor]], spec: TextTaskSpec, tokenizer: Any
    ) -> None:
        self.name, self.chunks, self.spec, self.tokenizer = name, chunks, spec, tokenizer
        self.lr = spec.lr
        self.info = {"windows": {s: len(c) for s, c in chunks.items()}, "window": spec.window}

    def _rows(self, split: str) -> torch.Tensor:
        chunks = self.chunks[split]
        rows = lm.full_windows(chunks, self.spec.window)
        if not len(rows) and chunks:  # text shorter than one window: its one window
            rows = chunks[0].unsqueeze(0)
        return rows

    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True, holdout: float = 0.0
    ) -> lm.WindowBatches:
        rows = self._rows("train")
        if holdout and "val" not in self.chunks:
            rows = rows[holdout_split(len(rows), holdout)[0]]
        return lm.WindowBatches(rows, batch_size or self.spec.batch_size, seed)

    def calibration_loader(self, batches: int = 8, batch_size: int | None = None) -> list[Any]:
        return super().calibration_loader(
            batches, batch_size or self.spec.calibration_batch_size or self.spec.batch_size
        )

    def test_loader(self, batch_size: int | None = None) -> lm.WindowBatches:
        return lm.WindowBatches(self._rows("test"), batch_size or self.spec.eval_batch_size)

    @property
    def example_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self._rows("test")[:2]}

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return next_token_loss(logits_of(output), target)

    def evaluate(self, model: nn.Module) -> float:
        return lm.perplexity(model, self.chunks["test"], self.spec.eval_batch_size)

    def perplexity(self, model: nn.Module, texts: list[str] | None = None) -> float:
        """The test split's perplexity, or that of `texts` (each followed by the end token)."""
        if texts is None:
            return self.evaluate(model)
        bos, eos = _special_ids(self.tokenizer, self.spec.tokenizer)
        chunks = lm.windows(lm.token_stream(self.tokenizer, texts, eos), self.spec.window, bos)
        return lm.perplexity(model, chunks, self.spec.eval_batch_size)

    def validate(self, model: nn.Module, holdout: float) -> float:
        if "val" in self.chunks:
            return lm.perplexity(model, self.chunks["val"], self.spec.eval_batch_size)
        rows = self._rows("train")
        held = rows[holdout_split(len(rows), holdout)[1]]
        return lm.perplexity(model, list(held), self.spec.eval_batch_size)
