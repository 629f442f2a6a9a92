"""One run at a time per output directory, each in its own private work directory beside OUT.

Beside `OUT` a run keeps (for rank r > 0 of a torchrun job the prefix is `.OUT.rankR`):
- `.OUT.lock`: held with `flock` for the whole run. The OS releases it when the process dies
  (kill -9 included), so a crashed run never blocks the next one; a second live run fails at once.
- `.OUT.partial-XXXXXXXX/`: the private work directory (mkdtemp), renamed onto OUT when complete.
- `.OUT.resume.json`: names the work directory of the run in progress, so `--resume` continues
  exactly that one. It is written after the work directory holds its `recipe.json`.
Everything that touches these files holds the lock, so a fresh run may delete any work directory
of an earlier, dead run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchslim import atomic, bounded
from torchslim.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX: runs are not locked)
    fcntl = None  # type: ignore[assignment]

_SUFFIX = re.compile(r"\.partial-[a-z0-9_]{8}")


class RunSlot:
    """The lock, the resume record and the work directories of one output directory (one rank)."""

    def __init__(self, out: Path, rank: int = 0) -> None:
        self.out = out
        self.prefix = f".{out.name}" + (f".rank{rank}" if rank else "")
        self.lock_path = out.parent / f"{self.prefix}.lock"
        self.state_path = out.parent / f"{self.prefix}.resume.json"

    def work_dir(self, recipe: dict[str, Any], resume: bool) -> Path:
        """The recorded work directory of an interrupted run of `recipe` when resuming, else a new one."""
        recorded = self._recorded()
        if resume and recorded is not None and (recorded / "recipe.json").is_file():
            if bounded.read_json(recorded / "recipe.json", "run record") != recipe:
                raise UserError(
                    f"cannot resume: {recorded} was made by a different recipe; run without --resume"
                )
            return recorded
        self._remove_dead_runs()
        work = Path(tempfile.mkdtemp(prefix=f"{self.prefix}.partial-", dir=self.out.parent))
        os.chmod(work, 0o777 & ~atomic.umask())
        atomic.write_text(work / "recipe.json", json.dumps(recipe))
        atomic.write_text(self.state_path, json.dumps({"work": work.name}))
        return work

    def publish(self, work: Path) -> None:
        """Move the finished `work` onto OUT (atomically where the OS can swap directories)."""
        atomic.replace_dir(work, self.out, before_cleanup=self.forget)

    def forget(self) -> None:
        """Drop the resume record: nothing is left to continue."""
        self.state_path.unlink(missing_ok=True)

    def _recorded(self) -> Path | None:
        """The work directory the resume record names, if it names one of ours that exists."""
        if not self.state_path.is_file():
            return None
        try:
            name = bounded.read_json(self.state_path, "resume record").get("work")
        except (UserError, AttributeError):
            return None  # torn or foreign: nothing to resume
        if not isinstance(name, str) or not self._is_ours(name):
            return None
        path = self.out.parent / name
        return path if path.is_dir() else None

    def _is_ours(self, name: str) -> bool:
        return name.startswith(self.prefix) and _SUFFIX.fullmatch(name[len(self.prefix) :]) is not None

    def _remove_dead_runs(self) -> None:
        """Work directories of this OUT left by runs that died (we hold the lock: none is alive)."""
        for path in self.out.parent.iterdir():
            if self._is_ours(path.name) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        self.forget()


@contextlib.contextmanager
def claim(out: Path, rank: int = 0) -> Iterator[RunSlot]:
    """Hold OUT's lock for the block, or fail at once with a `UserError` if another run holds it."""
    slot = RunSlot(out, rank)
    fd = _lock(slot.lock_path, out)
    try:
        yield slot
    finally:
        with contextlib.suppress(OSError):
            os.unlink(slot.lock_path)  # while still locked: a waiting opener sees a new file, see _lock
        os.close(fd)


def _lock(path: Path, out: Path) -> int:
    """An fd holding `flock` on `path`; retried if the holder deleted the file as we opened it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            if fcntl is None:
                return fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise UserError(
                    f"another run (pid {holder or '?'}) is writing {out}; wait for it to finish "
                    "or choose another --out"
                ) from None
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                return fd
            os.close(fd)  # the file we locked was unlinked by a run that just finished
    except OSError as exc:
        raise UserError(f"cannot lock {path} ({exc.strerror or exc})") from None
    raise UserError(f"cannot lock {path}: it keeps being replaced")


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)
