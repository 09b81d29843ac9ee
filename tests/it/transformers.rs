//! Transformer rows (LANGUAGE.md "Transformers"): the examples `examples/gpt2.arch`,
//! `tinyllama.arch` and `vit_b16.arch` count the published parameters and MACs per
//! sequence, name their tensors as the language says, print back and draw; bad transformer
//! rows are refused with a located diagnostic and a hint (fixtures in
//! tests/fixtures/transformers/, rendered diagnostics snapshotted in snapshots/transformers/).

use std::collections::BTreeSet;

use proptest::prelude::*;

use r2rc::ir::{Graph, Op};
use r2rc::lower::compile;
use r2rc::print::print;
use r2rc::stats::{layer_stats, table};

use crate::common::{arch_files, root, run};

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("snapshots/transformers"));
    s.set_prepend_module_to_snapshot(false);
    s
}

fn load(name: &str) -> Graph {
    let path = root().join(format!("examples/{name}.arch"));
    let src = std::fs::read_to_string(&path).unwrap();
    compile(&src, &[]).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn path(name: &str) -> String {
    root()
        .join(format!("examples/{name}.arch"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn parameters_match_the_published_counts() {
    for (name, params) in [
        ("gpt2", 124_439_808u64),
        ("tinyllama", 1_100_048_384),
        ("vit_b16", 86_567_656),
    ] {
        assert_eq!(layer_stats(&load(name)).1.params, params, "{name}");
        let (code, out, err) = run(&["check", &path(name)]);
        assert_eq!(code, 0, "{name}: {err}");
        let shown = params
            .to_string()
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            out.contains(&shown) || out.contains(&params.to_string()),
            "{name}: check does not show {params}:\n{out}"
        );
    }
}

/// What `from-hf` writes for the public configs compiles to the published totals.
#[test]
fn from_hf_fixtures_count_the_published_parameters() {
    for (name, params) in [
        ("gpt2", 124_439_808u64),
        ("tinyllama", 1_100_048_384),
        ("llama2_7b", 6_738_415_616),
        ("llama3_8b", 8_030_261_248),
    ] {
        let src =
            std::fs::read_to_string(root().join(format!("tests/fixtures/hf/{name}.arch"))).unwrap();
        let g = compile(&src, &[]).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(layer_stats(&g).1.params, params, "{name}");
    }
}

/// GPT-2 small at 1024 tokens: every linear once per token (the tied head too), and
/// attention's two T x T products per layer.
#[test]
fn macs_are_per_sequence() {
    let (t, d, w, v, layers) = (1024u64, 768u64, 3072u64, 50257u64, 12u64);
    let per_token = layers * (d * 3 * d + d * d + 2 * d * w) + d * v;
    let attention = layers * 2 * t * t * d;
    assert_eq!(layer_stats(&load("gpt2")).1.macs, t * per_token + attention);
}

#[test]
fn tensors_are_named_as_the_language_says_and_listed_once() {
    let names =
        |g: &Graph| -> Vec<String> { g.param_specs().into_iter().map(|s| s.name).collect() };
    let gpt2 = names(&load("gpt2"));
    let unique: BTreeSet<&String> = gpt2.iter().collect();
    assert_eq!(unique.len(), gpt2.len(), "a tensor is listed twice");
    for n in [
        "embed.token.weight",
        "embed.position.weight",
        "layers_1.attention.norm.weight",
        "layers_1.attention.norm.bias",
        "layers_1.attention.q.weight",
        "layers_1.attention.k.bias",
        "layers_1.attention.v.weight",
        "layers_1.attention.o.weight",
        "layers_1.mlp.norm.weight",
        "layers_1.mlp.fc1.weight",
        "layers_12.mlp.fc2.bias",
        "head.norm.weight",
    ] {
        assert!(gpt2.contains(&n.to_string()), "gpt2 lacks {n}");
    }
    // The tied head stores nothing of its own.
    assert!(!gpt2.iter().any(|n| n.starts_with("head.fc")));
    let llama = names(&load("tinyllama"));
    for n in [
        "layers_22.mlp.gate.weight",
        "layers_22.mlp.up.weight",
        "layers_22.mlp.down.weight",
        "head.fc.weight",
    ] {
        assert!(llama.contains(&n.to_string()), "tinyllama lacks {n}");
    }
    assert!(
        !llama.iter().any(|n| n.ends_with(".bias")),
        "no bias anywhere"
    );
    let vit = names(&load("vit_b16"));
    for n in [
        "embed.conv.weight",
        "embed.conv.bias",
        "embed.class_token.weight",
        "embed.position.weight",
        "blocks_1.attention.q.weight",
        "head.fc.bias",
    ] {
        assert!(vit.contains(&n.to_string()), "vit lacks {n}");
    }
    let g = load("vit_b16");
    // The patch embedding has no activation; its 14x14 map becomes 196 tokens, 197 with
    // the class token; the head pools token 0.
    assert!(g.find("embed.conv.act").is_none());
    assert_eq!(g.g[g.find("embed.tokens").unwrap()].shape, vec![196, 768]);
    assert_eq!(g.g[g.find("embed.position").unwrap()].shape, vec![197, 768]);
    assert!(matches!(
        g.g[g.find("head.pool").unwrap()].op,
        Op::ClassPool
    ));
}

#[test]
fn check_and_print_snapshots_and_round_trip() {
    settings().bind(|| {
        for name in ["gpt2", "tinyllama", "vit_b16"] {
            let g = load(name);
            let text = print(&g);
            let again = compile(&text, &[]).unwrap_or_else(|e| panic!("{name}: {e:?}\n{text}"));
            assert!(g == again, "{name}: print does not round trip:\n{text}");
            assert_eq!(print(&again), text, "{name}: printing is not a fixed point");
            insta::assert_snapshot!(format!("print@{name}"), text);
            insta::assert_snapshot!(format!("check@{name}"), table(&g));
        }
    });
}

#[test]
fn graph_draws_transformers() {
    let (code, out, err) = run(&["graph", &path("tinyllama")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("attention, 32 heads, 4 kv heads, rope 10000, causal"),
        "{out}"
    );
    assert!(out.contains("rms norm"));
}

#[test]
fn bad_transformer_rows_are_located_diagnostics_with_hints() {
    let want = [
        (
            "embedding_not_first",
            "a token embedding reads the token input",
        ),
        ("heads_do_not_divide", "5 heads do not divide the width 64"),
        ("kv_heads_do_not_divide", "3 kv heads do not divide 8 heads"),
        ("misspelt_option", "did you mean `causal`?"),
        ("size_column", "row `layers_x` outputs 16x64"),
        (
            "tied_wrong_vocab",
            "a tied fc reuses the token embedding's weight",
        ),
        ("unknown_norm", "unknown norm `rsm`"),
    ];
    let files = arch_files("tests/fixtures/transformers");
    assert_eq!(files.len(), want.len());
    settings().bind(|| {
        for (file, (name, says)) in files.iter().zip(want) {
            assert!(file.ends_with(format!("{name}.arch")), "{}", file.display());
            let shown = format!("tests/fixtures/transformers/{name}.arch");
            let (code, _, err) = run(&["check", &shown]);
            assert_eq!(code, 2, "{name}: {err}");
            assert!(err.contains(says), "{name}: expected `{says}` in\n{err}");
            assert!(err.contains("help:"), "{name}: no hint\n{err}");
            insta::assert_snapshot!(format!("error@{name}"), err);
        }
    });
}

/// An attention sublayer's text: `heads` query heads in `kv` groups, RoPE or not, causal
/// or not.
pub fn attention(heads: usize, kv: usize, rope: bool, causal: bool) -> String {
    let mut attn = format!("attention {heads} heads");
    if kv != heads {
        attn.push_str(&format!(", {kv} kv heads"));
    }
    if rope {
        attn.push_str(", rope 10000");
    }
    if causal {
        attn.push_str(", causal");
    }
    attn
}

/// A random transformer: header defaults, sublayer options, gated or plain MLPs, heads
/// that divide, tied or untied heads, a class-token head or a per-token head.
fn transformer() -> impl Strategy<Value = String> {
    (
        (1usize..4, 1usize..3, 1usize..3, 1usize..3),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (any::<bool>(), any::<bool>(), any::<bool>(), 0usize..3),
        0usize..2,
    )
        .prop_map(|(sizes, header, options, mlps)| {
            let (kv, group, layers, per) = sizes;
            let (rms, no_bias, postnorm, gelu) = header;
            let (rope, causal, gated, head) = options;
            let (heads, dh) = (kv * group, 4);
            let d = heads * dh;
            let mut src = "arch T\n".to_string();
            src.push_str(if rms { "norm rms" } else { "norm layer" });
            src.push_str(if gelu {
                ", act gelu_tanh"
            } else {
                ", act silu"
            });
            if no_bias {
                src.push_str(", no bias");
            }
            if postnorm {
                src.push_str("\npostnorm");
            }
            src.push_str("\ninput 8 tokens, vocab 50\n\n");
            src.push_str(&format!("embed  8x{d}  {d}-d token embedding"));
            if !rope {
                src.push_str(", learned positions");
            }
            let attn = attention(heads, kv, rope, causal);
            let mlp = format!("mlp {}{}", 2 * d, if gated { " gated" } else { "" });
            let subs: Vec<String> = (0..per)
                .flat_map(|_| [attn.clone(), mlp.clone()])
                .chain((0..mlps).map(|_| format!("mlp {d}, act relu")))
                .collect();
            src.push_str(&format!("\nlayers_x  [{}] x {layers}\n", subs.join("; ")));
            src.push_str(match head {
                0 => "head  norm, 50-d fc, tied\n",
                1 => "head  norm, 50-d fc, bias\n",
                _ => "head  norm, class token, 3-d fc\n",
            });
            src
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_transformers_print_back(src in transformer()) {
        let g = compile(&src, &[]).unwrap_or_else(|e| panic!("{e:?}\n{src}"));
        let text = print(&g);
        let again = compile(&text, &[]).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        prop_assert!(g == again, "{src}\nprinted as\n{text}");
        prop_assert_eq!(print(&again), text);
    }
}

/// A transformer's spaces count features and kv groups, never tokens: widening an MLP
/// layer widens its hidden features (64 -> 96), and `spaces` names the units.
#[test]
fn transformer_spaces_count_features_not_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("tiny.arch");
    std::fs::write(
        &arch,
        "arch Tiny\nnorm layer, eps 1e-5, act gelu_tanh, bias\ninput 16 tokens, vocab 97\n\n\
         embed     16x32  32-d token embedding, learned positions\n\
         layers_x  16x32  [attention 4 heads, causal; mlp 64] x 2\n\
         head      16x97  norm, 97-d fc, tied\n",
    )
    .unwrap();
    let a = arch.to_str().unwrap();
    let out_dir = dir.path().join("out");
    let o = out_dir.to_str().unwrap();
    let (code, out, err) = run(&[
        "widen",
        a,
        "--layer",
        "layers_1.mlp.fc1",
        "--by",
        "1.5",
        "-o",
        o,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        format!("{out}{err}").contains("from 64 to 96 features"),
        "{out}{err}"
    );
    let student = std::fs::read_to_string(out_dir.join("tiny.arch")).unwrap();
    assert!(student.contains("mlp 96"), "{student}");
    let (_, out, _) = run(&["spaces", a]);
    assert!(out.contains("space `embed.token` (32 features"), "{out}");
    assert!(
        out.contains("(4 kv groups, rows layers_x): widenable"),
        "{out}"
    );
    assert!(
        out.contains("(64 features, rows layers_x): widenable"),
        "{out}"
    );
}
