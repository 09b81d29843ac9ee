#!/usr/bin/env python3
"""r2rc run --names hf|timm against the real libraries' logits (issue 13).

Builds tiny random models with transformers 4.44.2 and timm 1.0.9 (Debian's torch 1.13):
LlamaForCausalLM (4 heads, 2 kv heads, rope_theta 10000, untied head), GPT2LMHeadModel
(tied head) and a timm VisionTransformer (32x32 images, 4x4 patches, depth 2). Every
norm's weight and bias and every linear bias is randomised (not the defaults), so a
mislaid or untransposed tensor shows. Each model is saved as the library saves it
(safetensors + config.json), its .arch is written (`r2rc from-hf config.json` for the
transformers models, by hand for the ViT), and `r2rc run NET.arch --weights W --names
hf|timm --input X.npy --dtype f32 --output Y.npy` must give the library's logits within
1e-4 x max |logit|. Then the other way: weights `r2rc init --names hf|timm` writes
load into the library strictly (no missing, unexpected or misshaped tensor) and give
r2rc's logits (`NAME_written`). Prints one line per check; exits 1 if any fails.

Usage: check_transformers.py [--r2rc target/release/r2rc] [--keep DIR] [--seed S]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workdir  # noqa: E402  (scratch folders, removed when every check passed)

TOLERANCE = 1e-4
VOCAB, TOKENS, WIDTH, BATCH = 64, 16, 32, 2

VIT_ARCH = """arch TinyViT
norm layer, eps 1e-6, act gelu, bias
input 3x32x32

embed     65x32   4x4, 32, stride 4, no norm; class token, learned positions
blocks_x  65x32   [attention 4 heads; mlp 64] x 2
head      1x1     norm, class token, 10-d fc
"""


def randomise(model, gen):
    """Every norm scale near 1, every bias, class token and position table random."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(k in name for k in ("norm", "ln_", "ln_f"))
            if is_norm and leaf == "weight":
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif leaf == "bias" or name in ("cls_token", "pos_embed"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def r2rc(exe, *args):
    """Runs r2rc; returns (ok, stderr)."""
    proc = subprocess.run([exe, *args], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr.strip()


def compare(name, ref, exe, arch, weights, naming, x, work):
    """One result line: r2rc's logits against `ref` (numpy) on input `x`."""
    xin = os.path.join(work, f"{name}_input.npy")
    yout = os.path.join(work, f"{name}_r2rc.npy")
    np.save(xin, x)
    ok, err = r2rc(exe, "run", arch, "--weights", weights, "--names", naming,
                   "--input", xin, "--dtype", "f32", "--output", yout, "--force")
    if not ok:
        return False, f"{name}: r2rc run failed: {err.splitlines()[-1] if err else '?'}\n{err}"
    got = np.load(yout).astype(np.float64)
    ref = ref.astype(np.float64)
    if got.shape != ref.shape:
        return False, f"{name}: r2rc gives shape {got.shape}, the library {ref.shape}"
    scale = float(np.abs(ref).max())
    diff = float(np.abs(got - ref).max())
    ok = diff <= TOLERANCE * scale
    verdict = "ok" if ok else "MISMATCH"
    return ok, (f"{name}: {verdict}: max |r2rc - library| = {diff:.3e}, "
                f"max |logit| = {scale:.3e}, allowed {TOLERANCE * scale:.3e}")


def hf_model(kind, exe, work, gen):
    import transformers

    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=TOKENS, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=False, hidden_act="silu")
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=TOKENS, n_embd=WIDTH, n_layer=2, n_head=4,
            activation_function="gelu_new", layer_norm_epsilon=1e-5,
            tie_word_embeddings=True)
        model = transformers.GPT2LMHeadModel(cfg)
    randomise(model, gen)
    model.eval()
    folder = os.path.join(work, kind)
    model.save_pretrained(folder, safe_serialization=True)
    arch = os.path.join(folder, "net.arch")
    ok, err = r2rc(exe, "from-hf", os.path.join(folder, "config.json"), "-o", arch, "--force")
    if not ok:
        return False, f"{kind}: r2rc from-hf failed: {err}"
    ids = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=gen)
    with torch.no_grad():
        ref = model(ids).logits.float().numpy()
    weights = os.path.join(folder, "model.safetensors")
    ok, line = compare(kind, ref, exe, arch, weights, "hf", ids.numpy().astype(np.int64), work)
    # Writing: weights r2rc writes under --names hf load strictly and give r2rc's logits.
    written = os.path.join(work, f"{kind}_written")
    os.makedirs(written, exist_ok=True)
    shutil.copy(os.path.join(folder, "config.json"), written)
    done, err = r2rc(exe, "init", arch, "--names", "hf", "--seed", "7", "--force",
                     "-o", os.path.join(written, "model.safetensors"))
    if not done:
        return False, f"{line}\n{kind} (written by r2rc): r2rc init failed: {err}"
    back, info = type(model).from_pretrained(written, output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        return False, f"{line}\n{kind} (written by r2rc): transformers reads {info}"
    with torch.no_grad():
        ref2 = back.eval()(ids).logits.float().numpy()
    ok2, line2 = compare(f"{kind}_written", ref2, exe, arch,
                         os.path.join(written, "model.safetensors"), "hf",
                         ids.numpy().astype(np.int64), work)
    return ok and ok2, f"{line}\n{line2}"


def vit_model(exe, work, gen):
    from safetensors.torch import load_file, save_file
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=4, in_chans=3, num_classes=10,
                              embed_dim=WIDTH, depth=2, num_heads=4, mlp_ratio=2.0)
    randomise(model, gen)
    model.eval()
    folder = os.path.join(work, "vit")
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"img_size": 32, "patch_size": 4, "embed_dim": WIDTH, "depth": 2,
                   "num_heads": 4, "mlp_ratio": 2.0, "num_classes": 10}, f)
    arch = os.path.join(folder, "net.arch")
    with open(arch, "w") as f:
        f.write(VIT_ARCH)
    x = torch.randn((BATCH, 3, 32, 32), generator=gen)
    with torch.no_grad():
        ref = model(x).float().numpy()
    ok, line = compare("vit", ref, exe, arch, weights, "timm", x.numpy().astype(np.float32), work)
    # Writing: weights r2rc writes under --names timm load strictly into timm's model.
    written = os.path.join(work, "vit_written.safetensors")
    done, err = r2rc(exe, "init", arch, "--names", "timm", "--seed", "7", "--force",
                     "-o", written)
    if not done:
        return False, f"{line}\nvit (written by r2rc): r2rc init failed: {err}"
    model.load_state_dict(load_file(written), strict=True)
    with torch.no_grad():
        ref2 = model(x).float().numpy()
    ok2, line2 = compare("vit_written", ref2, exe, arch, written, "timm",
                         x.numpy().astype(np.float32), work)
    return ok and ok2, f"{line}\n{line2}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r2rc", default="target/release/r2rc")
    ap.add_argument("--keep", help="keep the models and outputs in this folder")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the random models (default: drawn, and printed)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    work = workdir.folder(args.keep, "r2rc-tf-")
    checks = [
        ("llama", lambda: hf_model("llama", args.r2rc, work, gen)),
        ("gpt2", lambda: hf_model("gpt2", args.r2rc, work, gen)),
        ("vit", lambda: vit_model(args.r2rc, work, gen)),
    ]
    failed = 0
    for name, check in checks:
        try:
            ok, line = check()
        except Exception as e:  # a library or file error fails this model, not the rest
            ok, line = False, f"{name}: error: {type(e).__name__}: {e}"
        failed += not ok
        print(line, flush=True)
    print(f"{len(checks) - failed} of {len(checks)} models agree")
    sys.exit(workdir.finish(1 if failed else 0))


if __name__ == "__main__":
    main()
