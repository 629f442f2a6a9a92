"""Run by torchrun from test_distributed.py: a two-process finetune of the tiny task."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.distributed as dist

import conftest  # noqa: F401  (registers the tiny task)
import torchslim as ts

out = Path(sys.argv[1])
recipe = {"model": "zoo:tiny-digits", "stages": [{"finetune": {"epochs": 4, "lr": 0.005}}]}
report = ts.run_recipe(recipe, out)
rank = dist.get_rank()
(out.parent / f"rank{rank}.json").write_text(
    json.dumps({"world": dist.get_world_size(), "accuracy": report["stages"][-1]["accuracy"]})
)
