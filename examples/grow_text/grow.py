"""Grow a byte-level GPT mid-training with r2rc and keep training, with and without the
teacher's AdamW state (issue 15's transformer experiment).

The network is examples/grow_text/gpt.arch (width 64, 4 heads, 2 layers, 64 tokens,
vocab 256); its PyTorch module is r2rc's export (`r2rc.Arch.torch_source`, what
`r2rc export --torch` writes). After --grow-at AdamW steps the state dict and the optimizer
state (scripts/optim_state.py's layout) are saved as safetensors for the worker processes,
and r2rc's Python API (docs/python.md) grows the net in memory, each step proved as the CLI
proves it:

  r2rc.widen(all=True, by=1.5, method="r2r" | "netmorph")        (width 96, 6 heads, MLP 384)
  r2rc.widen(all=True, by=2, method="net2net", [noise=0.1])      (width 128, 8 heads, MLP 512)
  r2rc.deepen(after="layers_2", method="r2r" | "copy")           (3 layers)

each once with a fresh AdamW and once with `optimizer_state=` (the teacher's moments
mapped onto the student). The student module is loaded (strict) and trained for the
remaining steps on the same batches with the same learning-rate schedule. Every student
must start at the teacher's validation loss (|difference| <= 1e-4, asserted). Baselines:
the small net trained throughout, and each grown size trained from scratch for all steps.

Data: the Python standard library's top-level sources (sysconfig's stdlib folder, *.py,
sorted by name) read as bytes; every 10th file is validation, the rest training. Nothing
is downloaded. The numbers depend on that folder's contents (the Python version), which
results.json records.

Output: loss_vs_flops.png, results.json and results.md in OUT (default target/grow_text;
a folder in the repository's tracked tree is refused). --reference rewrites the committed
copies in examples/grow_text that README.md shows.
"""

import argparse
import concurrent.futures as cf
import glob
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import sysconfig
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ARCH = os.path.join(HERE, "gpt.arch")
DEFAULT_OUT = os.path.join(REPO, "target", "grow_text")
OUTPUTS = ["loss_vs_flops.png", "results.json", "results.md"]
SETTINGS = ["steps", "grow_at", "seeds", "batch", "lr", "wd", "noise", "val_seqs"]
TOKENS, VOCAB = 64, 256
# (name, (r2rc step, its keywords), final size). Every one of these is function preserving;
# noise=True takes --noise.
GROWTHS = [
    ("widen_r2r", ("widen", dict(all=True, by=1.5, method="r2r")), "wide"),
    ("widen_netmorph", ("widen", dict(all=True, by=1.5, method="netmorph")), "wide"),
    ("net2net", ("widen", dict(all=True, by=2, method="net2net")), "wide2"),
    ("net2net_noise", ("widen", dict(all=True, by=2, method="net2net", noise=True)), "wide2"),
    ("deepen_r2r", ("deepen", dict(after="layers_2", method="r2r")), "deep"),
    ("deepen_copy", ("deepen", dict(after="layers_2", method="copy")), "deep"),
]
SIZES = {
    "wide": "width 96 (x1.5), from scratch",
    "wide2": "width 128 (x2), from scratch",
    "deep": "3 layers, from scratch",
}
TITLES = {
    "widen_r2r": "widen x1.5 R2R",
    "widen_netmorph": "widen x1.5 NetMorph",
    "net2net": "widen x2 Net2Net",
    "net2net_noise": "widen x2 Net2Net + noise",
    "deepen_r2r": "deepen +1 R2R",
    "deepen_copy": "deepen +1 copy",
    "small": "small net only",
    **{f"scratch_{k}": v for k, v in SIZES.items()},
}
# Steps after growth at which validation loss is taken densely (the spike).
SPIKE_WINDOW = 20


def import_deps():
    """Imports the heavy packages after argument checks, so --help needs none of them."""
    global np, torch, F, load_file, save_file, optim_state, r2rc
    if "optim_state" in globals():
        return
    try:
        import numpy as np
        import torch
        import torch.nn.functional as F
        import r2rc
        from safetensors.torch import load_file, save_file
    except ImportError as e:
        sys.stderr.write(
            f"error: {sys.executable} cannot import {e.name}\n"
            "  help: apt-get install python3-torch python3-matplotlib; pip install"
            " safetensors; r2rc is the repository's Python package (`pip install .` in its"
            " root; run.sh installs it into target/demo-venv)\n"
        )
        sys.exit(2)
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import optim_state

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)


_loaded = {}


def load_module(arch):
    """The exported torch.nn.Module class of an r2rc.Arch and its forward MACs per
    sequence."""
    name = f"gpt_model{len(_loaded)}"
    ns = {"__name__": name}
    exec(compile(arch.torch_source(), f"<r2rc export {arch.name}>", "exec"), ns)
    _loaded[name] = ns
    return ns[arch.name], int(arch.check()["totals"]["macs"])


def load_moments(model, opt, tensors):
    """Sets AdamW's state from r2rc's (scripts/optim_state.py's layout, in memory): every
    parameter's moments by name; step as a float tensor, as torch keeps it."""
    by_name = dict(model.named_parameters())
    for name, p in by_name.items():
        opt.state[p] = {
            "step": torch.tensor(float(tensors[f"{name}.step"].item()), dtype=torch.float32),
            "exp_avg": tensors[f"{name}.exp_avg"].to(dtype=p.dtype, device=p.device),
            "exp_avg_sq": tensors[f"{name}.exp_avg_sq"].to(dtype=p.dtype, device=p.device),
        }
    assert len(tensors) == 3 * len(by_name), "r2rc's state names every parameter once"


def grow_step(cmd, args, arch, state, **kw):
    """Runs growth `cmd` ((step, keywords) of GROWTHS) on `state` with r2rc's API."""
    step, kwargs = cmd
    kwargs = dict(kwargs)
    if kwargs.get("noise"):
        kwargs["noise"] = args.noise
    return getattr(r2rc, step)(arch, state, **kwargs, **kw)


def corpus():
    """Training and validation bytes: the standard library's top-level *.py files."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    if len(files) < 20:
        sys.exit(f"error: only {len(files)} *.py files in {stdlib}; need the stdlib sources")
    train, val = [], []
    for i, f in enumerate(files):
        with open(f, "rb") as fh:
            (val if i % 10 == 9 else train).append(fh.read())
    return stdlib, len(files), b"".join(train), b"".join(val)


def to_tensor(b):
    return torch.tensor(np.frombuffer(b, dtype=np.uint8).astype(np.int64))


def init_weights(model, gen):
    """GPT-2's initialisation (normal 0.02, zero biases, unit norms), from `gen`."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def val_loss(model, val):
    model.eval()
    with torch.no_grad():
        out = model(val[:, :-1])
        loss = F.cross_entropy(out.reshape(-1, VOCAB), val[:, 1:].reshape(-1)).item()
    model.train()
    return loss


def lr_at(step, args):
    """Linear warmup over 10 steps, then cosine to 10% over the whole run (shared by
    every net, so a student continues the teacher's schedule)."""
    if step < 10:
        return args.lr * (step + 1) / 10
    t = (step - 10) / max(1, args.steps - 10)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def make_opt(model, args):
    return torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.wd
    )


def train(model, opt, data, val, start, stop, macs, st, args, gen, dense_from=None):
    """AdamW steps start..stop-1, appending (flops, step, val loss) points to st['curve']."""
    n = len(data) - TOKENS - 1
    for step in range(start, stop):
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        batch = torch.stack([data[i : i + TOKENS + 1] for i in idx.tolist()])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        out = model(batch[:, :-1])
        loss = F.cross_entropy(out.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        # Training FLOPs: 2 per multiply-accumulate, backward twice the forward.
        st["flops"] += 6 * macs * args.batch
        done = step + 1
        dense = dense_from is not None and done - dense_from <= SPIKE_WINDOW
        if dense or done % 10 == 0 or done == stop:
            st["curve"].append((st["flops"], done, val_loss(model, val)))


def task_teacher(args, seed):
    """Trains the small net to --grow-at, saves it (weights, AdamW state, batch RNG), then
    trains it on to the end: the 'small net only' baseline."""
    import_deps()
    _, _, data, valb = corpus()
    data, val = to_tensor(data), validation(valb, args)
    work = os.path.join(args.work, f"seed{seed}")
    cls, macs = load_module(r2rc.Arch.load(ARCH))
    gen = torch.Generator().manual_seed(seed)
    model = cls()
    init_weights(model, gen)
    opt = make_opt(model, args)
    st = {"flops": 0.0, "curve": [(0.0, 0, val_loss(model, val))]}
    train(model, opt, data, val, 0, args.grow_at, macs, st, args, gen)
    teacher = os.path.join(work, "teacher")
    os.makedirs(teacher, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              os.path.join(teacher, "gpt.safetensors"))
    optim_state.save_state(model, opt, os.path.join(teacher, "adam.safetensors"))
    torch.save({"gen": gen.get_state(), "flops": st["flops"], "curve": list(st["curve"])},
               os.path.join(teacher, "state.pt"))
    train(model, opt, data, val, args.grow_at, args.steps, macs, st, args, gen,
          dense_from=args.grow_at)
    return {"name": "small", "seed": seed, "curve": st["curve"], "macs": macs}


def validation(valb, args):
    """args.val_seqs fixed windows spread evenly over the validation bytes."""
    v = to_tensor(valb)
    starts = np.linspace(0, len(v) - TOKENS - 2, args.val_seqs).astype(int)
    return torch.stack([v[s : s + TOKENS + 1] for s in starts])


def task_grow(args, seed, name, cmd, transfer):
    """Grows seed's teacher with r2rc and trains the student to the end."""
    import_deps()
    _, _, data, valb = corpus()
    data, val = to_tensor(data), validation(valb, args)
    work = os.path.join(args.work, f"seed{seed}")
    teacher = os.path.join(work, "teacher")
    tag = f"{name}_{'state' if transfer else 'fresh'}"
    moments = load_file(os.path.join(teacher, "adam.safetensors")) if transfer else None
    g = grow_step(cmd, args, r2rc.Arch.load(ARCH), load_file(os.path.join(teacher, "gpt.safetensors")),
                  seed=seed, optimizer_state=moments)
    cls, macs = load_module(g.arch)
    model = cls()
    model.load_state_dict(g.state_dict, strict=True)
    opt = make_opt(model, args)
    if transfer:
        load_moments(model, opt, g.optimizer_state)
    saved = torch.load(os.path.join(teacher, "state.pt"))
    gen = torch.Generator()
    gen.set_state(saved["gen"])
    teacher_loss = saved["curve"][-1][2]
    start_loss = val_loss(model, val)
    diff = abs(start_loss - teacher_loss)
    assert diff <= 1e-4, (
        f"seed {seed} {tag}: the student starts at validation loss {start_loss:.6f}, the"
        f" teacher's is {teacher_loss:.6f} (|diff| {diff:.2e} > 1e-4)"
    )
    st = {"flops": saved["flops"], "curve": list(saved["curve"])}
    train(model, opt, data, val, args.grow_at, args.steps, macs, st, args, gen,
          dense_from=args.grow_at)
    return {"name": tag, "seed": seed, "curve": st["curve"], "macs": macs,
            "teacher_loss": teacher_loss, "start_loss": start_loss, "abs_diff": diff}


def task_scratch(args, seed, size, cmd):
    """The grown size trained from scratch for every step (arch from an r2rc growth of a
    random small net: the architecture the students have)."""
    import_deps()
    _, _, data, valb = corpus()
    data, val = to_tensor(data), validation(valb, args)
    arch = r2rc.Arch.load(ARCH)
    g = grow_step(cmd, args, arch, arch.init(), prove=None)
    cls, macs = load_module(g.arch)
    gen = torch.Generator().manual_seed(seed + 1000)
    model = cls()
    init_weights(model, gen)
    opt = make_opt(model, args)
    st = {"flops": 0.0, "curve": [(0.0, 0, val_loss(model, val))]}
    train(model, opt, data, val, 0, args.steps, macs, st, args, gen)
    return {"name": f"scratch_{size}", "seed": seed, "curve": st["curve"], "macs": macs}


def rel(path):
    """`path` relative to the repository when inside it, for messages."""
    r = os.path.relpath(os.path.realpath(path), os.path.realpath(REPO))
    return path if r.startswith("..") else r


def tracked_tree_problem(path, folder=False):
    """Why writing `path` would touch the repository's tracked tree ("it is ..."), or None
    (outside the repository, or a path git ignores such as target/...)."""
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
        "out", nargs="?", metavar="OUT_DIR",
        help=f"folder for {', '.join(OUTPUTS)} (default {rel(DEFAULT_OUT)}); a folder in"
        " the repository's tracked tree is refused",
    )
    ap.add_argument("--out", dest="out_opt", metavar="DIR", help="the same as OUT_DIR")
    ap.add_argument(
        "--reference", action="store_true",
        help="rewrite the committed reference outputs in examples/grow_text (README's"
        " table and plot) instead of writing to OUT_DIR",
    )
    ap.add_argument("--work", metavar="DIR",
                    help="scratch folder for r2rc's outputs (default OUT_DIR/work)")
    ap.add_argument("--check-only", action="store_true",
                    help="check the arguments and output folders, then exit (run.sh does"
                    " this before installing r2rc)")
    ap.add_argument("--steps", type=int, default=200, help="AdamW steps in all (default 200)")
    ap.add_argument("--grow-at", type=int, default=100, help="growth step (default 100)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (default 2)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay")
    ap.add_argument("--noise", type=float, default=0.1, help="Net2Net --noise SIGMA")
    ap.add_argument("--val-seqs", type=int, default=64, help="validation sequences")
    ap.add_argument("--jobs", type=int, default=2,
                    help="worker processes, one PyTorch thread each (default 2); the"
                    " numbers do not depend on it")
    args = ap.parse_args(argv)
    if args.out and args.out_opt:
        ap.error("give OUT_DIR or --out, not both")
    args.out = args.out or args.out_opt
    if args.reference and args.out:
        ap.error("--reference writes examples/grow_text; give it or OUT_DIR, not both")
    if not 0 < args.grow_at < args.steps:
        ap.error(f"--grow-at must lie between 1 and --steps - 1 ({args.steps - 1})")
    if args.seeds < 1 or args.jobs < 1 or args.batch < 1 or args.val_seqs < 1:
        ap.error("--seeds, --jobs, --batch and --val-seqs must be at least 1")
    args.out = HERE if args.reference else (args.out or DEFAULT_OUT)
    args.work = os.path.abspath(args.work or os.path.join(
        DEFAULT_OUT if args.reference else args.out, "work"))
    checks = [] if args.reference else [os.path.join(args.out, f) for f in OUTPUTS]
    for path in [*checks, args.work]:
        problem = tracked_tree_problem(path, folder=path == args.work)
        if problem:
            ap.exit(
                2,
                f"error: refusing to write {rel(path)}: {problem}\n"
                "  help: choose a folder outside the repository or under target/"
                " (--work DIR for the scratch folder); --reference rewrites the committed"
                " reference outputs\n",
            )
    return args


def stats(xs):
    a = np.array(xs, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "max": float(a.max()), "per_seed": a.tolist()}


def spike(curve, grow_at, teacher_loss):
    """Highest validation loss in the SPIKE_WINDOW steps after growth, above the teacher's."""
    after = [l for _, s, l in curve if grow_at < s <= grow_at + SPIKE_WINDOW]
    return max(after) - teacher_loss


def main():
    args = parse_args()
    if args.check_only:
        return
    import_deps()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    stdlib, nfiles, tr, va = corpus()
    log(f"data: {nfiles} files of {stdlib}: {len(tr)} training bytes, {len(va)} validation"
        f" bytes; writing {rel(args.out)} (scratch {rel(args.work)}), r2rc's Python API")
    results = []
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        teachers = {s: pool.submit(task_teacher, args, s) for s in range(args.seeds)}
        jobs = []
        for s in range(args.seeds):
            for size in SIZES:
                cmd = next(c for _, c, z in GROWTHS if z == size)
                jobs.append(pool.submit(task_scratch, args, s, size, cmd))
        for s, fut in teachers.items():
            results.append(fut.result())
            log(f"seed {s} teacher grown at step {args.grow_at}; small net final val loss"
                f" {results[-1]['curve'][-1][2]:.4f}")
            for name, cmd, _ in GROWTHS:
                for transfer in (False, True):
                    jobs.append(pool.submit(task_grow, args, s, name, cmd, transfer))
        for fut in cf.as_completed(jobs):
            r = fut.result()
            results.append(r)
            extra = ""
            if "abs_diff" in r:
                extra = (f" (started at {r['start_loss']:.6f}, teacher {r['teacher_loss']:.6f},"
                         f" |diff| {r['abs_diff']:.1e})")
            log(f"seed {r['seed']} {r['name']}: final val loss {r['curve'][-1][2]:.4f}{extra}")

    names = ["small"]
    for name, _, _ in GROWTHS:
        names += [f"{name}_fresh", f"{name}_state"]
    names += [f"scratch_{k}" for k in SIZES]
    by = {n: sorted((r for r in results if r["name"] == n), key=lambda r: r["seed"])
          for n in names}
    table = {}
    for n in names:
        rs = by[n]
        row = {"final": stats([r["curve"][-1][2] for r in rs]),
               "train_flops": rs[0]["curve"][-1][0], "macs": rs[0]["macs"]}
        if n != "small" and not n.startswith("scratch"):
            row["spike"] = stats([spike(r["curve"], args.grow_at, r["teacher_loss"]) for r in rs])
            row["start_abs_diff"] = max(r["abs_diff"] for r in rs)
        elif n == "small":
            tl = [r["curve"][[s for _, s, _ in r["curve"]].index(args.grow_at)][2] for r in rs]
            row["spike"] = stats([spike(r["curve"], args.grow_at, t) for r, t in zip(rs, tl)])
        table[n] = row

    def title(n):
        for suffix, what in (("_fresh", "fresh AdamW"), ("_state", "AdamW state moved")):
            if n.endswith(suffix):
                return f"{TITLES[n[: -len(suffix)]]}, {what}"
        return TITLES[n]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {g[0]: f"C{i}" for i, g in enumerate(GROWTHS)}
    for ax, zoom in zip(axes, (False, True)):
        for n in names:
            xs = np.array([p[0] for p in by[n][0]["curve"]])
            ys = np.mean([[p[2] for p in r["curve"]] for r in by[n]], axis=0)
            if n == "small":
                c, ls = "k", "-"
            elif n.startswith("scratch"):
                c, ls = "grey", {"wide": "--", "wide2": "-.", "deep": ":"}[n[8:]]
            else:
                c, ls = colors[n.rsplit("_", 1)[0]], "-" if n.endswith("_state") else ":"
            if zoom and n.startswith("scratch"):
                continue
            ax.plot(xs, ys, color=c, linestyle=ls, label=title(n), linewidth=1.3)
        gf = by["small"][0]["curve"][[s for _, s, _ in by["small"][0]["curve"]].index(args.grow_at)][0]
        ax.axvline(gf, color="k", linewidth=0.8, alpha=0.4)
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("validation loss (nats per byte)")
        ax.grid(alpha=0.3)
    lo = min(min(p[2] for p in r["curve"]) for r in results)
    axes[0].set_ylim(lo - 0.1, 4.0)
    axes[0].set_title(f"Byte-level GPT on the stdlib, grown at step {args.grow_at}/{args.steps}"
                      f" ({args.seeds} seeds)", fontsize=9)
    gf_end = max(by[n][0]["curve"][-1][0] for n in names if not n.startswith("scratch"))
    axes[1].set_xlim(gf * 0.97, gf + (gf_end - gf) * 0.35)
    window = [p[2] for n in names if not n.startswith("scratch") for r in by[n]
              for p in r["curve"] if gf <= p[0] <= gf + (gf_end - gf) * 0.35]
    axes[1].set_ylim(min(window) - 0.05, max(window) + 0.05)
    axes[1].set_title("after growth (dotted: fresh AdamW, solid: state moved)", fontsize=9)
    axes[0].legend(loc="upper right", fontsize=6.5)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss_vs_flops.png"), dpi=110,
                metadata={"Software": None})

    result = {
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(),
            "stdlib": stdlib, "stdlib_files": nfiles, "train_bytes": len(tr),
            "val_bytes": len(va), "r2rc": f"r2rc {r2rc.__version__} (Python API)",
        },
        "table": table,
        "curves": {n: [r["curve"] for r in by[n]] for n in names},
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    s = args.seeds
    lines = [
        f"Validation loss (nats per byte) over seeds 0..{s - 1}: mean ± std (min-max)."
        f" Growth at step {args.grow_at} of {args.steps}; spike = highest validation loss"
        f" in the {SPIKE_WINDOW} steps after growth minus the teacher's loss at growth"
        " (for the small net: its own loss at that step).",
        "",
        "| network | final val. loss | spike after growth | training FLOPs |",
        "|---|---|---|---|",
    ]
    for n in names:
        t = table[n]
        f_ = t["final"]
        sp = t.get("spike")
        sp_s = f"{sp['mean']:+.3f} ± {sp['std']:.3f}" if sp else "-"
        lines.append(
            f"| {title(n)} | {f_['mean']:.4f} ± {f_['std']:.4f} ({f_['min']:.4f}-{f_['max']:.4f})"
            f" | {sp_s} | {t['train_flops']:.3g} |"
        )
    worst = max(t.get("start_abs_diff", 0.0) for t in table.values())
    lines += ["", f"Every student started within {worst:.1e} of its teacher's validation"
              " loss (asserted <= 1e-4)."]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {', '.join(rel(os.path.join(args.out, f)) for f in OUTPUTS)}")
    compare_with_reference(result, args.out, log)


def compare_with_reference(result, out, log):
    """Says whether this run reproduced the committed reference (README's table)."""
    path = os.path.join(HERE, "results.json")
    if os.path.realpath(path) == os.path.realpath(os.path.join(out, "results.json")):
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
    mine, theirs = result["table"], ref.get("table", {})
    changed = [n for n in mine
               if mine[n]["final"]["per_seed"] != theirs.get(n, {}).get("final", {}).get("per_seed")]
    if not changed:
        log(f"every final loss equals the reference {rel(path)} (README's table)")
        return
    env = {k: (v, ref.get("environment", {}).get(k))
           for k, v in result["environment"].items() if ref.get("environment", {}).get(k) != v}
    log(f"differs from the reference {rel(path)} in {', '.join(changed)}"
        + (": environments differ: " + "; ".join(f"{k} {a} here, {b} there"
                                                  for k, (a, b) in env.items()) if env else "")
        + " (compare with the seed spread)")


if __name__ == "__main__":
    main()
