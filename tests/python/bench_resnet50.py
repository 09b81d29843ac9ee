"""Times growing a ResNet-50 in Python (r2rc.widen on a state dict in memory) against the
CLI on the same inputs (the same weights file, arguments and seed), and checks that both
students are the same bits. Not part of pytest (slow); run by hand:

    python tests/python/bench_resnet50.py [--r2rc target/release/r2rc] [--prove local|full|none]
"""

import argparse
import pathlib
import subprocess
import tempfile
import time

import numpy as np
from safetensors.numpy import load_file

import r2rc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--r2rc", default=str(ROOT / "target/release/r2rc"))
    ap.add_argument("--prove", default="local", choices=["local", "full", "none"])
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    arch_file = ROOT / "examples/resnet50.arch"
    words = ["--layer", "layer3", "--by", "1.5"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        w = tmp / "r50.safetensors"
        subprocess.run([a.r2rc, "init", arch_file, "--random-stats", "--names", "torchvision",
                        "--seed", "1", "-o", w], check=True, capture_output=True)
        prove_flags = {"local": ["--prove", "local"], "full": [], "none": ["--no-prove"]}[a.prove]
        cli_times = []
        for i in range(a.repeat):
            out = tmp / f"cli{i}"
            t = time.perf_counter()
            subprocess.run([a.r2rc, "widen", arch_file, *words, "--names", "torchvision",
                            "--weights", w, "--seed", "3", *prove_flags, "-o", out],
                           check=True, capture_output=True)
            cli_times.append(time.perf_counter() - t)
        py_times, grow_times = [], []
        for _ in range(a.repeat):
            t = time.perf_counter()
            arch = r2rc.Arch.load(arch_file)
            sd = load_file(w)
            t1 = time.perf_counter()
            g = r2rc.widen(arch, sd, layer="layer3", by=1.5, names="torchvision", seed=3,
                           prove=None if a.prove == "none" else a.prove)
            t2 = time.perf_counter()
            py_times.append(t2 - t)
            grow_times.append(t2 - t1)
        cli = load_file(out / "resnet50.safetensors")
        same = sorted(cli) == sorted(g.state_dict) and all(
            cli[k].dtype == g.state_dict[k].dtype and cli[k].shape == g.state_dict[k].shape
            and cli[k].tobytes() == np.ascontiguousarray(g.state_dict[k]).tobytes()
            for k in cli)
        n = sum(v.size for v in g.state_dict.values())
        print(f"ResNet-50 widen --layer layer3 --by 1.5 --names torchvision, proof {a.prove}, "
              f"student {n / 1e6:.1f}M values")
        print(f"  CLI (read file, grow, write files):       {min(cli_times):.2f} s")
        print(f"  Python (load_file + r2rc.widen):           {min(py_times):.2f} s")
        print(f"  Python r2rc.widen alone (state in memory): {min(grow_times):.2f} s")
        print(f"  students identical: {same}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
