#!/usr/bin/env python3
"""Cross-checks r2rc against PyTorch and torchvision (Debian's python3-torch 1.13).

1. Every examples/*.arch but the transformers, and scripts/interop/*.arch (and, for those
   ending in softmax, the same text without it): `r2rc init --random-stats` writes
   weights, `r2rc export --torch` writes a module;
   `load_state_dict(safetensors.torch.load_file(W))` must take them with strict=True
   (keys, shapes, float32 and int64 dtypes equal), and the module's eval output must
   match `r2rc run` within max|diff| <= 1e-4 * max|output|.
2. The same for an R2R-widened and an R2R-deepened student (r2rc widen / deepen), whose
   modules must also reproduce the teacher's output (the rewrites preserve the function).
3. torchvision.models.resnet18() and resnet50() with random BN statistics and affine
   parameters, saved with safetensors.torch.save_file: `r2rc run examples/resnetN.arch
   --names torchvision` must match torchvision's eval output, its logits (the examples
   end in the fc, as torchvision does, and their exported modules must not apply a
   softmax), and the students of `r2rc widen` and `r2rc deepen --names torchvision`,
   loaded into the module of `r2rc export --torch --names torchvision`, must still match
   the torchvision teacher.

Prints one line per check and `torch: N passed, M failed`; exits non-zero on a failure.
"""

import argparse
import glob
import importlib.util
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workdir  # noqa: E402  (scratch folders, removed when every check passed)

TOLERANCE = 1e-4


def r2rc(binary, *args):
    """Runs r2rc; raises with its stderr on failure."""
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"r2rc {' '.join(args)} exited {p.returncode}:\n{p.stderr.strip()}")
    return p


def load_module(path):
    """Imports a generated file and returns its model class (the nn.Module subclass)."""
    name = "r2rc_gen_" + re.sub(r"\W", "_", os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    classes = [v for v in vars(mod).values()
               if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == name]
    if len(classes) != 1:
        raise AssertionError(f"{path} defines {len(classes)} nn.Module classes, expected 1")
    return classes[0], mod


def torch_model(binary, arch, weights, work, stem, names=None):
    """Exports arch as a module, loads the weights strictly, returns it in eval mode."""
    py = os.path.join(work, f"{stem}.py")
    extra = ["--names", names] if names else []
    r2rc(binary, "export", arch, "--weights", weights, "--torch", py, "--force", *extra)
    cls, mod = load_module(py)
    model = cls()
    state = load_file(weights)
    own = model.state_dict()
    if set(own) != set(state):
        raise AssertionError(f"state_dict keys differ: missing {sorted(set(state) - set(own))[:5]},"
                             f" extra {sorted(set(own) - set(state))[:5]}")
    for k, v in state.items():
        if own[k].shape != v.shape or own[k].dtype != v.dtype:
            raise AssertionError(f"{k}: module {tuple(own[k].shape)} {own[k].dtype}, "
                                 f"file {tuple(v.shape)} {v.dtype}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, mod


def forward(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def r2rc_run(binary, arch, weights, x, work, stem, names=None):
    x_path = os.path.join(work, f"{stem}.x.npy")
    y_path = os.path.join(work, f"{stem}.y.npy")
    np.save(x_path, x)
    extra = ["--names", names] if names else []
    r2rc(binary, "run", arch, "--weights", weights, "--input", x_path, "--output", y_path,
         "--dtype", "f32", "--mode", "eval", *extra)
    return np.load(y_path).astype(np.float32)


def compare(what, ours, theirs):
    """A result row: passes when max|diff| <= TOLERANCE * max|theirs|."""
    if ours.shape != theirs.shape:
        raise AssertionError(f"shapes {ours.shape} and {theirs.shape}")
    scale = float(np.max(np.abs(theirs)))
    err = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))
    ok = bool(np.all(np.isfinite(ours))) and err <= TOLERANCE * scale
    return {"what": what, "scale": scale, "err": err, "rel": err / scale if scale else err,
            "passed": ok}


def logits_variant(arch, work):
    """The .arch text without its final `, softmax`, or None if it has none."""
    with open(arch) as f:
        src = f.read()
    cut = re.sub(r",\s*softmax\b", "", src)
    if cut == src:
        return None
    stem = os.path.splitext(os.path.basename(arch))[0]
    path = os.path.join(work, f"{stem}_logits.arch")
    with open(path, "w") as f:
        f.write(cut)
    return path


def input_shape(mod):
    return tuple(mod.INPUT_SHAPE)


def check_arch(binary, arch, work, seed, batch, stem):
    w = os.path.join(work, f"{stem}.safetensors")
    r2rc(binary, "init", arch, "-o", w, "--seed", str(seed), "--random-stats")
    model, mod = torch_model(binary, arch, w, work, stem)
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape(mod))).astype(np.float32)
    ours = r2rc_run(binary, arch, w, x, work, stem)
    return [compare(f"{stem}: module vs r2rc run", forward(model, x), ours)]


def check_student(binary, arch, work, seed, batch, kind, flags):
    """A rewrite of arch: its module matches r2rc run on it and the teacher's module."""
    stem = os.path.splitext(os.path.basename(arch))[0]
    # One teacher per rewrite: outputs are never overwritten without --force.
    w = os.path.join(work, f"{stem}.{kind}.teacher.safetensors")
    r2rc(binary, "init", arch, "-o", w, "--seed", str(seed), "--random-stats")
    out = os.path.join(work, f"{stem}_{kind}")
    r2rc(binary, kind, arch, "--weights", w, "-o", out, "--force", *flags)
    s_arch, s_w = os.path.join(out, f"{stem}.arch"), os.path.join(out, f"{stem}.safetensors")
    teacher, mod = torch_model(binary, arch, w, work, f"{stem}_teacher")
    student, _ = torch_model(binary, s_arch, s_w, work, f"{stem}_{kind}_student")
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape(mod))).astype(np.float32)
    ys = forward(student, x)
    return [
        compare(f"{stem} {kind}: student module vs r2rc run",
                ys, r2rc_run(binary, s_arch, s_w, x, work, f"{stem}_{kind}")),
        compare(f"{stem} {kind}: student module vs teacher module", ys, forward(teacher, x)),
    ]


def randomise(model, seed):
    """Random BN statistics and affine parameters (identity-looking ones hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model.eval()


def check_torchvision(binary, examples, work, seed, batch, net, widen_flags, grown_key,
                      deepen_after=None):
    arch = os.path.join(examples, f"{net}.arch")
    teacher = randomise(getattr(torchvision.models, net)(), seed)
    w = os.path.join(work, f"tv_{net}.safetensors")
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, w)
    x = np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    logits = forward(teacher, x)
    rows = []
    t0 = time.perf_counter()
    # The example claims torchvision's layout, so it ends in logits as torchvision does.
    if logits_variant(arch, work) is not None:
        raise AssertionError(f"{arch} ends in a softmax; torchvision's {net} ends in logits")
    module, _ = torch_model(binary, arch, w, work, f"tv_{net}_module", names="torchvision")
    with open(os.path.join(work, f"tv_{net}_module.py")) as f:
        if "softmax" in f.read():
            raise AssertionError(f"r2rc export --torch of {arch} applies a softmax")
    ours = r2rc_run(binary, arch, w, x, work, f"tv_{net}", names="torchvision")
    rows.append(compare(f"torchvision {net}: r2rc run --names torchvision (logits)",
                        ours, logits))
    rows.append(compare(f"torchvision {net}: r2rc export --torch --names torchvision",
                        forward(module, x), logits))
    # The student: widened under torchvision's names, loaded through the exported module.
    if widen_flags is not None:
        out = os.path.join(work, f"tv_{net}_widened")
        r2rc(binary, "widen", arch, "--names", "torchvision", "--weights", w, "-o", out,
             "--force", *widen_flags)
        stem = os.path.splitext(os.path.basename(arch))[0]
        s_arch = os.path.join(out, f"{stem}.arch")
        s_w = os.path.join(out, f"{stem}.safetensors")
        state = load_file(s_w)
        if set(state) != set(teacher.state_dict()):
            raise AssertionError(f"{s_w} does not hold torchvision's tensor names")
        grown = state[grown_key].shape[0]
        base = teacher.state_dict()[grown_key].shape[0]
        if grown <= base:
            raise AssertionError(f"{grown_key} has {grown} rows, the teacher's {base}")
        student, _ = torch_model(binary, s_arch, s_w, work, f"tv_{net}_student",
                                 names="torchvision")
        rows.append(compare(f"torchvision {net}: student module ({grown_key} {base}->{grown}) "
                            f"vs torchvision", forward(student, x), logits))
    if deepen_after is not None:
        out = os.path.join(work, f"tv_{net}_deepened")
        r2rc(binary, "deepen", arch, "--names", "torchvision", "--weights", w, "-o", out,
             "--force", "--after", deepen_after)
        stem = os.path.splitext(os.path.basename(arch))[0]
        s_arch = os.path.join(out, f"{stem}.arch")
        s_w = os.path.join(out, f"{stem}.safetensors")
        added = sorted(set(load_file(s_w)) - set(teacher.state_dict()))
        if not added or not all(k.startswith("layer") for k in added):
            raise AssertionError(f"deepening added tensors {added[:3]}")
        student, _ = torch_model(binary, s_arch, s_w, work, f"tv_{net}_deep", names="torchvision")
        rows.append(compare(f"torchvision {net}: deepened student module (+{added[0].rsplit('.', 2)[0]}"
                            f"...) vs torchvision", forward(student, x), logits))
    # Weights r2rc writes under torchvision's names load into torchvision's own model.
    w2 = os.path.join(work, f"tv_{net}_init.safetensors")
    r2rc(binary, "init", arch, "-o", w2, "--names", "torchvision", "--random-stats",
         "--seed", str(seed))
    fresh = getattr(torchvision.models, net)()
    fresh.load_state_dict(load_file(w2), strict=True)
    rows.append(compare(f"torchvision {net}: r2rc init --names torchvision in torchvision",
                        r2rc_run(binary, arch, w2, x, work, f"tv_{net}_init", names="torchvision"),
                        forward(fresh.eval(), x)))
    print(f"  ({net}: {time.perf_counter() - t0:.1f} s)", flush=True)
    return rows


def is_transformer(arch):
    """Whether the .arch file has a transformer row (attention sublayers)."""
    with open(arch) as f:
        return any(re.search(r"\battention\b", line.split("#")[0]) for line in f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc", help="path to the r2rc binary")
    ap.add_argument("--examples", default="examples", help="folder of .arch files")
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "interop"),
                    help="folder of extra .arch files covering every op")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--keep", help="write files here instead of a temporary folder")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
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
    work = workdir.folder(args.keep, "r2rc-torch-")

    checks = []
    for i, arch in enumerate(arches):
        stem = os.path.splitext(os.path.basename(arch))[0]
        checks.append((stem, lambda a=arch, s=stem, i=i: check_arch(
            args.r2rc, a, work, args.seed + i, args.batch, s)))
        cut = logits_variant(arch, work)
        if cut:
            checks.append((f"{stem}_logits", lambda a=cut, s=f"{stem}_logits", i=i: check_arch(
                args.r2rc, a, work, args.seed + 100 + i, args.batch, s)))
    cifar = os.path.join(args.examples, "resnet_cifar10.arch")
    checks.append(("widen", lambda: check_student(
        args.r2rc, cifar, work, args.seed, args.batch, "widen", ["--all", "--by", "1.5"])))
    checks.append(("deepen", lambda: check_student(
        args.r2rc, cifar, work, args.seed, args.batch, "deepen", ["--after", "conv2_1"])))
    checks.append(("torchvision resnet18", lambda: check_torchvision(
        args.r2rc, args.examples, work, args.seed, args.batch, "resnet18",
        ["--all", "--by", "1.5"], "layer1.0.conv1.weight", "conv3_x")))
    checks.append(("torchvision resnet50", lambda: check_torchvision(
        args.r2rc, args.examples, work, args.seed + 1, args.batch, "resnet50",
        ["--layer", "conv3_x", "--add", "32"], "layer2.0.conv3.weight")))

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"numpy {np.__version__}")
    print(f"{'check':<78} {'max|out|':>10} {'max|err|':>10} {'err/max':>9}  result")
    passed = failed = 0
    for name, run in checks:
        try:
            rows = run()
        except Exception as e:  # report every check, then fail
            failed += 1
            print(f"{name:<78} FAILED: {e}", flush=True)
            continue
        for r in rows:
            passed += r["passed"]
            failed += not r["passed"]
            print(f"{r['what']:<78} {r['scale']:>10.3e} {r['err']:>10.3e} {r['rel']:>9.2e}  "
                  f"{'ok' if r['passed'] else 'FAILED (tolerance %.0e)' % TOLERANCE}",
                  flush=True)
    print(f"torch: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(workdir.finish(main()))
