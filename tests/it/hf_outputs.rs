//! Students written under `--names hf` (CLI.md, "Additions"): the output folder is what
//! transformers' `AutoModelForCausalLM.from_pretrained(DIR)` loads: `config.json` for the
//! student (read back by `from-hf`, it lowers to the student's tensors), `model.safetensors`
//! with `format: pt` (or its shards and index). Students a config cannot describe, and timm
//! students a VisionTransformer cannot be built for, are refused before anything is
//! written, naming the layer.

use std::collections::BTreeMap;
use std::path::Path;

use r2rc::hf_config_out::{check_timm, config};
use r2rc::ir::{Graph, Op};
use r2rc::lower::compile;
use r2rc::params::DType;

use crate::common::{init_weights, json, listing, ok, run, s, safetensors_header};

fn llama_text(d: usize, heads: &str, mlp: usize, layers: usize, tied: bool) -> String {
    format!(
        "arch Tiny
norm rms, eps 1e-5, act silu, no bias
input 16 tokens, vocab 50

embed     16x{d}   {d}-d token embedding
layers_x  16x{d}   [attention {heads}, rope 10000, causal; mlp {mlp} gated] x {layers}
head      16x50   norm, 50-d fc{}
",
        if tied { ", tied" } else { "" }
    )
}

fn gpt2_text(d: usize, heads: usize, mlp: usize, layers: usize, tied: bool) -> String {
    format!(
        "arch Small
norm layer, eps 1e-5, act gelu_tanh, bias
input 12 tokens, vocab 40

embed     12x{d}   {d}-d token embedding, learned positions
layers_x  12x{d}   [attention {heads} heads, causal; mlp {mlp}] x {layers}
head      12x40   norm, 40-d fc{}
",
        if tied { ", tied" } else { "" }
    )
}

fn graph(text: &str) -> Graph {
    compile(text, &[]).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
}

/// Every tensor's name and shape.
fn shapes(g: &Graph) -> BTreeMap<String, Vec<usize>> {
    g.param_specs()
        .into_iter()
        .map(|p| (p.name, p.slot.shape))
        .collect()
}

/// `from-hf` of the student's config lowers to the student's tensors.
fn round_trip(student: &Graph) -> serde_json::Value {
    let c = config(student, None, Some(DType::F32)).unwrap();
    let text = r2rc::hf_config::arch_text(&c, None).unwrap();
    assert_eq!(shapes(&graph(&text)), shapes(student), "{c:#}\n{text}");
    c
}

#[test]
fn llama_and_gpt2_configs_read_back_to_the_students_tensors() {
    // GQA, RoPE, RMS norms, an untied head; then other sizes.
    let c = round_trip(&graph(&llama_text(32, "4 heads, 2 kv heads", 48, 2, false)));
    assert_eq!(c["architectures"], serde_json::json!(["LlamaForCausalLM"]));
    assert_eq!(c["model_type"], "llama");
    for (field, want) in [
        ("hidden_size", 32),
        ("intermediate_size", 48),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
        ("num_hidden_layers", 2),
        ("vocab_size", 50),
        ("max_position_embeddings", 16),
    ] {
        assert_eq!(c[field], want, "{field}");
    }
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["rope_theta"], 10000.0);
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["hidden_act"], "silu");
    assert_eq!(c["attention_bias"], false);
    assert_eq!(c["torch_dtype"], "float32");
    round_trip(&graph(&llama_text(48, "6 heads, 3 kv heads", 80, 3, true)));
    round_trip(&graph(&llama_text(16, "2 heads", 24, 1, false)));
    // GPT-2: layer norms, learned positions, a tied head; then untied, other sizes.
    let c = round_trip(&graph(&gpt2_text(24, 3, 96, 2, true)));
    assert_eq!(c["architectures"], serde_json::json!(["GPT2LMHeadModel"]));
    for (field, want) in [
        ("n_embd", 24),
        ("n_head", 3),
        ("n_inner", 96),
        ("n_layer", 2),
        ("n_positions", 12),
        ("vocab_size", 40),
    ] {
        assert_eq!(c[field], want, "{field}");
    }
    assert_eq!(c["layer_norm_epsilon"], 1e-5);
    assert_eq!(c["activation_function"], "gelu_new");
    assert_eq!(c["tie_word_embeddings"], true);
    round_trip(&graph(&gpt2_text(32, 4, 40, 3, true)));
    // Untied, the header's `bias` gives the head a bias, which lm_head has not.
    let e = config(&graph(&gpt2_text(32, 4, 40, 3, false)), None, None).unwrap_err();
    assert!(e.to_string().contains("`head.fc` has a bias"), "{e}");
}

/// Sets layer `block`'s MLP to `width` (gate, up, down and the values between).
fn widen_one_mlp(g: &mut Graph, block: usize, width: usize) {
    for n in g.g.node_indices().collect::<Vec<_>>() {
        let node = &mut g.g[n];
        if !node.name.starts_with(&format!("layers_{block}.mlp.")) {
            continue;
        }
        match &mut node.op {
            Op::Linear(l) if node.name.ends_with(".down") => l.in_features = width,
            Op::Linear(l) => {
                l.out_features = width;
                node.shape[1] = width;
            }
            Op::Activation(_) | Op::Mul => node.shape[1] = width,
            _ => {}
        }
    }
}

fn refusal(g: &Graph) -> String {
    let e = config(g, None, None).unwrap_err();
    let text = format!("{e} / {}", e.hint_text().unwrap_or(""));
    assert!(text.contains("--names r2rc"), "{text}");
    text
}

#[test]
fn students_a_config_cannot_describe_are_refused_naming_the_layer() {
    let base = llama_text(32, "4 heads, 2 kv heads", 48, 3, false);
    // One layer's MLP wider than the others.
    let mut g = graph(&base);
    widen_one_mlp(&mut g, 2, 64);
    let e = refusal(&g);
    assert!(e.contains("`layers_2.mlp.gate`"), "{e}");
    assert!(e.contains("intermediate_size"), "{e}");
    // One layer with other heads (the same width).
    let mut g = graph(&base);
    for n in g.g.node_indices().collect::<Vec<_>>() {
        if g.g[n].name == "layers_3.attention.core" {
            if let Op::Attention(a) = &mut g.g[n].op {
                (a.heads, a.kv_heads, a.head_dim) = (8, 4, 4);
            }
        }
    }
    let e = refusal(&g);
    assert!(e.contains("`layers_3.attention.core`"), "{e}");
    assert!(e.contains("num_attention_heads 8"), "{e}");
    // Heads that do not tile the width.
    let g = graph(&llama_text(
        32,
        "4 heads, 2 kv heads, head dim 16",
        48,
        2,
        false,
    ));
    let e = refusal(&g);
    assert!(e.contains("4 heads of 16"), "{e}");
    assert!(e.contains("32 wide"), "{e}");
    // Norms with different eps (as widening one normalised stream would leave them).
    let mut g = graph(&base);
    for n in g.g.node_indices().collect::<Vec<_>>() {
        if g.g[n].name == "layers_2.mlp.norm" {
            if let Op::Norm(norm) = &mut g.g[n].op {
                norm.eps = 2e-5;
            }
        }
    }
    let e = refusal(&g);
    assert!(e.contains("`layers_2.mlp.norm` has eps 2e-5"), "{e}");
    assert!(e.contains("rms_norm_eps"), "{e}");
    // Every norm's eps scaled alike is one eps, written as it is.
    let mut g = graph(&base);
    for n in g.g.node_indices().collect::<Vec<_>>() {
        if let Op::Norm(norm) = &mut g.g[n].op {
            norm.eps *= 1.5;
        }
    }
    let c = config(&g, None, None).unwrap();
    assert!(
        (c["rms_norm_eps"].as_f64().unwrap() - 1.5e-5).abs() < 1e-18,
        "{c}"
    );
    // A GPT-2 MLP wider in one layer.
    let mut g = graph(&gpt2_text(24, 3, 96, 2, true));
    for n in g.g.node_indices().collect::<Vec<_>>() {
        let node = &mut g.g[n];
        match &mut node.op {
            Op::Linear(l) if node.name == "layers_1.mlp.fc1" => {
                l.out_features = 100;
                node.shape[1] = 100;
            }
            Op::Linear(l) if node.name == "layers_1.mlp.fc2" => l.in_features = 100,
            Op::Activation(_) if node.name == "layers_1.mlp.act" => node.shape[1] = 100,
            _ => {}
        }
    }
    let e = refusal(&g);
    assert!(
        e.contains("`layers_2.mlp.fc1` has intermediate_size 96"),
        "{e}"
    );
}

const VIT: &str = "arch Vit
norm layer, eps 1e-6, act gelu, bias
input 3x32x32

embed     17x32   8x8, 32, stride 8, no norm; class token, learned positions
blocks_x  17x32   [attention 4 heads; mlp 64] x 2
head      1x1     norm, class token, 10-d fc
";

#[test]
fn timm_students_with_uneven_blocks_or_odd_heads_are_refused() {
    check_timm(&graph(VIT)).unwrap();
    let odd = VIT.replace("4 heads;", "4 heads, head dim 16;");
    let e = check_timm(&graph(&odd)).unwrap_err().to_string();
    assert!(e.contains("4 heads of 16") && e.contains("timm"), "{e}");
    let mut g = graph(VIT);
    for n in g.g.node_indices().collect::<Vec<_>>() {
        let node = &mut g.g[n];
        match &mut node.op {
            Op::Linear(l) if node.name == "blocks_2.mlp.fc1" => {
                l.out_features = 80;
                node.shape[1] = 80;
            }
            Op::Linear(l) if node.name == "blocks_2.mlp.fc2" => l.in_features = 80,
            Op::Activation(_) if node.name == "blocks_2.mlp.act" => node.shape[1] = 80,
            _ => {}
        }
    }
    let e = check_timm(&g).unwrap_err();
    assert!(e.to_string().contains("`blocks_2.mlp.fc1`"), "{e}");
    assert!(e.hint_text().unwrap().contains("--names r2rc"), "{e}");
}

/// A tiny Llama in `dir` and a plan that only renames it: the command that writes a
/// transformer student today.
fn tiny_llama(dir: &Path) -> (String, String) {
    let arch = dir.join("tiny.arch");
    std::fs::write(&arch, llama_text(32, "4 heads, 2 kv heads", 48, 2, false)).unwrap();
    let plan = dir.join("plan.txt");
    std::fs::write(&plan, "name Student\n").unwrap();
    (s(&arch).to_string(), s(&plan).to_string())
}

/// The student folder is a from_pretrained folder: config.json (reading back to the
/// student's tensors) and model.safetensors (format pt, transformers' names).
fn assert_hf_folder(out: &Path, weights: &[&str]) {
    let mut want = vec!["config.json", "report.json", "tiny.arch"];
    want.extend_from_slice(weights);
    want.sort();
    assert_eq!(listing(out), want);
    let c = json(&out.join("config.json"));
    let text = r2rc::hf_config::arch_text(&c, None).unwrap();
    let student = std::fs::read_to_string(out.join("tiny.arch")).unwrap();
    assert_eq!(shapes(&graph(&text)), shapes(&graph(&student)));
    for w in weights.iter().filter(|w| w.ends_with(".safetensors")) {
        let h = safetensors_header(&out.join(w));
        assert_eq!(h["__metadata__"]["format"], "pt", "{w}");
    }
}

#[test]
fn apply_under_names_hf_writes_a_from_pretrained_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, plan) = tiny_llama(dir.path());
    let out = dir.path().join("out");
    ok(&["apply", &arch, &plan, "--names", "hf", "-o", s(&out)]);
    assert_hf_folder(&out, &["model.safetensors"]);
    let h = safetensors_header(&out.join("model.safetensors"));
    assert!(
        h.get("model.layers.1.mlp.gate_proj.weight").is_some(),
        "{h}"
    );
    assert!(h.get("lm_head.weight").is_some(), "{h}");
    let c = json(&out.join("config.json"));
    assert_eq!(c["num_key_value_heads"], 2);
    // Nothing the user has is overwritten without --force, config.json included.
    std::fs::remove_file(out.join("model.safetensors")).unwrap();
    let before = std::fs::read(out.join("config.json")).unwrap();
    let (code, _, err) = run(&["apply", &arch, &plan, "--names", "hf", "-o", s(&out)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists"), "{err}");
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), before);
    // Shards as transformers names them, with the index's weight_map.
    let sharded = dir.path().join("sharded");
    ok(&[
        "apply",
        &arch,
        &plan,
        "--names",
        "hf",
        "--shard-size",
        "8KB",
        "-o",
        s(&sharded),
    ]);
    let names = listing(&sharded);
    let shards: Vec<&str> = names
        .iter()
        .map(|n| n.as_str())
        .filter(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() > 1, "{names:?}");
    let mut weights = shards.clone();
    weights.push("model.safetensors.index.json");
    assert_hf_folder(&sharded, &weights);
    let index = json(&sharded.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(
        map["model.embed_tokens.weight"],
        format!("model-00001-of-{:05}.safetensors", shards.len())
    );
}

#[test]
fn a_streamed_student_keeps_the_teachers_config_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, plan) = tiny_llama(dir.path());
    let teacher = dir.path().join("teacher");
    std::fs::create_dir(&teacher).unwrap();
    let weights = teacher.join("model.safetensors");
    init_weights(&arch, &weights, &["--names", "hf"]);
    let mut base =
        r2rc::hf_config_out::config(&graph(&std::fs::read_to_string(&arch).unwrap()), None, None)
            .unwrap();
    base["bos_token_id"] = 7.into();
    base["transformers_version"] = "4.40.0".into();
    std::fs::write(teacher.join("config.json"), base.to_string()).unwrap();
    let out = dir.path().join("out");
    let args = [
        "apply",
        &arch,
        &plan,
        "--names",
        "hf",
        "--weights",
        s(&weights),
        "--no-prove",
        "-o",
    ];
    let mut a = args.to_vec();
    a.push(s(&out));
    ok(&a);
    assert_hf_folder(&out, &["model.safetensors"]);
    let c = json(&out.join("config.json"));
    assert_eq!(c["bos_token_id"], 7);
    assert_eq!(c["transformers_version"], "4.40.0");
    assert_eq!(c["hidden_size"], 32);
    // The teacher's folder as the output: its config.json is an input, never overwritten.
    let before = std::fs::read(teacher.join("config.json")).unwrap();
    let mut a = args.to_vec();
    a.extend([s(&teacher), "--force"]);
    let (code, _, err) = run(&a);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is also an input"), "{err}");
    assert_eq!(std::fs::read(teacher.join("config.json")).unwrap(), before);
}

#[test]
fn widened_students_are_written_or_refused_under_names_hf() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, _) = tiny_llama(dir.path());
    // Every layer's MLP alike: one intermediate_size.
    let out = dir.path().join("all");
    ok(&[
        "widen",
        &arch,
        "--layer",
        "layers_x.mlp",
        "--by",
        "2",
        "--names",
        "hf",
        "-o",
        s(&out),
    ]);
    assert_hf_folder(&out, &["model.safetensors"]);
    assert_eq!(json(&out.join("config.json"))["intermediate_size"], 96);
    // One layer's MLP: no config can say it; nothing is written.
    let one = dir.path().join("one");
    let (code, _, err) = run(&[
        "widen",
        &arch,
        "--layer",
        "layers_1.mlp",
        "--by",
        "2",
        "--names",
        "hf",
        "-o",
        s(&one),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("intermediate_size") && err.contains("--names r2rc"),
        "{err}"
    );
    assert!(
        !one.exists() || listing(&one).is_empty(),
        "{:?}",
        listing(&one)
    );
    // --all widens the stream too: the norms' eps is one, whatever it became.
    let all = dir.path().join("every");
    ok(&[
        "widen",
        &arch,
        "--all",
        "--by",
        "2",
        "--names",
        "hf",
        "-o",
        s(&all),
    ]);
    assert_hf_folder(&all, &["model.safetensors"]);
    assert_eq!(json(&all.join("config.json"))["hidden_size"], 64);
}
