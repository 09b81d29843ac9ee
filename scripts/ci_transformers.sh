#!/usr/bin/env bash
# Checks r2rc's transformer support against libraries r2rc did not write (issue 13): a venv
# beside Debian's torch 1.13 (/usr/bin/python3, which .ci/run provides) with transformers
# 4.44.2 and timm 1.0.9 (newer releases need torch 2) and onnxruntime, then
# - scripts/check_transformers.py: r2rc run against transformers' and timm's logits on tiny
#   random Llama, GPT-2 and ViT models, both ways (their files read, r2rc's files loaded);
# - scripts/check_transformer_exports.py: ONNX Runtime on r2rc's ONNX and the exported
#   PyTorch module against r2rc run;
# - scripts/check_transformer_growth.py: students of r2rc widen/deepen (issue 14) load in
#   transformers and timm with the teacher's logits, keep the teacher's entries, and the
#   refusals exit 2 with their reasons.
# Usage: scripts/ci_transformers.sh [PATH/TO/r2rc]   (default target/release/r2rc)
set -euo pipefail
cd "$(dirname "$0")/.."
R2RC="${1:-target/release/r2rc}"
if [ ! -x "$R2RC" ]; then
    echo "ci_transformers.sh: no r2rc binary at $R2RC (build it with cargo build --release)" >&2
    exit 2
fi
PY="${R2RC_TORCH_PYTHON:-/usr/bin/python3}"
venv=target/tf-venv
if [ ! -x "$venv/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    transformers==4.44.2 timm==1.0.9 safetensors onnxruntime
"$venv/bin/python" scripts/check_transformers.py --r2rc "$R2RC"
"$venv/bin/python" scripts/check_transformer_exports.py --r2rc "$R2RC"
"$venv/bin/python" scripts/check_transformer_growth.py --r2rc "$R2RC"
"$venv/bin/python" scripts/check_optim_state.py --r2rc "$R2RC"
