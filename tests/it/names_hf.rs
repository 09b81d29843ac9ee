//! `--names hf` and `--names timm` on small transformer graphs built as lowering names
//! them: tensor names and layouts, exact round trips through files, fused q/k/v element by
//! element, and the errors (missing tensor, other family, other scheme).

use std::collections::BTreeMap;

use ndarray::ArrayD;
use r2rc::ir::{
    Activation, Attention, ClassToken, Conv2d, Defaults, Embedding, Graph, Linear, NodeIndex, Norm,
    NormKind, Op, Positions, TiedLinear,
};
use r2rc::names::{self, Naming};
use r2rc::params::{DType, Params};

const D: usize = 8;
const VOCAB: usize = 11;
const T: usize = 5;

/// Adds nodes of one row to a graph.
struct Rows {
    g: Graph,
}

impl Rows {
    fn add(
        &mut self,
        name: &str,
        op: Op,
        ins: &[NodeIndex],
        row: &str,
        b: Option<usize>,
    ) -> NodeIndex {
        let n = self.g.add(name.into(), op, ins, (row, b), None).unwrap();
        self.g.output = n;
        n
    }

    fn linear(
        &mut self,
        name: &str,
        x: NodeIndex,
        io: (usize, usize),
        bias: bool,
        b: usize,
    ) -> NodeIndex {
        let op = Op::Linear(Linear {
            in_features: io.0,
            out_features: io.1,
            bias,
        });
        self.add(name, op, &[x], "layers_x", Some(b))
    }

    fn embed(&mut self, name: &str, op: Op, x: NodeIndex) -> NodeIndex {
        self.add(name, op, &[x], "embed", None)
    }

    fn act(&mut self, name: &str, a: Activation, x: NodeIndex, b: usize) -> NodeIndex {
        self.add(name, Op::Activation(a), &[x], "layers_x", Some(b))
    }

    fn norm(
        &mut self,
        name: &str,
        x: NodeIndex,
        kind: NormKind,
        row: &str,
        b: Option<usize>,
    ) -> NodeIndex {
        let op = Op::Norm(Norm {
            kind,
            dim: D,
            eps: 1e-5,
            bias: kind == NormKind::Layer,
        });
        self.add(name, op, &[x], row, b)
    }
}

/// The shape of a decoder: Llama (RMS, GQA 4/2 heads, RoPE, gated MLP, untied head) or
/// GPT-2 (layer norms, learned positions, plain MLP, tied head).
fn decoder(llama: bool, tied: bool, kv_heads: usize) -> Graph {
    let mut r = Rows {
        g: Graph::new("Tiny", Defaults::default(), vec![T]),
    };
    let input = r.g.input;
    let mut x = r.embed(
        "embed.token",
        Op::Embedding(Embedding {
            vocab: VOCAB,
            dim: D,
        }),
        input,
    );
    if !llama {
        x = r.embed(
            "embed.position",
            Op::Positions(Positions { tokens: T, dim: D }),
            x,
        );
    }
    let kind = if llama {
        NormKind::Rms
    } else {
        NormKind::Layer
    };
    let (heads, dh) = (4, D / 4);
    for b in 1..=2 {
        let p = |s: &str| format!("layers_{b}.{s}");
        let h = r.norm(&p("attention.norm"), x, kind, "layers_x", Some(b));
        let q = r.linear(&p("attention.q"), h, (D, D), !llama, b);
        let k = r.linear(&p("attention.k"), h, (D, kv_heads * dh), !llama, b);
        let v = r.linear(&p("attention.v"), h, (D, kv_heads * dh), !llama, b);
        let att = Op::Attention(Attention {
            heads,
            kv_heads,
            head_dim: dh,
            rope: llama.then_some(10000.0),
            causal: true,
        });
        let a = r.add(&p("attention"), att, &[q, k, v], "layers_x", Some(b));
        let o = r.linear(&p("attention.o"), a, (D, D), !llama, b);
        x = r.add(&p("attention.add"), Op::Add, &[o, x], "layers_x", Some(b));
        let h = r.norm(&p("mlp.norm"), x, kind, "layers_x", Some(b));
        let y = if llama {
            let gate = r.linear(&p("mlp.gate"), h, (D, 12), false, b);
            let up = r.linear(&p("mlp.up"), h, (D, 12), false, b);
            let act = r.act(&p("mlp.act"), Activation::Silu, gate, b);
            let m = r.add(&p("mlp.mul"), Op::Mul, &[act, up], "layers_x", Some(b));
            r.linear(&p("mlp.down"), m, (12, D), false, b)
        } else {
            let fc1 = r.linear(&p("mlp.fc1"), h, (D, 16), true, b);
            let act = r.act(&p("mlp.act"), Activation::GeluTanh, fc1, b);
            r.linear(&p("mlp.fc2"), act, (16, D), true, b)
        };
        x = r.add(&p("mlp.add"), Op::Add, &[y, x], "layers_x", Some(b));
    }
    let h = r.norm("head.norm", x, kind, "head", None);
    let fc = if tied {
        Op::TiedLinear(TiedLinear {
            dim: D,
            vocab: VOCAB,
        })
    } else {
        Op::Linear(Linear {
            in_features: D,
            out_features: VOCAB,
            bias: false,
        })
    };
    r.add("head.fc", fc, &[h], "head", None);
    r.g
}

/// timm's ViT shape: 3x8x8 images, 4x4 patches, a class token, 2 blocks, 10 classes.
fn vit() -> Graph {
    let mut r = Rows {
        g: Graph::new("TinyViT", Defaults::default(), vec![3, 8, 8]),
    };
    let input = r.g.input;
    let conv = Op::Conv2d(Conv2d {
        in_channels: 3,
        out_channels: D,
        kernel: [4, 4],
        stride: 4,
        padding: 0,
        dilation: 1,
        groups: 1,
        bias: true,
    });
    let mut x = r.embed("embed.patch", conv, input);
    x = r.embed("embed.tokens", Op::ToTokens, x);
    x = r.embed("embed.class", Op::ClassToken(ClassToken { dim: D }), x);
    x = r.embed(
        "embed.position",
        Op::Positions(Positions { tokens: T, dim: D }),
        x,
    );
    for b in 1..=2 {
        let p = |s: &str| format!("blocks_{b}.{s}");
        let place = |r: &mut Rows, s: &str, op: Op, ins: &[NodeIndex]| {
            r.add(&p(s), op, ins, "blocks_x", Some(b))
        };
        let lin = |i: usize, o: usize| {
            Op::Linear(Linear {
                in_features: i,
                out_features: o,
                bias: true,
            })
        };
        let h = r.norm(
            &p("attention.norm"),
            x,
            NormKind::Layer,
            "blocks_x",
            Some(b),
        );
        let q = place(&mut r, "attention.q", lin(D, D), &[h]);
        let k = place(&mut r, "attention.k", lin(D, D), &[h]);
        let v = place(&mut r, "attention.v", lin(D, D), &[h]);
        let att = Op::Attention(Attention {
            heads: 2,
            kv_heads: 2,
            head_dim: 4,
            rope: None,
            causal: false,
        });
        let a = place(&mut r, "attention", att, &[q, k, v]);
        let o = place(&mut r, "attention.o", lin(D, D), &[a]);
        x = place(&mut r, "attention.add", Op::Add, &[o, x]);
        let h = r.norm(&p("mlp.norm"), x, NormKind::Layer, "blocks_x", Some(b));
        let f = place(&mut r, "mlp.fc1", lin(D, 16), &[h]);
        let f = place(&mut r, "mlp.act", Op::Activation(Activation::Gelu), &[f]);
        let f = place(&mut r, "mlp.fc2", lin(16, D), &[f]);
        x = place(&mut r, "mlp.add", Op::Add, &[f, x]);
    }
    let h = r.norm("head.norm", x, NormKind::Layer, "head", None);
    let c = r.add("head.pool", Op::ClassPool, &[h], "head", None);
    let fc = Op::Linear(Linear {
        in_features: D,
        out_features: 10,
        bias: true,
    });
    r.add("head.fc", fc, &[c], "head", None);
    r.g
}

/// Random f32-exact values in every tensor (norm scales and shifts included).
fn random_params(g: &Graph, seed: u64) -> Params {
    let mut p = r2rc::params::init(g, seed, true);
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for t in p.tensors.values_mut() {
        t.mapv_inplace(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f64 / (1u64 << 24) as f64 - 0.5) as f32 as f64
        });
    }
    p.with_dtype(DType::F32)
}

/// A path for `name` in a folder of its own, removed when this goes.
struct Scratch {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

fn tmp(name: &str) -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix("r2rc-names-hf-")
        .tempdir()
        .unwrap();
    let path = dir.path().join(name);
    Scratch { _dir: dir, path }
}

/// Writes `p` under `naming`, reads the file back, and returns the file's own tensors.
fn round_trip(
    g: &Graph,
    p: &Params,
    naming: Naming,
    file: &str,
) -> (Scratch, BTreeMap<String, ArrayD<f64>>) {
    let path = tmp(file);
    names::save(p, g, &path, None, naming).unwrap();
    let back = names::load(g, &path, naming).unwrap();
    assert_eq!(&back, p, "{file}: the round trip changed a value");
    let mut raw = BTreeMap::new();
    let src = r2rc::shards::Source::open(&path).unwrap();
    for name in src.tensors.keys() {
        raw.insert(name.clone(), src.decode(name).unwrap());
    }
    (path, raw)
}

#[test]
fn llama_is_stored_under_transformers_names_as_it_is() {
    let g = decoder(true, false, 2);
    let p = random_params(&g, 1);
    let (path, raw) = round_trip(&g, &p, Naming::Hf, "llama.safetensors");
    let pairs = [
        ("embed.token.weight", "model.embed_tokens.weight"),
        (
            "layers_1.attention.norm.weight",
            "model.layers.0.input_layernorm.weight",
        ),
        (
            "layers_2.attention.k.weight",
            "model.layers.1.self_attn.k_proj.weight",
        ),
        (
            "layers_1.attention.o.weight",
            "model.layers.0.self_attn.o_proj.weight",
        ),
        (
            "layers_1.mlp.norm.weight",
            "model.layers.0.post_attention_layernorm.weight",
        ),
        (
            "layers_2.mlp.gate.weight",
            "model.layers.1.mlp.gate_proj.weight",
        ),
        (
            "layers_2.mlp.down.weight",
            "model.layers.1.mlp.down_proj.weight",
        ),
        ("head.norm.weight", "model.norm.weight"),
        ("head.fc.weight", "lm_head.weight"),
    ];
    for (ours, theirs) in pairs {
        assert_eq!(raw[theirs], p.tensors[ours], "{theirs}");
    }
    // transformers loads only safetensors marked as PyTorch's.
    let meta = r2rc::params::load_metadata(&path).unwrap();
    assert_eq!(meta.get("format").map(|s| s.as_str()), Some("pt"));
    // GQA: k and v are [kv_heads * head_dim, D].
    assert_eq!(
        raw["model.layers.0.self_attn.v_proj.weight"].shape(),
        &[4, D]
    );
    assert_eq!(raw.len(), p.tensors.len());
    // Every tensor is only renamed, so the one-to-one paths (streaming) serve Llama.
    let renames = names::tensor_renames(&g, Naming::Hf).unwrap();
    assert!(renames.contains(&(
        "layers_1.mlp.up.weight".into(),
        "model.layers.0.mlp.up_proj.weight".into()
    )));
    // Read as r2rc names, the hint says which flag fits.
    let e = names::load(&g, &path, Naming::R2rc).unwrap_err();
    assert!(
        e.hint_text()
            .unwrap_or_default()
            .contains("pass --names hf"),
        "{e:?}"
    );
    // A tied Llama stores no lm_head.
    let tied = decoder(true, true, 2);
    let (_, raw) = round_trip(
        &tied,
        &random_params(&tied, 2),
        Naming::Hf,
        "llama_tied.safetensors",
    );
    assert!(!raw.contains_key("lm_head.weight"));
}

#[test]
fn gpt2_fuses_qkv_in_conv1d_layout_and_ties_its_head() {
    let g = decoder(false, true, 4);
    let p = random_params(&g, 3);
    let (path, raw) = round_trip(&g, &p, Naming::Hf, "gpt2.safetensors");
    assert!(!raw.contains_key("lm_head.weight"));
    assert_eq!(
        raw["transformer.wte.weight"],
        p.tensors["embed.token.weight"]
    );
    assert_eq!(
        raw["transformer.wpe.weight"],
        p.tensors["embed.position.weight"]
    );
    assert_eq!(
        raw["transformer.h.1.ln_2.bias"],
        p.tensors["layers_2.mlp.norm.bias"]
    );
    assert_eq!(
        raw["transformer.ln_f.weight"],
        p.tensors["head.norm.weight"]
    );
    let c_attn = &raw["transformer.h.1.attn.c_attn.weight"];
    assert_eq!(c_attn.shape(), &[D, 3 * D]);
    for (k, part) in ["q", "k", "v"].iter().enumerate() {
        let w = &p.tensors[&format!("layers_2.attention.{part}.weight")];
        let b = &p.tensors[&format!("layers_2.attention.{part}.bias")];
        for j in 0..D {
            for i in 0..D {
                assert_eq!(c_attn[[i, k * D + j]], w[[j, i]], "{part} [{j}, {i}]");
            }
            assert_eq!(raw["transformer.h.1.attn.c_attn.bias"][[k * D + j]], b[[j]]);
        }
    }
    for (ours, theirs) in [
        ("attention.o", "attn.c_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ] {
        let w = &p.tensors[&format!("layers_1.{ours}.weight")];
        let stored = &raw[&format!("transformer.h.0.{theirs}.weight")];
        assert_eq!(stored, &w.t(), "{theirs} is Conv1D's [in, out]");
        assert_eq!(
            raw[&format!("transformer.h.0.{theirs}.bias")],
            p.tensors[&format!("layers_1.{ours}.bias")]
        );
    }
    // One-to-one paths refuse, naming the fused tensor.
    let e = names::renamed_graph(&g, Naming::Hf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c_attn") && e.contains("GPT2LMHeadModel"), "{e}");
    // A GPT-2 checkpoint read for a Llama network: the hint names both families.
    let llama = decoder(true, false, 2);
    let e = names::load(&llama, &path, Naming::Hf).unwrap_err();
    assert!(e.to_string().contains("model.embed_tokens.weight"), "{e}");
    let hint = e.hint_text().unwrap_or_default();
    assert!(
        hint.contains("GPT2LMHeadModel") && hint.contains("LlamaForCausalLM"),
        "{hint}"
    );
    // An r2rc-named file read with --names hf: drop the flag.
    let ours = tmp("gpt2_r2rc.safetensors");
    names::save(&p, &g, &ours, None, Naming::R2rc).unwrap();
    let e = names::load(&g, &ours, Naming::Hf).unwrap_err();
    assert!(
        e.to_string().contains("--names hf (GPT2LMHeadModel)"),
        "{e}"
    );
    assert!(
        e.hint_text()
            .unwrap_or_default()
            .contains("drop --names hf"),
        "{e:?}"
    );
    // Grouped-query attention has no c_attn layout.
    let e = names::to_naming(&p, &decoder(false, true, 2), Naming::Hf);
    assert!(e.is_err());
    let e = names::layout(&decoder(false, true, 2), Naming::Hf).unwrap_err();
    assert!(e.to_string().contains("c_attn"), "{e}");
}

#[test]
fn timm_vit_stacks_qkv_and_keeps_the_batch_axis_of_tokens() {
    let g = vit();
    let p = random_params(&g, 4);
    let (path, raw) = round_trip(&g, &p, Naming::Timm, "vit.safetensors");
    assert_eq!(
        raw["patch_embed.proj.weight"],
        p.tensors["embed.patch.weight"]
    );
    assert_eq!(raw["cls_token"].shape(), &[1, 1, D]);
    assert_eq!(raw["pos_embed"].shape(), &[1, T, D]);
    let pos = &p.tensors["embed.position.weight"];
    for t in 0..T {
        for d in 0..D {
            assert_eq!(raw["pos_embed"][[0, t, d]], pos[[t, d]]);
        }
    }
    let qkv = &raw["blocks.0.attn.qkv.weight"];
    assert_eq!(qkv.shape(), &[3 * D, D]);
    for (k, part) in ["q", "k", "v"].iter().enumerate() {
        let w = &p.tensors[&format!("blocks_1.attention.{part}.weight")];
        for r in 0..D {
            for c in 0..D {
                assert_eq!(qkv[[k * D + r, c]], w[[r, c]], "{part}");
            }
        }
    }
    for (ours, theirs) in [
        ("blocks_2.attention.o.bias", "blocks.1.attn.proj.bias"),
        ("blocks_1.attention.norm.weight", "blocks.0.norm1.weight"),
        ("blocks_2.mlp.norm.bias", "blocks.1.norm2.bias"),
        ("blocks_1.mlp.fc2.weight", "blocks.0.mlp.fc2.weight"),
        ("head.norm.weight", "norm.weight"),
        ("head.fc.bias", "head.bias"),
    ] {
        assert_eq!(raw[theirs], p.tensors[ours], "{theirs}");
    }
    // A timm file read as r2rc names: the hint names timm.
    let e = names::load(&g, &path, Naming::R2rc).unwrap_err();
    assert!(
        e.hint_text().unwrap_or_default().contains("--names timm"),
        "{e:?}"
    );
    // A missing tensor is named with the scheme.
    let mut short = names::to_naming(&p, &g, Naming::Timm).unwrap();
    short.tensors.remove("blocks.1.attn.qkv.bias");
    let bytes = write_raw(&short);
    let cut = tmp("vit_short.safetensors");
    std::fs::write(&cut, bytes).unwrap();
    let e = names::load(&g, &cut, Naming::Timm).unwrap_err().to_string();
    assert!(
        e.contains("blocks.1.attn.qkv.bias") && e.contains("--names timm"),
        "{e}"
    );
}

/// A safetensors file of `p` as it is (names unchecked), as another tool might write it.
fn write_raw(p: &Params) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = p
        .tensors
        .iter()
        .map(|(k, t)| {
            let v: Vec<f64> = t.iter().copied().collect();
            (
                k.clone(),
                t.shape().to_vec(),
                r2rc::shards::encode(&v, DType::F32, false),
            )
        })
        .collect();
    let views = data.iter().map(|(k, s, b)| {
        (
            k.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    safetensors::tensor::serialize(views, None).unwrap()
}
