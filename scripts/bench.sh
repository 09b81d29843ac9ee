#!/usr/bin/env bash
# Issue 16's benchmark in one run: r2rc's executor (ResNet-18 b16, ResNetCifar-18 1/8 b128,
# GPT-2 small on 256 tokens) and proof cost (ResNet-50 widen, full and local) against ONNX
# Runtime on r2rc's own ONNX export, 2 threads, then a summary table against the targets.
# About 2 minutes on 2 cores (plus the build). STREAM=1 adds scripts/bench_large.sh's streaming ratio
# (needs ~6 GB of disk). Extra arguments go to scripts/bench_forward.py (see its --help).
# Usage: [R2RC=path/to/r2rc] [STREAM=1] scripts/bench.sh [bench_forward.py options]
# Without R2RC it builds this tree's release binary first. Exits 0 when every case ran
# (targets missed or met), 1 when one failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${R2RC:-}" ]; then cargo build --release --quiet; fi
B=${R2RC:-target/release/r2rc}
# The venv of scripts/ci_python.sh; made here with the two packages needed when missing.
VENV="${R2RC_PY_VENV:-target/py-venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check numpy onnxruntime
fi
FLAGS=()
if [ "${STREAM:-0}" = 1 ]; then FLAGS+=(--stream); fi
echo "r2rc $(git rev-parse --short HEAD 2>/dev/null || echo '?'): $B $*"
exec "$VENV/bin/python" scripts/bench_forward.py --r2rc "$B" --threads "${THREADS:-2}" "${FLAGS[@]}" "$@"
