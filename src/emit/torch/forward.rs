//! The body of `forward`: parameter-free ops as functional calls, layers through their
//! modules, with the eval-mode semantics of r2rc's executor.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use crate::error::Result;
use crate::ir::{Activation, Graph, NodeIndex, Op};

use super::{is_identifier, py_float, py_pair, unsupported, FILE_NAMES};

/// The body of `forward`: the running value lives in `x`; a value that a later op still
/// needs is kept in a variable named after its layer before `x` moves on.
pub(super) fn forward_lines(
    graph: &Graph,
    module_of: &BTreeMap<NodeIndex, String>,
) -> Result<String> {
    let order = graph.order();
    let mut pending: BTreeMap<NodeIndex, usize> = BTreeMap::new();
    for &n in &order {
        for i in graph.inputs(n) {
            *pending.entry(i).or_default() += 1;
        }
    }
    let mut saved: BTreeMap<NodeIndex, String> = BTreeMap::new();
    let mut used: HashSet<String> = FILE_NAMES.iter().map(|s| s.to_string()).collect();
    let mut current = graph.input;
    let mut out = String::new();
    for &n in &order {
        if n == graph.input {
            continue;
        }
        let inputs = graph.inputs(n);
        let args: Vec<String> = inputs
            .iter()
            .map(|i| {
                if *i == current {
                    Ok("x".to_string())
                } else {
                    saved.get(i).cloned().ok_or_else(|| {
                        unsupported(format!(
                            "`{}` reads a value that is no longer available",
                            graph.g[n].name
                        ))
                    })
                }
            })
            .collect::<Result<_>>()?;
        for i in &inputs {
            if let Some(p) = pending.get_mut(i) {
                *p -= 1;
            }
        }
        // `x` is about to be overwritten: keep it if a later op reads it.
        if pending.get(&current).copied().unwrap_or(0) > 0 && !saved.contains_key(&current) {
            let var = variable(&graph.g[current].name, &mut used);
            writeln!(out, "        {var} = x").unwrap();
            saved.insert(current, var);
        }
        let (expr, comment) = expression(graph, n, &args, module_of)?;
        let name = &graph.g[n].name;
        match comment {
            true => writeln!(out, "        x = {expr}  # {name}").unwrap(),
            false => writeln!(out, "        x = {expr}").unwrap(),
        }
        current = n;
    }
    let result = if graph.output == current {
        "x".to_string()
    } else {
        saved
            .get(&graph.output)
            .cloned()
            .ok_or_else(|| unsupported("the output is not computed".into()))?
    };
    writeln!(out, "        return {result}").unwrap();
    Ok(out)
}

/// A fresh Python variable named after a layer (`conv2_1.act` -> `conv2_1_act`).
fn variable(name: &str, used: &mut HashSet<String>) -> String {
    let mut base: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !is_identifier(&base) {
        base = format!("v_{base}");
    }
    let mut v = base.clone();
    let mut k = 2;
    while used.contains(&v) {
        v = format!("{base}_{k}");
        k += 1;
    }
    used.insert(v.clone());
    v
}

/// The Python expression computing node `n` from `args`, and whether the line should
/// carry the layer's name as a comment (module calls already show it).
fn expression(
    graph: &Graph,
    n: NodeIndex,
    args: &[String],
    module_of: &BTreeMap<NodeIndex, String>,
) -> Result<(String, bool)> {
    let node = &graph.g[n];
    let a = args.first().cloned().unwrap_or_default();
    let call = || -> Result<(String, bool)> {
        let m = module_of
            .get(&n)
            .ok_or_else(|| unsupported(format!("layer `{}` has no module", node.name)))?;
        Ok((format!("{m}({a})"), false))
    };
    Ok(match &node.op {
        Op::Input => {
            return Err(unsupported(format!(
                "`{}` is a second input; the module takes one",
                node.name
            )))
        }
        Op::Conv2d(_) | Op::BatchNorm(_) | Op::Linear(_) => call()?,
        Op::Embedding(_) | Op::Positions(_) | Op::ClassToken(_) | Op::Norm(_) => call()?,
        Op::Attention(at) => (
            format!(
                "attention({}, heads={}, kv_heads={}, head_dim={}, theta={}, causal={})",
                args.join(", "),
                at.heads,
                at.kv_heads,
                at.head_dim,
                at.rope.map_or("None".into(), py_float),
                if at.causal { "True" } else { "False" }
            ),
            true,
        ),
        Op::Mul => (args.join(" * "), true),
        Op::ToTokens => (format!("{a}.flatten(2).transpose(1, 2)"), true),
        Op::ClassPool => (format!("{a}[:, 0]"), true),
        Op::TiedLinear(_) => {
            let emb = graph
                .embedding()
                .and_then(|e| module_of.get(&e))
                .ok_or_else(|| {
                    unsupported(format!(
                        "`{}`: a tied head needs a token embedding",
                        node.name
                    ))
                })?;
            (format!("F.linear({a}, {emb}.weight)"), true)
        }
        Op::Activation(act) => match act {
            Activation::Prelu { .. } => call()?,
            Activation::Relu => (format!("F.relu({a})"), true),
            Activation::LeakyRelu { slope } => (
                format!("F.leaky_relu({a}, negative_slope={})", py_float(*slope)),
                true,
            ),
            Activation::Tanh => (format!("torch.tanh({a})"), true),
            Activation::Sigmoid => (format!("torch.sigmoid({a})"), true),
            Activation::Gelu => (format!("F.gelu({a})"), true),
            Activation::GeluTanh => (format!("F.gelu({a}, approximate='tanh')"), true),
            Activation::Silu => (format!("F.silu({a})"), true),
            Activation::Identity => (a, true),
        },
        Op::MaxPool(p) => (
            format!(
                "F.max_pool2d({a}, {}, stride={}, padding={})",
                py_pair(p.kernel),
                p.stride,
                p.padding
            ),
            true,
        ),
        Op::AvgPool(p) => (
            format!(
                "F.avg_pool2d({a}, {}, stride={}, padding={}, count_include_pad=True)",
                py_pair(p.kernel),
                p.stride,
                p.padding
            ),
            true,
        ),
        Op::GlobalAvgPool => (format!("F.adaptive_avg_pool2d({a}, 1)"), true),
        Op::Flatten => (format!("torch.flatten({a}, 1)"), true),
        Op::Add => (args.join(" + "), true),
        Op::Concat => (format!("torch.cat([{}], 1)", args.join(", ")), true),
        // Over the features: dim 1 of a vector batch, the last of a sequence's.
        Op::Softmax if node.shape.len() == 1 => (format!("F.softmax({a}, dim=1)"), true),
        Op::Softmax => (format!("F.softmax({a}, dim=-1)"), true),
        Op::ShortcutPad(p) => {
            let c = graph.inputs(n).first().map(|&i| graph.g[i].shape[0]);
            let c = c.unwrap_or(p.out_channels);
            let mut e = a;
            if p.stride > 1 {
                e = format!("{e}[:, :, ::{s}, ::{s}]", s = p.stride);
            }
            if p.out_channels > c {
                // Zero channels go after the existing ones (the last pair pads dim 1).
                e = format!("F.pad({e}, (0, 0, 0, 0, 0, {}))", p.out_channels - c);
            }
            (e, true)
        }
    })
}
