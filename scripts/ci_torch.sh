#!/usr/bin/env bash
# PyTorch and torchvision cross-checks of r2rc (scripts/check_torch.py): exported modules,
# torchvision's ResNet checkpoints under --names torchvision.
# Usage: scripts/ci_torch.sh [PATH/TO/r2rc]   (default target/release/r2rc; builds nothing)
# Needs Debian's python3-torch, python3-torchvision and python3-numpy for /usr/bin/python3
# (.ci/run installs them); the safetensors package is added with pip when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

R2RC="${1:-target/release/r2rc}"
if [ ! -x "$R2RC" ]; then
    echo "ci_torch.sh: no r2rc binary at $R2RC (build it with cargo build --release)" >&2
    exit 2
fi
PY="${R2RC_TORCH_PYTHON:-/usr/bin/python3}"
if ! "$PY" -c "import torch, torchvision, numpy" 2>/dev/null; then
    echo "ci_torch.sh: $PY cannot import torch, torchvision and numpy;" \
        "install them with: apt-get install python3-torch python3-torchvision python3-numpy" >&2
    exit 2
fi
if ! "$PY" -c "import safetensors.torch" 2>/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages safetensors
fi

"$PY" scripts/check_torch.py --r2rc "$R2RC" --examples examples
"$PY" scripts/check_optim_state.py --r2rc "$R2RC"
"$PY" scripts/check_family_growth.py --r2rc "$R2RC"
"$PY" scripts/check_conv_families.py --r2rc "$R2RC" --examples examples
