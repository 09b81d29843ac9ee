//! The nodes a method inserts, built as lowering builds a block or a row item, and their
//! starting tensors.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use rand_chacha::ChaCha8Rng;

use crate::ir::{Activation, BatchNorm, Conv2d, Graph, Op, ParamKind};

use super::{NewNode, Src};

/// A layer of a block as lowering builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub kernel: usize,
    pub padding: usize,
    pub dilation: usize,
    pub width: usize,
    /// ResNeXt's cardinality: the conv's groups (1 for a plain conv).
    pub groups: usize,
    pub norm: bool,
    pub bias: bool,
    pub act: Option<Activation>,
}

impl LayerSpec {
    /// A `k x k` layer of `width` channels with the file's defaults (same padding).
    pub fn plain(graph: &Graph, kernel: usize, width: usize, act: bool) -> LayerSpec {
        LayerSpec {
            kernel,
            padding: (kernel - 1) / 2,
            dilation: 1,
            width,
            groups: 1,
            norm: graph.defaults.norm,
            bias: !graph.defaults.norm,
            act: act.then(|| graph.defaults.act.clone()),
        }
    }
}

/// How a block's layers are ordered: conv-BN-act, or BN-act-conv (`preact`, where a
/// block has no activation after its add).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    ConvFirst,
    Preact,
}

impl Order {
    /// The order of a block inserted at `site` of `graph`: the network's, except inside a
    /// pre-activated block's branch, where the new layer goes after the next layer's
    /// BN-act (see `site.rs`) and so is conv-BN-act there.
    pub fn at(graph: &Graph, site: &super::Site) -> Order {
        if graph.defaults.preact && !site.inside {
            Order::Preact
        } else {
            Order::ConvFirst
        }
    }
}

/// Nodes of a block in lowering's order: per layer conv, BN, activation (BN, activation,
/// conv under [`Order::Preact`], the BN over the layer's input); then the add (port 0
/// branch, port 1 the block input) when `residual`, and the post activation, which a
/// pre-activated block has not: there a block without shortcut starts with it instead,
/// when its first layer has no activation of its own.
pub fn block_nodes(
    c_in: usize,
    layers: &[LayerSpec],
    residual: bool,
    eps: f64,
    post: &Activation,
    order: Order,
) -> Vec<NewNode> {
    let mut nodes: Vec<NewNode> = Vec::new();
    let mut cur = Src::Site;
    let mut c = c_in;
    let push = |nodes: &mut Vec<NewNode>, key: String, op: Op, inputs: Vec<Src>| -> Src {
        nodes.push(NewNode { key, op, inputs });
        Src::New(nodes.len() - 1)
    };
    let preact = order == Order::Preact;
    for (i, l) in layers.iter().enumerate() {
        let n = i + 1;
        let conv = Op::Conv2d(Conv2d {
            in_channels: c,
            out_channels: l.width,
            kernel: [l.kernel, l.kernel],
            stride: 1,
            padding: l.padding,
            dilation: l.dilation,
            groups: l.groups,
            bias: l.bias,
        });
        let act = match &l.act {
            None if preact && !residual && i == 0 => Some(post.clone()),
            a => a.clone(),
        };
        // The channels the BN and activation see: the layer's input under `preact`.
        let norm_c = if preact { c } else { l.width };
        if !preact {
            cur = push(&mut nodes, format!("conv{n}"), conv.clone(), vec![cur]);
        }
        if l.norm {
            let bn = Op::BatchNorm(BatchNorm {
                channels: norm_c,
                eps,
            });
            cur = push(&mut nodes, format!("bn{n}"), bn, vec![cur]);
        }
        if let Some(a) = &act {
            let a = with_channels(a, norm_c);
            cur = push(&mut nodes, format!("act{n}"), Op::Activation(a), vec![cur]);
        }
        if preact {
            cur = push(&mut nodes, format!("conv{n}"), conv, vec![cur]);
        }
        c = l.width;
    }
    if residual {
        cur = push(&mut nodes, "add".into(), Op::Add, vec![cur, Src::Site]);
    }
    if !preact {
        push(
            &mut nodes,
            "act".into(),
            Op::Activation(with_channels(post, c)),
            vec![cur],
        );
    }
    nodes
}

/// Nodes of a plain row item: conv, BN, activation (lowering's `X`, `X.bn`, `X.act`).
pub fn item_nodes(c_in: usize, l: &LayerSpec, eps: f64) -> Vec<NewNode> {
    let mut nodes = block_nodes(
        c_in,
        std::slice::from_ref(l),
        false,
        eps,
        &Activation::Identity,
        Order::ConvFirst,
    );
    nodes.pop(); // an item has no post activation
    for n in &mut nodes {
        n.key = n.key.trim_end_matches('1').to_string();
    }
    nodes
}

fn with_channels(a: &Activation, channels: usize) -> Activation {
    match a {
        Activation::Prelu { .. } => Activation::Prelu { channels },
        a => a.clone(),
    }
}

/// Default tensors for every slot of the new nodes: weights and biases zero, BN gamma 1,
/// beta 0, mean 0, var 1, PReLU 0.25. Methods overwrite what they set.
pub fn default_params(nodes: &[NewNode]) -> BTreeMap<String, ArrayD<f64>> {
    let mut out = BTreeMap::new();
    for n in nodes {
        for slot in n.op.param_slots() {
            let t = match slot.kind {
                ParamKind::BnWeight | ParamKind::RunningVar | ParamKind::PreluWeight => {
                    let v = if slot.kind == ParamKind::PreluWeight {
                        0.25
                    } else {
                        1.0
                    };
                    ArrayD::from_elem(IxDyn(&slot.shape), v)
                }
                _ => ArrayD::zeros(IxDyn(&slot.shape)),
            };
            out.insert(format!("{}.{}", n.key, slot.suffix), t);
        }
    }
    out
}

/// Uniform weights with standard deviation `s`: U(-s*sqrt(3), s*sqrt(3)) (paper section 6).
pub fn uniform_like(rng: &mut ChaCha8Rng, shape: &[usize], s: f64) -> ArrayD<f64> {
    let b = s * 3f64.sqrt();
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| crate::transform::uniform(rng, -b, b))
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape")
}

/// An identity convolution: each channel's own kernel has its centre tap at 1.
pub fn identity_kernel(c: usize, k: usize) -> ArrayD<f64> {
    let mut w = ArrayD::zeros(IxDyn(&[c, c, k, k]));
    for i in 0..c {
        w[[i, i, k / 2, k / 2]] = 1.0;
    }
    w
}
