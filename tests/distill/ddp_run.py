"""Run by torchrun from test_distributed.py: a two-process finetune of the tiny task."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import conftest  # noqa: E402,F401  (registers the tiny task)
import torch.distributed as dist  # noqa: E402

import torchslim as ts  # noqa: E402

out = Path(sys.argv[1])
recipe = {"model": "zoo:tiny-digits", "stages": [{"finetune": {"epochs": 4, "lr": 0.005}}]}
report = ts.run_recipe(recipe, out)
rank = dist.get_rank()
(out.parent / f"rank{rank}.json").write_text(
    json.dumps({"world": dist.get_world_size(), "accuracy": report["stages"][-1]["accuracy"]})
)
