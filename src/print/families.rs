//! Printing what `preact` and DenseNet add: pre-activated layers read back (their norm and
//! activation come before the conv), transitions, and the final BN-act that `preact`
//! implies before the head.

use super::LayerSpec;
use crate::ir::*;

/// The layers of a pre-activated block's branch, in order: each conv takes the batch
/// norm and activation written before it.
pub(super) fn preact_layers(graph: &Graph, chain: &[NodeIndex]) -> Vec<LayerSpec> {
    let mut layers = Vec::new();
    let (mut norm, mut act) = (false, None);
    for &n in chain {
        match &graph.g[n].op {
            Op::BatchNorm(_) => norm = true,
            Op::Activation(a) => act = Some(a.clone()),
            Op::Conv2d(c) => {
                let mut l = LayerSpec::from_conv(c);
                l.norm = std::mem::take(&mut norm);
                l.act = act.take();
                layers.push(l);
            }
            _ => {}
        }
    }
    layers
}

/// At the start of `nodes` (outside blocks): a transition, a pre-activated conv item or
/// the implied BN-act of `preact`; how many nodes it spans and its text (none for the
/// implied BN-act).
pub(super) fn pre_activated_item(
    graph: &Graph,
    nodes: &[NodeIndex],
) -> Option<(usize, Vec<String>)> {
    if let Some(t) = transition(graph, nodes) {
        return Some(t);
    }
    let d = &graph.defaults;
    let node = |k: usize| nodes.get(k).map(|n| &graph.g[*n]);
    if !d.preact || !matches!(node(0)?.op, Op::BatchNorm(_) | Op::Activation(_)) {
        return None;
    }
    let k = (0..nodes.len())
        .take_while(|&k| {
            matches!(
                node(k).map(|n| &n.op),
                Some(Op::BatchNorm(_) | Op::Activation(_))
            )
        })
        .count()
        .min(2);
    // Whether the k nodes are `PREFIX.bnN`, `PREFIX.actN`.
    let named = |prefix: &str, number: &str| {
        (0..k).all(|j| {
            let n = node(j).expect("within k");
            let suffix = match n.op {
                Op::BatchNorm(_) => "bn",
                _ => "act",
            };
            n.name == format!("{prefix}.{suffix}{number}")
        })
    };
    if let Some(conv) = node(k).filter(|n| named(&n.name, "")) {
        if let Op::Conv2d(c) = &conv.op {
            let mut l = LayerSpec::from_conv(c);
            for j in 0..k {
                match &node(j).expect("within k").op {
                    Op::BatchNorm(_) => l.norm = true,
                    Op::Activation(a) => l.act = Some(a.clone()),
                    _ => {}
                }
            }
            return Some((k + 1, vec![l.text(d, true, false)]));
        }
    }
    // The BN-act `preact` puts before an item that is not pre-activated: `ROW.bn`, or
    // `ROW.bn2` and on for a row's second and later ones.
    let (row, first) = (&node(0)?.row, &node(0)?.name);
    let number = ["bn", "act"]
        .iter()
        .find_map(|s| first.strip_prefix(&format!("{row}.{s}")))?;
    let numbered = number.is_empty()
        || number
            .parse::<usize>()
            .is_ok_and(|n| n >= 2 && n.to_string() == number);
    (numbered && named(row, number)).then(|| (k, vec![]))
}

/// `transition THETA` at the start of `nodes`: `P.bn`, `P.act`, `P.conv` (1x1, no BN of
/// its own) in the network's order, then `P.pool` (2x2 average, stride 2).
fn transition(graph: &Graph, nodes: &[NodeIndex]) -> Option<(usize, Vec<String>)> {
    let d = &graph.defaults;
    let parts = 2 + usize::from(d.norm) + 1;
    let seq: Vec<&Node> = nodes.iter().take(parts).map(|n| &graph.g[*n]).collect();
    if seq.len() < parts {
        return None;
    }
    let conv_at = if d.preact { parts - 2 } else { 0 };
    let Op::Conv2d(c) = &seq[conv_at].op else {
        return None;
    };
    let prefix = seq[conv_at].name.strip_suffix(".conv")?;
    let plain = c.kernel == [1, 1]
        && c.stride == 1
        && c.padding == 0
        && c.dilation == 1
        && c.groups == 1
        && c.bias != d.norm;
    let pool = Pool {
        kernel: [2, 2],
        stride: 2,
        padding: 0,
    };
    let last = seq[parts - 1];
    if !plain || last.op != Op::AvgPool(pool) || last.name != format!("{prefix}.pool") {
        return None;
    }
    // The norm and activation, in order, without the conv.
    let around: Vec<&Node> = seq[..parts - 1]
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != conv_at)
        .map(|(_, n)| *n)
        .collect();
    let mut want = Vec::new();
    if d.norm {
        want.push((format!("{prefix}.bn"), None));
    }
    want.push((format!("{prefix}.act"), Some(d.act.clone())));
    let fits = around.iter().zip(&want).all(|(n, (name, act))| {
        n.name == *name
            && match (&n.op, act) {
                (Op::BatchNorm(_), None) => true,
                (Op::Activation(a), Some(b)) => super::same_act(a, b),
                _ => false,
            }
    });
    if !fits {
        return None;
    }
    let input = graph
        .inputs(nodes[0])
        .first()
        .map(|&i| graph.g[i].shape[0])?;
    Some((
        parts,
        vec![format!("transition {}", compression(c.out_channels, input))],
    ))
}

/// A compression that floors `width / channels` of `channels` back to `width`: the
/// decimal when it is short, else the fraction.
fn compression(width: usize, channels: usize) -> String {
    let v = width as f64 / channels as f64;
    let s = format!("{v}");
    if s.len() <= 6 {
        s
    } else {
        format!("{width}/{channels}")
    }
}
