"""The grown students of the other families of the ResNet tables (issue 17) that
check_interop.py runs in ONNX Runtime and check_family_growth.py in PyTorch: small
networks written here, and the language's own examples cut to a 64x64 input. Plain
Python, so that each checker imports it in its own venv."""

import os
import re

# ResNeXt's grouped 3x3 and option-A pad shortcuts, whose widening puts new channels inside
# each group and before the zero padding.
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

# How each small network is grown: every exact widening method on every space, and a
# layer inserted inside a block.
GROWS = [
    ("widen", ["--all", "--add", "8", "--method", "r2r"]),
    ("widen", ["--all", "--add", "8", "--method", "net2net"]),
    ("widen", ["--all", "--add", "8", "--method", "netmorph"]),
    ("deepen", ["--after", "conv2_1.conv1", "--method", "netmorph"]),
    ("deepen", ["--after", "conv2_1.conv1", "--method", "net2net"]),
]

# The examples and how each is grown: one exact widening method each (tests/it/widen.rs
# proves every method on every example), deepening between blocks and inside a layer.
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
    """examples/NET.arch with a 64x64 input, written to WORK/NET.arch: every layer is
    kept, the check costs seconds, and the last stage keeps 2x2 pixels (on 1x1, the
    proof's train-mode BN over 2 images x 1 pixel amplifies rounding past 1e-9)."""
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


def cases(no_prove_examples=True):
    """(stem, source or None for an example, [(kind, flags)]) for every network and its
    grows; the examples' grows skip the proof when `no_prove_examples` (the Rust tests
    prove them)."""
    out = [(stem, src, GROWS) for stem, src in FAMILY_ARCHES.items()]
    extra = ["--no-prove"] if no_prove_examples else []
    out += [(net, None, [(k, f + extra) for k, f in grows])
            for net, grows in EXAMPLE_GROWS.items()]
    return out


def arch_for(examples, stem, src, work):
    """The .arch file of a case in WORK (a small network's source, or a cut example)."""
    if src is None:
        return small_example(examples, stem, work)
    path = os.path.join(work, f"{stem}.arch")
    with open(path, "w") as f:
        f.write(src)
    return path
