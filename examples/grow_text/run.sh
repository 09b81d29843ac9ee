#!/usr/bin/env bash
# Trains a byte-level GPT (gpt.arch) on the Python standard library's sources, grows it
# with r2rc mid-training (widen x1.5 r2r/netmorph, x2 net2net with and without --noise,
# deepen r2r/copy), each with and without the teacher's AdamW state, and plots validation
# loss against training FLOPs (grow.py; `run.sh --help` lists its options).
#
# Usage: examples/grow_text/run.sh [OUT_DIR] [--r2rc PATH] [grow.py options...]
#   OUT_DIR       where the plot and results go (default target/grow_text); a folder in
#                 the repository's tracked tree is refused. --reference instead rewrites
#                 the committed copies in examples/grow_text that README.md shows.
#   --r2rc PATH   the r2rc binary to use (or R2RC=PATH); nothing is built then. Otherwise
#                 target/release/r2rc is used, and built with `cargo build --release` only
#                 when it is missing or older than src/, Cargo.toml or Cargo.lock.
# Needs python3 with torch, matplotlib, safetensors and numpy (Debian: python3-torch
# python3-matplotlib; pip: safetensors); PYTHON=... picks the interpreter, else the first
# of python3 and /usr/bin/python3 that has them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

r2rc_bin="${R2RC:-}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        -h | --help)
            sed -n '2,16s/^# \{0,1\}//p' "$0"
            echo
            exec "${PYTHON:-python3}" "$here/grow.py" --help
            ;;
        --r2rc) r2rc_bin="${args[i + 1]:-}" ;;
        --r2rc=*) r2rc_bin="${args[i]#--r2rc=}" ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
else
    py=python3
    for cand in python3 /usr/bin/python3; do
        if "$cand" -c 'import torch, matplotlib, safetensors, numpy' 2>/dev/null; then
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

if [ -z "$r2rc_bin" ]; then
    r2rc_bin="$root/target/release/r2rc"
    stale=""
    if [ -x "$r2rc_bin" ]; then
        stale="$(cd "$root" &&
            find src Cargo.toml Cargo.lock -newer "$r2rc_bin" -print -quit 2>/dev/null)"
    fi
    if [ ! -x "$r2rc_bin" ]; then
        echo "building r2rc: target/release/r2rc is missing" >&2
    elif [ -n "$stale" ]; then
        echo "building r2rc: $stale is newer than target/release/r2rc" >&2
    fi
    if [ ! -x "$r2rc_bin" ] || [ -n "$stale" ]; then
        (cd "$root" && cargo build --release --quiet)
    fi
fi
if ! [ -x "$r2rc_bin" ] && ! command -v "$r2rc_bin" >/dev/null; then
    echo "error: no r2rc binary at $r2rc_bin" >&2
    exit 2
fi

exec "$py" "$here/grow.py" --r2rc "$r2rc_bin" "$@"
