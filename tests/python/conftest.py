"""Shared fixtures: the CLI binary the API is checked against (R2RC, default
target/release/r2rc), the examples folder, and teachers written by `r2rc init`."""

import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def cli():
    """Runs the r2rc CLI; returns the CompletedProcess (text)."""
    exe = os.environ.get("R2RC", str(ROOT / "target" / "release" / "r2rc"))
    if not os.access(exe, os.X_OK):
        pytest.fail(f"no r2rc binary at {exe}: build it (cargo build --release) or set R2RC")

    def run(*args, ok=True):
        p = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
        if ok and p.returncode != 0:
            raise AssertionError(f"r2rc {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
        return p

    return run


@pytest.fixture(scope="session")
def teacher(cli, tmp_path_factory):
    """teacher(arch_file, names="r2rc", dtype="f32", seed=1) -> path of weights that
    `r2rc init --random-stats` wrote (cached per arguments)."""
    cache = {}
    root = tmp_path_factory.mktemp("teachers")

    def make(arch, names="r2rc", dtype="f32", seed=1):
        key = (str(arch), names, dtype, seed)
        if key not in cache:
            out = root / f"t{len(cache)}.safetensors"
            cli("init", arch, "--random-stats", "--seed", seed, "--names", names,
                "--dtype", dtype, "-o", out)
            cache[key] = out
        return cache[key]

    return make


def same_bits(a, b):
    """Whether two arrays are equal bit for bit (dtype, shape and every byte)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def arch_body(text):
    """An `.arch` file's text without the report's header comment."""
    lines = text.splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "".join(lines)
