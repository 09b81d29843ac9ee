#!/usr/bin/env python3
"""Forward-pass throughput of r2rc against onnxruntime on the same model and inputs.

Times resnet18 (224x224, batch 8) and resnet_cifar18 (r = 2^-3, batch 128) in one run:
r2rc via `r2rc run --input x.npy --repeat K --threads T` (which prints images/s to stderr)
and onnxruntime on r2rc's own ONNX export of the same weights, with intra_op_num_threads=T
and inter_op_num_threads=1. Prints images/s for both and the ratio r2rc / onnxruntime.

Each round times both (best of --repeat passes each) and the best round counts, so load
from other processes biases neither side much; the load average is printed with the table.

Usage: scripts/bench_forward.py [--r2rc target/release/r2rc] [--threads 2] [--repeat 10]
                                [--rounds 3]
Needs numpy and onnxruntime (scripts/ci_python.sh installs them into target/py-venv).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

# (example, --set arguments, batch)
CASES = [
    ("resnet18", [], 8),
    ("resnet_cifar18", ["--set", "r=1/8"], 128),
]


def r2rc(binary, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"r2rc {' '.join(args)} exited {p.returncode}:\n{p.stderr.strip()}")
    return p


def input_shape(binary, arch, sets, work):
    import json

    path = os.path.join(work, "graph.json")
    r2rc(binary, "export", arch, *sets, "--json", path, "--force")
    with open(path) as f:
        return json.load(f)["input"]["shape"]


def bench_ort(model_path, x, threads, repeat):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    sess.run(["output"], {"input": x})  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(["output"], {"input": x})
        best = min(best, time.perf_counter() - t0)
    return x.shape[0] / best


def bench_r2rc(binary, arch, sets, w, x_path, threads, repeat):
    p = r2rc(binary, "run", arch, *sets, "--weights", w, "--input", x_path,
             "--repeat", str(repeat), "--threads", str(threads), "--dtype", "f32")
    m = re.findall(r"([0-9][0-9.eE+]*)\s*images/s", p.stderr)
    if not m:
        raise RuntimeError(f"r2rc run printed no images/s on stderr:\n{p.stderr.strip()}")
    return float(m[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc")
    ap.add_argument("--examples", default="examples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="r2rc-bench-")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, best of {args.rounds} rounds "
          f"x {args.repeat} passes, {os.cpu_count()} cores, load average {load:.2f}")
    print(f"{'model':<16} {'batch':>5} {'r2rc img/s':>11} {'ort img/s':>10} {'r2rc/ort':>9}")
    status = 0
    for name, sets, batch in CASES:
        arch = os.path.join(args.examples, f"{name}.arch")
        try:
            w = os.path.join(work, f"{name}.safetensors")
            onnx_path = os.path.join(work, f"{name}.onnx")
            r2rc(args.r2rc, "init", arch, *sets, "-o", w, "--seed", str(args.seed), "--random-stats")
            r2rc(args.r2rc, "export", arch, *sets, "--weights", w, "--onnx", onnx_path)
            shape = input_shape(args.r2rc, arch, sets, work)
            x = np.random.default_rng(args.seed).standard_normal((batch, *shape)).astype(np.float32)
            x_path = os.path.join(work, f"{name}.x.npy")
            np.save(x_path, x)
            ours, theirs = 0.0, 0.0
            for _ in range(args.rounds):
                ours = max(ours, bench_r2rc(args.r2rc, arch, sets, w, x_path, args.threads,
                                            args.repeat))
                theirs = max(theirs, bench_ort(onnx_path, x, args.threads, args.repeat))
        except Exception as e:
            status = 1
            print(f"{name:<16} FAILED: {e}")
            continue
        print(f"{name:<16} {batch:>5} {ours:>11.1f} {theirs:>10.1f} {ours / theirs:>9.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
