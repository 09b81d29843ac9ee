//! Widening transformers (DESIGN.md "Norms are not channel-wise"): the MLP hidden width,
//! attention in kv groups of heads, and the normalised residual stream, by every method,
//! proved in f64 on random token ids (and images for the ViT) against teachers whose norm
//! scales and shifts, biases and tables are all random; the refusals name their reason.

use r2rc::ir::{Graph, Op};
use r2rc::lower::compile;
use r2rc::params::{self, DType, Params};
use r2rc::patch::Step;
use r2rc::pipeline::{run as run_step, Proof, Stepped};
use r2rc::print::print;
use r2rc::prove::ProveOptions;
use r2rc::transform::{Amount, Method, Target};

use crate::common::{run, widen_args};

/// Llama's layout: RMS norms, grouped-query attention (8 heads in 4 kv groups of head
/// dimension 4), RoPE, a gated MLP, no biases, an untied head.
pub const LLAMA: &str = "arch TinyLlama
norm rms, eps 1e-5, act silu, no bias
input 16 tokens, vocab 50

embed     16x32   32-d token embedding
layers_x  16x32   [attention 8 heads, 4 kv heads, rope 10000, causal; mlp 48 gated] x 2
head      16x50   norm, 50-d fc
";

/// GPT-2's layout: layer norms with shifts, biases, learned positions, a tied head.
pub const GPT2: &str = "arch TinyGPT2
norm layer, eps 1e-5, act gelu_tanh, bias
input 16 tokens, vocab 50

embed     16x32   32-d token embedding, learned positions
layers_x  16x32   [attention 4 heads, causal; mlp 64] x 2
head      16x50   norm, 50-d fc, tied
";

/// timm's ViT: a patch embedding conv, a class token, learned positions, class pooling.
pub const VIT: &str = "arch TinyViT
norm layer, eps 1e-6, act gelu, bias
input 3x16x16

embed     17x32   4x4, 32, stride 4, no norm; class token, learned positions
blocks_x  17x32   [attention 4 heads; mlp 64] x 2
head      1x1     norm, class token, 10-d fc
";

fn graph(src: &str) -> Graph {
    compile(src, &[]).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Random weights with random norm scales and shifts, biases and tables, in f64.
fn teacher(g: &Graph) -> Params {
    params::init(g, 7, true).with_dtype(DType::F64)
}

fn widen(
    g: &Graph,
    p: &Params,
    target: Target,
    amount: Amount,
    m: Method,
) -> r2rc::Result<Stepped> {
    let step = Step::Widen(widen_args(target, amount, m));
    let opts = ProveOptions::default();
    run_step(g, p, &step, 5, Proof::Full(&opts), "t")
}

fn name(n: &str) -> Target {
    Target::Name(n.into())
}

/// The largest relative error any proof of `s` measured.
fn worst(s: &Stepped) -> f64 {
    s.report
        .evidence
        .iter()
        .map(|e| e.max_rel_err)
        .fold(0.0, f64::max)
}

fn attention(g: &Graph, layer: &str) -> (usize, usize, usize) {
    match &g.g[g.find(layer).unwrap()].op {
        Op::Attention(a) => (a.heads, a.kv_heads, a.head_dim),
        op => panic!("{layer} is {op:?}"),
    }
}

/// Every exact method at every target the issue names proves within 1e-9 on each family,
/// and the student's .arch prints and compiles back to the same graph.
#[test]
fn every_exact_method_proves_on_every_family() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "llama",
            LLAMA,
            &["layers_x", "layers_x.mlp", "layers_x.attention", "layers_1"],
        ),
        (
            "gpt2",
            GPT2,
            &[
                "layers_x",
                "layers_x.mlp",
                "layers_2.attention",
                "layers_2.mlp",
            ],
        ),
        (
            "vit",
            VIT,
            &["blocks_x", "blocks_x.mlp", "blocks_x.attention"],
        ),
    ];
    for (family, src, targets) in cases {
        let g = graph(src);
        let p = teacher(&g);
        let mut all: Vec<(Target, Amount)> = vec![
            (Target::All, Amount::By(1.5)),
            (Target::All, Amount::By(2.0)),
        ];
        all.extend(targets.iter().map(|t| (name(t), Amount::By(2.0))));
        for (target, amount) in all {
            for m in [Method::R2r, Method::Netmorph, Method::Net2net] {
                let what = format!("{family} {} {amount:?} {m:?}", target.show());
                let tied_copy = m == Method::Net2net && *family == "gpt2";
                let fractional = m == Method::Net2net && amount == Amount::By(1.5);
                let touches_stream = matches!(target, Target::All)
                    || ["layers_x", "blocks_x"].contains(&target.show().as_str());
                match widen(&g, &p, target.clone(), amount, m) {
                    Ok(s) => {
                        assert!(worst(&s) <= 1e-9, "{what}: {}", worst(&s));
                        assert!(s.report.evidence.len() >= 2, "{what}: eval and train");
                        assert_eq!(compile(&print(&s.graph), &[]).unwrap(), s.graph, "{what}");
                        assert!(s.graph != g, "{what}: the student grew");
                    }
                    Err(e) => {
                        let e = e.to_string();
                        assert!(
                            touches_stream && (tied_copy || fractional),
                            "{what} refused: {e}"
                        );
                        assert!(e.contains("Net2WiderNet"), "{what}: {e}");
                    }
                }
            }
        }
    }
}

/// `--all --by 1.5` on the Llama: the stream 32 -> 48 (RMS eps and scales rescaled), 4 ->
/// 6 kv groups (12 heads of dimension 4: heads x head_dim = width, as Hugging Face needs),
/// MLP 48 -> 72; R2R and NetMorph keep every teacher entry but the norms' scales.
#[test]
fn llama_by_one_and_a_half_keeps_the_teacher_entries() {
    let g = graph(LLAMA);
    let p = teacher(&g);
    for m in [Method::R2r, Method::Netmorph] {
        let s = widen(&g, &p, Target::All, Amount::By(1.5), m).unwrap();
        assert!(worst(&s) <= 1e-9);
        assert_eq!(attention(&s.graph, "layers_1.attention.core"), (12, 6, 4));
        let eps = s.graph.defaults.eps;
        assert!((eps - 1e-5 * 32.0 / 48.0).abs() < 1e-20, "eps {eps}");
        let scale = (32.0f64 / 48.0).sqrt();
        for (n, t) in &p.tensors {
            let st = &s.params.tensors[n];
            let old = st.slice_each_axis(|ax| ndarray::Slice::from(0..t.shape()[ax.axis.index()]));
            if n.ends_with("norm.weight") {
                for (a, b) in t.iter().zip(old.iter()) {
                    assert!((a * scale - b).abs() <= 1e-15 * a.abs(), "{m:?} {n}");
                }
            } else {
                assert_eq!(old, t.view(), "{m:?} {n} keeps its entries bit for bit");
            }
        }
        // The stream's new features are held at zero: every writer's new rows are zero on
        // the writer's old inputs (its new inputs, new heads or MLP features, cancel or
        // are read by zero columns: the attention and MLP steps' own fills).
        for w in [
            "embed.token.weight",
            "layers_1.attention.o.weight",
            "layers_2.mlp.down.weight",
        ] {
            let t = &s.params.tensors[w];
            let new = if w.starts_with("embed") {
                t.slice(ndarray::s![.., 32..]).to_owned().into_dyn()
            } else {
                let old_inputs = p.tensors[w].shape()[1];
                t.slice(ndarray::s![32.., ..old_inputs])
                    .to_owned()
                    .into_dyn()
            };
            assert!(new.iter().all(|&x| x == 0.0), "{m:?} {w}");
        }
        // R2R's readers get V / -V; NetMorph's free columns are non-zero.
        let q = &s.params.tensors["layers_1.attention.q.weight"];
        let cols = q.slice(ndarray::s![..32, 32..]).to_owned();
        assert!(
            cols.iter().any(|&x| x != 0.0),
            "{m:?}: readers' new columns are free"
        );
        if m == Method::R2r {
            let (v, minus) = (
                cols.slice(ndarray::s![.., ..8]),
                cols.slice(ndarray::s![.., 8..]),
            );
            assert_eq!(v.mapv(|x| -x), minus);
        }
    }
}

/// GPT-2's layer norms hold new features at the mean: writers' new rows are the mean of
/// their old rows, and the tied head reads zeros from them.
#[test]
fn gpt2_layer_norm_stream_holds_the_mean() {
    let g = graph(GPT2);
    let p = teacher(&g);
    let s = widen(&g, &p, name("layers_x"), Amount::Add(8), Method::R2r).unwrap();
    assert!(worst(&s) <= 1e-9, "{}", worst(&s));
    let emb = &s.params.tensors["embed.token.weight"];
    for row in 0..50 {
        let mean: f64 = (0..32).map(|j| emb[[row, j]]).sum::<f64>() / 32.0;
        for j in 32..40 {
            assert!(
                (emb[[row, j]] - mean).abs() < 1e-12,
                "row {row} feature {j}"
            );
        }
    }
    let bias = &s.params.tensors["layers_1.attention.o.bias"];
    let mean: f64 = (0..32).map(|j| bias[[j]]).sum::<f64>() / 32.0;
    assert!((bias[[35]] - mean).abs() < 1e-12);
    // The norms' new shifts are zero and their eps rescaled to 32/40 of the old.
    assert!(s.params.tensors["head.norm.bias"]
        .slice(ndarray::s![32..])
        .iter()
        .all(|&x| x == 0.0));
    assert!((s.graph.defaults.eps - 1e-5 * 0.8).abs() < 1e-20);
}

/// Whole copies under a norm: Net2Net doubles the Llama's stream exactly, keeping eps and
/// copying the norms' scales.
#[test]
fn net2net_doubles_a_normalised_stream() {
    let g = graph(LLAMA);
    let p = teacher(&g);
    let s = widen(&g, &p, name("layers_x"), Amount::By(2.0), Method::Net2net).unwrap();
    assert!(worst(&s) <= 1e-9);
    assert_eq!(s.graph.defaults.eps, 1e-5);
    let n = &s.params.tensors["head.norm.weight"];
    for j in 0..32 {
        assert_eq!(n[[j]], n[[j + 32]]);
        assert_eq!(n[[j]], p.tensors["head.norm.weight"][[j]]);
    }
}

/// Attention widens in kv groups: a group brings its query heads, the head dimension stays.
#[test]
fn attention_widens_in_kv_groups_keeping_the_head_dimension() {
    let g = graph(LLAMA);
    let p = teacher(&g);
    let s = widen(
        &g,
        &p,
        name("layers_2.attention"),
        Amount::Add(2),
        Method::Netmorph,
    )
    .unwrap();
    assert_eq!(attention(&s.graph, "layers_2.attention.core"), (12, 6, 4));
    assert_eq!(attention(&s.graph, "layers_1.attention.core"), (8, 4, 4));
    assert_eq!(
        s.params.tensors["layers_2.attention.q.weight"].shape(),
        &[48, 32]
    );
    assert_eq!(
        s.params.tensors["layers_2.attention.k.weight"].shape(),
        &[24, 32]
    );
    assert_eq!(
        s.params.tensors["layers_2.attention.o.weight"].shape(),
        &[32, 48]
    );
    assert!(worst(&s) <= 1e-9);
    // The student's text says the head dimension, since heads x head_dim is not the width.
    assert!(
        print(&s.graph).contains("head dim 4"),
        "{}",
        print(&s.graph)
    );
}

/// The random baseline is measured, not proved, and moves the function.
#[test]
fn random_padding_of_a_stream_is_measured() {
    let g = graph(GPT2);
    let p = teacher(&g);
    let s = widen(&g, &p, Target::All, Amount::By(1.5), Method::Random).unwrap();
    assert!(worst(&s) > 1e-3, "{}", worst(&s));
}

/// Refusals name their reason and what would work.
#[test]
fn refusals_name_the_norm_and_what_would_work() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, src: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, src).unwrap();
        path.to_string_lossy().into_owned()
    };
    let llama = write("llama.arch", LLAMA);
    let gpt2 = write("gpt2.arch", GPT2);
    let (code, _, err) = run(&[
        "widen",
        &llama,
        "--all",
        "--by",
        "1.5",
        "--method",
        "net2net",
        "-o",
        &dir.path().join("a").to_string_lossy(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("read by rms norms") && err.contains("mean square"),
        "{err}"
    );
    assert!(
        err.contains("--by 2") && err.contains("r2r or netmorph"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "widen",
        &gpt2,
        "--layer",
        "layers_x",
        "--by",
        "2",
        "--method",
        "net2net",
        "-o",
        &dir.path().join("b").to_string_lossy(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tied to the token embedding"), "{err}");
    // A post-norm stream has no norm-aware fill here.
    let post = write("post.arch", &GPT2.replacen("bias\n", "bias\npostnorm\n", 1));
    let (code, _, err) = run(&[
        "widen",
        &post,
        "--layer",
        "layers_x",
        "--by",
        "2",
        "-o",
        &dir.path().join("c").to_string_lossy(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("post-norm"), "{err}");
    assert!(!dir.path().join("a").exists() && !dir.path().join("b").exists());
}

/// `--prove local` proves each widened space on its region: regions reading token ids run
/// on ids (their other inputs come through a fixed embedding), the rest on sequences made
/// from a random image; the random baseline's deviation shows the regions see the change.
#[test]
fn local_proofs_cover_every_family() {
    let opts = ProveOptions::default();
    for (family, src) in [("llama", LLAMA), ("gpt2", GPT2), ("vit", VIT)] {
        let g = graph(src);
        let p = teacher(&g);
        for m in [
            Method::R2r,
            Method::Netmorph,
            Method::Net2net,
            Method::Random,
        ] {
            if m == Method::Net2net && family == "gpt2" {
                continue; // tied: refused (tested above)
            }
            let step = Step::Widen(widen_args(Target::All, Amount::By(2.0), m));
            let s = run_step(&g, &p, &step, 5, Proof::Local(&opts), "t")
                .unwrap_or_else(|e| panic!("{family} {m:?}: {e}"));
            assert!(
                s.report
                    .evidence
                    .iter()
                    .all(|e| e.mode.contains("(local, 5 regions)")),
                "{family} {m:?}: {:?}",
                s.report.evidence
            );
            if m == Method::Random {
                assert!(worst(&s) > 1e-3, "{family}: {}", worst(&s));
            } else {
                assert!(worst(&s) <= 1e-9, "{family} {m:?}: {}", worst(&s));
            }
        }
    }
}

/// Under `--names hf` and `--names timm` a target may be one of the file's modules: a
/// layer, a sublayer, a block or the stack of blocks, fused modules included.
#[test]
fn hf_and_timm_module_names_are_targets() {
    let dir = tempfile::tempdir().unwrap();
    let summary = |src: &str, args: &[&str]| -> String {
        let arch = dir.path().join("net.arch");
        std::fs::write(&arch, src).unwrap();
        let mut all = vec![args[0], arch.to_str().unwrap()];
        all.extend(&args[1..]);
        let (code, out, err) = run(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        format!("{out}{err}")
    };
    let s = summary(
        LLAMA,
        &[
            "widen",
            "--layer",
            "model.layers.0.mlp",
            "--by",
            "2",
            "--names",
            "hf",
        ],
    );
    assert!(
        s.contains(
            "`layers_1.mlp.gate (model.layers.0.mlp.gate_proj)` (layers_x) from 48 to 96 features"
        ),
        "{s}"
    );
    assert!(!s.contains("layers_2.mlp"), "{s}");
    let s = summary(
        LLAMA,
        &[
            "widen",
            "--layer",
            "model.layers.1.self_attn",
            "--add",
            "2",
            "--names",
            "hf",
        ],
    );
    assert!(s.contains("from 4 to 6 kv groups"), "{s}");
    // The stack of decoder layers is the row: its residual stream.
    let s = summary(
        LLAMA,
        &[
            "widen",
            "--layer",
            "model.layers",
            "--by",
            "2",
            "--names",
            "hf",
        ],
    );
    assert!(s.contains("from 32 to 64 features"), "{s}");
    let s = summary(
        GPT2,
        &["deepen", "--after", "transformer.h.0", "--names", "hf"],
    );
    assert!(
        s.contains("inserted layers_2.attention.norm (transformer.h.1.ln_1)"),
        "{s}"
    );
    let s = summary(
        GPT2,
        &[
            "widen",
            "--layer",
            "transformer.h.1.attn.c_attn",
            "--add",
            "2",
            "--names",
            "hf",
        ],
    );
    assert!(
        s.contains(
            "`layers_2.attention.q (transformer.h.1.attn.c_attn)` (layers_x) from 4 to 6 kv groups"
        ),
        "{s}"
    );
    let s = summary(
        VIT,
        &[
            "widen",
            "--layer",
            "blocks.1.mlp",
            "--by",
            "2",
            "--names",
            "timm",
        ],
    );
    assert!(
        s.contains("`blocks_2.mlp.fc1 (blocks.1.mlp.fc1)` (blocks_x) from 64 to 128 features"),
        "{s}"
    );
    // A module holding several rows names nothing; the refusal lists modules that do.
    let arch = dir.path().join("l.arch");
    std::fs::write(&arch, LLAMA).unwrap();
    let (code, _, err) = run(&[
        "widen",
        arch.to_str().unwrap(),
        "--layer",
        "model",
        "--by",
        "2",
        "--names",
        "hf",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("one of the file's modules (lm_head, model.embed_tokens"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "widen",
        arch.to_str().unwrap(),
        "--layer",
        "model.layers.0.mpl",
        "--by",
        "2",
        "--names",
        "hf",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("did you mean `model.layers.0.mlp`?"), "{err}");
}
