#!/usr/bin/env bash
# Grows a small residual net on scikit-learn's digits with r2rc mid-training and plots
# validation accuracy against training FLOPs. Needs python3 with torch, scikit-learn,
# matplotlib, safetensors and numpy (Debian: python3-torch python3-sklearn
# python3-matplotlib; pip: safetensors). Extra arguments go to grow.py (e.g. --seeds 1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c 'import torch, sklearn, matplotlib, safetensors, numpy' 2>/dev/null; then
    echo "error: $py lacks torch, scikit-learn, matplotlib, safetensors or numpy" >&2
    echo "  help: apt-get install python3-torch python3-sklearn python3-matplotlib;" \
        "pip install safetensors (or set PYTHON=...)" >&2
    exit 2
fi
(cd "$root" && cargo build --release --quiet)
export R2RC="$root/target/release/r2rc"
time "$py" "$here/grow.py" "$@"
