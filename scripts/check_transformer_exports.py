"""Cross-checks r2rc's transformer exports against runtimes r2rc did not write.

For tiny GPT-2-, Llama- and ViT-shaped networks (random weights with random norm weights
and biases): `r2rc export --onnx` runs in ONNX Runtime, `r2rc export --torch` loads with
load_state_dict(strict=True) and runs in PyTorch, and both must agree with each other and
with `r2rc run` within 1e-4 x max |logit|.

Usage: python check_transformer_exports.py --r2rc PATH [--keep DIR]
Needs torch, onnxruntime, numpy and safetensors (scripts/ci_transformers.sh's venv).
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file

NETS = {
    "gpt": """arch TinyGPT
norm layer, eps 1e-5, act gelu_tanh, bias
input 16 tokens, vocab 97

embed     16x32    32-d token embedding, learned positions
layers_x  16x32    [attention 4 heads, causal; mlp 64] x 2
head      16x97    norm, 97-d fc, tied
""",
    "llama": """arch TinyLlama
norm rms, eps 1e-5, act silu, no bias
input 16 tokens, vocab 101

embed     16x32   32-d token embedding
layers_x  16x32   [attention 4 heads, 2 kv heads, rope 10000, causal; mlp 48 gated] x 2
head      16x101  norm, 101-d fc
""",
    "vit": """arch TinyViT
norm layer, eps 1e-6, act gelu, bias
input 3x32x32

embed     17x32   8x8, 32, stride 8, no norm; class token, learned positions
blocks_x  17x32   [attention 4 heads; mlp 64] x 2
head      1x1     norm, class token, 10-d fc
""",
}


def r2rc(exe, *args):
    out = subprocess.run([exe, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"r2rc {' '.join(args)} failed:\n{out.stderr}")
    return out


def inputs(name, rng):
    if name == "vit":
        return rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    vocab = 97 if name == "gpt" else 101
    # Shorter than the declared 16 tokens: tables must be sliced to T.
    return rng.integers(0, vocab, size=(2, 11)).astype(np.int64)


def check(exe, d, name, text, rng):
    arch = os.path.join(d, f"{name}.arch")
    with open(arch, "w") as f:
        f.write(text)
    w = os.path.join(d, f"{name}.safetensors")
    r2rc(exe, "init", arch, "-o", w, "--random-stats", "--seed", "3", "--force")
    onnx_path, py_path = os.path.join(d, f"{name}.onnx"), os.path.join(d, f"{name}.py")
    r2rc(exe, "export", arch, "--weights", w, "--onnx", onnx_path)
    r2rc(exe, "export", arch, "--weights", w, "--torch", py_path)
    x = inputs(name, rng)
    y_ort = ort.InferenceSession(onnx_path).run(None, {"input": x})[0]

    spec = importlib.util.spec_from_file_location(f"m_{name}", py_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cls = [v for k, v in vars(mod).items() if isinstance(v, type) and k.startswith("Tiny")][0]
    model = cls()
    model.load_state_dict({k: v.float() for k, v in load_file(w).items()}, strict=True)
    model.eval()
    with torch.no_grad():
        y_torch = model(torch.from_numpy(x)).numpy()

    results = {"onnxruntime vs torch": np.abs(y_ort - y_torch).max()}
    xp = os.path.join(d, f"{name}_x.npy")
    yp = os.path.join(d, f"{name}_y.npy")
    np.save(xp, x)
    run = subprocess.run(
        [exe, "run", arch, "--weights", w, "--input", xp, "--output", yp, "--force"],
        capture_output=True, text=True,
    )
    if run.returncode == 0:
        results["r2rc run vs torch"] = np.abs(np.load(yp) - y_torch).max()
    else:
        results["r2rc run"] = f"failed: {run.stderr.strip().splitlines()[0] if run.stderr else run.returncode}"
    scale = np.abs(y_torch).max()
    ok = True
    for what, err in results.items():
        if isinstance(err, str):
            print(f"FAIL {name}: {what} {err}")
            ok = False
            continue
        good = err <= 1e-4 * scale
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name}: {what}: max abs {err:.3e} (max |y| {scale:.3e})")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--r2rc", required=True)
    ap.add_argument("--keep")
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        d = a.keep or tmp
        os.makedirs(d, exist_ok=True)
        ok = all([check(a.r2rc, d, n, t, rng) for n, t in NETS.items()])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
