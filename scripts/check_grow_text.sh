#!/usr/bin/env bash
# Cheap checks of examples/grow_text/run.sh (no training, no torch, no build, ~2 s):
# --help works; an output folder in the tracked tree is refused before anything is
# installed or run; target/ and folders outside the repository are accepted; r2rc's Python
# package is installed into target/demo-venv only when missing or older than the sources,
# and grow.py runs under that venv's interpreter (a copy of run.sh with a stand-in python
# records what it calls).
set -euo pipefail
cd "$(dirname "$0")/.."
run=examples/grow_text/run.sh
fails=0
passes=0
check() { # check NAME EXPECTED_RC ACTUAL_RC [OUTPUT PATTERN]
    if [ "$3" != "$2" ] || { [ $# -ge 5 ] && ! grep -q -- "$5" <<<"$4"; }; then
        echo "FAIL: $1 (exit $3, expected $2${5:+; output should contain \"$5\"})"
        echo "$4" | sed 's/^/    /'
        fails=$((fails + 1))
    else
        echo "ok: $1"
        passes=$((passes + 1))
    fi
}

# torch is not needed for any of this: plain python3 is enough.
export PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
# A stand-in interpreter: logs how it was called (its own path first); `-m venv ... DIR`
# makes DIR/bin/python a copy of itself.
printf '%s\n' '#!/bin/sh' \
    "echo \"\$0 \$*\" >> \"$tmp/py.log\"" \
    'if [ "$1" = -m ] && [ "$2" = venv ]; then' \
    '    for d in "$@"; do :; done' \
    '    mkdir -p "$d/bin" && cp "$0" "$d/bin/python"' \
    'fi' \
    'exit 0' >"$tmp/bin/python"
chmod +x "$tmp/bin/python"
logged() { if [ -e "$tmp/py.log" ]; then wc -l <"$tmp/py.log"; else echo 0; fi; }
installs_logged() { grep -c -- "-m pip install" "$tmp/py.log" 2>/dev/null || true; }

set +e
out="$("$run" --help 2>&1)"
check "--help" 0 $? "$out" "OUT_DIR"
# Refusals come from grow.py --check-only (real python); R2RC_PYTHON would log a later run.
export R2RC_PYTHON="$tmp/bin/python"
for dir in examples/grow_text examples .; do
    out="$("$run" "$dir" 2>&1)"
    check "OUT_DIR $dir refused" 2 $? "$out" "refusing to write"
done
out="$("$run" --out examples/grow_text 2>&1)"
check "--out examples/grow_text refused" 2 $? "$out" "refusing to write"
out="$("$run" --work src/scratch 2>&1)"
check "--work src/scratch refused" 2 $? "$out" "not ignored by git"
out="$("$run" --reference "$tmp/o" 2>&1)"
check "--reference with OUT_DIR refused" 2 $? "$out" "not both"
out="$("$run" --check-only --grow-at 300 2>&1)"
check "--grow-at past --steps refused" 2 $? "$out" "grow-at"
unset R2RC_PYTHON
check "nothing installed or run before a refusal" 0 "$(logged)" "$(cat "$tmp/py.log" 2>/dev/null)"
out="$("$run" --check-only 2>&1)"
check "default folder (target/grow_text) accepted" 0 $? "$out"
out="$("$run" --check-only "$tmp/o" 2>&1)"
check "folder outside the repository accepted" 0 $? "$out"

# Install logic, on a copy of run.sh in a stand-in repository.
fake="$tmp/repo"
mkdir -p "$fake/examples/grow_text" "$fake/src" "$fake/crates"
cp "$run" "$fake/examples/grow_text/"
touch "$fake/Cargo.toml" "$fake/Cargo.lock" "$fake/pyproject.toml" "$fake/src/lib.rs"
venv="$fake/target/demo-venv"
installs() { # installs NAME EXPECTED_INSTALLS [run.sh args]
    local name="$1" want="$2"
    shift 2
    rm -f "$tmp/py.log"
    PYTHON="$tmp/bin/python" "$fake/examples/grow_text/run.sh" "$@" >/dev/null 2>&1
    check "$name: $want install(s)" "$want" "$(installs_logged)" ""
}
installs "package missing" 1
grep -q "^$venv/bin/python .*grow.py" "$tmp/py.log"
check "grow.py runs under target/demo-venv's python" 0 $? "$(cat "$tmp/py.log")"
installs "package fresh" 0
touch -d '1 minute ago' "$venv/.r2rc-installed"
installs "sources newer than the install" 1
touch -d '1 minute ago' "$venv/.r2rc-installed"
rm -f "$tmp/py.log"
R2RC_PYTHON="$tmp/bin/python" PYTHON="$tmp/bin/python" "$fake/examples/grow_text/run.sh" \
    >/dev/null 2>&1
check "R2RC_PYTHON given: 0 installs" 0 "$(installs_logged)" ""
grep -q "^$tmp/bin/python .*grow.py" "$tmp/py.log"
check "R2RC_PYTHON runs grow.py" 0 $? "$(cat "$tmp/py.log")"
set -e

# Not the "N passed, N failed" form: CI reads that form as the whole run's count.
echo "check_grow_text.sh: $passes checks passed, $fails failed"
[ "$fails" = 0 ]
