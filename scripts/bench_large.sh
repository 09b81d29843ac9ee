#!/usr/bin/env bash
# Large-checkpoint benchmark (issues 6 and 14): widen every space of a wide ResNet (or,
# with MODEL=llama, a Llama-shaped decoder in Hugging Face's layout) whose f32 checkpoint
# is over 1 GB by 1.5x with --no-prove (the streaming path), against `cp` of the teacher
# checkpoint and the direct-write floor of the student in the same run. Prints the times,
# their ratios, and peak resident memory against the student checkpoint's size.
# Targets: widen <= 2x cp's time; peak RSS <= 1.5x the student checkpoint; widen <= 1.2x
# the direct-write floor (issue 16; median over ROUNDS=5 alternating rounds).
# Needs ~6 GB of free disk in $R2RC_BENCH_DIR (default target/bench_large); removes the big
# files afterwards unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${R2RC_BENCH_DIR:-target/bench_large}
K=${WIDTH_FACTOR:-5}
MODEL=${MODEL:-resnet}
mkdir -p "$D"
df -h "$D" | tail -1
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time): apt-get install time" >&2; exit 2; }
# R2RC=path/to/r2rc benchmarks that binary instead of building this tree's.
if [ -z "${R2RC:-}" ]; then cargo build --release --quiet; fi
B=${R2RC:-target/release/r2rc}
# ResNet-18's layout with every width times $K (a wide ResNet, Zagoruyko & Komodakis style).
NAMES=r2rc
STEM=wide_resnet
if [ "$MODEL" = llama ]; then
    NAMES=hf
    STEM=model
    # 266M parameters (1.06 GB in f32): width 1024, 16 heads in 4 kv groups, 18 layers.
    cat > "$D/wide_resnet.arch" <<ARCH
# A Llama-shaped decoder with a checkpoint over 1 GB for the streaming benchmark.
arch LlamaBench
norm rms, eps 1e-5, act silu, no bias
input 256 tokens, vocab 32000

embed     256x1024   1024-d token embedding
layers_x  256x1024   [attention 16 heads, 4 kv heads, rope 10000, causal; mlp 2816 gated] x 18
head      256x32000  norm, 32000-d fc
ARCH
else
cat > "$D/wide_resnet.arch" <<ARCH
# ResNet-18 layout, widths x$K: a checkpoint over 1 GB for the streaming benchmark.
arch WideResNet18
input 3x32x32

conv1    16x16  7x7, $((64 * K)), stride 2
conv2_x  8x8    3x3 max pool, stride 2
                [3x3, $((64 * K)); 3x3, $((64 * K))] x 2
conv3_x  4x4    [3x3, $((128 * K)); 3x3, $((128 * K))] x 2, stride 2
conv4_x  2x2    [3x3, $((256 * K)); 3x3, $((256 * K))] x 2, stride 2
conv5_x  1x1    [3x3, $((512 * K)); 3x3, $((512 * K))] x 2, stride 2
head     1x1    avg pool, 1000-d fc, softmax
ARCH
fi
rm -rf "$D/student" "$D/copy.safetensors"
"$B" init "$D/wide_resnet.arch" -o "$D/teacher.safetensors" --random-stats --force --names "$NAMES"
sync
teacher=$(stat -c %s "$D/teacher.safetensors")

# cp, then cp with the copy synced to disk (the widen syncs its outputs before renaming).
t0=$(date +%s.%N)
cp "$D/teacher.safetensors" "$D/copy.safetensors"
t1=$(date +%s.%N)
sync "$D/copy.safetensors"
t2=$(date +%s.%N)
rm -f "$D/copy.safetensors"; sync

# ROUNDS rounds (default 5) of the widen and of the direct-write floor, taking turns going
# first: this VM's disk speed drifts by 2x within minutes, so one of each was a coin toss.
# The floor writes the student's bytes from /dev/zero into a new file with O_DIRECT (as the
# widen writes where the file system allows). dd's buffer is in 4 KiB pages, so on a disk
# that caps segments per request (this VM's virtio disk: 254) its requests hold ~1 MB; r2rc
# writes from huge pages (direct::DeviceBuffer, 4 MB requests) and can finish under the
# floor. The student is 2.25x the teacher's bytes for --by 1.5.
ROUNDS=${ROUNDS:-5}
rounds="$D/rounds.txt"
: > "$rounds"
widen_once() {
    rm -rf "$D/student"; sync
    /usr/bin/time -v -o "$D/time.txt" "$B" widen "$D/wide_resnet.arch" --all --by 1.5 --no-prove \
        --weights "$D/teacher.safetensors" --names "$NAMES" -o "$D/student" --force 2> "$D/widen.log"
    local wall secs rss_kb cpu
    wall=$(grep "Elapsed (wall clock)" "$D/time.txt" | awk '{print $NF}')
    secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    rss_kb=$(grep "Maximum resident set size" "$D/time.txt" | awk '{print $NF}')
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$D/time.txt")
    echo "widen $1 $secs $rss_kb $cpu" >> "$rounds"
}
floor_once() {
    local size f0 f1
    size=$(stat -c %s "$D/student/$STEM.safetensors")
    rm -f "$D/floor.bin"; sync
    f0=$(date +%s.%N)
    dd if=/dev/zero of="$D/floor.bin" bs=8M count="$size" iflag=count_bytes oflag=direct status=none
    f1=$(date +%s.%N)
    rm -f "$D/floor.bin"
    echo "floor $1 $f0 $f1" >> "$rounds"
    # The same bytes from a buffer in huge pages, as r2rc writes them (timed inside).
    sync
    echo "huge $1 $(python3 scripts/huge_page_floor.py "$D/floor.bin" "$size")" >> "$rounds"
    rm -f "$D/floor.bin"
}
for r in $(seq "$ROUNDS"); do
    # The floor needs the student's size, so the first round widens first.
    if [ $((r % 2)) = 1 ]; then widen_once "$r"; floor_once "$r"; else floor_once "$r"; widen_once "$r"; fi
done
student=$(stat -c %s "$D/student/$STEM.safetensors")

# The floor through the page cache (then synced, as the widen syncs its output), once.
sync
f0=$(date +%s.%N)
dd if=/dev/zero of="$D/floor.bin" bs=8M count="$student" iflag=count_bytes status=none
f1=$(date +%s.%N)
sync "$D/floor.bin"
f2=$(date +%s.%N)
rm -f "$D/floor.bin"; sync

python3 - "$teacher" "$student" "$t0" "$t1" "$t2" "$f0" "$f1" "$f2" "$rounds" <<'PY'
import os, statistics, sys
teacher, student = int(sys.argv[1]), int(sys.argv[2])
t0, t1, t2, f0, f1, f2 = (float(x) for x in sys.argv[3:9])
runs = {"widen": {}, "floor": {}, "huge": {}}
for line in open(sys.argv[9]):
    kind, r, *v = line.split()
    runs[kind][int(r)] = [float(x) for x in v]
widen, direct, huge = runs["widen"], runs["floor"], runs["huge"]
rounds = sorted(widen)
walls = [widen[r][0] for r in rounds]
cpus = [widen[r][2] for r in rounds]
floors_direct = [direct[r][1] - direct[r][0] for r in rounds]
ratios = [wall / fl for wall, fl in zip(walls, floors_direct)]
rss = max(widen[r][1] for r in rounds) * 1024
w, d, cpu = statistics.median(walls), statistics.median(floors_direct), statistics.median(cpus)
cp, cps = t1 - t0, t2 - t0
span = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"
print(f"teacher checkpoint   {teacher / 1e9:.3f} GB")
print(f"student checkpoint   {student / 1e9:.3f} GB")
print(f"cp                   {cp:.2f} s   (cp + sync of the copy: {cps:.2f} s)")
print(f"r2rc widen --all --by 1.5 --no-prove   {w:.2f} s median of {len(rounds)} ({span(walls)}; "
      f"CPU user + sys: {cpu:.2f} s)")
print(f"ratio widen / cp     {w / cp:.2f}   (widen / (cp + sync): {w / cps:.2f}; target <= 2)")
floor, floors = f1 - f0, f2 - f0
print(f"write floor          {floor:.2f} s   (dd of the student's {student / 1e9:.3f} GB from /dev/zero; + sync: {floors:.2f} s)")
print(f"direct write floor   {d:.2f} s median ({span(floors_direct)}; the same with oflag=direct: {d / cp:.2f}x cp)")
print(f"round ratios         {' '.join(f'{r:.2f}' for r in ratios)} (widen / the direct floor of its round)")
print(f"ratio widen / floor  {w / floors:.2f} of (floor + sync), {statistics.median(ratios):.2f} of the direct floor (median of rounds)")
floors_huge = [huge[r][0] for r in rounds]
ratios_huge = [wall / fl for wall, fl in zip(walls, floors_huge)]
print(f"huge-page floor      {statistics.median(floors_huge):.2f} s median ({span(floors_huge)}; "
      f"O_DIRECT from 2 MiB pages, as r2rc writes: scripts/huge_page_floor.py)")
print(f"ratio widen / huge   {statistics.median(ratios_huge):.2f} (median of rounds; not a target)")
# On shared cores the wall-clock ratios follow the load; the CPU time steadies them.
print(f"load average         {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
print(f"peak RSS             {rss / 1e9:.3f} GB = {rss / student:.2f} x the student checkpoint (target <= 1.5)")
PY
if [ "${KEEP:-0}" != 1 ]; then rm -rf "$D/student" "$D/teacher.safetensors"; fi
