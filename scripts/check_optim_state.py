"""Optimizer state through PyTorch (issue 15): a teacher trained a few AdamW steps in the
module `r2rc export --torch` writes, its state saved with scripts/optim_state.py, grown by
r2rc with --optimizer-state (widen r2r and net2net, deepen r2r), loaded into a fresh AdamW
over the student module; the loaded state is the file's (a save round-trips it), R2R's
keeps the teacher's moments bit for bit with zeros on new entries, step is kept (new
layers: 0), one AdamW step of the student runs and moves every parameter that has a
gradient, and `r2rc export --torch` writes the helper beside the module. Where
transformers is installed, a tiny Hugging Face Llama goes through the same steps under
--names hf (check_hf).

Usage: check_optim_state.py --r2rc PATH/TO/r2rc [--arch examples/resnet_cifar10.arch]
"""

import argparse
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_torch import load_module  # noqa: E402
from optim_state import load_state, save_state, to_tensors  # noqa: E402


def r2rc(binary, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"r2rc {' '.join(args)} exited {p.returncode}:\n{p.stderr.strip()}")


def module(binary, arch, weights, py):
    r2rc(binary, "export", arch, "--torch", py, "--force")
    cls, _ = load_module(py)
    m = cls()
    m.load_state_dict(load_file(weights), strict=True)
    return m


def loss_of(model, x):
    return (model(x).double() ** 2).sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--r2rc", required=True)
    ap.add_argument("--arch", default="examples/resnet_cifar10.arch")
    a = ap.parse_args()
    torch.manual_seed(0)
    checks = 0
    with tempfile.TemporaryDirectory() as work:
        w0 = os.path.join(work, "init.safetensors")
        r2rc(a.r2rc, "init", a.arch, "-o", w0, "--random-stats")
        teacher = module(a.r2rc, a.arch, w0, os.path.join(work, "teacher.py"))
        teacher.train()
        x = torch.randn(4, *teacher_input(a.arch))
        opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
        for _ in range(3):
            opt.zero_grad()
            loss_of(teacher, x).backward()
            opt.step()
        w = os.path.join(work, "t.safetensors")
        save_file({k: v.detach().contiguous() for k, v in teacher.state_dict().items()}, w)
        adam = os.path.join(work, "adam.safetensors")
        save_state(teacher, opt, adam)
        saved = load_file(adam)
        assert all(int(saved[k]) == 3 for k in saved if k.endswith(".step")), "3 steps taken"
        stem = os.path.splitext(os.path.basename(a.arch))[0]
        for name, flags in [
            ("widen_r2r", ["widen", "--all", "--by", "1.5", "--method", "r2r"]),
            ("widen_net2net", ["widen", "--all", "--by", "1.5", "--method", "net2net"]),
            ("deepen_r2r", ["deepen", "--after", "conv2_1", "--method", "r2r"]),
        ]:
            out = os.path.join(work, name)
            r2rc(a.r2rc, flags[0], a.arch, *flags[1:], "--weights", w,
                 "--optimizer-state", adam, "-o", out)
            sw = os.path.join(out, f"{stem}.safetensors")
            sarch = os.path.join(out, f"{stem}.arch")
            state = os.path.join(out, f"{stem}.optimizer.safetensors")
            student = module(a.r2rc, sarch, sw, os.path.join(out, "student.py"))
            student.train()
            # export --torch wrote the helper beside the module.
            with open(os.path.join(out, "optim_state.py")) as f, \
                    open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "optim_state.py")) as g:
                assert f.read() == g.read(), "export --torch ships scripts/optim_state.py"
            opt2 = torch.optim.AdamW(student.parameters(), lr=1e-3)
            load_state(student, opt2, state)
            # The loaded state is the file's: saving it again gives the same tensors.
            again = to_tensors(student, opt2)
            written = load_file(state)
            assert set(again) == set(written), name
            for k, v in written.items():
                assert torch.equal(again[k], v), f"{name}: {k} round trip"
            steps = [int(v) for k, v in written.items() if k.endswith(".step")]
            if name.startswith("widen"):
                assert set(steps) == {3}, f"{name}: step kept"
            else:
                # The inserted block's parameters are new: step 0 and zero moments.
                assert set(steps) == {0, 3}, f"{name}: steps {set(steps)}"
            for k, v in written.items():
                if name == "widen_r2r" and k in saved and not k.endswith(".step"):
                    old = saved[k]
                    region = tuple(slice(0, n) for n in old.shape)
                    assert torch.equal(v[region], old), f"{name}: {k} keeps the teacher's"
                    rest = v.clone()
                    rest[region] = 0
                    assert not rest.any(), f"{name}: {k} new entries zero"
            before = {n: p.detach().clone() for n, p in student.named_parameters()}
            opt2.zero_grad()
            loss_of(student, x).backward()
            opt2.step()
            moved = sum(not torch.equal(before[n], p) for n, p in student.named_parameters()
                        if p.grad is not None and p.grad.abs().sum() > 0)
            grads = sum(p.grad is not None and p.grad.abs().sum() > 0
                        for p in student.parameters())
            assert moved == grads and moved > 0, f"{name}: {moved} of {grads} moved"
            assert all(torch.isfinite(p).all() for p in student.parameters()), name
            print(f"ok   {name}: state loaded into AdamW by name ({len(written) // 3} "
                  f"parameters), one step moved {moved}")
            checks += 1
        checks += check_hf(a.r2rc, work)
    print(f"optimizer state: {checks}/{checks} students stepped")
    return 0


def check_hf(binary, work):
    """A tiny Hugging Face Llama trained 2 AdamW steps, its state saved by parameter name,
    widened x2 (r2r) and deepened (r2r) by r2rc under --names hf; the student folder loads
    with from_pretrained, takes the state (teacher's moments kept, step kept, new layer 0)
    and one AdamW step. Skipped (0 checks) where transformers is not installed."""
    try:
        import transformers
    except ImportError:
        print("skip Hugging Face Llama: transformers is not installed "
              "(scripts/ci_transformers.sh's venv has it)")
        return 0
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=16,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu")
    teacher = transformers.LlamaForCausalLM(cfg)
    folder = os.path.join(work, "llama")
    ids = torch.randint(0, 50, (2, 16))
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        teacher(ids, labels=ids).loss.backward()
        opt.step()
    teacher.save_pretrained(folder, safe_serialization=True)
    adam = os.path.join(work, "llama_adam.safetensors")
    save_state(teacher, opt, adam)
    saved = load_file(adam)
    arch = os.path.join(work, "llama.arch")
    r2rc(binary, "from-hf", os.path.join(folder, "config.json"), "-o", arch)
    n = 0
    for name, flags in [("hf widen_r2r", ["widen", "--all", "--by", "2", "--method", "r2r"]),
                        ("hf deepen_r2r", ["deepen", "--after", "layers_1", "--method", "r2r"])]:
        out = os.path.join(work, name.replace(" ", "_"))
        r2rc(binary, flags[0], arch, *flags[1:], "--weights",
             os.path.join(folder, "model.safetensors"), "--names", "hf",
             "--optimizer-state", adam, "-o", out)
        student = transformers.AutoModelForCausalLM.from_pretrained(out)
        student.train()
        opt2 = torch.optim.AdamW(student.parameters(), lr=1e-3)
        state = os.path.join(out, "optimizer.safetensors")
        load_state(student, opt2, state)
        written = load_file(state)
        for k, v in to_tensors(student, opt2).items():
            assert torch.equal(v, written[k]), f"{name}: {k} round trip"
        if name.endswith("widen_r2r"):
            for k, v in written.items():
                old = saved[k]
                if k.endswith(".step"):
                    assert int(v) == 2, f"{name}: {k} kept"
                elif "norm" not in k:  # stream norm scales are rescaled by sqrt(1/2)
                    region = tuple(slice(0, d) for d in old.shape)
                    assert torch.equal(v[region], old), f"{name}: {k} keeps the teacher's"
        else:
            steps = {k: int(v) for k, v in written.items() if k.endswith(".step")}
            assert all((s == 0) == (".layers.1." in k) for k, s in steps.items()), name
        opt2.zero_grad()
        student(ids, labels=ids).loss.backward()
        opt2.step()
        assert all(torch.isfinite(p).all() for p in student.parameters()), name
        print(f"ok   {name}: from_pretrained student took the state and one AdamW step")
        n += 1
    return n


def teacher_input(arch):
    """The input shape of an .arch file (`input 3x32x32`)."""
    with open(arch) as f:
        for line in f:
            if line.startswith("input "):
                return tuple(int(d) for d in line.split()[1].split("x"))
    raise ValueError(f"{arch} has no input line")


if __name__ == "__main__":
    sys.exit(main())
