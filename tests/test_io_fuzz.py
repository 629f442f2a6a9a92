"""Fuzzing saved-model directories with a fixed seed: every mutated manifest (and weights file) either
loads into a model that runs, or is refused with a ManifestError/UserError; never another exception.

The fast test tries a hundred mutations; `-m slow` runs thousands (README, Security, has the counts).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

import torchslim as ts
from torchslim import zoo
from torchslim.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
import hostile_models as h

VALUES: list[Any] = [
    None, True, False, 0, -1, -5, 1, 3, 7, 9, 40, 255, 2**31, 10**12, 1e308, -0.0, 0.5, 1e4, "", "x",
    "os:system", "forward", "__class__", "../x", "/etc/passwd", "float32", "bool", "int64", "Tensor",
    "dense", "alias", "sparse_index", "packed_bits", "fc1", "fc1.weight", "fc2.bias", [], {}, [0], [-1],
    [10**6, 10**6], [8, 64], [[[]]], {"kind": "factory", "target": "os:system"}, {"x": 1},
]  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _mutate_tree(data: Any, rng: random.Random) -> Any:
    path = rng.choice(_paths(data))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    action = rng.choice(["replace", "replace", "delete", "add", "number", "rename"])
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "add" and isinstance(parent[key], dict):
        parent[key][rng.choice(["extra", "forward", "__class__", "0", "parts"])] = _value(rng)
    elif action == "number" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = rng.choice([parent[key] + 1, parent[key] - 1, -parent[key], parent[key] * 1000, 0])
    elif action == "rename" and isinstance(parent, dict):
        parent[f"{key}{rng.choice(['x', '.weight', '::bits', '.__class__'])}"] = parent.pop(key)
    else:
        parent[key] = _value(rng)
    return data


def _value(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(VALUES))  # never share a mutable value between places


def _mutated_bytes(text: bytes, rng: random.Random) -> bytes:
    data = bytearray(text)
    choice = rng.random()
    if choice < 0.4:
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice < 0.6:
        return bytes(data[: rng.randrange(len(data))])
    pos = rng.randrange(len(data))
    return bytes(data[:pos] + bytes([rng.choice(b'{}[]",:0123456789-e.\\"')]) + data[pos:])


def _outcome(saved: Path, x: torch.Tensor) -> str:
    try:
        model = ts.load(saved)
    except UserError:  # ManifestError is one
        return "refused"
    with torch.no_grad():
        out = model(x)
    assert out.shape == (x.shape[0], 10), "a loaded model must still be the digits classifier"
    return "loaded"


def fuzz(original: Path, work: Path, count: int, seed: int) -> Counter[str]:
    """Mutate the manifest (tree edits and byte edits) and the weights (bit flips) `count` times."""
    rng = random.Random(seed)
    x = zoo.get("tiny-digits").example_inputs
    manifest_text = (original / "manifest.json").read_bytes()
    weights = (original / "model.safetensors").read_bytes()
    outcomes: Counter[str] = Counter()
    for i in range(count):
        saved = Path(shutil.copytree(original, work / f"m{i}"))
        kind = rng.choice(["tree", "tree", "tree", "bytes", "weights"])
        if kind == "tree":
            data = json.loads(manifest_text)
            for _ in range(rng.choice([1, 1, 2, 3])):
                data = _mutate_tree(data, rng) if _paths(data) else data
            h.write_manifest(saved, data)
        elif kind == "bytes":
            (saved / "manifest.json").write_bytes(_mutated_bytes(manifest_text, rng))
        else:
            flipped = bytearray(weights)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            (saved / "model.safetensors").write_bytes(bytes(flipped))
        result = _outcome(saved, x)
        outcomes[f"{kind}:{result}"] += 1
        if kind == "weights":
            assert result == "refused", f"mutation {i}: a bit flip in the weights loaded"
        shutil.rmtree(saved)
    return outcomes


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.compressed_tiny(tmp_path_factory.mktemp("fuzz") / "m")


def test_fuzzed_manifests_load_or_are_refused_cleanly(original: Path, tmp_path: Path) -> None:
    outcomes = fuzz(original, tmp_path, 100, seed=0)
    assert sum(outcomes.values()) == 100
    assert outcomes["tree:refused"] > 30 and outcomes["weights:refused"] > 5


@pytest.mark.slow
def test_fuzzed_manifests_at_length(original: Path, tmp_path: Path) -> None:
    outcomes = fuzz(original, tmp_path, 5000, seed=1)
    print(dict(outcomes))
    assert sum(outcomes.values()) == 5000
