#!/usr/bin/env python3
"""Issue 16's benchmark: r2rc's executor and proofs against ONNX Runtime, in one run.

Every figure is measured in this run against a reference measured in this run, on the same
inputs and r2rc's own ONNX export of the same weights (ONNX Runtime with
intra_op_num_threads=T, inter_op_num_threads=1, sequential, all graph optimisations):

1. forward throughput, r2rc vs ONNX Runtime, f32: ResNet-18 batch 16, ResNetCifar-18
   (--set r=1/8) batch 128, GPT-2 small (examples/gpt2.arch) on one sequence of 256 int64
   token ids. r2rc is timed by `r2rc run --input X.npy --repeat K --threads T` (best of K
   passes, printed on stderr), ONNX Runtime by the best of K `session.run`s; rounds
   alternate the two (r2rc after a pause, while ONNX Runtime's threads stop spin-waiting)
   and the median round counts;
2. proof cost: `r2rc widen examples/resnet50.arch --layer conv3_2 --by 1.5 --weights T`
   (full f64 proof, the default) and the same with `--prove local`, on a teacher checkpoint
   T made once with `r2rc init` (users widen trained checkpoints; without --weights the
   command would mostly time drawing a random teacher). The targets are judged on the
   proof's own time (report.json's `timings.prove`, read from --json) over ONNX Runtime's
   f32 forward of ResNet-50 at batch 8 (seconds per batch, median of rounds); each
   command's whole wall time is printed beside it. Also `--all --by 1.5 --prove local`
   against `--all --by 1.5` (full), each pair alternating round by round
   (and which goes first);
3. with --stream, the streaming ratio of scripts/bench_large.sh (widen --no-prove of a
   >1 GB checkpoint over the direct-write floor of its student; needs ~6 GB of disk).

Ends with a summary table: date, machine, each ratio next to issue 16's target.

Usage: scripts/bench_forward.py [--r2rc target/release/r2rc] [--threads 2] [--rounds 5]
           [--repeat 5] [--big-rounds 3] [--big-repeat 3] [--proof-rounds 4]
           [--all-rounds 4] [--no-gpt2] [--no-proofs] [--stream]
scripts/bench.sh runs it with the venv of scripts/ci_python.sh (numpy, onnxruntime).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

# (label, example, --set arguments, batch, tokens per sequence or None, big)
# "big" cases take the smaller --big-rounds / --big-repeat.
FORWARD = [
    ("ResNet-18", "resnet18", [], 16, None, False),
    ("ResNetCifar-18 1/8", "resnet_cifar18", ["--set", "r=1/8"], 128, None, False),
    ("GPT-2 small", "gpt2", [], 1, 256, True),
]
PROOF_ARCH = "resnet50"
# Seconds between an ONNX Runtime measurement and the next r2rc command.
ORT_SPIN_PAUSE = 0.5
PROOF_BATCH = 8


def r2rc(binary, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"r2rc {' '.join(args)} exited {p.returncode}:\n{p.stderr.strip()}")
    return p


def graph_json(binary, arch, sets, work):
    path = os.path.join(work, "graph.json")
    r2rc(binary, "export", arch, *sets, "--json", path, "--force")
    with open(path) as f:
        return json.load(f)


def prepare(binary, arch, sets, batch, tokens, work, seed):
    """Random weights (random biases and BN statistics), the ONNX export, the input batch."""
    stem = os.path.splitext(os.path.basename(arch))[0]
    w = os.path.join(work, f"{stem}.safetensors")
    onnx_path = os.path.join(work, f"{stem}.onnx")
    r2rc(binary, "init", arch, *sets, "-o", w, "--seed", str(seed), "--random-stats", "--force")
    r2rc(binary, "export", arch, *sets, "--weights", w, "--onnx", onnx_path)
    g = graph_json(binary, arch, sets, work)
    rng = np.random.default_rng(seed)
    vocab = g.get("defaults", {}).get("vocab")
    if vocab:
        # r2rc's transformer export takes int64 ids shaped N x T with T dynamic.
        x = rng.integers(0, vocab, size=(batch, tokens)).astype(np.int64)
    else:
        x = rng.standard_normal((batch, *g["input"]["shape"])).astype(np.float32)
    x_path = os.path.join(work, f"{stem}.x.npy")
    np.save(x_path, x)
    return w, onnx_path, x, x_path


def ort_session(model_path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    return sess


def ort_best(sess, x, repeat):
    """Best seconds per batch over `repeat` runs after one warm-up (as `r2rc run --repeat`)."""
    sess.run(["output"], {"input": x})
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(["output"], {"input": x})
        best = min(best, time.perf_counter() - t0)
    return best


def r2rc_rate(binary, arch, sets, w, x_path, threads, repeat):
    p = r2rc(binary, "run", arch, *sets, "--weights", w, "--input", x_path,
             "--repeat", str(repeat), "--threads", str(threads), "--dtype", "f32")
    m = re.findall(r"([0-9][0-9.eE+]*)\s*(?:images|sequences)/s", p.stderr)
    if not m:
        raise RuntimeError(f"r2rc run printed no images/s on stderr:\n{p.stderr.strip()}")
    return float(m[-1])


# The note of a `--prove local` run that proved in full because its regions cost more.
FULL_INSTEAD = "proved in full rather than locally"


def timed(binary, args):
    """(whole wall seconds, the proof's own seconds from report.json's timings, whether
    it proved in full instead of locally) of a rewrite run with --json."""
    t0 = time.perf_counter()
    p = r2rc(binary, *args, "--json")
    total = time.perf_counter() - t0
    report = json.loads(p.stdout)
    prove = report.get("timings", {}).get("prove")
    if prove is None:
        raise RuntimeError(f"r2rc {' '.join(args)} --json reported no timings.prove")
    return total, prove, any(n.startswith(FULL_INSTEAD) for n in report.get("notes", []))


def spread(xs, fmt):
    return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}" if len(xs) > 1 else fmt.format(xs[0])


def rate(x):
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def stream_ratio(binary):
    """Runs scripts/bench_large.sh and returns (its output, widen over the direct floor)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, R2RC=os.path.abspath(binary))
    p = subprocess.run(["bash", os.path.join(here, "bench_large.sh")], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"bench_large.sh exited {p.returncode}:\n{p.stderr.strip()}")
    m = re.search(r"ratio widen / floor .*?([0-9.]+) of the direct floor", p.stdout)
    if not m:
        raise RuntimeError(f"bench_large.sh printed no direct-floor ratio:\n{p.stdout}")
    return p.stdout, float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--r2rc", default="target/release/r2rc")
    ap.add_argument("--examples", default="examples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the small forward cases")
    ap.add_argument("--repeat", type=int, default=5, help="passes per round (best counts)")
    ap.add_argument("--big-rounds", type=int, default=5, help="rounds for GPT-2 and ResNet-50")
    ap.add_argument("--big-repeat", type=int, default=3)
    ap.add_argument("--proof-rounds", type=int, default=4, help="rounds of the conv3_2 proofs")
    ap.add_argument("--all-rounds", type=int, default=4,
                    help="rounds of the --all proofs (0 skips them)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-gpt2", action="store_true")
    ap.add_argument("--no-proofs", action="store_true")
    ap.add_argument("--no-forward", action="store_true",
                    help="skip the executor cases (proof cost, and --stream, only)")
    ap.add_argument("--stream", action="store_true", help="also run scripts/bench_large.sh")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="r2rc-bench-")
    try:
        return bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # weights and exports: ~1.5 GB at the peak


def bench(args, work):
    t_start = time.perf_counter()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} cores, {cpu_model()}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{now}; {machine}; load average {load:.2f}")
    print(f"onnxruntime {ort.__version__}, {args.threads} threads (intra-op {args.threads}, "
          f"inter-op 1); median of rounds, each the best of its passes")
    summary = []  # (what, measured, target, met)
    status = 0

    print(f"\n{'model':<20} {'batch':>5} {'r2rc /s':>10} {'ort /s':>10} {'r2rc/ort':>9} "
          f"{'ratio range':>12}")
    for label, name, sets, batch, tokens, big in FORWARD:
        if args.no_forward:
            break
        if name == "gpt2" and args.no_gpt2:
            continue
        arch = os.path.join(args.examples, f"{name}.arch")
        rounds = args.big_rounds if big else args.rounds
        repeat = args.big_repeat if big else args.repeat
        unit = "seq" if tokens else "img"
        what = f"{label} b{batch}" + (f" x{tokens} tokens" if tokens else "")
        try:
            w, onnx_path, x, x_path = prepare(args.r2rc, arch, sets, batch, tokens, work,
                                              args.seed)
            sess = ort_session(onnx_path, args.threads)
            ours, theirs, ratios = [], [], []
            for _ in range(rounds):
                # ONNX Runtime's intra-op threads spin-wait after a run (and after the
                # session's creation): r2rc's passes, in another process, would share the
                # cores with them (ResNetCifar-18 measured 21-31k img/s right after ORT,
                # 50k after this pause).
                time.sleep(ORT_SPIN_PAUSE)
                a = r2rc_rate(args.r2rc, arch, sets, w, x_path, args.threads, repeat)
                b = batch / ort_best(sess, x, repeat)
                ours.append(a)
                theirs.append(b)
                ratios.append(a / b)
            del sess
            for f in (w, onnx_path):
                os.remove(f)
        except Exception as e:
            status = 1
            print(f"{label:<20} FAILED: {e}")
            summary.append((f"executor, {what}", "FAILED", ">= 1.0x ORT", False))
            continue
        o, t, r = statistics.median(ours), statistics.median(theirs), statistics.median(ratios)
        print(f"{label:<20} {batch:>5} {rate(o):>10} {rate(t):>10} {r:>8.2f}x "
              f"{spread(ratios, '{:.2f}'):>12} ({unit}/s)")
        summary.append((f"executor, {what}", f"{r:.2f}x ({rate(o)} vs {rate(t)} {unit}/s)",
                        ">= 1.0x ORT", r >= 1.0))

    if not args.no_proofs:
        arch = os.path.join(args.examples, f"{PROOF_ARCH}.arch")
        try:
            # The teacher checkpoint (random weights, biases and BN statistics) is made once.
            teacher, onnx_path, x, _ = prepare(args.r2rc, arch, [], PROOF_BATCH, None, work,
                                               args.seed)
            sess = ort_session(onnx_path, args.threads)
            fwds = [ort_best(sess, x, args.big_repeat) for _ in range(args.big_rounds)]
            fwd = statistics.median(fwds)
            print(f"\nONNX Runtime f32 forward of ResNet-50 at batch {PROOF_BATCH}: "
                  f"{fwd * 1e3:.0f} ms (the proofs' unit; measured again before each "
                  f"round of the conv3_2 proofs, which are divided by their round's)")
            w = ["--weights", teacher]
            layer = ["widen", arch, "--layer", "conv3_2", "--by", "1.5"] + w
            every = ["widen", arch, "--all", "--by", "1.5"] + w
            times, totals, instead, ratios = {}, {}, {}, {}
            local = ["--prove", "local"]
            # Each pair alternates full and local round by round, each first in half the
            # rounds, so that drift in the machine's speed (and whatever one command leaves
            # the next) falls on both alike.
            # (the pair, its rounds, whether each round gets its own ORT unit)
            for pair, rounds, per_round in [
                ((("full", layer), ("local", layer + local)), args.proof_rounds, True),
                ((("all full", every), ("all local", every + local)), args.all_rounds, False),
            ]:
                if rounds < 1:
                    continue
                runs = {key: [] for key, _ in pair}
                # The unit of each round: ORT's forward measured just before it (this VM's
                # speed drifts by a third within minutes), for the conv3_2 pair.
                units = []
                for r in range(rounds):
                    if per_round:
                        units.append(ort_best(sess, x, args.big_repeat))
                        time.sleep(ORT_SPIN_PAUSE)
                    for key, cmd in pair if r % 2 == 0 else pair[::-1]:
                        runs[key].append(timed(args.r2rc, cmd))
                for key, cmd in pair:
                    ts = [p for _, p, _ in runs[key]]
                    times[key] = statistics.median(ts)
                    totals[key] = statistics.median(t for t, _, _ in runs[key])
                    instead[key] = all(f for _, _, f in runs[key])
                    if units:
                        ratios[key] = statistics.median(p / u for p, u in zip(ts, units))
                    print(f"r2rc {' '.join(cmd)}: proof {times[key]:.2f} s "
                          f"({spread(ts, '{:.2f}')} over {rounds}) = "
                          f"{ratios.get(key, times[key] / fwd):.2f}x ORT's forward; whole "
                          f"command {totals[key]:.2f} s = {totals[key] / fwd:.1f}x")
                if units:
                    print(f"ORT's forward before each round: {spread(units, '{:.3f}')} s")
            del sess
            full, local = ratios["full"], ratios["local"]
            summary.append(("full proof, widen conv3_2 x1.5 / ORT b8 fwd",
                            f"{full:.2f}x ({times['full']:.2f} s; command "
                            f"{totals['full']:.2f} s)", "<= 4x", full <= 4))
            summary.append(("local proof, same / ORT b8 fwd",
                            f"{local:.2f}x ({times['local']:.2f} s; command "
                            f"{totals['local']:.2f} s)", "<= 0.5x", local <= 0.5))
            summary.append(("local / full proof, widen conv3_2",
                            f"{times['local'] / times['full']:.2f}", "<= 1",
                            times["local"] <= times["full"]))
            if "all full" in times:
                r = times["all local"] / times["all full"]
                # Where r2rc ran the full proof for `--prove local` (its note says so), both
                # commands did the same work and the ratio is the machine's noise: met by
                # construction, and shown so.
                same = instead["all local"]
                summary.append(("local / full proof, widen --all x1.5",
                                f"{r:.2f} ({times['all local']:.1f} vs "
                                f"{times['all full']:.1f} s; commands "
                                f"{totals['all local']:.1f} vs {totals['all full']:.1f} s)"
                                + ("; local ran the full proof" if same else ""),
                                "<= 1", r <= 1 or same))
        except Exception as e:
            status = 1
            print(f"proofs FAILED: {e}")
            summary.append(("proof cost", "FAILED", "", False))

    if args.stream:
        try:
            out, r = stream_ratio(args.r2rc)
            print("\nscripts/bench_large.sh:\n" + out.rstrip())
            summary.append(("streamed 1 GB widen / direct-write floor", f"{r:.2f}x", "<= 1.2x",
                            r <= 1.2))
        except Exception as e:
            status = 1
            print(f"streaming FAILED: {e}")
            summary.append(("streamed 1 GB widen / direct-write floor", "FAILED", "<= 1.2x", False))
    else:
        summary.append(("streamed 1 GB widen / direct-write floor", "not run (STREAM=1)",
                        "<= 1.2x", None))

    print(f"\nSummary (issue 16), {now}, {machine}, {args.threads} threads, "
          f"bench took {time.perf_counter() - t_start:.0f} s")
    w0 = max(len(s[0]) for s in summary)
    w1 = max(len(s[1]) for s in summary)
    print(f"{'measure':<{w0}}  {'measured':<{w1}}  {'target':<11}  met")
    for what, got, target, met in summary:
        mark = "-" if met is None else ("yes" if met else "no")
        print(f"{what:<{w0}}  {got:<{w1}}  {target:<11}  {mark}")
    return status


if __name__ == "__main__":
    sys.exit(main())
