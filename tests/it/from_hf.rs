//! `r2rc from-hf`: Hugging Face configs (fixtures are the public config.json files of
//! TinyLlama-1.1B-Chat-v1.0, Llama-2-7b-hf, Meta-Llama-3-8B and gpt2) to `.arch` text, the
//! refusals of what the language cannot say, and how the output file is written.

use serde_json::{json, Value};

use crate::common::{run, s};
use r2rc::hf_config::arch_text;

fn fixture(name: &str) -> String {
    format!("tests/fixtures/hf/{name}.json")
}

fn config(name: &str) -> Value {
    let text = std::fs::read_to_string(crate::common::root().join(fixture(name))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `config` with `changes` merged into its top level.
fn with(mut config: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// The refusal of `config`: its message and hint.
fn refusal(config: &Value) -> String {
    let e = arch_text(config, None).unwrap_err();
    format!("{e} | {}", e.hint_text().unwrap_or_default())
}

/// `tests/fixtures/hf/NAME.arch`: what from-hf writes for NAME.json (tinyllama's and
/// gpt2's are LANGUAGE.md's examples to the letter).
fn expected(name: &str) -> String {
    std::fs::read_to_string(crate::common::root().join(format!("tests/fixtures/hf/{name}.arch")))
        .unwrap()
}

/// Each fixture config with the name its `.arch` fixture's arch line gives it.
const FIXTURES: [(&str, &str); 4] = [
    ("tinyllama", "TinyLlama"),
    ("gpt2", "GPT2"),
    ("llama2_7b", "Llama2_7B"),
    ("llama3_8b", "Llama3_8B"),
];

#[test]
fn configs_give_their_arch_fixtures() {
    for (name, arch) in FIXTURES {
        let (code, out, err) = run(&["from-hf", &fixture(name), "--name", arch]);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(out, expected(name), "{name}");
    }
    // GPT-2's config has no tie_word_embeddings: transformers' default (tied) applies; its
    // family name is the default name.
    assert_eq!(arch_text(&config("gpt2"), None).unwrap(), expected("gpt2"));
    let llama3 = arch_text(&config("llama3_8b"), None).unwrap();
    assert!(llama3.starts_with("arch Llama\n"), "{llama3}");
}

#[test]
fn defaults_of_absent_fields_are_transformers_ones() {
    // Llama: rms_norm_eps 1e-6, rope_theta 10000, kv heads = heads, untied.
    let mut c = config("tinyllama");
    let map = c.as_object_mut().unwrap();
    for k in [
        "rms_norm_eps",
        "rope_theta",
        "num_key_value_heads",
        "tie_word_embeddings",
    ] {
        map.remove(k);
    }
    let text = arch_text(&c, None).unwrap();
    assert!(
        text.contains("norm rms, eps 1e-6, act silu, no bias"),
        "{text}"
    );
    assert!(
        text.contains("[attention 32 heads, rope 10000, causal; mlp 5632 gated] x 22"),
        "{text}"
    );
    assert!(text.contains("norm, 32000-d fc\n"), "{text}");
    // GPT-2: n_inner null is 4 x n_embd; an untied head says so by leaving out `tied`, and
    // has no bias (lm_head has none).
    let c = with(
        config("gpt2"),
        json!({"n_inner": null, "n_embd": 64, "n_head": 4, "tie_word_embeddings": false}),
    );
    let text = arch_text(&c, None).unwrap();
    assert!(
        text.contains("[attention 4 heads, causal; mlp 256] x 12"),
        "{text}"
    );
    assert!(text.ends_with("norm, 50257-d fc, no bias\n"), "{text}");
    // Tied Llama heads say `tied`; gelu spells GPT-2's erf GELU.
    let c = with(config("tinyllama"), json!({"tie_word_embeddings": true}));
    assert!(arch_text(&c, None)
        .unwrap()
        .ends_with("norm, 32000-d fc, tied\n"));
    let c = with(config("gpt2"), json!({"activation_function": "gelu"}));
    assert!(arch_text(&c, None).unwrap().contains("act gelu, bias"));
}

#[test]
fn mistral_without_a_sliding_window_reads_as_llama() {
    let mistral = with(
        config("tinyllama"),
        json!({"model_type": "mistral", "sliding_window": null, "max_position_embeddings": 32768}),
    );
    let text = arch_text(&mistral, None).unwrap();
    assert!(text.starts_with("arch Mistral\n"), "{text}");
    assert!(text.contains("input 32768 tokens"), "{text}");
    // A window as long as the context never hides a token.
    let wide = with(mistral.clone(), json!({"sliding_window": 32768}));
    assert_eq!(arch_text(&wide, None).unwrap(), text);
    // A shorter one is refused (refusals.json).
    let narrow = with(mistral, json!({"sliding_window": 4096}));
    assert!(arch_text(&narrow, None).is_err());
}

/// Every refusal in `tests/fixtures/hf/refusals.json`: a fixture config with `change`
/// merged in or the field `remove` taken out is refused with exactly `refusal` (message,
/// ` | `, hint), which names `field`.
#[test]
fn unsupported_or_missing_fields_are_refused_by_name() {
    let cases = config("refusals");
    for case in cases.as_array().unwrap() {
        let mut c = config(case["config"].as_str().unwrap());
        if let Some(change) = case.get("change") {
            c = with(c, change.clone());
        }
        if let Some(field) = case["remove"].as_str() {
            c.as_object_mut().unwrap().remove(field);
        }
        let field = case["field"].as_str().unwrap();
        let got = refusal(&c);
        assert_eq!(got, case["refusal"].as_str().unwrap(), "{case}");
        assert!(got.contains(&format!("`{field}`")), "{case}");
    }
    let e = refusal(&json!([1, 2]));
    assert!(e.contains("not a JSON object"), "{e}");
    // A head_dim that says what the default says is no change.
    let same = with(config("tinyllama"), json!({"head_dim": 64}));
    assert_eq!(
        arch_text(&same, Some("TinyLlama")).unwrap(),
        expected("tinyllama")
    );
}

#[test]
fn names_must_be_identifiers() {
    let e = arch_text(&config("gpt2"), Some("gpt-2")).unwrap_err();
    assert!(
        e.to_string().contains("`gpt-2` is not an identifier"),
        "{e}"
    );
}

#[test]
fn output_file_is_not_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tinyllama.arch");
    let args = ["from-hf", &fixture("tinyllama"), "-o", s(&out)];
    let (code, stdout, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.is_empty(), "{stdout}");
    // The name is the output's stem.
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        written,
        expected("tinyllama").replace("arch TinyLlama", "arch tinyllama")
    );
    std::fs::write(&out, "mine").unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 2);
    assert!(err.contains("exists; nothing was written"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine");
    let mut forced = args.to_vec();
    forced.extend(["--force", "--name", "TinyLlama"]);
    let (code, _, err) = run(&forced);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        expected("tinyllama")
    );
    // A stem that is no identifier leaves the family's name.
    let odd = tmp.path().join("tiny-llama.arch");
    let (code, _, err) = run(&["from-hf", &fixture("tinyllama"), "-o", s(&odd)]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&odd)
        .unwrap()
        .starts_with("arch Llama\n"));
}

#[test]
fn the_config_is_never_the_output_and_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.json");
    let bad = with(
        config("tinyllama"),
        json!({"rope_scaling": {"factor": 8.0}}),
    );
    std::fs::write(&cfg, bad.to_string()).unwrap();
    let (code, out, err) = run(&["from-hf", s(&cfg)]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("{}: `rope_scaling` is set", cfg.display())),
        "{err}"
    );
    assert!(err.contains("help:"), "{err}");
    std::fs::write(&cfg, config("gpt2").to_string()).unwrap();
    let (code, _, err) = run(&["from-hf", s(&cfg), "-o", s(&cfg), "--force"]);
    assert_eq!(code, 2);
    assert!(err.contains("is also an input"), "{err}");
    std::fs::write(&cfg, "{ not json").unwrap();
    let (code, _, err) = run(&["from-hf", s(&cfg)]);
    assert_eq!(code, 2);
    assert!(err.contains("is not JSON"), "{err}");
}

/// `r2rc check` of each from-hf output counts the public model's parameters (a tied
/// head's weight once).
#[test]
fn check_counts_each_models_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, params) in [
        ("llama2_7b", "6,738,415,616"),
        ("llama3_8b", "8,030,261,248"),
        ("tinyllama", "1,100,048,384"),
        ("gpt2", "124,439,808"),
    ] {
        let arch = tmp.path().join(format!("{name}.arch"));
        let (code, _, err) = run(&["from-hf", &fixture(name), "-o", s(&arch)]);
        assert_eq!(code, 0, "{name}: {err}");
        let (code, out, err) = run(&["check", s(&arch)]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            out.contains(&format!("trainable parameters: {params}\n")),
            "{name}: {out}"
        );
    }
}

/// `check` of Llama-3-8B's shape answers at once under an address-space limit of 500 MB,
/// which its weights (32 GB in f32; the token embedding alone 2.1 GB) could never fit in.
#[cfg(target_os = "linux")]
#[test]
fn check_of_an_8b_config_allocates_no_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tmp.path().join("llama3_8b.arch");
    let (code, _, err) = run(&["from-hf", &fixture("llama3_8b"), "-o", s(&arch)]);
    assert_eq!(code, 0, "{err}");
    let start = std::time::Instant::now();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 500000 && exec \"{}\" check \"{}\"",
            env!("CARGO_BIN_EXE_r2rc"),
            arch.display()
        ))
        .output()
        .unwrap();
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("8,030,261,248"), "{stdout}");
    assert!(took.as_secs_f64() < 5.0, "check took {took:?}");
}

/// An untied `lm_head` has no bias in transformers, whatever the linears have: an untied
/// GPT-2 gets a head fc without one (Llama's linears have none; `attention_bias` is refused).
#[test]
fn an_untied_head_never_has_a_bias() {
    use r2rc::ir::Op;
    let text = arch_text(
        &with(config("gpt2"), json!({"tie_word_embeddings": false})),
        None,
    )
    .unwrap();
    assert!(text.contains("-d fc, no bias"), "{text}");
    let g = r2rc::lower::compile(&text, &[]).unwrap();
    let fc = g.find("head.fc").unwrap();
    match &g.g[fc].op {
        Op::Linear(l) => assert!(!l.bias && l.in_features == 768, "{l:?}"),
        op => panic!("head.fc is {op:?}"),
    }
    // The linears keep their biases.
    let q = g.find("layers_1.attention.q").unwrap();
    assert!(matches!(&g.g[q].op, Op::Linear(l) if l.bias));
}
