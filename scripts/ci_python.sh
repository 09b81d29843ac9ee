#!/usr/bin/env bash
# Python cross-checks of r2rc against onnx, onnxruntime and safetensors.
# Usage: scripts/ci_python.sh [PATH/TO/r2rc]   (default target/release/r2rc; builds nothing)
# The packages go into a venv under target/ (or `pip --user` where venv is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

R2RC="${1:-target/release/r2rc}"
if [ ! -x "$R2RC" ]; then
    echo "ci_python.sh: no r2rc binary at $R2RC (build it with cargo build --release)" >&2
    exit 2
fi

VENV="${R2RC_PY_VENV:-target/py-venv}"
PACKAGES=(numpy safetensors onnx onnxruntime)
if [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >/dev/null 2>&1; then
    PY="$VENV/bin/python"
else
    echo "ci_python.sh: python3 -m venv failed; installing with pip --user" >&2
    PY=python3
    PIP_USER_FLAG=--user
fi
"$PY" -m pip install --quiet --disable-pip-version-check ${PIP_USER_FLAG:-} "${PACKAGES[@]}"

"$PY" scripts/check_interop.py --r2rc "$R2RC" --examples examples
