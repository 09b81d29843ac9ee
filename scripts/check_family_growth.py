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
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workdir  # noqa: E402  (scratch folders, removed when every check passed)
import check_torch as ct  # noqa: E402  (the shared module loader and comparisons)

from family_cases import arch_for, cases  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--examples", default="examples", help="folder of .arch files")
    ap.add_argument("--keep", help="write files here instead of a temporary folder")
    args = ap.parse_args()
    work = workdir.folder(args.keep, "r2rc-family-growth-")
    failed = 0
    rows = 0
    for stem, src, grows in cases():
        for i, (kind, flags) in enumerate(grows):
            # One folder per case: check_student names its outputs by the arch's stem.
            d = os.path.join(work, f"{stem}_{i}")
            os.makedirs(d, exist_ok=True)
            arch = arch_for(args.examples, stem, src, d)
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
    sys.exit(workdir.finish(main()))
