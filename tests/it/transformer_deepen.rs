//! Deepening transformers (docs/deepen_transformers.md): a new layer after `layers_N` of a
//! tiny Llama (GQA, RoPE, RMSNorm, gated MLP), a tiny GPT-2 (LayerNorm, biases, learned
//! positions, tied head) and a tiny ViT (patch conv, class token), by R2DeeperR's analogue,
//! NetMorph's (LLaMA-Pro's) zero-output layer and LLaMA-Pro's copy, each proved <= 1e-9 in
//! f64 in both modes, with every teacher tensor kept bit for bit (in memory and in files
//! written under `--names hf` / `--names timm`); random measured, not proved; refusals say
//! why.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis, Slice};
use r2rc::ir::{Graph, Op};
use r2rc::lower::compile;
use r2rc::params::Params;
use r2rc::print::print;
use r2rc::prove::{Evidence, ProveOptions};
use r2rc::transform::deepen::{deepen, DeepenArgs, DeepenMethod, Deepened, Exactness};

use crate::common::{init_weights, json, run, s, teacher, tensors};

const LLAMA: &str =
    "arch TinyLlama\nnorm rms, eps 1e-5, act silu, no bias\ninput 16 tokens, vocab 50\n\n\
    embed     16x32  32-d token embedding\n\
    layers_x  16x32  [attention 4 heads, 2 kv heads, rope 10000, causal; mlp 48 gated] x 2\n\
    head      16x50  norm, 50-d fc\n";

const GPT2: &str =
    "arch TinyGPT2\nnorm layer, eps 1e-5, act gelu_tanh, bias\ninput 16 tokens, vocab 50\n\n\
    embed     16x32  32-d token embedding, learned positions\n\
    layers_x  16x32  [attention 4 heads, causal; mlp 64] x 3\n\
    head      16x50  norm, 50-d fc, tied\n";

const VIT: &str = "arch TinyViT\nnorm layer, eps 1e-6, act gelu, bias\ninput 3x32x32\n\n\
    embed     17x32  8x8, 32, stride 8, no norm; class token, learned positions\n\
    blocks_x  17x32  [attention 4 heads; mlp 64] x 2\n\
    head      1x1    norm, class token, 10-d fc\n";

/// Multi-query attention: one kv head, so R2DeeperR pairs heads inside its group.
const MQA: &str =
    "arch TinyMQA\nnorm rms, eps 1e-6, act silu, no bias\ninput 8 tokens, vocab 20\n\n\
    embed     8x24  24-d token embedding\n\
    layers_x  8x24  [attention 6 heads, 1 kv heads, rope 10000, causal; mlp 32 gated] x 2\n\
    head      8x20  norm, 20-d fc\n";

const EXACT: [DeepenMethod; 3] = [
    DeepenMethod::R2r,
    DeepenMethod::Netmorph,
    DeepenMethod::Copy,
];

fn args(after: &str, method: DeepenMethod) -> DeepenArgs {
    DeepenArgs {
        after: after.into(),
        method,
        width: None,
    }
}

fn opts() -> ProveOptions {
    ProveOptions {
        inputs: 2,
        seed: 5,
        ..ProveOptions::default()
    }
}

fn prove(g: &Graph, p: &Params, d: &Deepened, sp: &Params) -> Vec<Evidence> {
    let renamed = (&d.name_map, d.mixed.as_slice());
    r2rc::patch::prove_renamed((g, p), (&d.graph, sp), renamed, &opts()).unwrap()
}

fn worst(ev: &[Evidence]) -> f64 {
    assert_eq!(ev.len(), 2, "eval and train");
    ev.iter().map(|e| e.max_rel_err).fold(0.0, f64::max)
}

fn get<'a>(p: &'a Params, name: &str) -> &'a ArrayD<f64> {
    p.get(name).unwrap_or_else(|| panic!("no tensor `{name}`"))
}

fn nonzero(t: &ArrayD<f64>) -> usize {
    t.iter().filter(|x| **x != 0.0).count()
}

/// The layer count of a row in printed text: `layers_x ... x 3`.
fn layers_in(text: &str, row: &str) -> usize {
    let line = text.lines().find(|l| l.starts_with(row)).unwrap();
    line.rsplit(" x ").next().unwrap().trim().parse().unwrap()
}

/// The linears of one transformer layer (`layers_2`) of `g`, by local name (`attention.q`).
fn linears(g: &Graph, block: &str) -> Vec<String> {
    g.g.node_weights()
        .filter(|n| n.name.starts_with(&format!("{block}.")) && matches!(n.op, Op::Linear(_)))
        .map(|n| n.name[block.len() + 1..].to_string())
        .collect()
}

fn is_output_projection(local: &str) -> bool {
    matches!(local.rsplit('.').next(), Some("o" | "down" | "fc2"))
}

/// Deepens `src` after `site` (a block `PREFIX_N`) by every exact method and checks the
/// proof, the names, the kept tensors and the new layer's tensors.
fn exact_everywhere(src: &str, site: &str) {
    let g = compile(src, &[]).unwrap();
    let p = teacher(&g, 7);
    let (prefix, n) = site.rsplit_once('_').unwrap();
    let n: usize = n.parse().unwrap();
    let row = format!("{prefix}_x");
    let (old, new) = (site.to_string(), format!("{prefix}_{}", n + 1));
    // The teacher's norms are not the identity, so copying them is checked.
    let norm = format!("{old}.attention.norm.weight");
    assert!(
        get(&p, &norm).iter().any(|x| (x - 1.0).abs() > 1e-3),
        "{norm}"
    );
    for method in EXACT {
        let d =
            deepen(&g, &p, &args(site, method), 3).unwrap_or_else(|e| panic!("{method:?}: {e}"));
        assert_eq!(d.exactness, Exactness::Exact);
        let text = print(&d.graph);
        assert_eq!(
            layers_in(&text, &row),
            layers_in(&print(&g), &row) + 1,
            "{text}"
        );
        // Later layers moved up by one; the name map says so.
        let later = format!("{prefix}_{}.mlp.add", n + 1);
        if g.find(&later).is_some() {
            assert_eq!(
                d.name_map.get(&later).map(String::as_str),
                Some(format!("{prefix}_{}.mlp.add", n + 2).as_str())
            );
        }
        // Every teacher tensor, bit for bit, under its new name.
        for (name, t) in &p.tensors {
            let (layer, suffix) = name.rsplit_once('.').unwrap();
            let moved = d.name_map.get(layer).map_or(layer, String::as_str);
            let st = get(&d.params, &format!("{moved}.{suffix}"));
            assert!(
                t.iter()
                    .zip(st.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{method:?}: {name} changed"
            );
        }
        let ev = prove(&g, &p, &d, &d.params);
        assert!(worst(&ev) <= 1e-9, "{method:?} after {site}: {ev:?}");
        // The new layer: norms copied, output projections cancel, producers as the method says.
        for norm in ["attention.norm", "mlp.norm"] {
            for suffix in ["weight", "bias"] {
                let key = format!("{old}.{norm}.{suffix}");
                if let Some(t) = p.get(&key) {
                    assert_eq!(t, get(&d.params, &format!("{new}.{norm}.{suffix}")));
                }
            }
        }
        let lin = linears(&d.graph, &new);
        assert!(lin.len() >= 6, "{lin:?}");
        for local in &lin {
            let w = get(&d.params, &format!("{new}.{local}.weight"));
            let site_w = get(&p, &format!("{old}.{local}.weight"));
            let out = is_output_projection(local);
            match method {
                DeepenMethod::R2r => assert_eq!(nonzero(w), w.len(), "{local}"),
                DeepenMethod::Netmorph if out => assert_eq!(nonzero(w), 0, "{local}"),
                DeepenMethod::Netmorph => {
                    assert_eq!(nonzero(w), w.len(), "{local}");
                    assert_ne!(w, site_w, "{local}");
                }
                DeepenMethod::Copy if out => assert_eq!(nonzero(w), 0, "{local}"),
                _ => assert_eq!(w, site_w, "{local}"),
            }
            if let Some(b) = d.params.get(&format!("{new}.{local}.bias")) {
                if out {
                    assert_eq!(nonzero(b), 0, "{method:?} {local} bias");
                }
            }
        }
        // The proof sees the new layer: one output entry off and it fails.
        let out = lin.iter().find(|l| is_output_projection(l)).unwrap();
        let mut bad = d.params.clone();
        let w = bad.tensors.get_mut(&format!("{new}.{out}.weight")).unwrap();
        *w.iter_mut().next().unwrap() += 0.5;
        let ev = prove(&g, &p, &d, &bad);
        assert!(
            worst(&ev) > 1e-6,
            "{method:?}: a wrong new layer passed: {ev:?}"
        );
    }
    // Random: a layer of its own, measured, never proved.
    let d = deepen(&g, &p, &args(site, DeepenMethod::Random), 3).unwrap();
    assert_eq!(d.exactness, Exactness::NotPreserving);
    assert!(worst(&prove(&g, &p, &d, &d.params)) > 1e-4);
}

#[test]
fn llama_gets_an_exact_layer_by_every_exact_method() {
    exact_everywhere(LLAMA, "layers_1");
    // After the last layer too.
    exact_everywhere(LLAMA, "layers_2");
}

#[test]
fn gpt2_gets_an_exact_layer_by_every_exact_method() {
    exact_everywhere(GPT2, "layers_1");
}

#[test]
fn vit_gets_an_exact_layer_by_every_exact_method() {
    exact_everywhere(VIT, "blocks_1");
}

#[test]
fn multi_query_attention_pairs_heads_inside_the_group() {
    exact_everywhere(MQA, "layers_1");
    let g = compile(MQA, &[]).unwrap();
    let p = teacher(&g, 1);
    let d = deepen(&g, &p, &args("layers_1", DeepenMethod::R2r), 2).unwrap();
    assert!(
        d.notes.iter().any(|n| n.contains("inside one kv group")),
        "{:?}",
        d.notes
    );
}

/// R2DeeperR's pairs: heads h and h + H/2 (kv heads j and j + KV/2) have equal q (k, v)
/// rows, the gated MLP's hidden units i and i + W/2 equal gate and up rows, and the output
/// projections' columns over each pair are [V, -V].
#[test]
fn r2r_layer_is_paired_halves() {
    let g = compile(LLAMA, &[]).unwrap();
    let p = teacher(&g, 4);
    let d = deepen(&g, &p, &args("layers_1", DeepenMethod::R2r), 9).unwrap();
    let t = |n: &str| get(&d.params, &format!("layers_2.{n}.weight")).clone();
    let halves = |w: &ArrayD<f64>, axis: usize| {
        let n = w.shape()[axis] / 2;
        (
            w.slice_axis(Axis(axis), Slice::from(..n)).to_owned(),
            w.slice_axis(Axis(axis), Slice::from(n..)).to_owned(),
        )
    };
    for (name, axis, sign) in [
        ("attention.q", 0, 1.0),
        ("attention.k", 0, 1.0),
        ("attention.v", 0, 1.0),
        ("attention.o", 1, -1.0),
        ("mlp.gate", 0, 1.0),
        ("mlp.up", 0, 1.0),
        ("mlp.down", 1, -1.0),
    ] {
        let (a, b) = halves(&t(name), axis);
        assert_eq!(a * sign, b, "{name}");
    }
    // The first half of q is not a copy of the site's, and differs head to head.
    let q = t("attention.q");
    assert_ne!(
        q.slice_axis(Axis(0), Slice::from(0..8)),
        q.slice_axis(Axis(0), Slice::from(8..16))
    );
}

fn shifted(name: &str, prefix: &str, at: usize) -> String {
    let Some(rest) = name.strip_prefix(prefix) else {
        return name.to_string();
    };
    let (i, tail) = rest.split_once('.').unwrap();
    let i: usize = i.parse().unwrap();
    let i = if i >= at { i + 1 } else { i };
    format!("{prefix}{i}.{tail}")
}

/// Deepens a weights file written under `names` after `site` by every exact method and
/// checks the student file keeps every teacher tensor's bytes under its shifted name.
fn files_keep_the_teacher(src: &str, names: &str, site: &str, prefix: &str, at: usize) {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("t.arch");
    std::fs::write(&arch, src).unwrap();
    let w = dir.path().join("t.safetensors");
    init_weights(
        s(&arch),
        &w,
        &["--random-stats", "--names", names, "--dtype", "f64"],
    );
    let teacher = tensors(&w);
    for method in ["r2r", "netmorph", "copy"] {
        let out = dir.path().join(method);
        let (code, _, err) = run(&[
            "deepen",
            s(&arch),
            "--after",
            site,
            "--method",
            method,
            "--weights",
            s(&w),
            "--names",
            names,
            "-o",
            s(&out),
        ]);
        assert_eq!(code, 0, "{method}: {err}");
        assert!(err.contains("passed") && !err.contains("FAILED"), "{err}");
        let weights = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .unwrap();
        let student: BTreeMap<String, Vec<u8>> = tensors(&weights).into_iter().collect();
        for (name, bytes) in &teacher {
            let moved = shifted(name, prefix, at);
            assert_eq!(
                student.get(&moved),
                Some(bytes),
                "{method}: {name} -> {moved}"
            );
        }
        let new: Vec<&String> = student
            .keys()
            .filter(|k| k.starts_with(&format!("{prefix}{at}.")))
            .collect();
        assert!(!new.is_empty(), "{method}: no new layer {prefix}{at}");
        assert_eq!(student.len(), teacher.len() + new.len());
        let report = json(&out.join("report.json"));
        assert!(report.to_string().contains("name_map"), "{report}");
        if names == "hf" {
            let config = json(&out.join("config.json"));
            let layers = config
                .get("num_hidden_layers")
                .or_else(|| config.get("n_layer"))
                .and_then(|v| v.as_u64())
                .unwrap();
            let before = teacher
                .iter()
                .filter_map(|(n, _)| {
                    n.strip_prefix(prefix)?
                        .split_once('.')?
                        .0
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap()
                + 1;
            assert_eq!(layers, before + 1, "{config}");
        }
    }
}

#[test]
fn llama_files_under_hf_names_keep_every_teacher_tensor() {
    // layers_1 is Hugging Face's model.layers.0: the new layer is model.layers.1.
    files_keep_the_teacher(LLAMA, "hf", "layers_1", "model.layers.", 1);
}

#[test]
fn gpt2_files_under_hf_names_keep_every_teacher_tensor() {
    files_keep_the_teacher(GPT2, "hf", "layers_2", "transformer.h.", 2);
}

#[test]
fn vit_files_under_timm_names_keep_every_teacher_tensor() {
    files_keep_the_teacher(VIT, "timm", "blocks_x", "blocks.", 2);
}

/// `--prove local` runs the new layer alone on random values shaped like the site's (the
/// region drops the teacher's vocabulary, so its input is not token ids).
#[test]
fn local_proof_of_a_new_transformer_layer() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("t.arch");
    std::fs::write(&arch, LLAMA).unwrap();
    let w = dir.path().join("t.safetensors");
    init_weights(
        s(&arch),
        &w,
        &["--random-stats", "--names", "hf", "--dtype", "f64"],
    );
    for method in ["r2r", "netmorph", "copy"] {
        let out = dir.path().join(method);
        let (code, _, err) = run(&[
            "deepen",
            s(&arch),
            "--after",
            "layers_1",
            "--method",
            method,
            "--weights",
            s(&w),
            "--names",
            "hf",
            "-o",
            s(&out),
            "--prove",
            "local",
        ]);
        assert_eq!(code, 0, "{method}: {err}");
        assert!(err.contains("passed") && !err.contains("FAILED"), "{err}");
    }
}

fn refused(src: &str, extra: &[&str], wants: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("t.arch");
    std::fs::write(&arch, src).unwrap();
    let mut a = vec!["deepen", s(&arch)];
    a.extend_from_slice(extra);
    let (code, _, err) = run(&a);
    assert_eq!(code, 2, "{extra:?}: {err}");
    for w in wants {
        assert!(err.contains(w), "{extra:?}: wanted `{w}` in\n{err}");
    }
}

#[test]
fn refusals_name_their_reason() {
    let after = |m: &'static str| ["--after", "layers_1", "--method", m];
    refused(
        LLAMA,
        &after("net2net"),
        &[
            "Net2DeeperNet",
            "a transformer layer",
            "--method r2r, netmorph or copy",
        ],
    );
    refused(
        LLAMA,
        &after("netmorph-dense"),
        &["NetMorph-dense", "cannot absorb a mix", "--method r2r"],
    );
    let odd_heads = LLAMA.replace("4 heads, 2 kv heads", "3 heads, 3 kv heads, head dim 8");
    refused(
        &odd_heads,
        &after("r2r"),
        &[
            "3 heads in 3 kv heads",
            "odd number of kv heads",
            "netmorph or copy",
        ],
    );
    let odd_mlp = LLAMA.replace("mlp 48", "mlp 47");
    refused(
        &odd_mlp,
        &after("r2r"),
        &["width 47 is odd", "layers_1.mlp"],
    );
    let post = GPT2.replace("bias\n", "bias\npostnorm\n");
    refused(&post, &after("copy"), &["post-norm", "not the identity"]);
    refused(
        LLAMA,
        &["--after", "embed"],
        &["is not a transformer layer", "`layers_1` to `layers_2`"],
    );
    refused(
        LLAMA,
        &["--after", "layers_1", "--width", "8"],
        &["--width", "copies that layer's shape"],
    );
    let conv = "arch Small\ninput 3x8x8\nconv1 3x3, 4\nhead avg pool, 10-d fc\n";
    refused(
        conv,
        &["--after", "conv1", "--method", "copy"],
        &["not a transformer layer", "--method r2r or netmorph"],
    );
}

/// A part of a layer is not a site (the library's message; the CLI may refuse the name
/// earlier, when it resolves names of the weights' scheme).
#[test]
fn a_sublayer_is_not_a_site() {
    let g = compile(LLAMA, &[]).unwrap();
    let p = teacher(&g, 1);
    let e = deepen(&g, &p, &args("layers_1.mlp", DeepenMethod::R2r), 0).unwrap_err();
    // Debug shows the hint too.
    let e = format!("{e:?}");
    assert!(
        e.contains("part of transformer layer `layers_1`") && e.contains("--after layers_1"),
        "{e}"
    );
}

/// Exact methods refuse a post-norm network, but the random baseline is measured there.
#[test]
fn random_layers_go_anywhere_and_are_measured() {
    let post = GPT2.replace("bias\n", "bias\npostnorm\n");
    let g = compile(&post, &[]).unwrap();
    let p = teacher(&g, 2);
    let d = deepen(&g, &p, &args("layers_2", DeepenMethod::Random), 1).unwrap();
    assert_eq!(d.exactness, Exactness::NotPreserving);
    assert!(worst(&prove(&g, &p, &d, &d.params)) > 1e-4);
    assert!(d.name_map.contains_key("layers_3.mlp.add"));
}

/// With `--weights`, `-o` and `--no-prove` the teacher is streamed (only the site layer's
/// tensors are read): the student's tensors are those of the in-memory deepening. (Llama:
/// GPT-2's fused c_attn is not streamed under --names hf yet.)
#[test]
fn a_streamed_deepening_writes_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("t.arch");
    std::fs::write(&arch, LLAMA).unwrap();
    let w = dir.path().join("t.safetensors");
    init_weights(s(&arch), &w, &["--random-stats", "--names", "hf"]);
    for method in ["r2r", "copy", "random"] {
        let outs: Vec<_> = [&[][..], &["--no-prove"][..]]
            .iter()
            .enumerate()
            .map(|(i, extra)| {
                let out = dir.path().join(format!("{method}{i}"));
                let mut a = vec![
                    "deepen",
                    s(&arch),
                    "--after",
                    "layers_2",
                    "--method",
                    method,
                    "--weights",
                    s(&w),
                    "--names",
                    "hf",
                    "-o",
                    s(&out),
                ];
                a.extend_from_slice(extra);
                let (code, _, err) = run(&a);
                assert_eq!(code, 0, "{method} {extra:?}: {err}");
                tensors(&out.join("model.safetensors"))
            })
            .collect();
        assert_eq!(outs[0], outs[1], "{method}");
    }
}

/// A plan that deepens, widens the new layer with the others, and deepens again is proved
/// step by step and end to end (`r2rc apply`).
#[test]
fn deepening_chains_with_widening_in_a_plan() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("t.arch");
    std::fs::write(&arch, LLAMA).unwrap();
    let plan = dir.path().join("plan.txt");
    std::fs::write(
        &plan,
        "deepen --after layers_1 --method r2r\nwiden --layer layers_x.mlp --by 2\ndeepen --after layers_3 --method copy\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (code, _, err) = run(&["apply", s(&arch), s(&plan), "-o", s(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("proof (end to end)") && !err.contains("FAILED"),
        "{err}"
    );
    let student = std::fs::read_to_string(out.join("t.arch")).unwrap();
    assert!(student.contains("mlp 96 gated] x 4"), "{student}");
}
