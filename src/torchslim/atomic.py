"""Write outputs atomically: build under a temporary sibling name, then rename into place.

A reader (or a crashed run) never sees a half-written file or directory. Temporary names get the
permissions a plain `open`/`mkdir` would give (mkstemp/mkdtemp default to owner-only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def temp_dir_beside(dest: Path) -> Iterator[Path]:
    """A fresh directory next to `dest` (same filesystem, so a rename is atomic); removed if left over."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def share_modes(directory: Path) -> None:
    """Give every file under `directory` the mode a plain `open` would (writers such as safetensors
    create theirs owner-only inside a private temporary directory)."""
    for file in directory.rglob("*"):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, 0o666 & ~_umask())


@contextmanager
def temp_file_beside(dest: Path) -> Iterator[Path]:
    """A temporary file path next to `dest`; `os.replace` it onto `dest` when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    try:
        yield Path(name)
    finally:
        if os.path.exists(name):
            os.remove(name)


def write_text(dest: str | os.PathLike[str], text: str) -> Path:
    dest = Path(dest)
    with temp_file_beside(dest) as tmp:
        tmp.write_text(text)
        os.replace(tmp, dest)
    return dest


def replace_dir(new: Path, dest: Path) -> None:
    """Move the finished directory `new` onto `dest`, replacing what was there."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        new.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(dest)
