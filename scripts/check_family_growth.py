#!/usr/bin/env python3
"""Grown students of the other families of the ResNet tables (issue 17) in PyTorch.

For a small ResNeXt (grouped 3x3 convs) and a small option-A ResNet (pad shortcuts), each
grown by every exact widening method (--all, new channels inside each group and before
the zero padding) and by a layer inserted inside a block (deepen --after conv2_1.conv1),
the student's `r2rc export --torch` module, loaded strictly with the student's weights,
gives `r2rc run`'s outputs and the teacher module's outputs (eval mode, random BN
statistics), within check_torch.py's tolerance.

The language's own examples of these families (examples/resnext50_32x4d.arch,
densenet121.arch, preact_resnet18.arch) are grown the same way, at a 64x64 input so that
the check costs seconds: every layer is kept, and the last stage keeps 2x2 pixels (on 1x1,
the proof's train-mode BN over 2 images x 1 pixel amplifies rounding past 1e-9). The
widened grouped conv, transition and pre-activated network, and the layers inserted
between and inside pre-activated and dense layers, run in PyTorch with the teacher's
outputs.

Usage: check_family_growth.py [--r2rc target/release/r2rc] [--examples examples] [--keep DIR]
"""

import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_torch as ct  # noqa: E402  (the shared module loader and comparisons)

# The networks of check_interop.py's FAMILY_ARCHES (that script runs where onnxruntime is
# installed, this one where torch is, so neither imports the other).
FAMILY_ARCHES = {
    "resnext_small": """arch RX
input 3x12x12
conv1    3x3, 16
conv2_x  [1x1, 16; 3x3, 16, groups 4; 1x1, 32] x 2
conv3_x  [1x1, 32; 3x3, 32, groups 4; 1x1, 48] x 1, stride 2
head     avg pool, 10-d fc
""",
    "option_a_small": """arch PA
input 3x12x12
conv1    3x3, 8
conv2_x  [3x3, 8; 3x3, 8] x 2
conv3_x  [3x3, 16; 3x3, 16] x 2, stride 2
shortcut pad
head     avg pool, 10-d fc
""",
}

GROWS = [
    ("widen", ["--all", "--add", "8", "--method", "r2r"]),
    ("widen", ["--all", "--add", "8", "--method", "net2net"]),
    ("widen", ["--all", "--add", "8", "--method", "netmorph"]),
    ("deepen", ["--after", "conv2_1.conv1", "--method", "netmorph"]),
    ("deepen", ["--after", "conv2_1.conv1", "--method", "net2net"]),
]


# The examples, their input cut to 64x64, and how each is grown: one exact widening
# method each (tests/it/widen.rs proves every method on every example), deepening between
# blocks and inside a layer. The proofs are left to the Rust tests (--no-prove): here the
# student's PyTorch module is compared with the teacher's.
EXAMPLE_GROWS = {
    "resnext50_32x4d": [
        ("widen", ["--layer", "conv3_2.conv2", "--by", "1.5", "--method", "r2r"]),
        ("deepen", ["--after", "conv3_1", "--method", "r2r"]),
        ("deepen", ["--after", "conv2_1.conv2", "--method", "netmorph"]),
    ],
    "densenet121": [
        ("widen", ["--layer", "trans2", "--by", "1.5", "--method", "net2net"]),
        ("deepen", ["--after", "dense1_1", "--method", "r2r"]),
        ("deepen", ["--after", "dense1_1.conv1", "--method", "netmorph-dense"]),
    ],
    "preact_resnet18": [
        ("widen", ["--all", "--add", "8", "--method", "netmorph"]),
        ("deepen", ["--after", "conv2_1", "--method", "r2r"]),
        ("deepen", ["--after", "conv3_1.conv1", "--method", "net2net"]),
    ],
}


def small_example(examples, net, work):
    """examples/NET.arch with a 64x64 input, written to WORK/NET.arch."""
    with open(os.path.join(examples, f"{net}.arch")) as f:
        src = f.read()
    cut = re.sub(r"^input 3x224x224$", "input 3x64x64", src, flags=re.M)
    if cut == src:
        raise AssertionError(f"{net}.arch has no `input 3x224x224` line to cut")
    # The size column states 224x224 sizes: drop it (it is optional).
    cut = re.sub(r"^(\S+)\s+\d+x\d+\s+", r"\1  ", cut, flags=re.M)
    path = os.path.join(work, f"{net}.arch")
    with open(path, "w") as f:
        f.write(cut)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--examples", default="examples", help="folder of .arch files")
    ap.add_argument("--keep", help="write files here instead of a temporary folder")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="r2rc-family-growth-")
    os.makedirs(work, exist_ok=True)
    failed = 0
    rows = 0
    cases = [(stem, src, GROWS) for stem, src in FAMILY_ARCHES.items()]
    cases += [(net, None, [(k, f + ["--no-prove"]) for k, f in grows])
              for net, grows in EXAMPLE_GROWS.items()]
    for stem, src, grows in cases:
        for i, (kind, flags) in enumerate(grows):
            # One folder per case: check_student names its outputs by the arch's stem.
            d = os.path.join(work, f"{stem}_{i}")
            os.makedirs(d, exist_ok=True)
            if src is None:
                arch = small_example(args.examples, stem, d)
            else:
                arch = os.path.join(d, f"{stem}.arch")
                with open(arch, "w") as f:
                    f.write(src)
            what = f"{stem} {kind} {' '.join(flags)}"
            try:
                for r in ct.check_student(args.r2rc, arch, d, args.seed + i, args.batch,
                                          kind, flags):
                    rows += 1
                    failed += 0 if r["passed"] else 1
                    print(f"{r['what']} [{' '.join(flags)}]: max|err| {r['err']:.3e}, "
                          f"rel {r['rel']:.2e}  {'ok' if r['passed'] else 'FAILED'}")
            except Exception as e:  # report every case, then fail
                failed += 1
                print(f"{what}: FAILED: {e}")
    print(f"family growth in PyTorch: {rows - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
