"""`llama-pydocs`: a small Llama (grouped-query attention, RMSNorm, SwiGLU, tied embeddings) trained
from scratch on the docstrings of Python's standard library.

Corpus and split: `torchslim.zoo.text.corpus` (by module, fixed rule); tokenizer: a 4,096-entry
byte-level BPE trained on the training modules only (`torchslim.zoo.text.tokenizer`). Metric:
token-level perplexity on the test modules in windows of 256 tokens (BOS + 255, stride 255; exact
definition in `torchslim.tasks.lm`), lower is better; `topics_perplexity` scores `pydoc_data.topics`,
a second held-out text. The baseline trains once (fixed seed, fixed data order, `STEPS` AdamW steps)
and is cached with its training curve and final perplexities (`training.json`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from torchslim.atomic import temp_dir_beside
from torchslim.tasks import lm
from torchslim.tasks.metrics import logits_of, next_token_loss
from torchslim.zoo.base import Task, cache_root
from torchslim.zoo.text import corpus
from torchslim.zoo.text import tokenizer as bpe

log = logging.getLogger(__name__)

VOCAB = 4096
WINDOW = 256
ARCH = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
TRAIN_BATCH = 16
CALIBRATION_BATCH = 8
STEPS = 150  # ~0.6 M tokens (1.5 epochs): what 2 shared cores train in a sitting
WARMUP = 15
LR = 3e-3
MIN_LR_FRACTION = 0.1
WEIGHT_DECAY = 0.1
CURVE_EVERY = 25
TIED = frozenset({"lm_head.weight"})
CURVE_WINDOWS = 16  # validation windows scored at each curve point (all of them at the end)


class LlamaPydocs(Task):
    name = "llama-pydocs"
    metric = "perplexity"
    higher_is_better = False
    outputs = "logits"
    lr = 5e-4

    # -- data ------------------------------------------------------------------------------------
    @functools.cached_property
    def documents(self) -> dict[str, list[corpus.Document]]:
        """The corpus's train / val / test modules."""
        return corpus.splits(corpus.cached())

    def texts(self, split: str) -> list[str]:
        return [d.text for d in self.documents[split]]

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The byte-level BPE tokenizer (a transformers `PreTrainedTokenizerFast`)."""
        return bpe.cached(self.texts("train"), VOCAB, cache_root())

    def windows(self, texts: list[str]) -> list[torch.Tensor]:
        tok = self.tokenizer
        return lm.windows(lm.token_stream(tok, texts, tok.eos_token_id), WINDOW, tok.bos_token_id)

    @functools.cached_property
    def _streams(self) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        return {s: lm.token_stream(tok, self.texts(s), tok.eos_token_id) for s in ("train", "val", "test")}

    def _windows(self, split: str, offset: int = 0) -> list[torch.Tensor]:
        return lm.windows(self._streams[split], WINDOW, self.tokenizer.bos_token_id, offset)

    @functools.cached_property
    def test_windows(self) -> list[torch.Tensor]:
        return self._windows("test")

    # -- the Task protocol -----------------------------------------------------------------------
    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True, holdout: float = 0.0
    ) -> lm.WindowBatches:
        """Full windows of the training modules, shuffled by `seed`; with `augment` the cut starts at a
        seed-chosen offset, so each epoch sees other window edges. `holdout` is ignored: `validate`
        scores the validation modules."""
        offset = random.Random(seed).randrange(WINDOW - 1) if augment else 0
        rows = lm.full_windows(self._windows("train", offset), WINDOW)
        return lm.WindowBatches(rows, batch_size or TRAIN_BATCH, seed)

    def calibration_loader(self, batches: int = 8, batch_size: int | None = None) -> list[Any]:
        """`batches` batches of `batch_size` (default 8) training windows of 256 tokens, fixed order."""
        return super().calibration_loader(batches, batch_size or CALIBRATION_BATCH)

    def test_loader(self, batch_size: int | None = None) -> lm.WindowBatches:
        """The full test windows in order (the short last one is scored by `evaluate` only)."""
        return lm.WindowBatches(lm.full_windows(self.test_windows, WINDOW), batch_size or TRAIN_BATCH)

    @property
    def example_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": lm.full_windows(self.test_windows, WINDOW)[:2]}

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return next_token_loss(logits_of(output), target)

    def evaluate(self, model: nn.Module) -> float:
        """Perplexity on the test modules."""
        return self.perplexity(model)

    def perplexity(self, model: nn.Module, texts: list[str] | None = None) -> float:
        """Token-level perplexity on the test modules, or on `texts` (each ends with the end token)."""
        if isinstance(texts, str):
            texts = [texts]
        return lm.perplexity(model, self.test_windows if texts is None else self.windows(list(texts)))

    def topics_perplexity(self, model: nn.Module) -> float:
        """Perplexity on `pydoc_data.topics`, a held-out text of another kind (the language reference)."""
        return self.perplexity(model, corpus.topics())

    def validate(self, model: nn.Module, holdout: float) -> float:
        """Perplexity on the validation modules."""
        return lm.perplexity(model, self._windows("val"))

    # -- the model -------------------------------------------------------------------------------
    def make(self, width: float = 1.0, layers: int | None = None, **overrides: Any) -> nn.Module:
        """A LlamaForCausalLM with random weights: `width` scales the MLP size, `layers` sets the depth,
        other keywords override fields of the LlamaConfig."""
        from transformers import LlamaConfig, LlamaForCausalLM

        fields: dict[str, Any] = {**ARCH, "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0}
        fields["intermediate_size"] = max(1, round(ARCH["intermediate_size"] * width))
        if layers is not None:
            fields["num_hidden_layers"] = layers
        unknown = sorted(set(overrides) - set(LlamaConfig().to_dict()))
        if unknown:  # LlamaConfig would keep them as attributes that nothing reads
            raise TypeError(f"llama-pydocs: unknown LlamaConfig fields {unknown}")
        fields.update(overrides)
        return LlamaForCausalLM(LlamaConfig(**fields))

    def cache_dir(self) -> Path:
        """Keyed by the code and by the corpus: another Python's docstrings train another model."""
        return cache_root() / f"{self.name}-{self.code_hash()}-{corpus.digest(corpus.cached())}"

    def training_log(self) -> dict[str, Any]:
        """The curve of the cached baseline: validation perplexity every `CURVE_EVERY` steps."""
        self.model()
        return dict(json.loads((self.cache_dir() / "training.json").read_text()))

    def model(self) -> nn.Module:
        """The trained baseline, a fresh copy per call (trained on first use, then read from cache)."""
        weights = self.cache_dir() / "model.safetensors"
        if not weights.exists():
            self._train_and_cache(weights)
        model = self.build()
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if unexpected or set(missing) - TIED:
            raise RuntimeError(
                f"{weights}: does not match the model (missing {missing}, unexpected {unexpected})"
            )
        return model.eval()

    def _train_and_cache(self, weights: Path) -> None:
        """As the base class, plus `training.json` (the curve, final perplexities) beside the weights."""
        torch.manual_seed(0)
        model = self.build()
        summary = self.train_summary(model)
        state = unique_state(model)
        with temp_dir_beside(weights.parent) as tmp:
            save_file(state, str(tmp / weights.name))
            (tmp / "training.json").write_text(json.dumps(summary, indent=1))
            with contextlib.suppress(OSError):  # another process cached it first: equal weights, keep them
                tmp.rename(weights.parent)

    def train_baseline(self, model: nn.Module) -> None:
        """AdamW, linear warm-up then cosine decay to 10%, gradient clipping at 1; see the constants."""
        train_steps(model, self, STEPS, [])

    def train_summary(self, model: nn.Module, steps: int | None = None) -> dict[str, Any]:
        """Train like `train_baseline` (`STEPS` steps by default) and return the curve and the final
        perplexities."""
        steps = STEPS if steps is None else steps
        curve: list[dict[str, float]] = []
        train_steps(model, self, steps, curve)
        return {
            "steps": steps,
            "batch": TRAIN_BATCH,
            "window": WINDOW,
            "tokens": steps * TRAIN_BATCH * WINDOW,
            "params": sum(p.numel() for p in model.parameters()),
            "curve": curve,
            "val_perplexity": self.validate(model, 0.0),
            "test_perplexity": self.perplexity(model),
        }


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once (safetensors refuses shared memory): the embedding
    is kept, `lm_head.weight` (the same tensor) is left out."""
    seen: set[int] = set()
    state = {}
    for key, value in model.state_dict().items():
        if value.data_ptr() in seen and key in TIED:
            continue
        seen.add(value.data_ptr())
        state[key] = value.detach().contiguous()
    return state


def lr_at(step: int, steps: int, peak: float = LR) -> float:
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95))


def train_steps(model: nn.Module, task: LlamaPydocs, steps: int, curve: list[dict[str, float]]) -> None:
    """`steps` optimizer steps over epochs of `task.train_loader(seed=epoch)`, appending curve points."""
    opt = _optimizer(model)
    val = task._windows("val")[:CURVE_WINDOWS]
    model.train()
    step, epoch, running = 0, 0, []
    while step < steps:
        for inputs, target in task.train_loader(seed=epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps)
            loss = task.loss(model(**inputs, use_cache=False), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running.append(float(loss.detach()))
            step += 1
            if step % CURVE_EVERY == 0 or step == steps:
                point = {
                    "step": step,
                    "train_loss": sum(running) / len(running),
                    "val_perplexity": lm.perplexity(model, val),
                }
                curve.append(point)
                log.info("llama-pydocs step %d: %s", step, point)
                model.train()
                running = []
            if step >= steps:
                break
        epoch += 1
    model.eval()
