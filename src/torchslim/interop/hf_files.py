"""The tokenizer and processor files of a transformers checkpoint, copied into the `hf` output.

`save_pretrained` writes the config, the weights and the generation config; what turns text or images
into the model's inputs lives in other files of the checkpoint the model came from. That checkpoint is
the directory `from_pretrained` read, which transformers keeps as `config.name_or_path` (and `ts.save`
keeps with the config); a hub id, or a directory that is gone, copies nothing.

Only the file names in `FILES` are copied, each a regular file inside the checkpoint directory (links in
a hub-cache snapshot into its own `blobs/` are followed, other links out are not), at most
`MAX_FILE_BYTES` each. A file that is present but fails a check is not copied and is listed, with the
reason, in the output's notes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",  # the checkpoint's own: save_pretrained writes a default one
)
MAX_FILE_BYTES = 64 << 20
"""Largest file copied (tokenizer.json of a 150k-token vocabulary is about 11 MB)."""


def source_dir(model: Any) -> Path | None:
    """The local checkpoint directory `model` was loaded from, if there is one."""
    name = getattr(getattr(model, "config", None), "name_or_path", None)
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    path = Path(name)
    return path if path.is_dir() else None


def copy_files(source: Path, dest: Path) -> dict[str, Any]:
    """Copy the `FILES` present in `source` into the directory `dest`; notes on what was and was not."""
    root = source.resolve()
    roots = [root]
    if root.parent.name == "snapshots":  # hub cache: snapshots/<revision>/NAME -> ../../blobs/<hash>
        roots.append(root.parent.parent / "blobs")
    copied: list[str] = []
    skipped: dict[str, str] = {}
    for name in FILES:
        path = source / name
        if not os.path.lexists(path):
            continue
        data = _read(path, roots)
        if isinstance(data, str):
            skipped[name] = data
            continue
        (dest / name).write_bytes(data)
        copied.append(name)
    notes: dict[str, Any] = {"from": str(source), "copied": copied}
    return notes | ({"not_copied": skipped} if skipped else {})


def _read(path: Path, roots: list[Path]) -> bytes | str:
    """The bytes of `path`, or why they are not copied."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return "a link that leads nowhere"
    if not any(target.is_relative_to(r) for r in roots):
        return "a link out of the checkpoint directory"
    try:  # O_NONBLOCK: a FIFO must not hang the export; fstat below refuses it
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return f"cannot be opened ({exc.strerror})"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return "not a regular file"
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES} bytes"
    return data
