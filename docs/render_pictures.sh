#!/usr/bin/env bash
# Renders docs/widen_conv2_1.png: block conv2_1 of ResNetCifar-10 before and after
# `r2rc widen --layer conv2_1 --by 2`. Needs Graphviz's dot and python3 with Pillow.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --quiet
r2rc=target/release/r2rc
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$r2rc" widen examples/resnet_cifar10.arch --layer conv2_1 --by 2 -o "$tmp/w" >/dev/null 2>&1
"$r2rc" graph examples/resnet_cifar10.arch --focus conv2_1 --format png -o "$tmp/before.png"
"$r2rc" diff examples/resnet_cifar10.arch "$tmp/w/resnet_cifar10.arch" --focus conv2_1 \
    --format png -o "$tmp/after.png"
"${PYTHON:-python3}" - "$tmp/before.png" "$tmp/after.png" docs/widen_conv2_1.png <<'PY'
import sys
from PIL import Image, ImageDraw
a, b = Image.open(sys.argv[1]).convert("RGB"), Image.open(sys.argv[2]).convert("RGB")
gap, top = 40, 10
w, h = a.width + gap + b.width, max(a.height, b.height) + top
out = Image.new("RGB", (w, h), "white")
out.paste(a, (0, top + h - top - a.height))
out.paste(b, (a.width + gap, top + h - top - b.height))
ImageDraw.Draw(out).line([(a.width + gap // 2, top), (a.width + gap // 2, h - top)], fill=(200, 200, 200), width=2)
out.save(sys.argv[3], optimize=True)
PY
echo "wrote docs/widen_conv2_1.png"
