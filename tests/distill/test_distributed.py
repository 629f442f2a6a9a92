import json
import os
import subprocess
import sys
from pathlib import Path

import torchslim as ts

HERE = Path(__file__).parent


def test_two_process_training_matches_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29731",
        str(HERE / "ddp_run.py"),
        str(tmp_path / "run"),
    ]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]  # DDP keeps the replicas identical
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rank0.json",
        "rank1.json",
        "run",
    ]  # rank 1 wrote nothing
    single = ts.run_recipe(
        {"model": "zoo:tiny-digits", "stages": [{"finetune": {"epochs": 4, "lr": 0.005}}]},
        tmp_path / "single",
    )
    assert abs(ranks[0]["accuracy"] - single["stages"][-1]["accuracy"]) < 0.03


def test_each_rank_takes_its_rows_of_every_batch(monkeypatch) -> None:
    import torch

    from torchslim.distill import distributed

    batches = [
        ({"input_ids": torch.arange(10).view(5, 2), "mask": torch.ones(5, 2)}, torch.arange(5)),
        (torch.zeros(1, 3), torch.zeros(1)),  # fewer rows than ranks: dropped on every rank
        (torch.arange(4.0).view(4, 1), torch.arange(4)),
    ]
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank_and_size", lambda rank=rank: (rank, 2))
        parts.append(list(distributed.shard(batches)))
    assert [len(p) for p in parts] == [2, 2]  # as many steps as one process, less one tiny batch
    assert parts[0][0][1].tolist() == [0, 2, 4] and parts[1][0][1].tolist() == [1, 3]
    assert parts[1][0][0]["input_ids"].tolist() == [[2, 3], [6, 7]]
    rows = sorted(parts[0][1][0].flatten().tolist() + parts[1][1][0].flatten().tolist())
    assert rows == [0.0, 1.0, 2.0, 3.0]  # together the ranks see the whole batch once
