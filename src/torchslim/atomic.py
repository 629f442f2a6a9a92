"""Write outputs atomically: build under a temporary sibling name, then rename into place.

A reader (or a crashed run) never sees a half-written file or directory. Temporary names get the
permissions a plain `open`/`mkdir` would give (mkstemp/mkdtemp default to owner-only).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def temp_dir_beside(dest: Path) -> Iterator[Path]:
    """A fresh directory next to `dest` (same filesystem, so a rename is atomic); removed if left over."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def share_modes(directory: Path) -> None:
    """Give every file under `directory` the mode a plain `open` would (writers such as safetensors
    create theirs owner-only inside a private temporary directory)."""
    for file in directory.rglob("*"):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, 0o666 & ~umask())


@contextmanager
def temp_file_beside(dest: Path) -> Iterator[Path]:
    """A temporary file path next to `dest`; `os.replace` it onto `dest` when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~umask())
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


def replace_dir(new: Path, dest: Path, before_cleanup: Callable[[], None] = lambda: None) -> None:
    """Move the finished directory `new` onto `dest`, replacing what was there.

    On Linux the two are swapped in one step (`renameat2(RENAME_EXCHANGE)`), so `dest` is never
    missing; elsewhere the old one is renamed aside first. `before_cleanup` runs once `dest` holds
    `new`, before the old contents are deleted.
    """
    if not dest.exists():
        new.rename(dest)
        before_cleanup()
        return
    if _exchange(new, dest):
        old = new  # the swap left the old contents under the temporary name
    else:
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        new.rename(dest)
    before_cleanup()
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the OS or the filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None
