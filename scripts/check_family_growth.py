#!/usr/bin/env python3
"""Grown students of the other families of the ResNet tables (issue 17) in PyTorch.

For a small ResNeXt (grouped 3x3 convs) and a small option-A ResNet (pad shortcuts), each
grown by every exact widening method (--all, new channels inside each group and before
the zero padding) and by a layer inserted inside a block (deepen --after conv2_1.conv1),
the student's `r2rc export --torch` module, loaded strictly with the student's weights,
gives `r2rc run`'s outputs and the teacher module's outputs (eval mode, random BN
statistics), within check_torch.py's tolerance.

Usage: check_family_growth.py [--r2rc target/release/r2rc] [--keep DIR]
"""

import argparse
import os
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--keep", help="write files here instead of a temporary folder")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="r2rc-family-growth-")
    os.makedirs(work, exist_ok=True)
    failed = 0
    rows = 0
    for stem, src in FAMILY_ARCHES.items():
        for i, (kind, flags) in enumerate(GROWS):
            # One folder per case: check_student names its outputs by the arch's stem.
            d = os.path.join(work, f"{stem}_{i}")
            os.makedirs(d, exist_ok=True)
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
