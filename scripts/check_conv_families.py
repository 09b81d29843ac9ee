#!/usr/bin/env python3
"""Cross-checks r2rc's ResNeXt and DenseNet (issue 17) against torchvision (Debian's 1.13).

For torchvision.models.resnext50_32x4d(), resnext101_32x8d() and densenet121(), with
random weights and random BN statistics, BN affine parameters and classifier biases
(DenseNet initialises its classifier bias to zero, which would hide a missing bias), saved
with safetensors.torch.save_file:

1. `r2rc check examples/NET.arch` counts torchvision's `sum(p.numel() for p in
   model.parameters())`;
2. `r2rc run examples/NET.arch --names torchvision` gives torchvision's eval logits within
   max|diff| <= 1e-4 * max|logit|;
3. the module of `r2rc export --torch --names torchvision` takes torchvision's
   state_dict strictly and gives the same logits;
4. weights r2rc writes with `init --names torchvision` load strictly into torchvision's
   model.

(The ONNX export of every example is checked against r2rc's executor in
tests/it/onnx_tract.rs; scripts/check_torch.py checks every example's module export.)
Prints one line per check and `conv families: N passed, M failed`; exits non-zero on a
failure.
"""

import argparse
import os
import re
import sys
import time

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workdir  # noqa: E402  (scratch folders, removed when every check passed)
from check_torch import compare, forward, r2rc, r2rc_run, randomise, torch_model  # noqa: E402

NETS = ["resnext50_32x4d", "resnext101_32x8d", "densenet121"]


def teacher(net, seed):
    """torchvision's NET with random BN statistics and affine parameters and random
    classifier biases, in eval mode."""
    model = randomise(getattr(torchvision.models, net)(), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def check_net(binary, examples, work, seed, batch, net):
    arch = os.path.join(examples, f"{net}.arch")
    t0 = time.perf_counter()
    model = teacher(net, seed)
    count = sum(p.numel() for p in model.parameters())
    out = r2rc(binary, "check", arch).stdout
    found = re.search(r"trainable parameters: ([\d,]+)", out)
    ours = int(found.group(1).replace(",", "")) if found else -1
    if ours != count:
        raise AssertionError(f"r2rc check counts {ours} parameters, torchvision {count}")
    print(f"  {net}: {count:,} parameters in both", flush=True)
    w = os.path.join(work, f"{net}.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, w)
    x = np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    logits = forward(model, x)
    rows = [compare(f"torchvision {net}: r2rc run --names torchvision (logits)",
                    r2rc_run(binary, arch, w, x, work, net, names="torchvision"), logits)]
    module, _ = torch_model(binary, arch, w, work, f"{net}_module", names="torchvision")
    rows.append(compare(f"torchvision {net}: r2rc export --torch --names torchvision",
                        forward(module, x), logits))
    w2 = os.path.join(work, f"{net}_init.safetensors")
    r2rc(binary, "init", arch, "-o", w2, "--names", "torchvision", "--random-stats",
         "--seed", str(seed))
    fresh = getattr(torchvision.models, net)()
    fresh.load_state_dict(load_file(w2), strict=True)
    fresh.eval()
    rows.append(compare(f"torchvision {net}: r2rc init --names torchvision in torchvision",
                        forward(fresh, x),
                        r2rc_run(binary, arch, w2, x, work, f"{net}_init", names="torchvision")))
    print(f"  ({net}: {time.perf_counter() - t0:.1f} s)", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc", help="path to the r2rc binary")
    ap.add_argument("--examples", default="examples", help="folder of .arch files")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--keep", help="write files here instead of a temporary folder")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    work = workdir.folder(args.keep, "r2rc-families-")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"{'check':<70} {'max|out|':>10} {'max|err|':>10} {'err/max':>9}  result")
    passed = failed = 0
    for i, net in enumerate(NETS):
        try:
            rows = check_net(args.r2rc, args.examples, work, args.seed + i, args.batch, net)
        except Exception as e:  # report every net, then fail
            failed += 1
            print(f"{net:<70} FAILED: {e}", flush=True)
            continue
        for r in rows:
            passed += r["passed"]
            failed += not r["passed"]
            print(f"{r['what']:<70} {r['scale']:>10.3e} {r['err']:>10.3e} {r['rel']:>9.2e}  "
                  f"{'ok' if r['passed'] else 'FAILED'}", flush=True)
    print(f"conv families: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(workdir.finish(main()))
