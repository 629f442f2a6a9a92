"""`llama-pydocs`: the corpus, the training curve of the cached baseline, and its perplexities.

Trains the baseline if it is not cached yet (that run's wall time is reported); `--quick` reports
only the corpus."""

from __future__ import annotations

import time

import torch

import torchslim as ts
from benchmarks.harness import Table, benchmark
from torchslim.zoo import llama_pydocs as lp


def _corpus_rows(task: lp.LlamaPydocs) -> list[list[object]]:
    rows: list[list[object]] = []
    for split in ("train", "val", "test"):
        texts = task.texts(split)
        tokens = len(task._streams[split])
        rows.append([f"corpus {split}", len(texts), sum(map(len, texts)), tokens, ""])
    return rows


@benchmark("llama-pydocs")
def run(quick: bool) -> Table:
    task = ts.zoo.get("llama-pydocs")
    assert isinstance(task, lp.LlamaPydocs)
    table = Table("llama-pydocs: corpus, training curve, perplexity", ["row", "a", "b", "c", "note"])
    table.rows += _corpus_rows(task)
    table.rows[-3][4] = "a = modules, b = characters, c = tokens (4,096-entry byte-level BPE)"
    if quick:  # the corpus only: training the baseline takes a sitting
        table.notes.append(
            f"corpus fingerprint {lp.corpus.digest(lp.corpus.cached())}; baseline not measured (--quick)"
        )
        return table
    cached = (task.cache_dir() / "model.safetensors").exists()
    started = time.perf_counter()
    model = task.model()
    trained_s = time.perf_counter() - started
    log = task.training_log()
    for point in log["curve"]:
        tokens = point["step"] * log["batch"] * log["window"]
        note = "a = step, b = tokens seen, c = train loss; val perplexity (16 windows)"
        table.rows.append(
            [f"curve {point['val_perplexity']:.1f}", point["step"], tokens, point["train_loss"], note]
        )
    table.rows.append(["val perplexity (all windows)", log["val_perplexity"], "", "", ""])
    table.rows.append(["test perplexity", task.evaluate(model), "", "", "the task metric"])
    table.rows.append(
        ["pydoc_data.topics perplexity", task.topics_perplexity(model), "", "", "second held-out text"]
    )
    table.notes.append(
        f"{log['params']} parameters, {log['steps']} steps of {log['batch']} x {log['window']} tokens"
    )
    if not cached:
        table.notes.append(f"trained in this run: {trained_s:.0f} s wall (threads {torch.get_num_threads()})")
    return table
