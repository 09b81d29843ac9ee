#!/usr/bin/env bash
# Checks r2rc's transformer support against the real libraries (issue 13): a venv beside
# Debian's torch 1.13 with transformers 4.44.2 and timm 1.0.9 (newer releases need torch 2),
# then scripts/check_transformers.py on tiny random Llama, GPT-2 and ViT models.
# Extra arguments go to the script (--seed S, --keep DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin r2rc
venv=target/tf-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/pip" install --quiet transformers==4.44.2 timm==1.0.9 safetensors
"$venv/bin/python" scripts/check_transformers.py --r2rc target/release/r2rc "$@"
