#!/usr/bin/env bash
# Grows a small residual net on scikit-learn's digits with r2rc mid-training and plots
# validation accuracy against training FLOPs (grow.py; `run.sh --help` lists its options).
#
# Usage: examples/grow_digits/run.sh [--out DIR] [grow.py options...]
#   --out DIR     where the plot and results go (default target/grow_digits); a folder in
#                 the repository's tracked tree is refused. --reference instead rewrites
#                 the committed copies in examples/grow_digits that README.md shows.
# r2rc runs in process through its Python package (docs/python.md): run.sh installs it
# with `pip install .` into target/demo-venv (a venv beside the system's torch), again
# only when that is missing or older than src/, crates/, Cargo.toml, Cargo.lock or
# pyproject.toml. R2RC_PYTHON=PATH names an interpreter that has r2rc: nothing is built.
# Needs python3 with torch, scikit-learn, matplotlib and numpy (Debian:
# python3-torch python3-sklearn python3-matplotlib python3-venv); PYTHON=... picks
# the interpreter, else the first of python3 and /usr/bin/python3 that has them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

for a in "$@"; do
    case "$a" in
        -h | --help)
            sed -n '2,17s/^# \{0,1\}//p' "$0"
            echo
            exec "${PYTHON:-python3}" "$here/grow.py" --help
            ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
else
    py=python3
    for cand in python3 /usr/bin/python3; do
        if "$cand" -c 'import torch, sklearn, matplotlib, numpy' 2>/dev/null; then
            py="$cand"
            break
        fi
    done
fi

# Arguments and output folders first: a refusal should not wait for a build.
"$py" "$here/grow.py" --check-only "$@"
for a in "$@"; do
    [ "$a" = --check-only ] && exit 0
done

# r2rc's Python package: R2RC_PYTHON as given, else target/demo-venv, (re)installed when
# missing or older than the sources.
if [ -n "${R2RC_PYTHON:-}" ]; then
    py="$R2RC_PYTHON"
else
    venv="$root/target/demo-venv"
    stamp="$venv/.r2rc-installed"
    stale=""
    if [ -e "$stamp" ]; then
        stale="$(cd "$root" && find src crates Cargo.toml Cargo.lock pyproject.toml \
            -newer "$stamp" -print -quit 2>/dev/null)"
    fi
    if [ ! -e "$stamp" ]; then
        echo "installing r2rc's Python package into target/demo-venv" >&2
    elif [ -n "$stale" ]; then
        echo "installing r2rc's Python package: $stale is newer than the install" >&2
    fi
    if [ ! -e "$stamp" ] || [ -n "$stale" ]; then
        [ -x "$venv/bin/python" ] || "$py" -m venv --system-site-packages "$venv"
        (cd "$root" && CARGO_TARGET_DIR="$root/target" "$venv/bin/python" -m pip install \
            --quiet --disable-pip-version-check . safetensors)
        touch "$stamp"
    fi
    py="$venv/bin/python"
fi
exec "$py" "$here/grow.py" "$@"
