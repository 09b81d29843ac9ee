#!/usr/bin/env bash
# Runs every test of r2rc: the Rust suite (unit, integration, snapshots, property tests,
# the tract-onnx cross-check) and the Python cross-checks against onnx, onnxruntime,
# safetensors, PyTorch/torchvision and transformers/timm. This is the command README.md gives and CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check_grow_digits.sh
scripts/check_grow_text.sh
# One release build serves the tests and the Python checks (building dev and release
# would compile every dependency, tract-onnx included, twice).
cargo test --release --all-targets
scripts/ci_python.sh target/release/r2rc
scripts/ci_torch.sh target/release/r2rc
scripts/ci_transformers.sh target/release/r2rc
scripts/ci_pyapi.sh target/release/r2rc
