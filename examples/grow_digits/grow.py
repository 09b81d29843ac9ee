"""Grow a small residual net mid-training with r2rc and keep training (R2R paper, Figure 8).

The network is examples/grow_digits/digits.arch; its PyTorch module is written by
`r2rc export --torch`. At the growth epoch the trained state dict is saved as safetensors,
`r2rc widen --all --by 2` and `r2rc deepen --after conv2_1` / `--after conv3_1` rewrite
it (same method for both), the student's module is exported and loaded with its weights
(strict), and training continues with the same learning-rate schedule. Baselines: the
small net trained throughout, and the grown architecture trained from scratch.

Data: scikit-learn's bundled 8x8 digits (1797 images, nothing downloaded).
Output: accuracy_vs_flops.png and results.json / results.md in --out.
"""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH = os.path.join(HERE, "digits.arch")
METHODS = ["r2r", "net2net", "netmorph", "random"]
TITLES = {
    "r2r": "R2R",
    "net2net": "Net2Net",
    "netmorph": "NetMorph",
    "random": "random pad",
    "small": "teacher only (small)",
    "large": "grown net from scratch",
}
# Function preserving in eval mode, where the loss is compared.
PRESERVING = {"r2r", "net2net", "netmorph"}


def r2rc(r2rc_bin, *args):
    p = subprocess.run([r2rc_bin, *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"r2rc {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p.stdout


def load_module(r2rc_bin, arch, workdir):
    """The exported torch.nn.Module class of an .arch and its forward MACs per example."""
    py = os.path.join(workdir, "model.py")
    r2rc(r2rc_bin, "export", arch, "--torch", py, "--force")
    spec = importlib.util.spec_from_file_location(f"m{abs(hash(py))}", py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cls = [
        v
        for v in vars(mod).values()
        if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == mod.__name__
    ]
    assert len(cls) == 1, cls
    macs = json.loads(r2rc(r2rc_bin, "check", arch, "--json"))["totals"]
    macs = next(v for k, v in macs.items() if "mac" in k.lower())
    return cls[0], int(macs)


def data(seed):
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xt, xv, yt, yv = train_test_split(
        x, d.target, test_size=0.3, random_state=seed, stratify=d.target
    )
    return (torch.tensor(xt), torch.tensor(yt)), (torch.tensor(xv), torch.tensor(yv))


@torch.no_grad()
def evaluate(model, xs, ys):
    model.eval()
    out = model(xs)
    loss = F.cross_entropy(out, ys).item()
    acc = (out.argmax(1) == ys).float().mean().item()
    return loss, acc


def lr_at(epoch, args):
    """Cosine schedule over the whole run, shared by grown and baseline nets."""
    return 0.5 * args.lr * (1 + math.cos(math.pi * epoch / args.epochs))


def train_epochs(model, train, val, epochs, macs, state, args, gen, warmup=0):
    """Trains `epochs` epochs from state['epoch'], appending (flops, val acc) points.

    `warmup` epochs ramp the learning rate up linearly: a grown student starts with a fresh
    optimizer (no momentum), and full steps at once can throw the preserved function away.
    """
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd, nesterov=True
    )
    xs, ys = train
    n = len(xs)
    steps_per_epoch = math.ceil(n / args.batch)
    step = 0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, args.batch):
            ramp = min(1.0, (step + 1) / (warmup * steps_per_epoch)) if warmup else 1.0
            for g in opt.param_groups:
                g["lr"] = lr_at(state["epoch"], args) * ramp
            step += 1
            idx = perm[i : i + args.batch]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        # Training FLOPs: 2 per multiply-accumulate, backward twice the forward.
        state["flops"] += 6 * macs * n
        state["epoch"] += 1
        state["curve"].append((state["flops"], evaluate(model, *val)[1]))


def grow(r2rc_bin, method, model, workdir, seed):
    """Saves the trained state dict, widens and deepens it with r2rc, returns the student."""
    os.makedirs(workdir, exist_ok=True)
    teacher_w = os.path.join(workdir, "teacher.safetensors")
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, teacher_w)
    s = str(seed)
    steps = [
        ("widen", ["--all", "--by", "2"]),
        ("deepen", ["--after", "conv2_1"]),
        ("deepen", ["--after", "conv3_1"]),
    ]
    arch, weights = ARCH, teacher_w
    for k, (cmd, extra) in enumerate(steps):
        out = os.path.join(workdir, f"{k}_{cmd}")
        r2rc(
            r2rc_bin, cmd, arch, *extra, "--method", method, "--weights", weights,
            "--seed", s, "-o", out, "--force",
        )
        arch = os.path.join(out, "digits.arch")
        weights = os.path.join(out, "digits.safetensors")
    cls, macs = load_module(r2rc_bin, arch, workdir)
    student = cls()
    student.load_state_dict(load_file(weights), strict=True)
    return student, macs, arch


def run(args, seed, r2rc_bin, log):
    torch.manual_seed(seed)
    train, val = data(seed)
    work = os.path.join(args.work, f"seed{seed}")
    os.makedirs(work, exist_ok=True)
    small_cls, small_macs = load_module(r2rc_bin, ARCH, work)
    curves, finals, checks = {}, {}, {}

    # The teacher: trained to the growth epoch once, shared by every method.
    gen = torch.Generator().manual_seed(seed)
    teacher = small_cls()
    st = {"epoch": 0, "flops": 0.0, "curve": []}
    train_epochs(teacher, train, val, args.grow_at, small_macs, st, args, gen)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_st = (st["epoch"], st["flops"], list(st["curve"]))
    gen_state = gen.get_state()

    # Small net to the end.
    train_epochs(teacher, train, val, args.epochs - args.grow_at, small_macs, st, args, gen)
    curves["small"], finals["small"] = st["curve"], st["curve"][-1][1]
    log(f"seed {seed} small: final val acc {finals['small']:.4f}")

    large_arch = None
    for method in METHODS:
        t = small_cls()
        t.load_state_dict(teacher_state)
        student, macs, large_arch = grow(r2rc_bin, method, t, os.path.join(work, method), seed)
        # Eval-mode loss on the training set, teacher and student, before any step.
        t_loss, t_acc = evaluate(t, *train)
        s_loss, s_acc = evaluate(student, *train)
        diff = abs(s_loss - t_loss)
        checks[method] = {"teacher_loss": t_loss, "student_loss": s_loss, "abs_diff": diff}
        log(
            f"seed {seed} {method:8s} grown at epoch {args.grow_at}: teacher loss {t_loss:.8f}"
            f" student loss {s_loss:.8f} |diff| {diff:.2e} (MACs {small_macs} -> {macs})"
        )
        if method in PRESERVING:
            assert diff <= 1e-5 * max(1.0, t_loss), (
                f"{method}: the student does not start at the teacher's loss"
            )
        gen.set_state(gen_state)
        st = {"epoch": teacher_st[0], "flops": teacher_st[1], "curve": list(teacher_st[2])}
        train_epochs(
            student, train, val, args.epochs - args.grow_at, macs, st, args, gen, args.warmup
        )
        curves[method], finals[method] = st["curve"], st["curve"][-1][1]
        log(f"seed {seed} {method}: final val acc {finals[method]:.4f}")

    # The grown architecture from scratch, for the whole schedule.
    large_cls, large_macs = load_module(r2rc_bin, large_arch, os.path.join(work, "random"))
    torch.manual_seed(seed + 1000)
    large = large_cls()
    st = {"epoch": 0, "flops": 0.0, "curve": []}
    train_epochs(large, train, val, args.epochs, large_macs, st, args, gen)
    curves["large"], finals["large"] = st["curve"], st["curve"][-1][1]
    log(f"seed {seed} large: final val acc {finals['large']:.4f}")
    return curves, finals, checks, small_macs, large_macs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--r2rc", default=os.environ.get("R2RC", "r2rc"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--grow-at", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=2, help="epochs of LR ramp after growth")
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    runs = [run(args, s, args.r2rc, log) for s in range(args.seeds)]
    names = ["small", *METHODS, "large"]
    table = {}
    for name in names:
        accs = np.array([r[1][name] for r in runs])
        flops = runs[0][0][name][-1][0]
        table[name] = {
            "mean": float(accs.mean()),
            "std": float(accs.std()),
            "per_seed": accs.tolist(),
            "train_flops": flops,
        }
    checks = {m: [r[2][m] for r in runs] for m in METHODS}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"small": ("k", ":"), "large": ("grey", "--")}
    colors = {"r2r": "C3", "net2net": "C0", "netmorph": "C2", "random": "C1"}
    for name in names:
        # Mean over seeds at each epoch; FLOPs are the same for every seed.
        xs = np.array([p[0] for p in runs[0][0][name]])
        ys = np.mean([[p[1] for p in r[0][name]] for r in runs], axis=0)
        c, ls = styles.get(name, (colors.get(name), "-"))
        ax.plot(xs, ys, color=c, linestyle=ls, label=TITLES[name], linewidth=1.5)
    grow_flops = runs[0][0]["small"][args.grow_at - 1][0]
    ax.axvline(grow_flops, color="k", linewidth=0.8, alpha=0.4)
    ax.text(grow_flops, 0.05, " grow", fontsize=8, alpha=0.7)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(
        f"Digits: widen x2 + 2 blocks at epoch {args.grow_at}/{args.epochs}"
        f" (mean of {args.seeds} seeds)"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png = os.path.join(args.out, "accuracy_vs_flops.png")
    fig.savefig(png, dpi=120)

    result = {
        "epochs": args.epochs,
        "grow_at": args.grow_at,
        "seeds": args.seeds,
        "macs_small": runs[0][3],
        "macs_large": runs[0][4],
        "final_val_acc": table,
        "start_loss_check": checks,
        "curves": {n: [r[0][n] for r in runs] for n in names},
        "seconds": time.time() - t0,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "| network | final val. accuracy | training FLOPs |",
        "|---|---|---|",
    ]
    for name in names:
        t = table[name]
        lines.append(
            f"| {TITLES[name]} | {100 * t['mean']:.2f}% ± {100 * t['std']:.2f} |"
            f" {t['train_flops']:.3g} |"
        )
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    for m in METHODS:
        worst = max(c["abs_diff"] for c in checks[m])
        print(f"{m}: largest |student - teacher| start loss over seeds {worst:.2e}")
    log(f"wrote {png}")


if __name__ == "__main__":
    main()
