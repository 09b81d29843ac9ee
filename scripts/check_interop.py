#!/usr/bin/env python3
"""Cross-checks r2rc against runtimes it did not write.

For every examples/*.arch but the transformers, and the all-ops fixtures in
scripts/interop/*.arch:
  1. `r2rc init --random-stats --seed S` writes weights; the `safetensors` package (numpy
     API) must load them with exactly the keys, shapes and dtypes of `r2rc export --json`
     (float32, int64 for num_batches_tracked).
  2. `r2rc export --onnx` must pass `onnx.checker.check_model(full_check=True)`.
  3. onnxruntime's output on a random f32 batch must match `r2rc run --input x.npy
     --output y.npy` within max|diff| <= 1e-4 * max|output|.

Weights stored as f64, f16 and bf16 are exported as f32 too: a few examples are repeated
with `r2rc init --dtype` (numpy has no bfloat16, so that file's package check is skipped).

A final softmax that saturates (max near 1) hides errors in the logits, so every example
ending in `, softmax` is checked a second time with the softmax removed from its text.

The grown students of scripts/family_cases.py (ResNeXt, option-A, DenseNet and
pre-activation networks, widened and deepened between and inside blocks) run in ONNX
Runtime with their teachers' outputs.

Prints a table of errors and exits non-zero on any failure.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workdir  # noqa: E402  (scratch folders, removed when every check passed)
import family_cases  # noqa: E402  (the grown students of issue 17, shared with check_family_growth.py)

TOLERANCE = 1e-4


def r2rc(binary, *args):
    """Runs r2rc; raises with its stderr on failure."""
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"r2rc {' '.join(args)} exited {p.returncode}:\n{p.stderr.strip()}")
    return p


FLOAT = {"f32": np.float32, "f64": np.float64, "f16": np.float16}


def check_safetensors(path, graph, dtype):
    """Keys, shapes and dtypes of the weights file against the graph JSON."""
    tensors = load_file(path)
    expected = {p["name"]: p for p in graph["params"]}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise AssertionError(f"safetensors keys differ: missing {missing[:5]}, extra {extra[:5]}")
    for name, spec in expected.items():
        t = tensors[name]
        if list(t.shape) != spec["shape"]:
            raise AssertionError(f"{name}: shape {list(t.shape)}, expected {spec['shape']}")
        want = np.int64 if spec["dtype"] == "int64" else FLOAT[dtype]
        if t.dtype != want:
            raise AssertionError(f"{name}: dtype {t.dtype}, expected {np.dtype(want)}")
    return len(tensors)


def check_example(binary, arch, work, seed, batch, stem=None, dtype="f32"):
    stem = stem or os.path.splitext(os.path.basename(arch))[0]
    w = os.path.join(work, f"{stem}.safetensors")
    model_path = os.path.join(work, f"{stem}.onnx")
    graph_path = os.path.join(work, f"{stem}.json")
    x_path = os.path.join(work, f"{stem}.x.npy")
    y_path = os.path.join(work, f"{stem}.y.npy")

    r2rc(binary, "init", arch, "-o", w, "--seed", str(seed), "--random-stats", "--dtype", dtype)
    r2rc(binary, "export", arch, "--weights", w, "--onnx", model_path, "--json", graph_path)
    with open(graph_path) as f:
        graph = json.load(f)
    n_tensors = len(graph["params"])
    if dtype in FLOAT:
        n_tensors = check_safetensors(w, graph, dtype)

    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *graph["input"]["shape"])).astype(np.float32)
    np.save(x_path, x)
    t0 = time.perf_counter()
    r2rc(binary, "run", arch, "--weights", w, "--input", x_path, "--output", y_path,
         "--dtype", "f32", "--mode", "eval")
    t_r2rc = time.perf_counter() - t0
    ours = np.load(y_path).astype(np.float32)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    (theirs,) = sess.run(["output"], {"input": x})

    expected_shape = (batch, *graph["output"]["shape"])
    if ours.shape != expected_shape or theirs.shape != expected_shape:
        raise AssertionError(
            f"output shapes: r2rc {ours.shape}, onnxruntime {theirs.shape}, graph {expected_shape}")
    scale = float(np.max(np.abs(theirs)))
    err = float(np.max(np.abs(ours - theirs)))
    last = graph["nodes"][-1]["op"]
    return {
        "example": stem,
        "last_op": last,
        "tensors": n_tensors,
        "max_abs_out": scale,
        "max_abs_err": err,
        "rel": err / scale if scale > 0 else err,
        "passed": err <= TOLERANCE * scale and np.all(np.isfinite(ours)),
        "r2rc_s": t_r2rc,
    }


def ort_run(model_path, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def check_noisy_net2net(binary, arch, work, seed, batch):
    """Net2Net with cancelling noise (`--noise 0.1`, issue 15): the student's weights differ
    from the noiseless student's (the replicas' outgoing columns got noise), yet ONNX
    Runtime finds the student's outputs equal to the teacher's."""
    stem = "noisy_net2net"
    w = os.path.join(work, f"{stem}.teacher.safetensors")
    r2rc(binary, "init", arch, "-o", w, "--seed", str(seed), "--random-stats")
    outs = {}
    for name, extra in [("noisy", ["--noise", "0.1"]), ("plain", [])]:
        d = os.path.join(work, f"{stem}.{name}")
        r2rc(binary, "widen", arch, "--all", "--by", "1.5", "--method", "net2net",
             "--weights", w, "-o", d, "--force", *extra)
        outs[name] = d
    base = os.path.splitext(os.path.basename(arch))[0]
    noisy = load_file(os.path.join(outs["noisy"], f"{base}.safetensors"))
    plain = load_file(os.path.join(outs["plain"], f"{base}.safetensors"))
    changed = [n for n in plain if plain[n].shape == noisy[n].shape
               and not np.array_equal(plain[n], noisy[n])]
    if not changed:
        raise AssertionError("--noise changed no tensor of the Net2Net student")
    t_onnx = os.path.join(work, f"{stem}.teacher.onnx")
    s_onnx = os.path.join(work, f"{stem}.student.onnx")
    r2rc(binary, "export", arch, "--weights", w, "--onnx", t_onnx)
    r2rc(binary, "export", os.path.join(outs["noisy"], f"{base}.arch"), "--weights",
         os.path.join(outs["noisy"], f"{base}.safetensors"), "--onnx", s_onnx)
    shape = onnx.load(t_onnx).graph.input[0].type.tensor_type.shape.dim
    x = np.random.default_rng(seed).standard_normal(
        (batch, *[d.dim_value for d in shape[1:]])).astype(np.float32)
    teacher, student = ort_run(t_onnx, x), ort_run(s_onnx, x)
    scale = float(np.max(np.abs(teacher)))
    err = float(np.max(np.abs(teacher - student)))
    return {
        "example": f"{stem} ({len(changed)} tensors noised)",
        "last_op": "",
        "tensors": len(noisy),
        "max_abs_out": scale,
        "max_abs_err": err,
        "rel": err / scale if scale > 0 else err,
        "passed": err <= TOLERANCE * scale,
        "r2rc_s": 0.0,
    }


def is_transformer(arch):
    """Whether the .arch file has a transformer row (attention sublayers)."""
    with open(arch) as f:
        return any(re.search(r"\battention\b", line.split("#")[0]) for line in f)


def check_family_growth(binary, examples, work, seed, batch):
    """Grown students of the other families (scripts/family_cases.py: grouped convs, pad
    shortcuts, the ResNeXt, DenseNet and pre-activation examples at 64x64; every exact
    widening, layers inserted between and inside blocks) in ONNX Runtime give the
    teacher's outputs, also in ONNX Runtime."""
    results = []
    for stem, src, grows in family_cases.cases():
        for i, (kind, flags) in enumerate(grows):
            d = os.path.join(work, f"{stem}.grow{i}")
            os.makedirs(d, exist_ok=True)
            arch = family_cases.arch_for(examples, stem, src, d)
            w = os.path.join(d, "teacher.safetensors")
            r2rc(binary, "init", arch, "-o", w, "--seed", str(seed + i), "--random-stats",
                 "--force")
            t_onnx = os.path.join(d, "teacher.onnx")
            r2rc(binary, "export", arch, "--weights", w, "--onnx", t_onnx, "--force")
            shape = onnx.load(t_onnx).graph.input[0].type.tensor_type.shape.dim
            x = np.random.default_rng(seed + i).standard_normal(
                (batch, *[dim.dim_value for dim in shape[1:]])).astype(np.float32)
            teacher = ort_run(t_onnx, x)
            out = os.path.join(d, "student")
            r2rc(binary, kind, arch, *flags, "--weights", w, "-o", out, "--force")
            s_w = os.path.join(out, f"{stem}.safetensors")
            s_onnx = os.path.join(d, "student.onnx")
            r2rc(binary, "export", os.path.join(out, f"{stem}.arch"), "--weights", s_w,
                 "--onnx", s_onnx, "--force")
            student = ort_run(s_onnx, x)
            scale = float(np.max(np.abs(teacher)))
            err = float(np.max(np.abs(teacher - student)))
            what = " ".join(f for f in flags if f not in ("--method", "--no-prove"))
            results.append({
                "example": f"{stem} {kind} {what}",
                "last_op": "",
                "tensors": len(load_file(s_w)),
                "max_abs_out": scale,
                "max_abs_err": err,
                "rel": err / scale if scale > 0 else err,
                "passed": err <= TOLERANCE * scale,
                "r2rc_s": 0.0,
            })
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc", help="path to the r2rc binary")
    ap.add_argument("--examples", default="examples", help="folder of .arch files")
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "interop"),
                    help="folder of extra .arch files covering every op")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--keep", help="write files here instead of a temporary folder")
    args = ap.parse_args()

    # The transformer examples (gpt2, tinyllama, vit_b16) are left to
    # check_transformer_exports.py, which runs their exports on tiny random networks, and to
    # tests/it/onnx_tract.rs (full-size ViT-B/16 and GPT-2 in tract): TinyLlama takes
    # 4.4 GB, and GPT-2 and TinyLlama read token ids, not the random floats fed here.
    arches = [a for a in sorted(glob.glob(os.path.join(args.examples, "*.arch")))
              if not is_transformer(a)]
    if not arches:
        print(f"no .arch files in {args.examples}", file=sys.stderr)
        return 2
    arches += sorted(glob.glob(os.path.join(args.fixtures, "*.arch")))
    work = workdir.folder(args.keep, "r2rc-interop-")
    cases = []
    for arch in arches:
        stem = os.path.splitext(os.path.basename(arch))[0]
        cases.append((arch, stem, "f32"))
        with open(arch) as f:
            src = f.read()
        cut = re.sub(r",\s*softmax\b", "", src)
        if cut != src:
            variant = os.path.join(work, f"{stem}_logits.arch")
            with open(variant, "w") as f:
                f.write(cut)
            cases.append((variant, f"{stem}_logits", "f32"))
    # Other file dtypes, on a few small networks.
    by_stem = {stem: arch for arch, stem, _ in cases}
    for stem, dtype in [("smallconv", "f16"), ("resnet_cifar10", "f64"), ("all_ops", "bf16")]:
        if stem in by_stem:
            cases.append((by_stem[stem], f"{stem}_{dtype}", dtype))

    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    print(f"{'example':<22} {'tensors':>7} {'max|out|':>10} {'max|err|':>10} {'err/max':>9} "
          f"{'r2rc s':>7}  result")
    failed = 0
    for i, (arch, stem, dtype) in enumerate(cases):
        try:
            r = check_example(args.r2rc, arch, work, args.seed + i, args.batch, stem, dtype)
            if stem.endswith("_logits") and r["last_op"] == "softmax":
                raise AssertionError("removing `, softmax` left a softmax at the output")
        except Exception as e:  # report every example, then fail
            failed += 1
            print(f"{stem:<22} FAILED: {e}")
            continue
        if not r["passed"]:
            failed += 1
        print(f"{r['example']:<22} {r['tensors']:>7} {r['max_abs_out']:>10.3e} "
              f"{r['max_abs_err']:>10.3e} {r['rel']:>9.2e} {r['r2rc_s']:>7.2f}  "
              f"{'ok' if r['passed'] else 'FAILED (tolerance %.0e)' % TOLERANCE}")
    # A noisy Net2Net student (exact, issue 15) against its teacher, both in ONNX Runtime.
    cases.append(None)
    try:
        r = check_noisy_net2net(args.r2rc, by_stem.get("resnet_cifar10", arches[0]), work,
                                args.seed, args.batch)
        failed += 0 if r["passed"] else 1
        print(f"{r['example']:<22} {r['tensors']:>7} {r['max_abs_out']:>10.3e} "
              f"{r['max_abs_err']:>10.3e} {r['rel']:>9.2e} {'-':>7}  "
              f"{'ok' if r['passed'] else 'FAILED (tolerance %.0e)' % TOLERANCE}")
    except Exception as e:
        failed += 1
        print(f"noisy_net2net          FAILED: {e}")
    # Grown students of grouped and option-A networks against their teachers (issue 17).
    try:
        for r in check_family_growth(args.r2rc, args.examples, work, args.seed, args.batch):
            cases.append(None)
            failed += 0 if r["passed"] else 1
            print(f"{r['example']:<22} {r['tensors']:>7} {r['max_abs_out']:>10.3e} "
                  f"{r['max_abs_err']:>10.3e} {r['rel']:>9.2e} {'-':>7}  "
                  f"{'ok' if r['passed'] else 'FAILED (tolerance %.0e)' % TOLERANCE}")
    except Exception as e:
        cases.append(None)
        failed += 1
        print(f"family_growth          FAILED: {e}")
    passed = len(cases) - failed
    print(f"interop: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(workdir.finish(main()))
