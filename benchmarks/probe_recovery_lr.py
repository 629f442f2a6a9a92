"""Probe: SparseGPT 50% on llama-pydocs, then recovery distillation on 5% of the baseline's tokens at
one peak lr, scored on the first 12 validation modules (cheaper than the test split; for choosing
the lr of `llm_sparse_recovery`, not a reported result of it).

    OMP_NUM_THREADS=1 PYTHONPATH=src:. python benchmarks/probe_recovery_lr.py 1e-4
"""

from __future__ import annotations

import copy
import sys
import time

import torchslim as ts
from benchmarks.bench_llm_sparse import _config, recover


def main(lr: float) -> None:
    task = ts.zoo.get("llama-pydocs")
    base = task.model().eval()
    texts = task.texts("val")[:12]
    start = time.time()
    dense = task.perplexity(base, texts)
    model = copy.deepcopy(base)
    # masks kept through training (ours() would fold them first, and the zeros would train)
    config = _config("sparsegpt", 0.5, None, ["model.layers.*"])
    ts.prune_(model, config, data=task.calibration_loader(batches=4))
    one = task.perplexity(model, texts)
    recover(task, model, base, 0.05, lr, 1.0)
    rec = task.perplexity(model, texts)
    print(f"lr {lr} dense {dense:.3f} oneshot {100 * (one / dense - 1):.3f}% "
          f"recovered {100 * (rec / dense - 1):.3f}% {time.time() - start:.0f}s")  # fmt: skip


if __name__ == "__main__":
    main(float(sys.argv[1]))
