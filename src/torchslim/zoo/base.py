"""The embedded task interface: a trained baseline, real data and a metric, all offline.

A task trains its baseline once (fixed seeds) and caches the weights as safetensors under
`$XDG_CACHE_HOME/torchslim/<task>-<code hash>/`, so editing a task's code retrains it.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from torchslim.atomic import temp_dir_beside
from torchslim.io import set_source
from torchslim.tasks.protocol import Task as PublicTask

HOLDOUT_SEED = 97


def holdout_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) indices of n examples: a fixed random `fraction` is held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    k = round(fraction * n)
    return order[k:].sort().values, order[:k].sort().values


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torchslim"


class Task(PublicTask):
    """A zoo task: the public `torchslim.Task` plus an architecture (`make`) and a baseline trained
    once from fixed seeds and cached."""

    name: str

    @abc.abstractmethod
    def make(self, **kwargs: Any) -> nn.Module:
        """An untrained model of the task's architecture (`width` scales channel counts)."""

    def build(self, **kwargs: Any) -> nn.Module:
        """`make`, tagged so that `ts.save`/`ts.load` can rebuild it as `zoo:<name>` with these kwargs."""
        return set_source(self.make(**kwargs), "zoo", name=self.name, kwargs=kwargs)

    @abc.abstractmethod
    def train_baseline(self, model: nn.Module) -> None:
        """Train `model` in place from its fixed-seed initialisation."""

    @abc.abstractmethod
    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """The training loss used by fine-tuning (and the hard-label term of distillation)."""

    # -- the cached baseline -------------------------------------------------------------------
    def code_hash(self) -> str:
        """Hash of the source of every torchslim module the task's classes live in."""
        modules = dict.fromkeys(
            c.__module__ for c in type(self).__mro__ if c.__module__.startswith("torchslim")
        )
        source = "".join(inspect.getsource(sys.modules[m]) for m in modules)
        return hashlib.sha256(source.encode()).hexdigest()[:12]

    def cache_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.code_hash()}"

    def model(self) -> nn.Module:
        """The trained baseline, a fresh copy per call (trained on first use, then read from cache)."""
        weights = self.cache_dir() / "model.safetensors"
        if not weights.exists():
            self._train_and_cache(weights)
        model = self.build()
        model.load_state_dict(load_file(str(weights)))
        return model.eval()

    def _train_and_cache(self, weights: Path) -> None:
        torch.manual_seed(0)
        model = self.build()
        self.train_baseline(model)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        with temp_dir_beside(weights.parent) as tmp:
            save_file(state, str(tmp / weights.name))
            # another process may have cached it first: its weights are equal, keep them
            with contextlib.suppress(OSError):
                tmp.rename(weights.parent)
