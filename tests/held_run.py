"""Run by test_runslot.py: `torchslim ARGS...` whose stage HOLD_AT waits for a file to appear.

Before stage HOLD_AT (an index; 1 is the first stage after the baseline) it writes `started-PID` into
SIGNAL_DIR and waits until `SIGNAL_DIR/release` exists, so a test can act while the run is active.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: F401  (registers the tiny task)
from torchslim import pipeline
from torchslim.cli import main

signals, hold_at = Path(os.environ["SIGNAL_DIR"]), int(os.environ["HOLD_AT"])
real = pipeline._run_stage


def held(ctx, index, *args):  # type: ignore[no-untyped-def]
    if index == hold_at:
        (signals / f"started-{os.getpid()}").write_text("")
        deadline = time.monotonic() + 120
        while not (signals / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return real(ctx, index, *args)


pipeline._run_stage = held
sys.exit(main(sys.argv[1:]))
