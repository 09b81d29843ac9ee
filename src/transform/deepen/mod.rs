//! Deepening: inserting layers after a block or a row, shared by every deepening method.
//!
//! A method ([`super::r2r_deeper`], [`super::net2net_deeper`], [`super::netmorph_deeper`],
//! [`super::random_deeper`]) only says *what* to insert: an [`Insertion`], the new nodes in
//! the order lowering would create them, their tensors, and (NetMorph-dense) a channel mix
//! its readers must absorb. This file does the rest, the same way for all of them:
//!
//! 1. resolve `--after` to a [`Site`] (a block, or a row);
//! 2. rebuild the graph in lowering's node order with the new nodes right after the site;
//!    a new block takes the number after the site's and later blocks of the row move up;
//!    after a single-layer row the new layers get a row of their own;
//! 3. name every node as the same network written from scratch would be named, by printing
//!    the student and lowering the text again (so the names are lowering's by construction),
//!    and record every rename in a name map;
//! 4. move every existing tensor to its layer's new name unchanged (bit-identical).
//!
//! Proofs compare teacher and student value by value, so the teacher is first renamed with
//! the name map ([`rename`]); [`prove`] does both.

use std::collections::{BTreeMap, HashSet};

use ndarray::{Array2, ArrayD, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::analysis::sign;
use crate::error::{Error, Result};

use crate::ir::{Activation, BatchNorm, Conv2d, Graph, NodeIndex, Op, ParamKind};
use crate::params::Params;

use super::{net2net_deeper, netmorph_deeper, r2r_deeper, random_deeper};

/// A deepening method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeepenMethod {
    /// R2DeeperR: a residual block whose branch is exactly zero.
    R2r,
    /// Net2DeeperNet: identity conv + identity BN (eval) + ReLU.
    Net2net,
    /// NetMorph: identity conv + PReLU with slope 1.
    Netmorph,
    /// NetMorph, dense: a random orthogonal 1x1 conv N, readers multiplied by N^T.
    NetmorphDense,
    /// A randomly initialised residual block: the baseline, not function preserving.
    Random,
}

impl DeepenMethod {
    pub fn parse(s: &str) -> Result<DeepenMethod> {
        match s {
            "r2r" => Ok(DeepenMethod::R2r),
            "net2net" => Ok(DeepenMethod::Net2net),
            "netmorph" => Ok(DeepenMethod::Netmorph),
            "netmorph-dense" => Ok(DeepenMethod::NetmorphDense),
            "random" => Ok(DeepenMethod::Random),
            _ => Err(Error::usage(
                format!("unknown deepening method `{s}`"),
                Some("use r2r, net2net, netmorph, netmorph-dense or random".into()),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeepenMethod::R2r => "r2r",
            DeepenMethod::Net2net => "net2net",
            DeepenMethod::Netmorph => "netmorph",
            DeepenMethod::NetmorphDense => "netmorph-dense",
            DeepenMethod::Random => "random",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            DeepenMethod::R2r => "R2DeeperR",
            DeepenMethod::Net2net => "Net2DeeperNet",
            DeepenMethod::Netmorph => "NetMorph",
            DeepenMethod::NetmorphDense => "NetMorph (dense)",
            DeepenMethod::Random => "random block",
        }
    }
}

pub use super::Exactness;

/// A deepening request.
#[derive(Debug, Clone, Serialize)]
pub struct DeepenArgs {
    /// A block (`conv2_1`) or a row (`conv1`, `conv2_x`).
    pub after: String,
    pub method: DeepenMethod,
    /// R2DeeperR and random: the inserted block's hidden width.
    pub width: Option<usize>,
}

/// Where new layers go.
#[derive(Debug, Clone)]
pub struct Site {
    /// What the user named.
    pub label: String,
    /// The value the new layers read (the block's or row's output).
    pub value: NodeIndex,
    pub row: String,
    /// The block number when the site is a block; new layers then join its row.
    pub block: Option<usize>,
    /// `[C, H, W]` of the value.
    pub shape: Vec<usize>,
}

impl Site {
    pub fn channels(&self) -> usize {
        self.shape[0]
    }
}

/// A layer of a block as lowering builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub kernel: usize,
    pub padding: usize,
    pub dilation: usize,
    pub width: usize,
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
            norm: graph.defaults.norm,
            bias: !graph.defaults.norm,
            act: act.then(|| graph.defaults.act.clone()),
        }
    }
}

/// What a method knows about the site.
pub struct SiteInfo<'a> {
    pub graph: &'a Graph,
    pub params: &'a Params,
    pub site: Site,
    /// The sign analysis proves the site value non-negative.
    pub non_negative: bool,
    /// Why it may be negative, for refusals.
    pub why_negative: String,
    /// Standard deviation of the previous block's last kernel (paper section 6).
    pub scale: f64,
    /// The site block's branch layers, when the site is a block.
    pub template: Vec<LayerSpec>,
}

/// Where a new node reads from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Src {
    /// The site value.
    Site,
    /// The i-th new node.
    New(usize),
}

/// A node to insert; `key` names it locally (`conv1`, `bn1`, `add`) until lowering names it.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub key: String,
    pub op: Op,
    pub inputs: Vec<Src>,
}

/// Whether new nodes form a residual block (numbered in its row) or a plain row item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Block,
    Item,
}

/// What a method inserts.
#[derive(Debug, Clone)]
pub struct Insertion {
    pub form: Form,
    /// In lowering's order; the last one is the new output of the site.
    pub nodes: Vec<NewNode>,
    /// Tensors of the new nodes by `key.suffix`.
    pub params: BTreeMap<String, ArrayD<f64>>,
    /// NetMorph-dense: the orthogonal mix N; readers of the new output get weights W N^T.
    pub mix: Option<Array2<f64>>,
    pub exactness: Exactness,
    pub notes: Vec<String>,
}

/// The student of a deepening.
#[derive(Debug, Clone)]
pub struct Deepened {
    pub graph: Graph,
    pub params: Params,
    /// Every layer whose name changed: old name -> new name.
    pub name_map: BTreeMap<String, String>,
    /// Names of the inserted layers.
    pub inserted: Vec<String>,
    /// Existing layers whose weights changed (NetMorph-dense readers).
    pub changed: Vec<String>,
    /// Existing values that hold the mixed channels `N x` by design (NetMorph-dense: the
    /// flatten or global pool between N and its fc reader); proofs compare the readers'
    /// outputs instead.
    pub mixed: Vec<String>,
    pub exactness: Exactness,
    pub notes: Vec<String>,
    /// `after conv2_2 (new block conv2_3)`.
    pub site: String,
}

fn usage(msg: String, hint: Option<String>) -> Error {
    Error::usage(msg, hint)
}

/// The block name (`conv2_1`) of a node inside a block.
fn block_of(graph: &Graph, n: NodeIndex) -> Option<String> {
    graph.g[n].block?;
    graph.g[n].name.split_once('.').map(|(b, _)| b.to_string())
}

/// Resolves `--after NAME` to a site.
pub fn resolve_site(graph: &Graph, name: &str) -> Result<Site> {
    let order: Vec<NodeIndex> = graph
        .order()
        .into_iter()
        .filter(|&n| n != graph.input)
        .collect();
    let site = |value: NodeIndex| -> Site {
        let node = &graph.g[value];
        Site {
            label: name.to_string(),
            value,
            row: node.row.clone(),
            block: node.block,
            shape: node.shape.clone(),
        }
    };
    let found = if let Some(&last) = order.iter().rev().find(|&&n| graph.g[n].row == name) {
        // A row: its output; when the row ends with a block, that block.
        Some(site(last))
    } else if let Some(&last) = order
        .iter()
        .rev()
        .find(|&&n| block_of(graph, n).as_deref() == Some(name))
    {
        Some(site(last))
    } else {
        None
    };
    let Some(s) = found else {
        if let Some(n) = graph.find(name) {
            let node = &graph.g[n];
            let hint = match block_of(graph, n) {
                Some(b) => format!("to insert after its block, use --after {b}"),
                None => format!("to insert after its row, use --after {}", node.row),
            };
            return Err(usage(
                format!(
                    "`{name}` is a layer inside {}; deepening inserts after a block (like `conv2_1`) or a row (like `conv1`)",
                    block_of(graph, n).map_or(format!("row `{}`", node.row), |b| format!("block `{b}`"))
                ),
                Some(hint),
            ));
        }
        let names = super::target_names(graph);
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let hint = match crate::lower::closest(name, &refs) {
            Some(c) => format!("did you mean `{c}`?"),
            None => "`r2rc check FILE` lists every layer; blocks are named like `conv2_1`".into(),
        };
        return Err(usage(
            format!(
                "network `{}` has no block or row named `{name}`",
                graph.name
            ),
            Some(hint),
        ));
    };
    if s.shape.len() != 3 {
        return Err(usage(
            format!(
                "cannot deepen after `{name}`: deepening inserts convolutions, which need a CxHxW feature map, but `{}` outputs a vector of {}",
                graph.g[s.value].name, s.shape[0]
            ),
            Some("choose a block or row before the flatten / fc layers".into()),
        ));
    }
    Ok(s)
}

/// The branch layers of block `b` (`conv2_1`): `b.conv1`, `b.bn1`, `b.act1`, ...
fn block_template(graph: &Graph, b: &str) -> Vec<LayerSpec> {
    let mut layers = Vec::new();
    for i in 1.. {
        let Some(c) = graph.find(&format!("{b}.conv{i}")) else {
            break;
        };
        let Op::Conv2d(conv) = &graph.g[c].op else {
            break;
        };
        let act = graph
            .find(&format!("{b}.act{i}"))
            .and_then(|a| match &graph.g[a].op {
                Op::Activation(a) => Some(a.clone()),
                _ => None,
            });
        layers.push(LayerSpec {
            kernel: conv.kernel[0],
            padding: conv.padding,
            dilation: conv.dilation,
            width: conv.out_channels,
            norm: graph.find(&format!("{b}.bn{i}")).is_some(),
            bias: conv.bias,
            act,
        });
    }
    layers
}

/// The conv whose weights' scale new weights match: the site block's last branch conv, or
/// else the last conv before the site.
fn scale_kernel(graph: &Graph, site: &Site) -> Option<NodeIndex> {
    let block = site.block.and_then(|_| block_of(graph, site.value));
    let template_len = block
        .as_deref()
        .map_or(0, |b| block_template(graph, b).len());
    block
        .as_deref()
        .and_then(|b| graph.find(&format!("{b}.conv{template_len}")))
        .or_else(|| {
            let order = graph.order();
            let upto = order.iter().position(|&n| n == site.value).unwrap_or(0);
            order[..=upto]
                .iter()
                .rev()
                .copied()
                .find(|&n| matches!(graph.g[n].op, Op::Conv2d(_)))
        })
}

/// What the methods need to know about the site.
pub fn site_info<'a>(graph: &'a Graph, params: &'a Params, site: Site) -> SiteInfo<'a> {
    let block = site.block.and_then(|_| block_of(graph, site.value));
    let template = block
        .as_deref()
        .map_or(Vec::new(), |b| block_template(graph, b));
    let scale = scale_kernel(graph, &site)
        .and_then(|n| params.get(&format!("{}.weight", graph.g[n].name)))
        .map(super::std_of)
        .filter(|s| *s > 0.0)
        .unwrap_or_else(|| (2.0 / (9 * site.channels()) as f64).sqrt());
    let non_negative = sign::is_non_negative(graph, site.value);
    let why_negative = if non_negative {
        String::new()
    } else {
        sign::why_maybe_negative(graph, site.value)
    };
    SiteInfo {
        graph,
        params,
        site,
        non_negative,
        why_negative,
        scale,
        template,
    }
}

/// Nodes of a block in lowering's order: per layer conv, BN, activation; then the add
/// (port 0 branch, port 1 the block input) when `residual`, and the post activation.
pub fn block_nodes(
    c_in: usize,
    layers: &[LayerSpec],
    residual: bool,
    eps: f64,
    post: &Activation,
) -> Vec<NewNode> {
    let mut nodes: Vec<NewNode> = Vec::new();
    let mut cur = Src::Site;
    let mut c = c_in;
    let push = |nodes: &mut Vec<NewNode>, key: String, op: Op, inputs: Vec<Src>| -> Src {
        nodes.push(NewNode { key, op, inputs });
        Src::New(nodes.len() - 1)
    };
    for (i, l) in layers.iter().enumerate() {
        let n = i + 1;
        let conv = Op::Conv2d(Conv2d {
            in_channels: c,
            out_channels: l.width,
            kernel: [l.kernel, l.kernel],
            stride: 1,
            padding: l.padding,
            dilation: l.dilation,
            groups: 1,
            bias: l.bias,
        });
        cur = push(&mut nodes, format!("conv{n}"), conv, vec![cur]);
        if l.norm {
            let bn = Op::BatchNorm(BatchNorm {
                channels: l.width,
                eps,
            });
            cur = push(&mut nodes, format!("bn{n}"), bn, vec![cur]);
        }
        if let Some(a) = &l.act {
            let a = with_channels(a, l.width);
            cur = push(&mut nodes, format!("act{n}"), Op::Activation(a), vec![cur]);
        }
        c = l.width;
    }
    if residual {
        cur = push(&mut nodes, "add".into(), Op::Add, vec![cur, Src::Site]);
    }
    push(
        &mut nodes,
        "act".into(),
        Op::Activation(with_channels(post, c)),
        vec![cur],
    );
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
    let v = (0..n).map(|_| super::uniform(rng, -b, b)).collect();
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

/// Inserts as `args` asks and names the student like a network written from scratch.
pub fn deepen(graph: &Graph, params: &Params, args: &DeepenArgs, seed: u64) -> Result<Deepened> {
    params.check(graph)?;
    let d = deepen_partial(graph, params, args, seed)?;
    d.params.check(&d.graph)?;
    Ok(d)
}

/// The teacher tensors a deepening by `method` after `site` reads (r2rc names): the kernel
/// whose scale new weights match (R2DeeperR, random blocks), and for NetMorph-dense the
/// weights of the layers that read the site value (it multiplies them by `N^T`; through a
/// flatten or a global pool, the layers after it). Every other tensor moves to the student
/// unchanged, so a streamed deepening reads only these into memory.
pub fn needed_tensors(graph: &Graph, site: &Site, method: DeepenMethod) -> Vec<String> {
    let mut layers: Vec<NodeIndex> = Vec::new();
    if matches!(method, DeepenMethod::R2r | DeepenMethod::Random) {
        layers.extend(scale_kernel(graph, site));
    }
    let mut stack = Vec::new();
    if method == DeepenMethod::NetmorphDense {
        stack.push(site.value);
    }
    while let Some(n) = stack.pop() {
        for r in graph.consumers(n) {
            layers.push(r);
            if matches!(graph.g[r].op, Op::Flatten | Op::GlobalAvgPool) {
                stack.push(r);
            }
        }
    }
    let mut out: Vec<String> = layers
        .into_iter()
        .flat_map(|n| {
            let name = graph.g[n].name.clone();
            graph.g[n]
                .op
                .param_slots()
                .into_iter()
                .map(move |slot| format!("{name}.{}", slot.suffix))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// [`deepen`] with `params` holding at least [`needed_tensors`] (e.g. only those): the
/// student's params then hold the new tensors, the changed ones and whichever teacher
/// tensors `params` had, under their new names.
pub fn deepen_partial(
    graph: &Graph,
    params: &Params,
    args: &DeepenArgs,
    seed: u64,
) -> Result<Deepened> {
    let site = resolve_site(graph, &args.after)?;
    let info = site_info(graph, params, site.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if args.width.is_some() && !matches!(args.method, DeepenMethod::R2r | DeepenMethod::Random) {
        return Err(usage(
            format!(
                "--width applies to r2r and random blocks, not {}",
                args.method.name()
            ),
            Some(format!(
                "{} inserts a layer as wide as its input",
                args.method.title()
            )),
        ));
    }
    let ins = match args.method {
        DeepenMethod::R2r => r2r_deeper::insertion(&info, args.width, &mut rng)?,
        DeepenMethod::Net2net => net2net_deeper::insertion(&info)?,
        DeepenMethod::Netmorph => netmorph_deeper::insertion(&info)?,
        DeepenMethod::NetmorphDense => netmorph_deeper::dense_insertion(&info, &mut rng)?,
        DeepenMethod::Random => random_deeper::insertion(&info, args.width, &mut rng)?,
    };
    apply_insertion(graph, params, &site, ins)
}

/// A row name not used yet: `{base}_x`, else `{base}_x2`, ...
fn fresh_row(graph: &Graph, base: &str) -> String {
    let rows: HashSet<&str> = graph.g.node_weights().map(|n| n.row.as_str()).collect();
    let names: HashSet<&str> = graph.g.node_weights().map(|n| n.name.as_str()).collect();
    let mut k = 1;
    loop {
        let cand = if k == 1 {
            format!("{base}_x")
        } else {
            format!("{base}_x{k}")
        };
        let prefix = cand.trim_end_matches("_x");
        let clash = names
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}_")) || *n == cand);
        if !rows.contains(cand.as_str()) && !clash {
            return cand;
        }
        k += 1;
    }
}

/// Rebuilds `graph` with `ins` after the site, names it, moves the tensors.
pub fn apply_insertion(
    graph: &Graph,
    params: &Params,
    site: &Site,
    mut ins: Insertion,
) -> Result<Deepened> {
    // Where the new nodes live: the site's row (a block gets the next number, later blocks
    // of the row move up) or a new row after a single-layer row.
    let (row, block, shift) = match (site.block, ins.form) {
        (Some(b), Form::Block) => (site.row.clone(), Some(b + 1), Some(b)),
        (Some(_), Form::Item) => (site.row.clone(), None, None),
        (None, Form::Block) => (fresh_row(graph, &site.row), Some(1), None),
        (None, Form::Item) => (fresh_row(graph, &site.row), None, None),
    };
    let mut g = Graph::new(
        &graph.name,
        graph.defaults.clone(),
        graph.input_shape().clone(),
    );
    let mut map: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    map.insert(graph.input, g.input);
    let mut new_ix: Vec<NodeIndex> = Vec::new();
    let order = graph.order();
    for &n in &order {
        if n == graph.input {
            continue;
        }
        let node = &graph.g[n];
        let b = match (node.block, shift) {
            (Some(k), Some(s)) if node.row == site.row && k > s => Some(k + 1),
            (k, _) => k,
        };
        let inputs: Vec<NodeIndex> = graph
            .inputs(n)
            .iter()
            .map(|i| {
                if *i == site.value {
                    *new_ix
                        .last()
                        .expect("the insertion comes right after the site")
                } else {
                    map[i]
                }
            })
            .collect();
        let ix = g
            .add(
                node.name.clone(),
                node.op.clone(),
                &inputs,
                (&node.row, b),
                None,
            )
            .map_err(|m| {
                usage(
                    format!("layer `{}` after the insertion: {m}", node.name),
                    None,
                )
            })?;
        map.insert(n, ix);
        if n == site.value {
            for (k, nn) in ins.nodes.iter().enumerate() {
                let ins_inputs: Vec<NodeIndex> = nn
                    .inputs
                    .iter()
                    .map(|s| match s {
                        Src::Site => ix,
                        Src::New(j) => new_ix[*j],
                    })
                    .collect();
                let name = format!("(new).{}.{k}", nn.key);
                let nix = g
                    .add(name, nn.op.clone(), &ins_inputs, (&row, block), None)
                    .map_err(|m| {
                        usage(
                            format!(
                                "the {} layer inserted after `{}` does not fit: {m}",
                                nn.key, site.label
                            ),
                            None,
                        )
                    })?;
                new_ix.push(nix);
            }
            let out = *new_ix.last().expect("an insertion has nodes");
            if g.g[out].shape != site.shape {
                return Err(usage(
                    format!(
                        "inserting after `{}` would change its shape from {} to {}; deepening only inserts shape-preserving layers",
                        site.label,
                        crate::ir::show_shape(&site.shape),
                        crate::ir::show_shape(&g.g[out].shape)
                    ),
                    Some("use an odd kernel so 'same' padding keeps the size".into()),
                ));
            }
        }
    }
    g.output = if graph.output == site.value {
        *new_ix.last().expect("an insertion has nodes")
    } else {
        map[&graph.output]
    };
    canonical_names(&mut g)?;
    // Name map and tensors: every existing tensor moves to its layer's new name unchanged.
    let mut name_map = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (&old, &new) in &map {
        let (on, nn) = (&graph.g[old].name, &g.g[new].name);
        if on != nn {
            name_map.insert(on.clone(), nn.clone());
        }
        // A tensor `params` lacks (a streamed deepening holds only what it reads) is
        // missing from the result too; `deepen` checks the result is complete.
        for slot in graph.g[old].op.param_slots() {
            if let Some(t) = params.get(&format!("{on}.{}", slot.suffix)) {
                tensors.insert(format!("{nn}.{}", slot.suffix), t.clone());
            }
        }
    }
    let mut inserted = Vec::new();
    for (k, nn) in ins.nodes.iter().enumerate() {
        let name = g.g[new_ix[k]].name.clone();
        for slot in nn.op.param_slots() {
            let key = format!("{}.{}", nn.key, slot.suffix);
            let t = ins.params.remove(&key).unwrap_or_else(|| {
                default_params(std::slice::from_ref(nn))
                    .remove(&key)
                    .expect("default for every slot")
            });
            tensors.insert(format!("{name}.{}", slot.suffix), t);
        }
        inserted.push(name);
    }
    let mut p = Params {
        tensors,
        dtype: params.dtype,
    };
    let mut changed = Vec::new();
    let mut mixed = Vec::new();
    if let Some(mix) = &ins.mix {
        let out = *new_ix.last().expect("an insertion has nodes");
        changed = netmorph_deeper::absorb(&g, &mut p, out, mix)?;
        // Pass-through readers (flatten, global pool, its flatten) carry N x.
        let mut stack = vec![out];
        while let Some(n) = stack.pop() {
            for r in g.consumers(n) {
                if matches!(g.g[r].op, Op::Flatten | Op::GlobalAvgPool) {
                    mixed.push(g.g[r].name.clone());
                    stack.push(r);
                }
            }
        }
    }
    let where_ = match (site.block, ins.form) {
        (Some(_), Form::Block) => format!(
            "new block `{}`",
            block_of(&g, new_ix[0]).unwrap_or_default()
        ),
        (_, Form::Block) => format!("new row `{row}`"),
        (_, Form::Item) => format!("new layer `{}`", inserted[0]),
    };
    Ok(Deepened {
        graph: g,
        params: p,
        name_map,
        inserted,
        changed,
        mixed,
        exactness: ins.exactness,
        notes: ins.notes,
        site: format!("after {} ({where_})", site.label),
    })
}

/// Renames every node as lowering names the printed student, after checking that the
/// printed text lowers to the same structure.
fn canonical_names(g: &mut Graph) -> Result<()> {
    let text = crate::print::print(g);
    let again = crate::lower::compile(&text, &[]).map_err(|e| {
        usage(
            format!("internal error: the deepened network does not compile back from its canonical text: {}", e.message),
            Some("please report this with the command line".into()),
        )
    })?;
    let (o1, o2) = (g.order(), again.order());
    let pos1: BTreeMap<NodeIndex, usize> = o1.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let pos2: BTreeMap<NodeIndex, usize> = o2.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let same = o1.len() == o2.len()
        && o1.iter().zip(&o2).all(|(&a, &b)| {
            let (x, y) = (&g.g[a], &again.g[b]);
            let ia: Vec<usize> = g.inputs(a).iter().map(|i| pos1[i]).collect();
            let ib: Vec<usize> = again.inputs(b).iter().map(|i| pos2[i]).collect();
            x.op == y.op && x.shape == y.shape && x.row == y.row && x.block == y.block && ia == ib
        });
    if !same {
        return Err(usage(
            "internal error: the deepened network's canonical text lowers to a different structure"
                .into(),
            Some("please report this with the command line".into()),
        ));
    }
    for (&a, &b) in o1.iter().zip(&o2) {
        g.g[a].name = again.g[b].name.clone();
    }
    Ok(())
}

/// `graph` and `params` with layers renamed by `map` (old -> new), so a teacher's values
/// carry the student's names in a proof.
pub fn rename(graph: &Graph, params: &Params, map: &BTreeMap<String, String>) -> (Graph, Params) {
    let mut g = graph.clone();
    let mut tensors = BTreeMap::new();
    for n in graph.g.node_indices() {
        let old = graph.g[n].name.clone();
        let new = map.get(&old).cloned().unwrap_or_else(|| old.clone());
        for slot in graph.g[n].op.param_slots() {
            if let Some(t) = params.get(&format!("{old}.{}", slot.suffix)) {
                tensors.insert(format!("{new}.{}", slot.suffix), t.clone());
            }
        }
        g.g[n].name = new;
    }
    (
        g,
        Params {
            tensors,
            dtype: params.dtype,
        },
    )
}

/// Refuses unless the network's activation, applied after the inserted layers, leaves the
/// site value unchanged: identity always, ReLU-like ones on a non-negative value.
pub fn check_post_act(info: &SiteInfo, title: &str) -> Result<()> {
    let act = &info.graph.defaults.act;
    match act {
        Activation::Identity => Ok(()),
        Activation::Relu | Activation::LeakyRelu { .. } | Activation::Prelu { .. } if info.non_negative => Ok(()),
        Activation::Relu | Activation::LeakyRelu { .. } | Activation::Prelu { .. } => Err(usage(
            format!(
                "cannot insert {title} after `{}`: the new layers end in {}, which leaves its input unchanged only where it is non-negative, and the sign analysis cannot prove `{}` non-negative: it comes from {}",
                info.site.label,
                act.keyword(),
                info.graph.g[info.site.value].name,
                info.why_negative
            ),
            Some("insert after a block or row that ends in ReLU (or pooling of ReLU outputs), or use --method netmorph, which is exact for any input".into()),
        )),
        _ => Err(usage(
            format!(
                "cannot insert {title} after `{}`: the network's activation {} changes non-negative values too, so the new layers would not start as the identity",
                info.site.label,
                act.keyword()
            ),
            Some("use --method netmorph, which is exact for any input".into()),
        )),
    }
}
