//! A Hugging Face `config.json` as `.arch` text (`r2rc from-hf`): Llama-family decoders
//! (`model_type` llama, and mistral without a sliding window) and GPT-2, in the transformer
//! rows `embed`, `layers_x` and `head` (LANGUAGE.md, "Transformers").
//!
//! Pure: a parsed JSON value in, text or an error out. Fields that change the function
//! and that the language cannot say (RoPE scaling, a sliding window, biases Llama's layout
//! lacks, a head size other than width / heads) are refused with the field's name; fields
//! that only matter to training or generation (dropout, token ids, dtype) are ignored.
//! A field that is absent takes the default of transformers' config class, except the
//! sizes, which are required.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The model types [`arch_text`] reads.
pub const MODEL_TYPES: [&str; 3] = ["llama", "mistral", "gpt2"];

/// The `.arch` text of the Hugging Face config `config`, its arch line named `name` (by
/// default after the model family: `Llama`, `Mistral`, `GPT2`).
pub fn arch_text(config: &Value, name: Option<&str>) -> Result<String> {
    let fields = Fields::new(config)?;
    let model_type = fields.model_type()?;
    let decoder = match model_type {
        "llama" | "mistral" => llama(&fields, model_type)?,
        "gpt2" => gpt2(&fields)?,
        other => {
            return Err(refusal(
                format!("`model_type` is \"{other}\", which from-hf does not read"),
                format!(
                    "from-hf reads Llama-family (llama, mistral) and GPT-2 configs; \
                     model_type one of {}",
                    MODEL_TYPES.join(", ")
                ),
            ))
        }
    };
    let name = match name {
        Some(n) => checked_name(n)?,
        None => decoder.family,
    };
    Ok(decoder.render(name))
}

/// A decoder-only transformer as the language writes it.
struct Decoder {
    family: &'static str,
    /// `rms` or `layer`.
    norm: &'static str,
    eps: f64,
    act: &'static str,
    bias: bool,
    /// The declared sequence length T.
    positions: usize,
    vocab: usize,
    width: usize,
    heads: usize,
    kv_heads: usize,
    rope: Option<f64>,
    mlp: usize,
    gated: bool,
    layers: usize,
    learned_positions: bool,
    tied: bool,
}

impl Decoder {
    fn render(&self, name: &str) -> String {
        let bias = if self.bias { "bias" } else { "no bias" };
        let mut attention = format!("attention {} heads", self.heads);
        if self.kv_heads != self.heads {
            attention += &format!(", {} kv heads", self.kv_heads);
        }
        if let Some(theta) = self.rope {
            attention += &format!(", rope {}", number(theta));
        }
        attention += ", causal";
        let gated = if self.gated { " gated" } else { "" };
        let positions = if self.learned_positions {
            ", learned positions"
        } else {
            ""
        };
        // An untied `lm_head` never has a bias, whatever the header says of the linears.
        let tied = match (self.tied, self.bias) {
            (true, _) => ", tied",
            (false, true) => ", no bias",
            (false, false) => "",
        };
        let (t, d, v) = (self.positions, self.width, self.vocab);
        let rows = [
            (
                "embed",
                format!("{t}x{d}"),
                format!("{d}-d token embedding{positions}"),
            ),
            (
                "layers_x",
                format!("{t}x{d}"),
                format!("[{attention}; mlp {}{gated}] x {}", self.mlp, self.layers),
            ),
            ("head", format!("{t}x{v}"), format!("norm, {v}-d fc{tied}")),
        ];
        let size_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0) + 2;
        let mut out = format!(
            "arch {name}\nnorm {}, eps {:e}, act {}, {bias}\ninput {t} tokens, vocab {v}\n\n",
            self.norm, self.eps, self.act
        );
        for (row, size, items) in rows {
            out += &format!("{row:<10}{size:<size_width$}{items}\n");
        }
        out
    }
}

/// A whole number as an integer (`10000`), anything else as Rust writes it.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// `LlamaForCausalLM` and `MistralForCausalLM`: RMS norms, SiLU-gated MLPs, RoPE, no biases.
fn llama(f: &Fields, model_type: &str) -> Result<Decoder> {
    let width = f.count("hidden_size")?;
    let heads = f.count("num_attention_heads")?;
    let kv_heads = f.count_or("num_key_value_heads", heads)?;
    let positions = f.count("max_position_embeddings")?;
    heads_divide(
        width,
        heads,
        kv_heads,
        ("hidden_size", "num_attention_heads"),
    )?;
    if let Some(head_dim) = f.count_if_set("head_dim")? {
        if head_dim != width / heads {
            return Err(refusal(
                format!(
                    "`head_dim` is {head_dim}, not hidden_size / num_attention_heads = {}",
                    width / heads
                ),
                "from-hf reads configs whose head_dim is null or hidden_size / \
                 num_attention_heads"
                    .into(),
            ));
        }
    }
    let act = f.string_or("hidden_act", "silu")?;
    if act != "silu" {
        return Err(refusal(
            format!("`hidden_act` is \"{act}\"; a Llama-family MLP here is SiLU-gated"),
            "from-hf reads Llama configs with hidden_act \"silu\"".into(),
        ));
    }
    f.refuse_if_set(
        "rope_scaling",
        "r2rc's RoPE has no scaling (rope_scaling must be null)",
    )?;
    for field in ["attention_bias", "mlp_bias"] {
        if f.flag_or(field, false)? {
            return Err(refusal(
                format!("`{field}` is true; Llama's layout here has no biases"),
                format!("from-hf reads Llama configs with {field} false"),
            ));
        }
    }
    if model_type == "mistral" {
        if let Some(window) = f.count_if_set("sliding_window")? {
            if window < positions {
                return Err(refusal(
                    format!(
                        "`sliding_window` is {window}, shorter than max_position_embeddings \
                         ({positions}); r2rc's attention sees every earlier token"
                    ),
                    "from-hf reads Mistral configs whose sliding_window is null".into(),
                ));
            }
        }
    }
    Ok(Decoder {
        family: if model_type == "mistral" {
            "Mistral"
        } else {
            "Llama"
        },
        norm: "rms",
        eps: f.float_or("rms_norm_eps", 1e-6)?,
        act: "silu",
        bias: false,
        positions,
        vocab: f.count("vocab_size")?,
        width,
        heads,
        kv_heads,
        rope: Some(f.float_or("rope_theta", 10000.0)?),
        mlp: f.count("intermediate_size")?,
        gated: true,
        layers: f.count("num_hidden_layers")?,
        learned_positions: false,
        tied: f.flag_or("tie_word_embeddings", false)?,
    })
}

/// `GPT2LMHeadModel`: layer norms, GELU MLPs, learned positions, biases, a tied head.
fn gpt2(f: &Fields) -> Result<Decoder> {
    let width = f.count("n_embd")?;
    let heads = f.count("n_head")?;
    heads_divide(width, heads, heads, ("n_embd", "n_head"))?;
    let act = match f.string_or("activation_function", "gelu_new")? {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => "gelu_tanh",
        "gelu" => "gelu",
        other => {
            return Err(refusal(
                format!("`activation_function` is \"{other}\", which from-hf does not read"),
                "GPT-2 configs read here use gelu_new (or gelu_pytorch_tanh, gelu_fast, \
                 gelu)"
                    .into(),
            ))
        }
    };
    // Each of these changes what a block computes; transformers' default is harmless.
    for (field, harmless) in [
        ("scale_attn_weights", true),
        ("scale_attn_by_inverse_layer_idx", false),
        ("add_cross_attention", false),
    ] {
        if f.flag_or(field, harmless)? != harmless {
            return Err(refusal(
                format!("`{field}` is {}", !harmless),
                format!("from-hf reads GPT-2 configs with {field} {harmless}"),
            ));
        }
    }
    Ok(Decoder {
        family: "GPT2",
        norm: "layer",
        eps: f.float_or("layer_norm_epsilon", 1e-5)?,
        act,
        bias: true,
        positions: f.count("n_positions")?,
        vocab: f.count("vocab_size")?,
        width,
        heads,
        kv_heads: heads,
        rope: None,
        mlp: f.count_or("n_inner", 4 * width)?,
        gated: false,
        layers: f.count("n_layer")?,
        learned_positions: true,
        tied: f.flag_or("tie_word_embeddings", true)?,
    })
}

/// Width divides into heads, and query heads into key/value groups.
fn heads_divide(width: usize, heads: usize, kv_heads: usize, names: (&str, &str)) -> Result<()> {
    let (width_field, heads_field) = names;
    if !width.is_multiple_of(heads) {
        return Err(refusal(
            format!("`{width_field}` ({width}) is not a multiple of `{heads_field}` ({heads})"),
            "every head gets width / heads features".into(),
        ));
    }
    if !heads.is_multiple_of(kv_heads) {
        return Err(refusal(
            format!(
                "`{heads_field}` ({heads}) is not a multiple of `num_key_value_heads` \
                 ({kv_heads})"
            ),
            "grouped-query attention shares each key/value head among a whole group".into(),
        ));
    }
    Ok(())
}

/// Whether `name` can stand on an arch line: letters, digits and `_`, not starting with a
/// digit.
pub fn is_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The arch line's name, which must be an identifier.
fn checked_name(name: &str) -> Result<&str> {
    if is_identifier(name) {
        Ok(name)
    } else {
        Err(Error::usage(
            format!("the name `{name}` is not an identifier"),
            Some("use letters, digits and `_`, starting with a letter: `--name TinyLlama`".into()),
        ))
    }
}

fn refusal(message: String, hint: String) -> Error {
    Error::usage(message, Some(hint))
}

/// The config's top-level fields, read with their names in every error.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(config: &'a Value) -> Result<Self> {
        match config {
            Value::Object(map) => Ok(Fields { map }),
            _ => Err(refusal(
                "the config is not a JSON object".into(),
                "pass a Hugging Face model's config.json".into(),
            )),
        }
    }

    /// The field's value, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn model_type(&self) -> Result<&'a str> {
        match self.get("model_type") {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(wrong_type("model_type", "a string", other)),
            None => Err(refusal(
                "the config has no `model_type`".into(),
                format!("from-hf reads model_type {}", MODEL_TYPES.join(", ")),
            )),
        }
    }

    /// A required positive whole number.
    fn count(&self, key: &str) -> Result<usize> {
        self.count_if_set(key)?.ok_or_else(|| missing(key))
    }

    fn count_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.count_if_set(key)?.unwrap_or(default))
    }

    fn count_if_set(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(wrong_type(key, "a positive whole number", v)),
        }
    }

    fn float_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(wrong_type(key, "a positive number", v)),
            },
        }
    }

    fn flag_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(wrong_type(key, "true or false", v)),
        }
    }

    fn string_or(&self, key: &str, default: &'static str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(wrong_type(key, "a string", v)),
        }
    }

    /// Refuses a field that is present and not null.
    fn refuse_if_set(&self, key: &str, hint: &str) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) => Err(refusal(
                format!("`{key}` is set ({v}), which from-hf does not support"),
                hint.into(),
            )),
        }
    }
}

fn missing(key: &str) -> Error {
    refusal(
        format!("the config has no `{key}`"),
        "from-hf needs the model's sizes; pass the model's own config.json".into(),
    )
}

fn wrong_type(key: &str, wanted: &str, got: &Value) -> Error {
    refusal(
        format!("`{key}` is {got}, not {wanted}"),
        "pass the model's own config.json".into(),
    )
}
