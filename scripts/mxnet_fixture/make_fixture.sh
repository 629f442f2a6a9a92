#!/usr/bin/env bash
# Rebuild tests/fixtures/mxnet_lenet.onnx + reference outputs with MXNet 1.9.1.
# MXNet needs numpy<1.24 and an old onnx, so it gets its own venv outside the
# project env. Env vars: MXNET_VENV (venv path), PYTHON (project interpreter).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # repo root
HERE=scripts/mxnet_fixture
VENV="${MXNET_VENV:-/tmp/torchslim-mxnet-venv}"
PYTHON="${PYTHON:-.venv/bin/python}"
PYVER=3.8   # onnx 1.8.1 ships no wheels past cp39; the pins were verified on 3.8.18

if [[ ! -x "$VENV/bin/python" ]]; then
    BASE=/root/.pyenv/versions/3.8.18/bin/python
    if [[ ! -x "$BASE" ]]; then
        BASE="$(command -v "python$PYVER" || true)"
    fi
    if [[ -z "$BASE" ]]; then
        echo "error: need Python $PYVER (pyenv 3.8.18 or python$PYVER on PATH) for mxnet 1.9.1" >&2
        exit 1
    fi
    "$BASE" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi
# Binary wheels only: a source build of any of these would mean a wrong pin.
"$VENV/bin/pip" install --quiet --only-binary=:all: -r "$HERE/requirements.txt"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# The task data comes from torchslim (torch), which the MXNet venv lacks.
"$PYTHON" "$HERE/dump_digits.py" "$TMP/digits.npz"
"$VENV/bin/python" "$HERE/train_export.py" "$TMP/digits.npz" tests/fixtures
