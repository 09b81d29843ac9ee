//! Hugging Face transformers' names and layouts: `LlamaForCausalLM` (every tensor as
//! r2rc holds it, renamed) and `GPT2LMHeadModel` (Conv1D's `[in, out]` weights, q, k and v
//! fused in `c_attn`). Which of the two a graph is follows from the graph: RMS norms, a
//! gated MLP and RoPE make a Llama; layer norms, learned positions and causal attention a
//! GPT-2. A tied head has no tensor of its own, so neither stores `lm_head` then.

use super::layout::{build, in_block, no_place, one_stack, Layout, Target};
use super::Naming;
use crate::error::{Error, Result};
use crate::ir::{Graph, Node, NormKind, Op};

/// The model classes `--names hf` reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Gpt2,
}

impl Family {
    pub fn class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Gpt2 => "GPT2LMHeadModel",
        }
    }
}

/// What a graph has that decides its family.
#[derive(Debug, Default)]
struct Traits {
    rms: bool,
    layer_norm: bool,
    gated: bool,
    rope: bool,
    positions: bool,
    causal: bool,
    attention: bool,
}

fn traits(graph: &Graph) -> Traits {
    let mut t = Traits::default();
    for n in graph.g.node_indices() {
        match &graph.g[n].op {
            Op::Norm(x) if x.kind == NormKind::Rms => t.rms = true,
            Op::Norm(_) => t.layer_norm = true,
            Op::Mul => t.gated = true,
            Op::Positions(_) => t.positions = true,
            Op::Attention(a) => {
                t.attention = true;
                t.rope |= a.rope.is_some();
                t.causal |= a.causal;
            }
            _ => {}
        }
    }
    t
}

/// The family of `graph`, or why it is neither.
pub fn family(graph: &Graph) -> Result<Family> {
    let t = traits(graph);
    let llama = t.rms && !t.layer_norm && t.gated && t.rope && !t.positions && t.causal;
    let gpt2 = t.layer_norm && !t.rms && !t.gated && !t.rope && t.positions && t.causal;
    match (llama, gpt2) {
        (true, _) => Ok(Family::Llama),
        (_, true) => Ok(Family::Gpt2),
        _ => {
            let yes_no = |b: bool, what: &str| format!("{}{what}", if b { "" } else { "no " });
            Err(Error::usage(
                format!(
                    "network `{}` is neither of --names hf's layouts: it has {}, {}, {}, {}, {}",
                    graph.name,
                    match (t.rms, t.layer_norm) {
                        (true, true) => "RMS and layer norms".to_string(),
                        (true, false) => "RMS norms".into(),
                        (false, true) => "layer norms".into(),
                        (false, false) => "no norms".into(),
                    },
                    yes_no(t.gated, "gated MLP"),
                    yes_no(t.rope, "RoPE"),
                    yes_no(t.positions, "learned positions"),
                    yes_no(t.causal, "causal attention"),
                ),
                Some(
                    "LlamaForCausalLM is RMS norms, gated MLPs, RoPE and causal attention; \
                     GPT2LMHeadModel is layer norms, plain MLPs, learned positions and causal \
                     attention (`r2rc from-hf config.json` writes either); other networks' \
                     weights are written with --names r2rc"
                        .into(),
                ),
            ))
        }
    }
}

/// The file layout of `graph` under `--names hf`.
pub fn layout(graph: &Graph) -> Result<Layout> {
    let fam = family(graph)?;
    one_stack(graph, Naming::Hf, fam.class())?;
    let refuse = |node: &Node| no_place(graph, node, Naming::Hf, fam.class());
    build(graph, Naming::Hf, fam.class(), |node, suffix| {
        let t = match fam {
            Family::Llama => llama(node, suffix),
            Family::Gpt2 => gpt2(node, suffix),
        };
        t.ok_or_else(|| refuse(node))
    })
}

fn llama(node: &Node, suffix: &str) -> Option<Target> {
    let module = match in_block(node) {
        None => match node.op {
            Op::Embedding(_) => "model.embed_tokens".to_string(),
            Op::Norm(_) => "model.norm".into(),
            Op::Linear(_) => "lm_head".into(),
            _ => return None,
        },
        Some((n, rest)) => {
            let inside = match rest {
                "attention.norm" => "input_layernorm",
                "attention.q" => "self_attn.q_proj",
                "attention.k" => "self_attn.k_proj",
                "attention.v" => "self_attn.v_proj",
                "attention.o" => "self_attn.o_proj",
                "mlp.norm" => "post_attention_layernorm",
                "mlp.gate" => "mlp.gate_proj",
                "mlp.up" => "mlp.up_proj",
                "mlp.down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{n}.{inside}")
        }
    };
    Some(Target::plain(format!("{module}.{suffix}")))
}

fn gpt2(node: &Node, suffix: &str) -> Option<Target> {
    let Some((n, rest)) = in_block(node) else {
        let module = match node.op {
            Op::Embedding(_) => "transformer.wte",
            Op::Positions(_) => "transformer.wpe",
            Op::Norm(_) => "transformer.ln_f",
            Op::Linear(_) => "lm_head",
            _ => return None,
        };
        return Some(Target::plain(format!("{module}.{suffix}")));
    };
    let name = |module: &str| format!("transformer.h.{n}.{module}.{suffix}");
    // Conv1D keeps its weight as [in, out]; its bias is as nn.Linear's.
    let conv1d = |module: &str| Target {
        transpose: suffix == "weight",
        ..Target::plain(name(module))
    };
    Some(match rest {
        "attention.norm" => Target::plain(name("ln_1")),
        "mlp.norm" => Target::plain(name("ln_2")),
        "attention.q" | "attention.k" | "attention.v" => {
            let index = ["attention.q", "attention.k", "attention.v"]
                .iter()
                .position(|r| *r == rest)
                .expect("matched");
            let weight = suffix == "weight";
            Target {
                transpose: weight,
                ..Target::joined(name("attn.c_attn"), usize::from(weight), index, 3)
            }
        }
        "attention.o" => conv1d("attn.c_proj"),
        "mlp.fc1" => conv1d("mlp.c_fc"),
        "mlp.fc2" => conv1d("mlp.c_proj"),
        _ => return None,
    })
}

/// The family a file's tensor names (a wrapper prefix stripped) belong to, by the names
/// only one of them has.
pub fn file_family(names: &[&str]) -> Option<Family> {
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    if has("transformer.h.") || has("transformer.wte.") {
        Some(Family::Gpt2)
    } else if has("model.layers.") || has("model.embed_tokens.") {
        Some(Family::Llama)
    } else {
        None
    }
}
