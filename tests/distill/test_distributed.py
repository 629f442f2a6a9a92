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
