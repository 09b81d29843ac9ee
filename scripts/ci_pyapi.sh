#!/usr/bin/env bash
# The Python package (issue 18): in a fresh venv beside Debian's torch 1.13 (/usr/bin/python3,
# which .ci/run provides), `pip install .` builds the wheel with maturin (crates/r2rc-py,
# into target/ so the dependencies the test build compiled are reused), `import r2rc` works
# outside the source tree, and pytest runs tests/python: the API's students against the
# CLI's bit for bit (widen, deepen, morph, apply, optimizer state), r2rc.torch and r2rc.hf
# on tiny models (transformers 4.44.2: newer releases need torch 2), and the error paths.
# Usage: scripts/ci_pyapi.sh [PATH/TO/r2rc]   (default target/release/r2rc)
set -euo pipefail
cd "$(dirname "$0")/.."
R2RC="${1:-target/release/r2rc}"
if [ ! -x "$R2RC" ]; then
    echo "ci_pyapi.sh: no r2rc binary at $R2RC (build it with cargo build --release)" >&2
    exit 2
fi
PY="${R2RC_TORCH_PYTHON:-/usr/bin/python3}"
venv=target/pyapi-venv
# Fresh every run: the install is what is tested.
rm -rf "$venv"
"$PY" -m venv --system-site-packages "$venv"
pip=("$venv/bin/pip" --quiet --disable-pip-version-check)
"${pip[@]}" install pytest safetensors transformers==4.44.2
start=$SECONDS
CARGO_TARGET_DIR="$PWD/target" "${pip[@]}" install .
echo "ci_pyapi.sh: pip install . took $((SECONDS - start)) s"
# Imported from elsewhere: the installed wheel, not the source tree.
(cd "$venv" && bin/python -c 'import r2rc, r2rc.torch, r2rc.hf; print("r2rc", r2rc.__version__, "imports from", r2rc.__file__)')
R2RC="$(realpath "$R2RC")" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python
