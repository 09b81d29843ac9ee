#!/usr/bin/env python3
"""Grown transformers load in the real libraries and compute their teacher's logits (issue 14).

Builds tiny random teachers with transformers 4.44.2 and timm 1.0.9 (every norm weight and
bias and every linear bias randomised, as in check_transformers.py): LlamaForCausalLM
(hidden 32, 8 heads in 4 kv groups of head dim 4, RoPE, RMSNorm, gated MLP 48, untied
head), GPT2LMHeadModel (n_embd 32, 4 heads, LayerNorm, MLP 128, tied head) and a timm
VisionTransformer (embed 32, 4 heads, MLP 64, 32x32 images). Sizes are chosen so that x1.5
is representable (heads and kv groups stay whole, head dimension kept).

Each teacher is grown with r2rc (`from-hf` for its .arch) into a `--names hf` folder
(`--names timm` for the ViT):
- widen `--all --by 1.5` (r2r, netmorph), `--all --by 2` (r2r, netmorph, net2net),
  the MLPs `--layer layers_x.mlp --by 2` (r2r, netmorph, net2net);
- deepen `--after layers_1` (r2r, netmorph, copy).
Every student must load with no missing, unexpected or misshaped tensor
(`AutoModelForCausalLM.from_pretrained(DIR, output_loading_info=True)`; timm:
`timm.create_model` with the student's sizes and eps, strict `load_state_dict`) and give
the teacher's logits within 1e-4 x max |logit| in f32. r2rc's own proof is rerun on an f64
copy of the teacher (same values) and must pass at <= 1e-9 (the f32 run's numbers, whose
tolerance r2rc widens to 1e-5 when its values cannot be stored in f32, are printed).
R2R and NetMorph students must keep every teacher entry bit for bit on the written files
(each teacher tensor is the leading block of the student's; GPT-2's fused c_attn and
timm's fused qkv are compared per q, k, v part; deepened layers are matched through the
report's name_map), except the norm scales of a widened normalised stream, which must be
the teacher's times sqrt(old/new) within f32 rounding. The new layer of a deepening is
checked too: output projections zero (netmorph, copy; copy's other tensors are the site
layer's) or every entry non-zero with zero biases (r2r).

Heads alone (`--layer layers_x.attention --by 2`) and the stream alone (`--layer layers_x
--by 1.5`) give a head size other than width / heads, which neither transformers 4.44 nor
timm 1.0.9 can describe: `--names hf|timm` must refuse them (exit 2, nothing written), and
the students are written in r2rc's names instead (from a teacher converted to r2rc's names,
which `r2rc run` must show gives the library's logits) and checked with `r2rc run`
against the library's teacher logits, with the same bit-for-bit checks.

Refusals: net2net --by 1.5 on the Llama stream (names the RMS norm), net2net on GPT-2's
tied stream (names the tie), a `--names hf|timm` student with one layer's MLP wider
(`--layer layers_1.mlp`): each exits 2, says why, and writes nothing.

Prints one line per case and `N/N passed`; exits 1 if any case fails.
Usage: check_transformer_growth.py [--r2rc target/release/r2rc] [--keep DIR] [--seed S]
"""

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workdir  # noqa: E402  (scratch folders, removed when every check passed)
from check_transformers import VIT_ARCH, randomise  # noqa: E402

TOLERANCE = 1e-4  # f32 logits against the teacher's, times max |logit|
PROOF_TOLERANCE = 1e-9  # r2rc's f64 proof
VOCAB, TOKENS, BATCH = 64, 16, 2
EXE = "target/release/r2rc"


class CaseFailed(Exception):
    pass


def need(cond, message):
    if not cond:
        raise CaseFailed(message)


def r2rc(*args):
    """Runs r2rc; returns (exit code, stdout, stderr)."""
    proc = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr.strip()


def last_error(err):
    lines = [l for l in err.splitlines() if l.startswith("error")]
    return lines[-1] if lines else (err.splitlines()[-1] if err else "?")


# --- teachers ---------------------------------------------------------------------------


class Teacher:
    """A library model, its files (f32, f64 copy, and r2rc-named copies) and its logits."""

    def __init__(self, kind, work, gen):
        import transformers

        self.kind, self.folder = kind, os.path.join(work, kind)
        os.makedirs(self.folder, exist_ok=True)
        self.arch = os.path.join(self.folder, "t.arch")
        if kind == "vit":
            from safetensors.torch import save_file
            from timm.models.vision_transformer import VisionTransformer

            self.naming, self.row = "timm", "blocks"
            model = VisionTransformer(img_size=32, patch_size=4, in_chans=3, num_classes=10,
                                      embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
            randomise(model, gen)
            self.weights = os.path.join(self.folder, "model.safetensors")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      self.weights)
            with open(self.arch, "w") as f:
                f.write(VIT_ARCH)
            self.x = torch.randn((BATCH, 3, 32, 32), generator=gen)
        else:
            self.naming, self.row = "hf", "layers"
            if kind == "llama":
                cfg = transformers.LlamaConfig(
                    vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                    max_position_embeddings=TOKENS, rope_theta=10000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, hidden_act="silu")
                model = transformers.LlamaForCausalLM(cfg)
            else:
                cfg = transformers.GPT2Config(
                    vocab_size=VOCAB, n_positions=TOKENS, n_embd=32, n_layer=2, n_head=4,
                    activation_function="gelu_new", layer_norm_epsilon=1e-5,
                    tie_word_embeddings=True)
                model = transformers.GPT2LMHeadModel(cfg)
            randomise(model, gen)
            model.save_pretrained(self.folder, safe_serialization=True)
            self.weights = os.path.join(self.folder, "model.safetensors")
            code, _, err = r2rc("from-hf", os.path.join(self.folder, "config.json"),
                                "-o", self.arch, "--force")
            if code != 0:
                raise CaseFailed(f"r2rc from-hf failed: {last_error(err)}")
            self.x = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=gen)
        model.eval()
        self.ref = self.logits(model)
        self.tensors = load_np(self.weights)
        self.weights64 = os.path.join(self.folder, "model64.safetensors")
        save_np({k: v.astype(np.float64) for k, v in self.tensors.items()}, self.weights64,
                metadata={"format": "pt"})
        self.xfile = os.path.join(self.folder, "input.npy")
        np.save(self.xfile, self.x.numpy().astype(np.int64 if kind != "vit" else np.float32))
        # r2rc's own names, for students the libraries cannot describe.
        self.r2rc_tensors = to_r2rc_names(kind, self.tensors)
        self.r2rc_weights = os.path.join(self.folder, "t.safetensors")
        self.r2rc_weights64 = os.path.join(self.folder, "t64.safetensors")
        save_np(self.r2rc_tensors, self.r2rc_weights)
        save_np({k: v.astype(np.float64) for k, v in self.r2rc_tensors.items()},
                self.r2rc_weights64)

    def logits(self, model):
        with torch.no_grad():
            out = model(self.x) if self.kind == "vit" else model(self.x, use_cache=False)
        out = out if isinstance(out, torch.Tensor) else out.logits
        return out.float().numpy().astype(np.float64)

    def agree(self, got, who):
        """'max diff / allowed' text; raises if `got` is not the teacher's logits."""
        need(got.shape == self.ref.shape,
             f"{who} gives logits of shape {got.shape}, the teacher {self.ref.shape}")
        scale = float(np.abs(self.ref).max())
        diff = float(np.abs(got - self.ref).max())
        need(diff <= TOLERANCE * scale,
             f"{who}: max |student - teacher| = {diff:.3e} > {TOLERANCE * scale:.3e} "
             f"(1e-4 x max |logit| {scale:.3e})")
        return f"logits {diff:.1e} <= {TOLERANCE * scale:.1e}"


def to_r2rc_names(kind, t):
    """The teacher's tensors in r2rc's names and layouts ([out, in] linears, q/k/v apart)."""
    out = {}
    for name, v in t.items():
        m = re.match(r"(?:model\.layers|transformer\.h|blocks)\.(\d+)\.(.*)", name)
        if m:
            row = "blocks" if kind == "vit" else "layers"
            pre, rest = f"{row}_{int(m.group(1)) + 1}.", m.group(2)
            leaf = rest.rsplit(".", 1)[-1]
            module = rest[: -len(leaf) - 1]
            fused = {"attn.c_attn": 1, "attn.qkv": 0}.get(module)
            if fused is not None:
                axis = fused if v.ndim == 2 else 0
                for part, piece in zip("qkv", np.split(v, 3, axis=axis)):
                    out[f"{pre}attention.{part}.{leaf}"] = (
                        piece.T if kind == "gpt2" and v.ndim == 2 else piece)
                continue
            local = {
                "input_layernorm": "attention.norm", "ln_1": "attention.norm",
                "norm1": "attention.norm", "post_attention_layernorm": "mlp.norm",
                "ln_2": "mlp.norm", "norm2": "mlp.norm",
                "self_attn.q_proj": "attention.q", "self_attn.k_proj": "attention.k",
                "self_attn.v_proj": "attention.v", "self_attn.o_proj": "attention.o",
                "attn.c_proj": "attention.o", "attn.proj": "attention.o",
                "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
                "mlp.down_proj": "mlp.down", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
            }[module]
            # GPT-2's Conv1D stores [in, out].
            out[f"{pre}{local}.{leaf}"] = v.T if kind == "gpt2" and v.ndim == 2 else v
            continue
        top = {
            "model.embed_tokens.weight": "embed.token.weight",
            "transformer.wte.weight": "embed.token.weight",
            "transformer.wpe.weight": "embed.position.weight",
            "model.norm.weight": "head.norm.weight", "transformer.ln_f.weight": "head.norm.weight",
            "transformer.ln_f.bias": "head.norm.bias", "norm.weight": "head.norm.weight",
            "norm.bias": "head.norm.bias", "lm_head.weight": "head.fc.weight",
            "head.weight": "head.fc.weight", "head.bias": "head.fc.bias",
            "patch_embed.proj.weight": "embed.conv.weight",
            "patch_embed.proj.bias": "embed.conv.bias",
            "cls_token": "embed.class_token.weight", "pos_embed": "embed.position.weight",
        }[name]
        out[top] = v.reshape(v.shape[-1]) if name == "cls_token" else (
            v.reshape(v.shape[1:]) if name == "pos_embed" else v)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# --- checks on written files ------------------------------------------------------------


def split_fused(kind, t):
    """GPT-2's c_attn and timm's qkv as their q, k, v parts, so each has a leading block."""
    out = {}
    for name, v in t.items():
        fused = name.endswith(("attn.c_attn.weight", "attn.c_attn.bias", "attn.qkv.weight",
                               "attn.qkv.bias"))
        if fused:
            axis = 1 if (kind == "gpt2" and v.ndim == 2) else 0
            for part, piece in zip("qkv", np.split(v, 3, axis=axis)):
                out[f"{name}[{part}]"] = piece
        else:
            out[name] = v
    return out


def is_norm_scale(name, v):
    leaf = name.rsplit(".", 1)[-1]
    return v.ndim == 1 and leaf == "weight" and re.search(r"norm|ln_", name) is not None


def layer_index_map(name_map):
    """r2rc's name_map (layers_2.x -> layers_3.x) as file indices {1: 2} (0-based)."""
    moves = {}
    for old, new in name_map.items():
        a = re.match(r"(?:layers|blocks)_(\d+)\.", old)
        b = re.match(r"(?:layers|blocks)_(\d+)\.", new)
        if a and b:
            moves[int(a.group(1)) - 1] = int(b.group(1)) - 1
    return moves


def renamed(name, moves):
    """A teacher tensor's name in a deepened student (file names, 0-based layers)."""
    m = re.match(r"(model\.layers|transformer\.h|blocks)\.(\d+)\.(.*)", name)
    if m and int(m.group(2)) in moves:
        return f"{m.group(1)}.{moves[int(m.group(2))]}.{m.group(3)}"
    return name


def kept_bits(kind, teacher, student, moves=None, r2rc_names=False):
    """Every teacher entry kept, or for norm scales of a wider stream rescaled exactly.

    `moves` (file layer index -> student's) follows a deepening; r2rc-named files are only
    widened here, so their names do not move."""
    moves = moves or {}
    fuse = (lambda t: t) if r2rc_names else functools.partial(split_fused, kind)
    t_all, s_all = fuse(teacher), fuse(student)
    exact = scaled = 0
    for name, t in t_all.items():
        sname = name if r2rc_names else renamed(name, moves)
        need(sname in s_all, f"teacher tensor {name} is not in the student (as {sname})")
        s = s_all[sname]
        need(s.ndim == t.ndim and all(a <= b for a, b in zip(t.shape, s.shape)),
             f"{sname}: student shape {s.shape} does not contain the teacher's {t.shape}")
        block = s[tuple(slice(0, n) for n in t.shape)]
        if np.array_equal(block, t):
            exact += 1
            continue
        if is_norm_scale(name, t) and s.shape[0] > t.shape[0]:
            want = t.astype(np.float64) * np.sqrt(t.shape[0] / s.shape[0])
            err = np.abs(block.astype(np.float64) - want)
            # Rounded to nearest f32: within half an f32 ulp of the exact product.
            half_ulp = 0.5 * np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
            ok = np.all(err <= half_ulp * (1 + 1e-9))
            need(ok, f"{sname}: old scales are not the teacher's x sqrt({t.shape[0]}/"
                     f"{s.shape[0]}) (worst error {err.max():.3e})")
            scaled += 1
            continue
        diff = int(np.sum(block != t))
        need(False, f"{sname}: {diff} of {t.size} teacher entries changed")
    return f"{exact} tensors kept bit for bit" + (
        f", {scaled} norm scales x sqrt(old/new)" if scaled else "")


OUTPUT_PROJECTIONS = ("self_attn.o_proj", "mlp.down_proj", "attn.c_proj", "mlp.c_proj",
                      "attn.proj", "mlp.fc2")


def new_layer(kind, student, site, new, method):
    """The inserted layer (file index `new`) of a deepening, against the site layer."""
    prefix = {"llama": "model.layers", "gpt2": "transformer.h", "vit": "blocks"}[kind]
    mine = {k[len(f"{prefix}.{new}."):]: v for k, v in student.items()
            if k.startswith(f"{prefix}.{new}.")}
    need(mine, f"no tensors {prefix}.{new}.* in the student")
    for local, v in mine.items():
        out_proj = local.rsplit(".", 1)[0] in OUTPUT_PROJECTIONS
        leaf = local.rsplit(".", 1)[-1]
        site_v = student[f"{prefix}.{site}.{local}"]
        if out_proj and (method != "r2r" or leaf == "bias"):
            need(not v.any(), f"{prefix}.{new}.{local} is not zero ({method})")
        elif out_proj:
            need(np.count_nonzero(v) == v.size,
                 f"{prefix}.{new}.{local} has zero entries (r2r output projections are "
                 f"[V, -V] with non-zero V)")
        elif method == "copy":
            need(np.array_equal(v, site_v),
                 f"{prefix}.{new}.{local} is not a copy of the site layer's")
    return f"new layer {prefix}.{new}: output projections " + (
        "[V, -V] non-zero" if method == "r2r" else "zero")


def proof_f64(args, weights64, naming):
    """r2rc's own proof on the f64 copy of the teacher: must pass at <= 1e-9."""
    code, out, err = r2rc(*args, "--weights", weights64, "--names", naming, "--json")
    need(code == 0, f"f64 proof run failed: {last_error(err)}")
    report = json.loads(out)
    ev = report["evidence"]
    need(ev and all(e["passed"] for e in ev), f"f64 proof failed: {ev}")
    tol = max(e["tolerance"] for e in ev)
    worst = max(e["max_rel_err"] for e in ev)
    need(tol <= PROOF_TOLERANCE and worst <= PROOF_TOLERANCE,
         f"f64 proof: max rel {worst:.1e}, tolerance {tol:.0e} (want <= 1e-9)")
    return f"f64 proof {worst:.0e}"


def f32_proof(report):
    ev = report["evidence"]
    need(ev and all(e["passed"] for e in ev), f"r2rc's proof failed: {ev}")
    return (f"f32-file proof {max(e['max_rel_err'] for e in ev):.0e} "
            f"(tol {max(e['tolerance'] for e in ev):.0e})")


# --- cases ------------------------------------------------------------------------------


def load_hf(folder):
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, output_loading_info=True, torch_dtype=torch.float32)
    bad = {k: v for k, v in info.items() if v}
    need(not bad, f"from_pretrained reports {bad}")
    return model.eval()


def load_timm(folder, arch):
    import timm
    from safetensors.torch import load_file

    text = "\n".join(l for l in open(arch) if not l.lstrip().startswith("#"))
    heads = int(re.search(r"(\d+) heads", text).group(1))
    eps = float(re.search(r"\beps ([0-9.eE+-]+)", text).group(1))
    sd = load_file(os.path.join(folder, "t.safetensors"))
    width = sd["pos_embed"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    mlp = sd["blocks.0.mlp.fc1.weight"].shape[0]
    model = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=10,
        embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp / width,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=eps))
    model.load_state_dict(sd, strict=True)
    return model.eval(), f"timm {width}w {heads}h mlp {mlp} depth {depth} eps {eps:.2e}"


def grow(t, work, command, site, method, extra, label):
    """One library-loadable student: r2rc, load, logits, proofs, kept bits."""
    out = os.path.join(work, label)
    args = [command, t.arch, *site, "--method", method, *extra]
    code, _, err = r2rc(*args, "--weights", t.weights, "--names", t.naming, "-o", out,
                        "--force")
    need(code == 0, f"r2rc exits {code}: {last_error(err)}")
    report = json.load(open(os.path.join(out, "report.json")))
    parts = []
    if t.naming == "hf":
        model = load_hf(out)
        cfg = model.config
        kv = f" {cfg.num_key_value_heads}kv" if t.kind == "llama" else ""
        parts.append(f"hf {cfg.hidden_size}w {cfg.num_attention_heads}h{kv} "
                     f"{cfg.num_hidden_layers}L")
        student = load_np(os.path.join(out, "model.safetensors"))
    else:
        model, sizes = load_timm(out, os.path.join(out, "t.arch"))
        parts.append(sizes)
        student = load_np(os.path.join(out, "t.safetensors"))
    parts.append(t.agree(t.logits(model), "student"))
    parts.append(f32_proof(report))
    parts.append(proof_f64(args, t.weights64, t.naming))
    if method in ("r2r", "netmorph", "copy"):
        moves = layer_index_map(report.get("name_map", {}))
        parts.append(kept_bits(t.kind, t.tensors, student, moves))
    if command == "deepen":
        site_index = int(site[1].rsplit("_", 1)[1]) - 1
        parts.append(new_layer(t.kind, student, site_index, site_index + 1, method))
    return "; ".join(parts)


def grow_r2rc_names(t, work, site, method, label):
    """A student the libraries cannot describe: refused under hf/timm, checked in r2rc names."""
    out = os.path.join(work, label)
    refused = out + "_refused"
    args = ["widen", t.arch, *site, "--method", method]
    code, _, err = r2rc(*args, "--weights", t.weights, "--names", t.naming, "-o", refused)
    need(code == 2, f"--names {t.naming} exits {code}, want 2 (head size != width / heads)")
    need("head" in err and "nothing was written" in err,
         f"--names {t.naming} refusal does not give the head-size reason: {last_error(err)}")
    need(not os.path.exists(refused) or not os.listdir(refused),
         f"--names {t.naming} refusal left files in {refused}")
    code, _, err = r2rc(*args, "--weights", t.r2rc_weights, "--names", "r2rc", "-o", out,
                        "--force")
    need(code == 0, f"--names r2rc exits {code}: {last_error(err)}")
    report = json.load(open(os.path.join(out, "report.json")))
    got = run_r2rc(os.path.join(out, "t.arch"), os.path.join(out, "t.safetensors"), t, out)
    parts = [f"{t.naming} refused; r2rc names: " + t.agree(got, "r2rc run on the student"),
             f32_proof(report), proof_f64(args, t.r2rc_weights64, "r2rc")]
    student = load_np(os.path.join(out, "t.safetensors"))
    parts.append(kept_bits(t.kind, t.r2rc_tensors, student, r2rc_names=True))
    return "; ".join(parts)


def run_r2rc(arch, weights, t, work):
    y = os.path.join(work, "logits.npy")
    code, _, err = r2rc("run", arch, "--weights", weights, "--names", "r2rc", "--input",
                        t.xfile, "--dtype", "f32", "--output", y, "--force")
    need(code == 0, f"r2rc run exits {code}: {last_error(err)}")
    return np.load(y).astype(np.float64)


def teacher_in_r2rc_names(t, work):
    got = run_r2rc(t.arch, t.r2rc_weights, t, os.path.join(work, t.kind))
    return "r2rc run: " + t.agree(got, "r2rc run on the converted teacher")


def refusal(t, work, args, label, words):
    out = os.path.join(work, label)
    code, _, err = r2rc(*args, "--weights", t.weights, "--names", t.naming, "-o", out)
    need(code == 2, f"exits {code}, want 2: {last_error(err)}")
    low = err.lower()
    missing = [w for w in words if w not in low]
    need(not missing, f"message does not say {missing}: {last_error(err)}")
    need(not os.path.exists(out) or not os.listdir(out), f"files written in {out}")
    return "exit 2, nothing written: " + last_error(err)[len("error: "):][:150]


def cases(t, work):
    """(label, thunk) for every case of teacher `t`."""
    row = t.row
    out = []
    widen = [(["--all", "--by", "1.5"], "all_x1.5", ["r2r", "netmorph"]),
             (["--all", "--by", "2"], "all_x2", ["r2r", "netmorph", "net2net"]),
             (["--layer", f"{row}_x.mlp", "--by", "2"], "mlp_x2", ["r2r", "netmorph", "net2net"])]
    for site, name, methods in widen:
        for m in methods:
            if t.kind == "gpt2" and m == "net2net" and site[0] == "--all":
                out.append((f"{t.kind} widen {name} net2net refused",
                            lambda s=site: refusal(t, work, ["widen", t.arch, *s, "--method",
                                                             "net2net"], "gpt2_all_x2_net2net",
                                                   ["tied", "--method r2r"])))
                continue
            out.append((f"{t.kind} widen {name} {m}",
                        lambda s=site, m=m, n=name: grow(t, work, "widen", s, m, [],
                                                         f"{t.kind}_{n}_{m}")))
    for m in ("r2r", "netmorph", "copy"):
        out.append((f"{t.kind} deepen after {row}_1 {m}",
                    lambda m=m: grow(t, work, "deepen", ["--after", f"{row}_1"], m, [],
                                     f"{t.kind}_deepen_{m}")))
    out.append((f"{t.kind} teacher in r2rc names", lambda: teacher_in_r2rc_names(t, work)))
    for site, name in ((["--layer", f"{row}_x.attention", "--by", "2"], "heads_x2"),
                       (["--layer", f"{row}_x", "--by", "1.5"], "stream_x1.5")):
        for m in ("r2r", "netmorph"):
            out.append((f"{t.kind} widen {name} {m}",
                        lambda s=site, m=m, n=name: grow_r2rc_names(t, work, s, m,
                                                                    f"{t.kind}_{n}_{m}")))
    if t.kind == "llama":
        out.append(("llama widen stream_x1.5 net2net refused",
                    lambda: refusal(t, work, ["widen", t.arch, "--layer", "layers_x", "--by",
                                              "1.5", "--method", "net2net"],
                                    "llama_stream_net2net",
                                    ["rms norm", "whole-number", "--method r2r"])))
    out.append((f"{t.kind} widen {row}_1.mlp only refused under {t.naming}",
                lambda: refusal(t, work, ["widen", t.arch, "--layer", f"{row}_1.mlp",
                                          "--by", "2"],
                                f"{t.kind}_one_mlp",
                                ["intermediate_size", "nothing was written"])))
    return out


def main():
    global EXE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r2rc", default=EXE)
    ap.add_argument("--keep", help="keep the teachers and students in this folder")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the random teachers (default: drawn, and printed)")
    args = ap.parse_args()
    EXE = args.r2rc
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    work = workdir.folder(args.keep, "r2rc-grow-")
    start = time.time()
    passed = total = 0
    for kind in ("llama", "gpt2", "vit"):
        try:
            teacher = Teacher(kind, work, gen)
            todo = cases(teacher, work)
        except Exception as e:  # a teacher that cannot be built fails its model only
            total += 1
            print(f"FAIL {kind} teacher: {type(e).__name__}: {e}", flush=True)
            continue
        for label, thunk in todo:
            total += 1
            t0 = time.time()
            try:
                line = thunk()
                passed += 1
                print(f"ok   {label}: {line} ({time.time() - t0:.1f} s)", flush=True)
            except CaseFailed as e:
                print(f"FAIL {label}: {e}", flush=True)
            except Exception as e:  # a library error fails this case, not the rest
                print(f"FAIL {label}: {type(e).__name__}: {e}", flush=True)
    print(f"{passed}/{total} passed in {time.time() - start:.0f} s")
    sys.exit(workdir.finish(0 if passed == total else 1))


if __name__ == "__main__":
    main()
