"""The `llama-pydocs` corpus: docstrings of the Python standard library, read with `ast` (nothing imported).

A *document* is one module: its docstring, then the docstrings of its classes and functions in source
order, separated by blank lines. Modules are the `.py` files under the standard library directory,
without `site-packages`, test suites (`test`, `tests`, `idle_test`, and `lib2to3/tests`-like folders)
and `pydoc_data` (kept apart as a second held-out text). Files that do not parse are skipped.

Split rule (fixed, by module): `crc32(dotted module name) % 20` is 0 or 1 for the test split, 2 for
validation, anything else for training. It depends only on the name, so a module added in another
Python version never moves the others.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}
)
SPLIT_MODULUS = 20
TEST_BUCKETS = frozenset({0, 1})
VAL_BUCKETS = frozenset({2})
CORPUS_VERSION = 1  # bump when the collection rules change
MAX_FILE_BYTES = 4_000_000  # larger .py files are generated tables, not prose


@dataclass(frozen=True)
class Document:
    module: str
    text: str


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(module: str) -> str:
    bucket = zlib.crc32(module.encode()) % SPLIT_MODULUS
    return "test" if bucket in TEST_BUCKETS else "val" if bucket in VAL_BUCKETS else "train"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(part in SKIP_DIRS for part in rel[:-1]) or rel[0].startswith("test_"):
            continue
        out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def docstrings(source: str) -> list[str]:
    """The module's, classes' and functions' docstrings in source order (cleaned by `inspect.cleandoc`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        tree = ast.parse(source)
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    nodes[1:] = sorted(nodes[1:], key=lambda n: (n.lineno, n.col_offset))  # type: ignore[union-attr]
    found = (ast.get_docstring(n, clean=True) for n in nodes)
    return [d.strip() for d in found if d and d.strip()]


def collect(root: Path | None = None) -> list[Document]:
    """One document per module that has docstrings, sorted by module name."""
    root = root or stdlib_dir()
    out = []
    for path in _files(root):
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            docs = docstrings(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if docs:
            out.append(Document(_module_name(path, root), "\n\n".join(docs)))
    return out


def splits(documents: list[Document]) -> dict[str, list[Document]]:
    out: dict[str, list[Document]] = {"train": [], "val": [], "test": []}
    for doc in documents:
        out[split_of(doc.module)].append(doc)
    return out


def topics(root: Path | None = None) -> list[str]:
    """`pydoc_data.topics`' help texts (read with `ast` too), sorted by topic name."""
    path = (root or stdlib_dir()) / "pydoc_data" / "topics.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            table = ast.literal_eval(node.value)
            return [str(table[k]).strip() for k in sorted(table)]
    raise ValueError(f"{path}: no topics table")


def digest(documents: list[Document]) -> str:
    """A short fingerprint of the corpus, part of the cache name (another Python, another model)."""
    h = hashlib.sha256()
    for doc in documents:
        h.update(doc.module.encode() + b"\0" + doc.text.encode() + b"\0")
    return h.hexdigest()[:8]


def cached(root: Path | None = None) -> list[Document]:
    """`collect()`, parsed once per Python installation and kept as JSON under the torchslim cache
    (parsing ~700 files takes tens of seconds on a busy machine)."""
    from torchslim.atomic import write_text
    from torchslim.zoo.base import cache_root

    root = root or stdlib_dir()
    key = hashlib.sha256(f"{CORPUS_VERSION}\0{sys.version}\0{root}".encode()).hexdigest()[:12]
    path = cache_root() / f"pydocs-corpus-{key}.json"
    if path.is_file():
        return [Document(m, t) for m, t in json.loads(path.read_text(encoding="utf-8"))]
    documents = collect(root)
    write_text(path, json.dumps([[d.module, d.text] for d in documents]))
    return documents
