import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import torchslim as ts
from torchslim import atomic, runslot
from torchslim.errors import UserError

HERE = Path(__file__).parent
TINY = {"model": "zoo:tiny-digits", "stages": [{"finetune": {"epochs": 1, "lr": 0.001}}]}


def test_a_second_run_on_the_same_out_fails_at_once_and_the_first_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchslim import pipeline

    out, refused = tmp_path / "run", []
    other = {**TINY, "stages": [{"finetune": {"epochs": 2}}]}
    real = pipeline._run_stage

    def second_run_meanwhile(ctx, index, *args):  # type: ignore[no-untyped-def]
        if index == 1:  # the first run holds OUT: a second one, with --overwrite, must not start
            with pytest.raises(UserError, match=r"another run \(pid \d+\) is writing .*run") as info:
                ts.run_recipe(other, out, overwrite=True)
            refused.append(str(info.value))
        return real(ctx, index, *args)

    monkeypatch.setattr(pipeline, "_run_stage", second_run_meanwhile)
    report = ts.run_recipe(TINY, out, overwrite=True)
    assert len(refused) == 1
    assert json.loads((out / "report.json").read_text())["recipe"] == report["recipe"]
    assert report["recipe"]["stages"][0]["finetune"]["epochs"] == 1  # the winner's recipe, not the other
    ts.load(out / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, record or work dir left


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child holds the lock until killed
        try:
            with runslot.claim(out):
                os.write(write, b"x")
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    with pytest.raises(UserError, match=f"pid {pid}"), runslot.claim(out):
        pass
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with runslot.claim(out) as slot:  # kill -9 released it
        assert slot.lock_path.exists()
    assert not (tmp_path / ".run.lock").exists()


def test_a_fresh_run_removes_dead_work_dirs_and_ignores_foreign_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    dead = [tmp_path / ".run.partial-abcd1234", tmp_path / ".run.partial-zz_99999"]
    keep = [tmp_path / ".run.partial-x", tmp_path / ".runner.partial-abcd1234", tmp_path / "victim"]
    for d in dead + keep:
        d.mkdir()
    (tmp_path / ".run.resume.json").write_text(json.dumps({"work": "victim"}))
    with runslot.claim(out) as slot:
        assert slot._recorded() is None  # a record naming anything but our own work dirs is ignored
        work = slot.work_dir({"a": 1}, resume=True)
    assert all(not d.exists() for d in dead) and all(d.exists() for d in keep)
    assert work.parent == tmp_path and work.name.startswith(".run.partial-")
    assert json.loads((tmp_path / ".run.resume.json").read_text()) == {"work": work.name}


def test_resume_continues_the_recorded_run_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with runslot.claim(out) as slot:
        first = slot.work_dir({"a": 1}, resume=False)
    with runslot.claim(out) as slot:
        assert slot.work_dir({"a": 1}, resume=True) == first
        with pytest.raises(UserError, match="different recipe"):
            slot.work_dir({"a": 2}, resume=True)
        fresh = slot.work_dir({"a": 1}, resume=False)
    assert fresh != first and not first.exists()
    (tmp_path / ".run.resume.json").write_text('{"work": ')  # torn by a crash: nothing to resume
    with runslot.claim(out) as slot:
        assert slot.work_dir({"a": 1}, resume=True) != fresh


def test_replace_dir_swaps_a_directory_in_place(tmp_path: Path) -> None:
    dest, new = tmp_path / "out", tmp_path / ".new"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    seen = []
    atomic.replace_dir(new, dest, before_cleanup=lambda: seen.append(sorted(p.name for p in dest.iterdir())))
    assert seen == [["new.txt"]] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_rank_one_of_torchrun_has_its_own_lock_and_record(tmp_path: Path) -> None:
    with runslot.claim(tmp_path / "run", rank=1) as slot, runslot.claim(tmp_path / "run"):
        assert slot.lock_path.name == ".run.rank1.lock"
        assert slot.work_dir({}, resume=False).name.startswith(".run.rank1.partial-")


def _held(tmp_path: Path, recipe: Path, out: Path, hold_at: int) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGNAL_DIR": str(tmp_path), "HOLD_AT": str(hold_at)}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(HERE / "held_run.py"), "compress", str(recipe), "--out", str(out)]
    return subprocess.Popen([*cmd, "--overwrite", "--quiet"], env=env, stderr=subprocess.PIPE, text=True)


def _wait(condition, timeout: float = 240) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_processes_on_one_out_exactly_one_wins(tmp_path: Path) -> None:
    out = tmp_path / "run"
    recipes = []
    for epochs in (1, 2):
        recipes.append(tmp_path / f"r{epochs}.yaml")
        recipes[-1].write_text(f"model: zoo:tiny-digits\nstages:\n  - finetune: {{epochs: {epochs}}}\n")
    procs = [_held(tmp_path, r, out, hold_at=1) for r in recipes]  # both started at once
    _wait(lambda: any(p.poll() is not None for p in procs) and any(tmp_path.glob("started-*")))
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    (tmp_path / "release").write_text("")
    assert winner.wait(timeout=240) == 0
    err = loser.stderr.read() if loser.stderr else ""
    assert loser.returncode == 2 and err.count("\n") == 1 and "another run" in err
    assert [f.name for f in tmp_path.glob("started-*")] == [f"started-{winner.pid}"]
    won = recipes[procs.index(winner)]
    epochs = json.loads((out / "report.json").read_text())["recipe"]["stages"][0]["finetune"]["epochs"]
    assert f"epochs: {epochs}}}" in won.read_text()
    ts.load(out / "model")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchslim import pipeline

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: 2}\n  - finetune: {epochs: 1}\n"
    )
    reference = ts.run_recipe(recipe, tmp_path / "reference")
    proc = _held(tmp_path, recipe, tmp_path / "run", hold_at=2)
    _wait(lambda: any(tmp_path.glob("started-*")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run").exists()
    calls = []
    real = pipeline._run_stage
    monkeypatch.setattr(pipeline, "_run_stage", lambda ctx, i, *a: calls.append(i) or real(ctx, i, *a))
    report = ts.run_recipe(recipe, tmp_path / "run", resume=True)
    assert calls == [2]  # the baseline and the first finetune were done before the kill
    assert [s["accuracy"] for s in report["stages"]] == [s["accuracy"] for s in reference["stages"]]
    final, expected = ts.load(tmp_path / "run" / "model"), ts.load(tmp_path / "reference" / "model")
    assert all(torch.equal(final.state_dict()[k], v) for k, v in expected.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
