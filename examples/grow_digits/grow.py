"""Grow a small residual net mid-training with r2rc and keep training (R2R paper, Figure 8).

The network is examples/grow_digits/digits.arch; its PyTorch module is r2rc's export
(`r2rc.Arch.torch_source`, what `r2rc export --torch` writes). At the growth epoch the
trained state dict is grown in memory by r2rc's Python API (docs/python.md):
`r2rc.widen(all=True, by=2)`, then `r2rc.deepen(after="conv2_1")` and
`(after="conv3_1")` (same method for both), each proved as the CLI proves it; the
student's module is loaded with its weights (strict), and training continues with the same
learning-rate schedule. Each method runs twice: with a fresh SGD, and with the teacher's
momentum buffers carried over (`optimizer_state=` on every step; the buffers travel as
exp_avg, the layout of scripts/optim_state.py). Baselines: the small net trained
throughout (one SGD, its momentum kept), and the grown architecture trained from scratch.

Data: scikit-learn's bundled 8x8 digits (1797 images, nothing downloaded).
Output: accuracy_vs_flops.png, results.json and results.md in --out (default
target/grow_digits; a folder in the repository's tracked tree is refused). --reference
rewrites the committed reference copies in examples/grow_digits that README.md shows.

Same seeds, thread count, PyTorch build and CPU give the same numbers bit for bit (seeded
split, init and batch order, deterministic algorithms, fixed thread counts); another
PyTorch build or CPU rounds differently, and SGD amplifies that to differences of the
size of the spread between seeds.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ARCH = os.path.join(HERE, "digits.arch")
DEFAULT_OUT = os.path.join(REPO, "target", "grow_digits")
OUTPUTS = ["accuracy_vs_flops.png", "results.json", "results.md"]
# Settings that decide the numbers; a reference is comparable only when they all match.
SETTINGS = ["epochs", "grow_at", "seeds", "batch", "lr", "warmup", "wd", "threads"]
METHODS = ["r2r", "net2net", "netmorph", "random"]
# Each method once with a fresh SGD and once with the teacher's momentum buffers mapped by
# r2rc's optimizer_state ("_momentum").
RUNS = [*METHODS, *(f"{m}_momentum" for m in METHODS)]
TITLES = {
    "r2r": "R2R",
    "net2net": "Net2Net",
    "netmorph": "NetMorph",
    "random": "random pad",
    **{f"{m}_momentum": f"{n}, momentum moved" for m, n in
       [("r2r", "R2R"), ("net2net", "Net2Net"), ("netmorph", "NetMorph"),
        ("random", "random pad")]},
    "small": "teacher only (small)",
    "large": "grown net from scratch",
}
# Function preserving in eval mode, where the loss is compared.
PRESERVING = {"r2r", "net2net", "netmorph"}


def import_deps():
    """Imports the heavy packages after argument checks, so --help needs none of them."""
    global np, torch, nn, F, r2rc, load_digits, train_test_split
    try:
        import numpy as np
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        import r2rc
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        sys.stderr.write(
            f"error: {sys.executable} cannot import {e.name}\n"
            "  help: apt-get install python3-torch python3-sklearn python3-matplotlib;"
            " r2rc is the repository's Python package (`pip install .` in its root; run.sh"
            " installs it into target/demo-venv)\n"
        )
        sys.exit(2)


def load_module(arch):
    """The exported torch.nn.Module class of an r2rc.Arch and its forward MACs per example."""
    load_module.count += 1
    ns = {"__name__": f"digits_model{load_module.count}"}
    exec(compile(arch.torch_source(), f"<r2rc export {arch.name}>", "exec"), ns)
    cls = [
        v
        for v in ns.values()
        if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == ns["__name__"]
    ]
    assert len(cls) == 1, cls
    return cls[0], int(arch.check()["totals"]["macs"])


load_module.count = 0


def data(seed):
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xt, xv, yt, yv = train_test_split(
        x, d.target, test_size=0.3, random_state=seed, stratify=d.target
    )
    return (torch.tensor(xt), torch.tensor(yt)), (torch.tensor(xv), torch.tensor(yv))


def evaluate(model, xs, ys):
    model.eval()
    with torch.no_grad():
        out = model(xs)
    loss = F.cross_entropy(out, ys).item()
    acc = (out.argmax(1) == ys).float().mean().item()
    return loss, acc


def lr_at(epoch, args):
    """Cosine schedule over the whole run, shared by grown and baseline nets."""
    return 0.5 * args.lr * (1 + math.cos(math.pi * epoch / args.epochs))


def make_opt(model, args):
    return torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd, nesterov=True
    )


def momentum_state(model, opt):
    """SGD's momentum buffers as r2rc's optimizer state (scripts/optim_state.py's layout):
    the buffer, a running sum of gradients like Adam's first moment, as `NAME.exp_avg`,
    which r2rc maps by the same linear edit; `exp_avg_sq` (its square) and `step` only
    fill the layout's other places."""
    t = {}
    for name, p in model.named_parameters():
        # A copy: training the small net on updates the buffers in place.
        buf = opt.state[p]["momentum_buffer"].detach().clone(memory_format=torch.contiguous_format)
        t[f"{name}.exp_avg"] = buf
        t[f"{name}.exp_avg_sq"] = buf * buf
        t[f"{name}.step"] = torch.tensor(1, dtype=torch.int64)
    return t


def load_momentum(model, opt, state):
    """Sets SGD's momentum buffers from a mapped state's `NAME.exp_avg` (every parameter)."""
    for name, p in model.named_parameters():
        opt.state[p]["momentum_buffer"] = state[f"{name}.exp_avg"].clone()


def train_epochs(model, train, val, epochs, macs, state, args, gen, warmup=0, opt=None):
    """Trains `epochs` epochs from state['epoch'], appending (flops, val acc) points, and
    returns the optimizer (a fresh SGD unless `opt` is given).

    `warmup` epochs ramp the learning rate up linearly: a grown student starts with a fresh
    optimizer (no momentum), and full steps at once can throw the preserved function away.
    """
    opt = opt or make_opt(model, args)
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
    return opt


def grow(method, model, seed, momentum=None):
    """Widens and deepens the trained state dict with r2rc in memory, returns the student
    (and, given the teacher's momentum state, the student's: `optimizer_state=` on each
    step)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    steps = [
        (r2rc.widen, dict(all=True, by=2)),
        (r2rc.deepen, dict(after="conv2_1")),
        (r2rc.deepen, dict(after="conv3_1")),
    ]
    arch = r2rc.Arch.load(ARCH)
    for step, extra in steps:
        g = step(arch, sd, method=method, seed=seed, optimizer_state=momentum, **extra)
        arch, sd, momentum = g.arch, g.state_dict, g.optimizer_state
    cls, macs = load_module(arch)
    student = cls()
    student.load_state_dict(sd, strict=True)
    return student, macs, arch, momentum


def run(args, seed, log):
    torch.manual_seed(seed)
    train, val = data(seed)
    work = os.path.join(args.work, f"seed{seed}")
    os.makedirs(work, exist_ok=True)
    small_cls, small_macs = load_module(r2rc.Arch.load(ARCH))
    curves, finals, checks = {}, {}, {}

    # The teacher: trained to the growth epoch once, shared by every method.
    gen = torch.Generator().manual_seed(seed)
    teacher = small_cls()
    st = {"epoch": 0, "flops": 0.0, "curve": []}
    opt = train_epochs(teacher, train, val, args.grow_at, small_macs, st, args, gen)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_momentum = momentum_state(teacher, opt)
    teacher_st = (st["epoch"], st["flops"], list(st["curve"]))
    gen_state = gen.get_state()

    # Small net to the end.
    train_epochs(
        teacher, train, val, args.epochs - args.grow_at, small_macs, st, args, gen, opt=opt
    )
    curves["small"], finals["small"] = st["curve"], st["curve"][-1][1]
    log(f"seed {seed} small: final val acc {finals['small']:.4f}")

    large_arch = None
    for run_name in RUNS:
        method, moved = run_name.removesuffix("_momentum"), run_name.endswith("_momentum")
        t = small_cls()
        t.load_state_dict(teacher_state)
        student, macs, large_arch, momentum = grow(
            method, t, seed, teacher_momentum if moved else None,
        )
        opt = make_opt(student, args)
        if moved:
            load_momentum(student, opt, momentum)
        # Eval-mode loss on the training set, teacher and student, before any step.
        t_loss, t_acc = evaluate(t, *train)
        s_loss, s_acc = evaluate(student, *train)
        diff = abs(s_loss - t_loss)
        checks[run_name] = {"teacher_loss": t_loss, "student_loss": s_loss, "abs_diff": diff}
        log(
            f"seed {seed} {run_name:8s} grown at epoch {args.grow_at}: teacher loss {t_loss:.8f}"
            f" student loss {s_loss:.8f} |diff| {diff:.2e} (MACs {small_macs} -> {macs})"
        )
        if method in PRESERVING:
            assert diff <= 1e-5 * max(1.0, t_loss), (
                f"{method}: the student does not start at the teacher's loss"
            )
        gen.set_state(gen_state)
        st = {"epoch": teacher_st[0], "flops": teacher_st[1], "curve": list(teacher_st[2])}
        train_epochs(
            student, train, val, args.epochs - args.grow_at, macs, st, args, gen, args.warmup,
            opt=opt,
        )
        curves[run_name], finals[run_name] = st["curve"], st["curve"][-1][1]
        log(f"seed {seed} {run_name}: final val acc {finals[run_name]:.4f}")

    # The grown architecture from scratch, for the whole schedule, with its own batch order.
    large_cls, large_macs = load_module(large_arch)
    torch.manual_seed(seed + 1000)
    large = large_cls()
    st = {"epoch": 0, "flops": 0.0, "curve": []}
    train_epochs(
        large, train, val, args.epochs, large_macs, st, args,
        torch.Generator().manual_seed(seed + 1000),
    )
    curves["large"], finals["large"] = st["curve"], st["curve"][-1][1]
    log(f"seed {seed} large: final val acc {finals['large']:.4f}")
    return curves, finals, checks, small_macs, large_macs


def rel(path):
    """`path` relative to the repository when inside it, for messages."""
    r = os.path.relpath(os.path.realpath(path), os.path.realpath(REPO))
    return path if r.startswith("..") else r


def tracked_tree_problem(path, folder=False):
    """Why writing `path` would touch the repository's tracked tree ("it is ..."), or None.

    Safe: outside the repository, or a path git ignores (target/...). A tracked file is
    never ignored, so committed outputs are refused too. A folder is asked about through
    a name inside it, which git matches against folder patterns such as `work/`.
    """
    if folder:
        return tracked_tree_problem(os.path.join(path, "seed0"))
    real, repo = os.path.realpath(path), os.path.realpath(REPO)
    if os.path.commonpath([real, repo]) != repo:
        return None
    r = os.path.relpath(real, repo)
    try:
        p = subprocess.run(
            ["git", "-C", repo, "check-ignore", "-q", "--no-index", "--", r],
            capture_output=True,
        )
        if p.returncode in (0, 1):
            tracked = subprocess.run(
                ["git", "-C", repo, "ls-files", "--error-unmatch", "--", r],
                capture_output=True,
            ).returncode == 0
            if p.returncode == 0 and not tracked:
                return None
            return f"it is {'tracked' if tracked else 'not ignored'} by git"
    except OSError:
        pass
    # No git (an unpacked archive): only target/ is known to be build output.
    if r == "target" or r.startswith("target" + os.sep):
        return None
    return "it is in the repository, outside target/ (and git is missing)"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="\n".join(__doc__.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--out", metavar="DIR",
        help=f"folder for {', '.join(OUTPUTS)} (default {rel(DEFAULT_OUT)}); a folder in"
        " the repository's tracked tree is refused",
    )
    ap.add_argument(
        "--reference", action="store_true",
        help="rewrite the committed reference outputs in examples/grow_digits (README's"
        " table and plot) instead of writing to --out",
    )
    ap.add_argument(
        "--work", metavar="DIR",
        help="scratch folder for r2rc's outputs (default OUT/work, with --reference"
        f" {rel(os.path.join(DEFAULT_OUT, 'work'))})",
    )
    ap.add_argument(
        "--check-only", action="store_true",
        help="check the arguments and output folders, then exit (run.sh does this before"
        " installing r2rc)",
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--grow-at", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=2, help="epochs of LR ramp after growth")
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument(
        "--threads", type=int, default=1,
        help="PyTorch threads (default 1); part of the result: another count can round"
        " differently",
    )
    args = ap.parse_args(argv)
    if args.reference and args.out:
        ap.error("--reference writes examples/grow_digits; give it or --out, not both")
    if not 0 < args.grow_at < args.epochs:
        ap.error(f"--grow-at must lie between 1 and --epochs - 1 ({args.epochs - 1})")
    if args.seeds < 1 or args.threads < 1:
        ap.error("--seeds and --threads must be at least 1")
    args.out = HERE if args.reference else (args.out or DEFAULT_OUT)
    args.work = args.work or os.path.join(
        DEFAULT_OUT if args.reference else args.out, "work"
    )
    checks = [] if args.reference else [os.path.join(args.out, f) for f in OUTPUTS]
    for path in [*checks, args.work]:
        problem = tracked_tree_problem(path, folder=path == args.work)
        if problem:
            ap.exit(
                2,
                f"error: refusing to write {rel(path)}: {problem}\n"
                "  help: choose a folder outside the repository or under target/ with"
                " --out DIR (--work DIR for the scratch folder); --reference rewrites the"
                " committed reference outputs\n",
            )
    return args


def environment():
    """What the numbers depend on besides the settings."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import sklearn

    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "r2rc": f"r2rc {r2rc.__version__} (Python API)",
    }


def compare_with_reference(result, log):
    """Says whether this run reproduced the committed reference (README's table)."""
    path = os.path.join(HERE, "results.json")
    if os.path.realpath(path) == os.path.realpath(os.path.join(result["out"], "results.json")):
        return
    try:
        with open(path) as f:
            ref = json.load(f)
    except (OSError, ValueError):
        return
    differ = [k for k in SETTINGS if ref.get("settings", {}).get(k) != result["settings"][k]]
    if differ:
        log(f"not compared with {rel(path)}: its settings differ ({', '.join(differ)})")
        return
    mine, theirs = result["final_val_acc"], ref["final_val_acc"]
    changed = [n for n in mine if mine[n]["per_seed"] != theirs.get(n, {}).get("per_seed")]
    if not changed:
        log(f"every final accuracy equals the reference {rel(path)} (README's table)")
        return
    log(f"differs from the reference {rel(path)} in {', '.join(changed)}:")
    for n in changed:
        a, b = mine[n], theirs.get(n, {"mean": float("nan"), "std": float("nan")})
        log(
            f"  {TITLES[n]}: {100 * a['mean']:.2f}% ± {100 * a['std']:.2f} here,"
            f" {100 * b['mean']:.2f}% ± {100 * b['std']:.2f} in the reference"
        )
    env_diff = {
        k: (v, ref.get("environment", {}).get(k))
        for k, v in result["environment"].items()
        if ref.get("environment", {}).get(k) != v
    }
    if env_diff:
        log(
            "  environments differ: "
            + "; ".join(f"{k} {a} here, {b} there" for k, (a, b) in env_diff.items())
            + " (another PyTorch build or CPU rounds differently; compare with the seed"
            " spread)"
        )


def main():
    args = parse_args()
    if args.check_only:
        return
    import_deps()
    # Same seeds, same numbers: fixed thread counts, deterministic kernels.
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    log(f"writing {rel(args.out)} (scratch {rel(args.work)}), r2rc {r2rc.__file__}")
    runs = [run(args, s, log) for s in range(args.seeds)]
    names = ["small", *RUNS, "large"]
    table = {}
    for name in names:
        accs = np.array([r[1][name] for r in runs])
        flops = runs[0][0][name][-1][0]
        table[name] = {
            "mean": float(accs.mean()),
            "std": float(accs.std()),
            "min": float(accs.min()),
            "max": float(accs.max()),
            "per_seed": accs.tolist(),
            "train_flops": flops,
        }
    checks = {m: [r[2][m] for r in runs] for m in RUNS}

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
        c, ls = styles.get(
            name, (colors.get(name.removesuffix("_momentum")), "-." if "_mom" in name else "-")
        )
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
    # No timestamp in the file: same numbers, same bytes.
    fig.savefig(png, dpi=120, metadata={"Software": None})

    # No timings either, so two runs' results.json compare with cmp.
    result = {
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "environment": environment(),
        "macs_small": runs[0][3],
        "macs_large": runs[0][4],
        "final_val_acc": table,
        "start_loss_check": checks,
        "curves": {n: [r[0][n] for r in runs] for n in names},
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    lines = [
        f"Final validation accuracy over seeds 0..{args.seeds - 1}: mean ± std (min-max).",
        "",
        "| network | final val. accuracy | training FLOPs |",
        "|---|---|---|",
    ]
    for name in names:
        t = table[name]
        lines.append(
            f"| {TITLES[name]} | {100 * t['mean']:.2f}% ± {100 * t['std']:.2f}"
            f" ({100 * t['min']:.2f}-{100 * t['max']:.2f}) | {t['train_flops']:.3g} |"
        )
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    for m in RUNS:
        worst = max(c["abs_diff"] for c in checks[m])
        print(f"{m}: largest |student - teacher| start loss over seeds {worst:.2e}")
    log(f"wrote {', '.join(rel(os.path.join(args.out, f)) for f in OUTPUTS)}")
    compare_with_reference({**result, "out": args.out}, log)


if __name__ == "__main__":
    main()
