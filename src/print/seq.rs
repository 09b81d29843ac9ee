//! Printing transformer rows: a block's sublayers read back from its nodes, and the
//! items of embedding and head rows.

use std::fmt::Write;

use crate::ir::*;

/// Whether these nodes of one block are a transformer layer (its sublayers have norms).
pub(super) fn is_transformer_block(graph: &Graph, nodes: &[NodeIndex]) -> bool {
    nodes
        .iter()
        .any(|n| matches!(graph.g[*n].op, Op::Norm(_) | Op::Attention(_)))
}

/// `[attention 12 heads, causal; mlp 3072]` for one transformer layer: attention cores and
/// MLP activations appear in sublayer order.
pub(super) fn block_text(graph: &Graph, nodes: &[NodeIndex]) -> String {
    let d = &graph.defaults;
    let mut subs = Vec::new();
    for &n in nodes {
        match &graph.g[n].op {
            Op::Attention(a) => {
                let q = graph.inputs(n)[0];
                let (width, bias) = match &graph.g[q].op {
                    Op::Linear(l) => (l.in_features, l.bias),
                    _ => (a.heads * a.head_dim, d.bias),
                };
                let mut s = format!("attention {} heads", a.heads);
                if a.kv_heads != a.heads {
                    write!(s, ", {} kv heads", a.kv_heads).unwrap();
                }
                if width % a.heads != 0 || width / a.heads != a.head_dim {
                    write!(s, ", head dim {}", a.head_dim).unwrap();
                }
                if let Some(theta) = a.rope {
                    write!(s, ", rope {theta}").unwrap();
                }
                if a.causal {
                    s.push_str(", causal");
                }
                push_bias(&mut s, bias, d.bias);
                subs.push(s);
            }
            Op::Activation(act) => {
                let fc1 = graph.inputs(n)[0];
                let (width, bias) = match &graph.g[fc1].op {
                    Op::Linear(l) => (l.out_features, l.bias),
                    _ => (graph.g[n].shape[1], d.bias),
                };
                let gated = graph
                    .consumers(n)
                    .iter()
                    .any(|c| matches!(graph.g[*c].op, Op::Mul));
                let mut s = format!("mlp {width}");
                if gated {
                    s.push_str(" gated");
                }
                if *act != d.act {
                    write!(s, ", act {}", super::act_text(act)).unwrap();
                }
                push_bias(&mut s, bias, d.bias);
                subs.push(s);
            }
            _ => {}
        }
    }
    format!("[{}]", subs.join("; "))
}

fn push_bias(s: &mut String, bias: bool, default: bool) {
    if bias != default {
        s.push_str(if bias { ", bias" } else { ", no bias" });
    }
}

/// The text of a transformer row item starting at a node that is none of the classic
/// items, or None for a node printed as part of another (tokens from a feature map).
pub(super) fn item_text(op: &Op) -> Option<String> {
    Some(match op {
        Op::Embedding(e) => format!("{}-d token embedding", e.dim),
        Op::Positions(_) => "learned positions".into(),
        Op::ClassToken(_) | Op::ClassPool => "class token".into(),
        Op::Norm(_) => "norm".into(),
        Op::TiedLinear(l) => format!("{}-d fc, tied", l.vocab),
        Op::ToTokens => return None,
        op => format!("# cannot print {}", op.kind_name()),
    })
}

/// The header lines of transformer files that differ from the defaults.
pub(super) fn headers(d: &Defaults, out: &mut String) {
    if d.seq_norm != NormKind::Layer {
        writeln!(out, "norm {}", d.seq_norm.keyword()).unwrap();
    }
    if !d.bias {
        out.push_str("no bias\n");
    }
    if d.postnorm {
        out.push_str("postnorm\n");
    }
}
