//! timm's `VisionTransformer` names and layout: `patch_embed.proj` (the patch conv),
//! `cls_token` `[1, 1, D]` and `pos_embed` `[1, T, D]` (r2rc's `[D]` and `[T, D]` with
//! a batch axis), `blocks.N.attn.qkv` holding q, k and v stacked in nn.Linear's
//! `[out, in]` layout (weight `[3D, D]`, bias `[3D]`), `attn.proj`, `norm1`, `norm2`,
//! `mlp.fc1`, `mlp.fc2`, `norm` and `head`.

use super::layout::{build, in_block, no_place, one_stack, Layout, Target};
use super::Naming;
use crate::error::Result;
use crate::ir::{Graph, Node, Op};

pub const FAMILY: &str = "timm VisionTransformer";

/// The file layout of `graph` under `--names timm`.
pub fn layout(graph: &Graph) -> Result<Layout> {
    one_stack(graph, Naming::Timm, FAMILY)?;
    build(graph, Naming::Timm, FAMILY, |node, suffix| {
        target(node, suffix).ok_or_else(|| no_place(graph, node, Naming::Timm, FAMILY))
    })
}

fn target(node: &Node, suffix: &str) -> Option<Target> {
    let Some((n, rest)) = in_block(node) else {
        return Some(match &node.op {
            Op::Conv2d(_) => Target::plain(format!("patch_embed.proj.{suffix}")),
            Op::ClassToken(c) => Target {
                shape: Some(vec![1, 1, c.dim]),
                ..Target::plain("cls_token".into())
            },
            Op::Positions(p) => Target {
                shape: Some(vec![1, p.tokens, p.dim]),
                ..Target::plain("pos_embed".into())
            },
            Op::Norm(_) => Target::plain(format!("norm.{suffix}")),
            Op::Linear(_) => Target::plain(format!("head.{suffix}")),
            _ => return None,
        });
    };
    let name = |module: &str| format!("blocks.{n}.{module}.{suffix}");
    Some(match rest {
        "attention.norm" => Target::plain(name("norm1")),
        "attention.q" => Target::joined(name("attn.qkv"), 0, 0, 3),
        "attention.k" => Target::joined(name("attn.qkv"), 0, 1, 3),
        "attention.v" => Target::joined(name("attn.qkv"), 0, 2, 3),
        "attention.o" => Target::plain(name("attn.proj")),
        "mlp.norm" => Target::plain(name("norm2")),
        "mlp.fc1" => Target::plain(name("mlp.fc1")),
        "mlp.fc2" => Target::plain(name("mlp.fc2")),
        _ => return None,
    })
}

/// Whether a file's tensor names are a timm ViT's.
pub fn is_timm_file(names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| n.starts_with("blocks.") && n.contains(".attn.qkv."))
        || names.contains(&"cls_token")
}
