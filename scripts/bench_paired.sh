#!/usr/bin/env bash
# Paired streaming benchmark: the same streamed rewrites of a >1 GB checkpoint (the wide
# ResNet of bench_large.sh) by two r2rc binaries, alternating, so both see the same machine
# load. Prints each run's seconds, the medians and new/old.
# Usage: OLD=/path/to/old/r2rc scripts/bench_paired.sh [runs]   (NEW defaults to this tree's)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
D=${R2RC_BENCH_DIR:-target/bench_large}
K=${WIDTH_FACTOR:-5}
OLD=${OLD:?set OLD to the r2rc binary to compare against}
NEW=${NEW:-target/release/r2rc}
mkdir -p "$D"
if [ ! -f "$D/teacher.safetensors" ]; then
    sed -n '/^cat > "\$D\/wide_resnet.arch"/,/^ARCH$/p' scripts/bench_large.sh | sed '1d;$d' \
        | sed "s/\$((64 \* K))/$((64 * K))/g; s/\$((128 \* K))/$((128 * K))/g; s/\$((256 \* K))/$((256 * K))/g; s/\$((512 \* K))/$((512 * K))/g; s/x\$K/x$K/" \
        > "$D/wide_resnet.arch"
    "$NEW" init "$D/wide_resnet.arch" -o "$D/teacher.safetensors" --random-stats --force
fi
ls -l "$D/teacher.safetensors" | awk '{print "teacher bytes:", $5}'
run() { # binary, then the command's words
    local b=$1; shift
    rm -rf "$D/out"; sync
    local t0; t0=$(date +%s.%N)
    "$b" "$@" --weights "$D/teacher.safetensors" -o "$D/out" --no-prove --force 2>/dev/null
    echo "$(date +%s.%N) - $t0" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for job in "widen $D/wide_resnet.arch --all --by 1.5" "deepen $D/wide_resnet.arch --after conv4_x --method r2r"; do
    : > "$D/old.txt"; : > "$D/new.txt"
    for _ in $(seq "$RUNS"); do
        # shellcheck disable=SC2086
        run "$OLD" $job >> "$D/old.txt"
        # shellcheck disable=SC2086
        run "$NEW" $job >> "$D/new.txt"
    done
    o=$(median < "$D/old.txt"); n=$(median < "$D/new.txt")
    echo "$job: old $(tr '\n' ' ' < "$D/old.txt")| new $(tr '\n' ' ' < "$D/new.txt")| median new/old $(echo "scale=3; $n / $o" | bc)"
done
rm -rf "$D/out"
