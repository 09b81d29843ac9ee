//! The outputs `--names hf` and `--names timm` add to a written student: the student's
//! Hugging Face `config.json` (the inverse of [`crate::hf_config::arch_text`]), the weights
//! file name `from_pretrained` looks for (`model.safetensors`, or its shards and index), the
//! `format: pt` metadata it insists on, and the refusal, before anything is written, of a
//! student the scheme cannot describe (one layer's MLP wider than the others, heads that do
//! not tile the width, norms with different eps).
//!
//! A config is built from the student graph alone; when the teacher's weights sit beside a
//! `config.json`, that file is the starting point and every field it has is kept, the ones
//! the student graph determines being replaced. Whatever the config says is checked once
//! more by reading it back: `from-hf` of the written fields must lower to the student's
//! graph (same layers, same ops, same wiring), so a config never describes another model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::ir::{Activation, Graph, Node, NormKind, Op};
use crate::names::hf::Family;
use crate::names::layout::in_block;
use crate::names::Naming;
use crate::params::DType;

/// The config file `from_pretrained` reads.
pub const CONFIG: &str = "config.json";

/// The weights file `from_pretrained` reads (its shards: `model-0000K-of-0000N.safetensors`
/// with `model.safetensors.index.json`).
pub const HF_WEIGHTS: &str = "model.safetensors";

/// The transformers release the configs are written for.
pub const TRANSFORMERS_VERSION: &str = "4.44.2";

/// The student's weights file name in its output folder: `model.safetensors` under
/// `--names hf` (what `from_pretrained` loads), else `<stem>.safetensors`.
pub fn weights_name(stem: &str, naming: Naming) -> String {
    match naming {
        Naming::Hf => HF_WEIGHTS.to_string(),
        _ => format!("{stem}.safetensors"),
    }
}

/// The metadata of a weights file (every shard) under `naming`: under `--names hf` with
/// `format: pt`, without which transformers refuses a safetensors checkpoint.
pub fn file_metadata(meta: &BTreeMap<String, String>, naming: Naming) -> BTreeMap<String, String> {
    let mut m = meta.clone();
    if naming == Naming::Hf {
        m.entry("format".into()).or_insert_with(|| "pt".into());
    }
    m
}

/// What a student written under `naming` gets besides its weights, `.arch` and report.
#[derive(Debug, Default)]
pub struct Extras {
    /// `config.json` (`--names hf`).
    pub config: Option<Vec<u8>>,
    /// The teacher's `config.json` it started from: an input, never overwritten.
    pub teacher_config: Option<PathBuf>,
}

/// Checks that `student` fits `naming`'s model class whole (refusing it, naming the layer
/// and the reason, when not) and makes its `config.json` under `--names hf`, starting from
/// the `config.json` beside `teacher_weights` when there is one. `dtype` is the written
/// weights' (`torch_dtype`). Nothing for `r2rc` and `torchvision`.
pub fn extras(
    student: &Graph,
    naming: Naming,
    teacher_weights: Option<&Path>,
    dtype: DType,
) -> Result<Extras> {
    match naming {
        Naming::Timm => {
            check_timm(student)?;
            Ok(Extras::default())
        }
        Naming::Hf => {
            let teacher_config = teacher_weights.and_then(config_beside);
            let base = match &teacher_config {
                Some(p) => Some(read_config(p)?),
                None => None,
            };
            let config = config(student, base.as_ref(), Some(dtype))
                .map_err(|e| with_place(e, teacher_config.as_deref()))?;
            let text = serde_json::to_string_pretty(&config).expect("a config serialises");
            Ok(Extras {
                config: Some(format!("{text}\n").into_bytes()),
                teacher_config,
            })
        }
        Naming::R2rc | Naming::Torchvision => Ok(Extras::default()),
    }
}

/// The `config.json` in the folder of the weights at `weights` (a file, an index, or a
/// folder of shards), if there is one.
pub fn config_beside(weights: &Path) -> Option<PathBuf> {
    let dir = if weights.is_dir() {
        weights.to_path_buf()
    } else {
        match weights.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let p = dir.join(CONFIG);
    p.is_file().then_some(p)
}

fn read_config(path: &Path) -> Result<Value> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(&shown, e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::usage(
            format!("{shown} (beside the teacher's weights) is not a JSON object"),
            Some("the student's config.json starts from it; fix or move it".into()),
        )),
        Err(e) => Err(Error::usage(
            format!("{shown} (beside the teacher's weights) is not valid JSON: {e}"),
            Some("the student's config.json starts from it; fix or move it".into()),
        )),
    }
}

/// Adds the teacher's config to an error about it.
fn with_place(e: Error, teacher_config: Option<&Path>) -> Error {
    match (e, teacher_config) {
        (Error::Usage { message, hint }, Some(p))
            if message.starts_with("the teacher's config") =>
        {
            Error::Usage {
                message: message.replacen(
                    "the teacher's config",
                    &format!("the teacher's config {}", p.display()),
                    1,
                ),
                hint,
            }
        }
        (e, _) => e,
    }
}

/// The hint of every refusal: what can still be written.
fn hint(naming: Naming) -> Option<String> {
    Some(format!(
        "write this student with --names r2rc instead (r2rc's own tensor names); `r2rc export \
         --torch` still turns it into a PyTorch module{}",
        if naming == Naming::Hf {
            ", though not one from_pretrained loads"
        } else {
            ""
        }
    ))
}

fn refuse(naming: Naming, class: &str, message: String) -> Error {
    Error::usage(
        format!(
            "--names {} cannot write this student as {class}: {message}; nothing was written",
            naming.keyword()
        ),
        hint(naming),
    )
}

/// One number of the config as a layer of the student says it.
struct Fact {
    /// The config field (`intermediate_size`).
    field: &'static str,
    /// The layer it was read from.
    layer: String,
    value: String,
}

/// The layers of one transformer block by their name inside it (`attention.q`).
struct Block<'a> {
    index: usize,
    nodes: BTreeMap<&'a str, &'a Node>,
}

impl<'a> Block<'a> {
    fn get(&self, rest: &str, ctx: &Ctx) -> Result<&'a Node> {
        self.nodes.get(rest).copied().ok_or_else(|| {
            ctx.refuse(format!(
                "layer {} has no `{rest}`, which every layer of {} has",
                self.index + 1,
                ctx.class
            ))
        })
    }
}

/// The naming and model class refusals speak of.
struct Ctx {
    naming: Naming,
    class: &'static str,
}

impl Ctx {
    fn refuse(&self, message: String) -> Error {
        refuse(self.naming, self.class, message)
    }
}

/// The blocks of the student's one stack, in order (`layers_1`, `layers_2`, ...).
fn blocks<'a>(g: &'a Graph, ctx: &Ctx) -> Result<Vec<Block<'a>>> {
    let mut by_index: BTreeMap<usize, Block<'a>> = BTreeMap::new();
    for n in g.order() {
        let node = &g.g[n];
        if let Some((i, rest)) = in_block(node) {
            by_index
                .entry(i)
                .or_insert_with(|| Block {
                    index: i,
                    nodes: BTreeMap::new(),
                })
                .nodes
                .insert(rest, node);
        }
    }
    let v: Vec<Block> = by_index.into_values().collect();
    if v.is_empty() {
        return Err(ctx.refuse(format!("network `{}` has no transformer layers", g.name)));
    }
    if let Some((k, b)) = v.iter().enumerate().find(|(k, b)| b.index != *k) {
        return Err(ctx.refuse(format!(
            "its layers are not numbered 1 to {}: layer {} follows layer {k}",
            v.len(),
            b.index + 1
        )));
    }
    Ok(v)
}

fn linear(node: &Node, ctx: &Ctx) -> Result<(usize, usize, bool)> {
    match &node.op {
        Op::Linear(l) => Ok((l.in_features, l.out_features, l.bias)),
        other => Err(ctx.refuse(format!(
            "layer `{}` is a {}, where {} has a linear layer",
            node.name,
            other.kind_name(),
            ctx.class
        ))),
    }
}

/// The facts every block must share, read from `b`; `gated` for a Llama MLP.
fn block_facts(b: &Block, gated: bool, ctx: &Ctx) -> Result<Vec<Fact>> {
    let fact = |field, node: &Node, value: String| Fact {
        field,
        layer: node.name.clone(),
        value,
    };
    let mut v = Vec::new();
    let core = b.get("attention.core", ctx)?;
    let Op::Attention(a) = &core.op else {
        return Err(ctx.refuse(format!("layer `{}` is not attention", core.name)));
    };
    v.push(fact("num_attention_heads", core, a.heads.to_string()));
    v.push(fact("num_key_value_heads", core, a.kv_heads.to_string()));
    v.push(fact("head_dim", core, a.head_dim.to_string()));
    v.push(fact(
        "rope_theta",
        core,
        a.rope.map_or("none".into(), |t| t.to_string()),
    ));
    v.push(fact("causal", core, a.causal.to_string()));
    let mut attention_bias = Vec::new();
    for p in ["q", "k", "v", "o"] {
        let node = b.get(&format!("attention.{p}"), ctx)?;
        attention_bias.push((node, linear(node, ctx)?.2));
    }
    let mut mlp_bias = Vec::new();
    let (first, second) = if gated {
        ("mlp.gate", "mlp.down")
    } else {
        ("mlp.fc1", "mlp.fc2")
    };
    let fc1 = b.get(first, ctx)?;
    let (_, width, bias) = linear(fc1, ctx)?;
    v.push(fact("intermediate_size", fc1, width.to_string()));
    mlp_bias.push((fc1, bias));
    if gated {
        let up = b.get("mlp.up", ctx)?;
        let (_, up_width, bias) = linear(up, ctx)?;
        if up_width != width {
            return Err(ctx.refuse(format!(
                "layer `{}` is {up_width} wide but `{}` is {width}; one intermediate_size \
                 sizes both",
                up.name, fc1.name
            )));
        }
        mlp_bias.push((up, bias));
    }
    let fc2 = b.get(second, ctx)?;
    mlp_bias.push((fc2, linear(fc2, ctx)?.2));
    let act = b.get("mlp.act", ctx)?;
    v.push(fact(
        "activation",
        act,
        match &act.op {
            Op::Activation(a) => a.keyword().to_string(),
            other => other.kind_name().to_string(),
        },
    ));
    for (field, biases) in [("attention_bias", attention_bias), ("mlp_bias", mlp_bias)] {
        let (n0, b0) = biases[0];
        if let Some((n, b)) = biases.iter().find(|(_, b)| *b != b0) {
            return Err(ctx.refuse(format!(
                "layer `{}` has {} but `{}` has {}; {field} is one flag for all of them",
                n.name,
                if *b { "a bias" } else { "no bias" },
                n0.name,
                if b0 { "a bias" } else { "no bias" }
            )));
        }
        v.push(fact(field, n0, b0.to_string()));
    }
    Ok(v)
}

/// Every block has block 1's facts.
fn same_blocks(blocks: &[Block], gated: bool, ctx: &Ctx) -> Result<Vec<Fact>> {
    let first = block_facts(&blocks[0], gated, ctx)?;
    for b in &blocks[1..] {
        let facts = block_facts(b, gated, ctx)?;
        for (f, f0) in facts.iter().zip(&first) {
            if f.value != f0.value {
                return Err(ctx.refuse(format!(
                    "layer `{}` has {} {} but `{}` has {}; {} has one {} for every layer",
                    f.layer, f.field, f.value, f0.layer, f0.value, ctx.class, f.field
                )));
            }
        }
    }
    Ok(first)
}

fn value<'a>(facts: &'a [Fact], field: &str) -> &'a Fact {
    facts
        .iter()
        .find(|f| f.field == field)
        .expect("block_facts lists every field")
}

/// Every norm of the student: one kind and one eps (the config has one), and for layer
/// norms a bias. Returns the eps.
fn one_eps(g: &Graph, kind: NormKind, field: &str, ctx: &Ctx) -> Result<f64> {
    let mut first: Option<(&Node, f64)> = None;
    for n in g.order() {
        let node = &g.g[n];
        let Op::Norm(norm) = &node.op else { continue };
        if norm.kind != kind {
            return Err(ctx.refuse(format!(
                "layer `{}` is a {} norm, where {} has {} norms",
                node.name,
                norm.kind.keyword(),
                ctx.class,
                kind.keyword()
            )));
        }
        if kind == NormKind::Layer && !norm.bias {
            return Err(ctx.refuse(format!(
                "layer norm `{}` has no bias, which {}'s layer norms always have",
                node.name, ctx.class
            )));
        }
        match first {
            None => first = Some((node, norm.eps)),
            Some((n0, eps0)) if !close(norm.eps, eps0) => {
                return Err(ctx.refuse(format!(
                    "norm `{}` has eps {:e} but `{}` has {eps0:e}; the config has one {field} \
                     for every norm (widening a normalised stream by s scales its norms' eps \
                     by s, so widen every norm's stream alike)",
                    node.name, norm.eps, n0.name
                )));
            }
            Some(_) => {}
        }
    }
    first
        .map(|(_, e)| e)
        .ok_or_else(|| ctx.refuse(format!("network `{}` has no norms", g.name)))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// The node named `name`, if any.
fn node<'a>(g: &'a Graph, name: &str) -> Option<&'a Node> {
    g.find(name).map(|n| &g.g[n])
}

fn top<'a>(g: &'a Graph, name: &str, ctx: &Ctx) -> Result<&'a Node> {
    node(g, name).ok_or_else(|| {
        ctx.refuse(format!(
            "network `{}` has no `{name}`, which {} has",
            g.name, ctx.class
        ))
    })
}

/// Heads times head size is the model width (transformers 4.44 derives head_dim from it).
fn heads_tile(facts: &[Fact], width: usize, field: &str, ctx: &Ctx) -> Result<()> {
    let heads: usize = value(facts, "num_attention_heads")
        .value
        .parse()
        .expect("a count");
    let head_dim: usize = value(facts, "head_dim").value.parse().expect("a count");
    if heads * head_dim != width {
        return Err(ctx.refuse(format!(
            "layer `{}` has {heads} heads of {head_dim} ({} features) but the model is \
             {width} wide; {} takes each head's size as {field} / heads (widen the heads by \
             the stream's factor too: --all, or the stream and `layers_x.attention` alike)",
            value(facts, "head_dim").layer,
            heads * head_dim,
            ctx.class
        )));
    }
    Ok(())
}

/// The fields the student graph determines, and the class's defaults for the rest.
struct Written {
    family: Family,
    fields: Map<String, Value>,
    defaults: Map<String, Value>,
}

fn describe(student: &Graph) -> Result<Written> {
    let family = crate::names::hf::family(student).map_err(|e| match e {
        Error::Usage { message, .. } => Error::usage(message, hint(Naming::Hf)),
        e => e,
    })?;
    let ctx = Ctx {
        naming: Naming::Hf,
        class: family.class(),
    };
    // Every tensor must have its place, as the weights file is written.
    crate::names::hf::layout(student)?;
    let blocks = blocks(student, &ctx)?;
    let gated = family == Family::Llama;
    let facts = same_blocks(&blocks, gated, &ctx)?;
    let embed = top(student, "embed.token", &ctx)?;
    let Op::Embedding(e) = &embed.op else {
        return Err(ctx.refuse(format!("layer `{}` is not a token embedding", embed.name)));
    };
    let (vocab, width) = (e.vocab, e.dim);
    let tokens = match student.input_shape().as_slice() {
        [t] => *t,
        s => return Err(ctx.refuse(format!("its input is {s:?}, not token ids"))),
    };
    top(student, "head.norm", &ctx)?;
    let head = top(student, "head.fc", &ctx)?;
    let tied = match &head.op {
        Op::TiedLinear(t) if t.vocab == vocab => true,
        Op::Linear(l) if l.out_features == vocab && !l.bias => false,
        Op::Linear(l) if l.out_features == vocab => {
            return Err(ctx.refuse(format!(
                "its head `{}` has a bias, which {}'s lm_head never has",
                head.name, ctx.class
            )))
        }
        _ => {
            return Err(ctx.refuse(format!(
                "its head `{}` does not map the width to the {vocab} tokens of the vocabulary",
                head.name
            )))
        }
    };
    let count = |f: &str| -> usize { value(&facts, f).value.parse().expect("a count") };
    let flag = |f: &str| value(&facts, f).value == "true";
    let causal = value(&facts, "causal");
    if causal.value != "true" {
        return Err(ctx.refuse(format!(
            "attention `{}` is not causal; {} is a causal decoder",
            causal.layer, ctx.class
        )));
    }
    let act = value(&facts, "activation");
    let mut fields = Map::new();
    let mut defaults = Map::new();
    match family {
        Family::Llama => {
            heads_tile(&facts, width, "hidden_size", &ctx)?;
            if act.value != Activation::Silu.keyword() {
                return Err(ctx.refuse(format!(
                    "`{}` is {}; r2rc writes Llama configs with hidden_act silu",
                    act.layer, act.value
                )));
            }
            let eps = one_eps(student, NormKind::Rms, "rms_norm_eps", &ctx)?;
            let theta: f64 = value(&facts, "rope_theta")
                .value
                .parse()
                .expect("a Llama has RoPE");
            fields.insert("architectures".into(), json!([family.class()]));
            fields.insert("model_type".into(), json!("llama"));
            fields.insert("hidden_size".into(), json!(width));
            fields.insert(
                "intermediate_size".into(),
                json!(count("intermediate_size")),
            );
            fields.insert(
                "num_attention_heads".into(),
                json!(count("num_attention_heads")),
            );
            fields.insert(
                "num_key_value_heads".into(),
                json!(count("num_key_value_heads")),
            );
            fields.insert("num_hidden_layers".into(), json!(blocks.len()));
            fields.insert("rms_norm_eps".into(), json!(eps));
            fields.insert("vocab_size".into(), json!(vocab));
            fields.insert("max_position_embeddings".into(), json!(tokens));
            fields.insert("rope_theta".into(), json!(theta));
            fields.insert("rope_scaling".into(), Value::Null);
            fields.insert("tie_word_embeddings".into(), json!(tied));
            fields.insert("hidden_act".into(), json!("silu"));
            fields.insert("attention_bias".into(), json!(flag("attention_bias")));
            fields.insert("mlp_bias".into(), json!(flag("mlp_bias")));
            defaults.insert("attention_dropout".into(), json!(0.0));
            defaults.insert("initializer_range".into(), json!(0.02));
            defaults.insert("pretraining_tp".into(), json!(1));
            defaults.insert("use_cache".into(), json!(true));
        }
        Family::Gpt2 => {
            heads_tile(&facts, width, "n_embd", &ctx)?;
            if count("num_key_value_heads") != count("num_attention_heads") {
                return Err(ctx.refuse(format!(
                    "attention `{}` groups its heads (grouped-query attention), which GPT-2 \
                     has not",
                    value(&facts, "num_key_value_heads").layer
                )));
            }
            let activation = match act.value.as_str() {
                "gelu_tanh" => "gelu_new",
                "gelu" => "gelu",
                other => {
                    return Err(ctx.refuse(format!(
                        "`{}` is {other}; r2rc writes GPT-2 configs with gelu_tanh (gelu_new) \
                         or gelu",
                        act.layer
                    )))
                }
            };
            for field in ["attention_bias", "mlp_bias"] {
                if !flag(field) {
                    return Err(ctx.refuse(format!(
                        "`{}` has no bias, which every Conv1D of GPT-2 has",
                        value(&facts, field).layer
                    )));
                }
            }
            let eps = one_eps(student, NormKind::Layer, "layer_norm_epsilon", &ctx)?;
            let pos = top(student, "embed.position", &ctx)?;
            let Op::Positions(p) = &pos.op else {
                return Err(ctx.refuse(format!("layer `{}` is not learned positions", pos.name)));
            };
            fields.insert("architectures".into(), json!([family.class()]));
            fields.insert("model_type".into(), json!("gpt2"));
            fields.insert("n_embd".into(), json!(width));
            fields.insert("n_head".into(), json!(count("num_attention_heads")));
            fields.insert("n_inner".into(), json!(count("intermediate_size")));
            fields.insert("n_layer".into(), json!(blocks.len()));
            fields.insert("n_positions".into(), json!(p.tokens));
            fields.insert("layer_norm_epsilon".into(), json!(eps));
            fields.insert("vocab_size".into(), json!(vocab));
            fields.insert("activation_function".into(), json!(activation));
            fields.insert("tie_word_embeddings".into(), json!(tied));
            fields.insert("scale_attn_weights".into(), json!(true));
            fields.insert("scale_attn_by_inverse_layer_idx".into(), json!(false));
            fields.insert("reorder_and_upcast_attn".into(), json!(false));
            fields.insert("add_cross_attention".into(), json!(false));
            for f in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] {
                defaults.insert(f.into(), json!(0.1));
            }
            defaults.insert("initializer_range".into(), json!(0.02));
            defaults.insert("use_cache".into(), json!(true));
        }
    }
    defaults.insert("transformers_version".into(), json!(TRANSFORMERS_VERSION));
    Ok(Written {
        family,
        fields,
        defaults,
    })
}

/// The Hugging Face `config.json` of `student` (`LlamaForCausalLM` or `GPT2LMHeadModel`):
/// `base`'s fields (the teacher's config) with the ones the student determines replaced,
/// or a complete one; `torch_dtype` from `dtype` when given. A student the config cannot
/// describe is refused, naming the layer and the reason.
pub fn config(student: &Graph, base: Option<&Value>, dtype: Option<DType>) -> Result<Value> {
    let w = describe(student)?;
    read_back(student, &w)?;
    let mut out = match base {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(Error::usage(
                "the teacher's config is not a JSON object",
                Some("the student's config.json starts from it; fix or move it".into()),
            ))
        }
        None => Map::new(),
    };
    let mut fields = w.fields;
    if let Some(t) = out.get("model_type").and_then(Value::as_str) {
        let fits = match w.family {
            Family::Llama => ["llama", "mistral"].contains(&t),
            Family::Gpt2 => t == "gpt2",
        };
        if !fits {
            return Err(Error::usage(
                format!(
                    "the teacher's config has model_type \"{t}\", but the student is a {}",
                    w.family.class()
                ),
                Some(format!(
                    "the student's {CONFIG} starts from the one beside the teacher's weights; \
                     move that one away if it belongs to another model"
                )),
            ));
        }
        if t == "mistral" {
            // Mistral's own class and layout, which has no biases.
            for f in ["attention_bias", "mlp_bias"] {
                if fields.remove(f) == Some(json!(true)) {
                    return Err(refuse(
                        Naming::Hf,
                        "MistralForCausalLM",
                        format!("the student's linear layers have biases ({f})"),
                    ));
                }
            }
            fields.remove("model_type");
            fields.remove("architectures");
        }
    }
    // Fields the teacher's config may carry that the student's sizes decide too.
    let head_dim = student
        .g
        .node_weights()
        .find_map(|n| match &n.op {
            Op::Attention(a) => Some(a.head_dim),
            _ => None,
        })
        .expect("described");
    if out.get("head_dim").is_some_and(|v| !v.is_null()) {
        fields.insert("head_dim".into(), json!(head_dim));
    }
    if out.contains_key("n_ctx") {
        if let Some(n) = fields.get("n_positions") {
            fields.insert("n_ctx".into(), n.clone());
        }
    }
    if let Some(d) = dtype {
        fields.insert("torch_dtype".into(), json!(torch_dtype(d)));
    }
    for (k, v) in w.defaults {
        out.entry(k).or_insert(v);
    }
    out.extend(fields);
    Ok(Value::Object(out))
}

fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F32 => "float32",
        DType::F64 => "float64",
    }
}

/// The written fields, read back by `from-hf` and lowered, give the student's graph: every
/// layer with the same op and the same inputs. Catches whatever the fields cannot say.
fn read_back(student: &Graph, w: &Written) -> Result<()> {
    let ctx = Ctx {
        naming: Naming::Hf,
        class: w.family.class(),
    };
    let mut fields = w.fields.clone();
    // from-hf reads Llama without biases; the biases are compared below instead.
    let (attention_bias, mlp_bias) = (
        fields.remove("attention_bias") == Some(json!(true)),
        fields.remove("mlp_bias") == Some(json!(true)),
    );
    let text = crate::hf_config::arch_text(&Value::Object(fields), Some("ReadBack"))?;
    let back = crate::lower::compile(&text, &[]).map_err(|e| {
        ctx.refuse(format!(
            "the config it would get does not lower ({}), which is a bug in r2rc",
            e.message
        ))
    })?;
    let names = |g: &Graph, n: crate::ir::NodeIndex| g.g[n].name.clone();
    for n in student.order() {
        let node = &student.g[n];
        let Some(m) = back.find(&node.name) else {
            return Err(ctx.refuse(format!(
                "layer `{}` has no place in the model its config describes",
                node.name
            )));
        };
        let theirs = &back.g[m];
        if !same_op(node, theirs, (attention_bias, mlp_bias)) {
            return Err(ctx.refuse(format!(
                "layer `{}` is {}, but the model its config describes has {} there",
                node.name,
                show_op(&node.op),
                show_op(&theirs.op)
            )));
        }
        let ins: Vec<String> = student
            .inputs(n)
            .into_iter()
            .map(|i| names(student, i))
            .collect();
        let their_ins: Vec<String> = back
            .inputs(m)
            .into_iter()
            .map(|i| names(&back, i))
            .collect();
        if ins != their_ins {
            return Err(ctx.refuse(format!(
                "layer `{}` reads {} where the model its config describes reads {}",
                node.name,
                ins.join(", "),
                their_ins.join(", ")
            )));
        }
    }
    let count = student.g.node_count();
    if back.g.node_count() != count {
        let extra = back
            .order()
            .into_iter()
            .map(|m| back.g[m].name.clone())
            .find(|name| student.find(name).is_none())
            .unwrap_or_default();
        return Err(ctx.refuse(format!(
            "the model its config describes has layer `{extra}`, which the student lacks"
        )));
    }
    Ok(())
}

/// Ops equal up to rounding of eps, and Llama linears' biases as the config's flags say.
fn same_op(ours: &Node, theirs: &Node, (attention_bias, mlp_bias): (bool, bool)) -> bool {
    match (&ours.op, &theirs.op) {
        (Op::Norm(a), Op::Norm(b)) => {
            a.kind == b.kind && a.dim == b.dim && a.bias == b.bias && close(a.eps, b.eps)
        }
        (Op::Linear(a), Op::Linear(b)) => {
            let bias = match in_block(theirs) {
                Some((_, rest)) if rest.starts_with("attention.") => b.bias || attention_bias,
                Some((_, rest)) if rest.starts_with("mlp.") => b.bias || mlp_bias,
                _ => b.bias,
            };
            a.in_features == b.in_features && a.out_features == b.out_features && a.bias == bias
        }
        (a, b) => a == b,
    }
}

fn show_op(op: &Op) -> String {
    match op {
        Op::Linear(l) => format!(
            "a linear layer {} -> {}{}",
            l.in_features,
            l.out_features,
            if l.bias { " with bias" } else { "" }
        ),
        Op::Norm(n) => format!("a {} norm of {} (eps {:e})", n.kind.keyword(), n.dim, n.eps),
        Op::Attention(a) => format!(
            "attention with {} heads, {} kv heads, head size {}",
            a.heads, a.kv_heads, a.head_dim
        ),
        other => format!("a {}", other.kind_name()),
    }
}

/// Refuses a student timm's `VisionTransformer` cannot be built for: its blocks differ in
/// size (one `embed_dim`, `num_heads`, `mlp_ratio` for all), a head's size is not
/// width / heads, its attention groups heads, is causal, or its norms differ in eps.
pub fn check_timm(student: &Graph) -> Result<()> {
    let ctx = Ctx {
        naming: Naming::Timm,
        class: crate::names::timm::FAMILY,
    };
    crate::names::timm::layout(student)?;
    let blocks = blocks(student, &ctx)?;
    let facts = same_blocks(&blocks, false, &ctx)?;
    let o = blocks[0].get("attention.o", &ctx)?;
    let width = linear(o, &ctx)?.1;
    heads_tile(&facts, width, "embed_dim", &ctx)?;
    let kv = value(&facts, "num_key_value_heads");
    if kv.value != value(&facts, "num_attention_heads").value {
        return Err(ctx.refuse(format!(
            "attention `{}` groups its heads (grouped-query attention), which timm's has not",
            kv.layer
        )));
    }
    let causal = value(&facts, "causal");
    if causal.value == "true" {
        return Err(ctx.refuse(format!(
            "attention `{}` is causal, which timm's is not",
            causal.layer
        )));
    }
    one_eps(student, NormKind::Layer, "eps", &ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = "arch Tiny
norm rms, eps 1e-5, act silu, no bias
input 16 tokens, vocab 50

embed     16x32   32-d token embedding
layers_x  16x32   [attention 4 heads, 2 kv heads, rope 10000, causal; mlp 48 gated] x 2
head      16x50   norm, 50-d fc
";

    fn llama() -> Graph {
        crate::lower::compile(LLAMA, &[]).unwrap()
    }

    #[test]
    fn names_and_metadata_follow_the_naming() {
        assert_eq!(weights_name("tiny", Naming::Hf), "model.safetensors");
        assert_eq!(weights_name("tiny", Naming::Timm), "tiny.safetensors");
        let m = BTreeMap::from([("a".to_string(), "b".to_string())]);
        assert_eq!(file_metadata(&m, Naming::Hf)["format"], "pt");
        assert!(!file_metadata(&m, Naming::R2rc).contains_key("format"));
    }

    #[test]
    fn a_base_keeps_its_fields_and_takes_the_students_sizes() {
        let base = json!({
            "model_type": "llama", "hidden_size": 999, "bos_token_id": 7,
            "transformers_version": "4.40.0", "head_dim": 1
        });
        let c = config(&llama(), Some(&base), Some(DType::BF16)).unwrap();
        assert_eq!(c["hidden_size"], 32);
        assert_eq!(c["bos_token_id"], 7);
        assert_eq!(c["transformers_version"], "4.40.0");
        assert_eq!(c["head_dim"], 8);
        assert_eq!(c["torch_dtype"], "bfloat16");
        let other = json!({"model_type": "bert"});
        let e = config(&llama(), Some(&other), None).unwrap_err();
        assert!(e.to_string().contains("model_type \"bert\""), "{e}");
    }

    #[test]
    fn a_changed_wiring_is_caught_by_reading_the_config_back() {
        let mut g = llama();
        // Layer 2's MLP reads the stream before its attention: the sizes are right, the
        // model is not Llama's.
        let up = g.find("layers_2.mlp.up").unwrap();
        let from = g.find("layers_1.mlp.add").unwrap();
        let e =
            g.g.find_edge(g.find("layers_2.mlp.norm").unwrap(), up)
                .unwrap();
        let w = g.g.remove_edge(e).unwrap();
        g.g.add_edge(from, up, w);
        let e = config(&g, None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("`layers_2.mlp.up` reads layers_1.mlp.add"),
            "{e}"
        );
    }
}
