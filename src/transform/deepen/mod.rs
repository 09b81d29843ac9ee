//! Deepening: inserting layers after a block or a row, shared by every deepening method.
//!
//! A method ([`super::r2r_deeper`], [`super::net2net_deeper`], [`super::netmorph_deeper`],
//! [`super::random_deeper`], [`super::copy_deeper`]) only says *what* to insert: an
//! [`Insertion`], the new nodes in the order lowering would create them, their tensors, and
//! (NetMorph-dense) a channel mix its readers must absorb. This file does the rest, the same way for all of them:
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
//!
//! This file is the insertion engine (steps 2 to 4) and the types the methods share;
//! `site.rs` resolves `--after` and tells a method about the site (step 1), `nodes.rs`
//! builds the new nodes and their starting tensors, `transformer.rs` the new layer after a
//! transformer layer (every method's, in one place).

mod nodes;
mod site;
pub mod transformer;

pub use nodes::{
    block_nodes, default_params, identity_kernel, item_nodes, uniform_like, LayerSpec, Order,
};
pub use site::{check_post_act, check_preact_site, resolve_site, site_info, Site, SiteInfo};

use std::collections::{BTreeMap, HashSet};

use ndarray::{Array2, ArrayD};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Error, Result};

use crate::ir::{Graph, NodeIndex, Op};
use crate::params::Params;

use super::{copy_deeper, net2net_deeper, netmorph_deeper, r2r_deeper, random_deeper};
use site::{block_of, scale_kernel};

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
    /// LLaMA-Pro: a copy of the site transformer layer with its output projections zeroed.
    Copy,
}

/// One deepening method's facts.
pub struct DeepenInfo {
    pub method: DeepenMethod,
    /// What `--method` takes.
    pub name: &'static str,
    /// The paper's name, for reports.
    pub title: &'static str,
    /// Inserts a block of its own width (`--width`), matching the previous kernel's scale.
    pub sized: bool,
    /// Changes the readers of the site (the dense mix), so it reads their tensors.
    pub mixes: bool,
    /// Computes values a narrow dtype cannot hold exactly (orthogonal mixes,
    /// `sqrt(1 + eps)`): the proof's tolerance rule widens for it.
    pub rounds: bool,
    /// What to insert; `rng` is the deepening's seeded stream.
    pub insertion: fn(&SiteInfo, Option<usize>, &mut ChaCha8Rng) -> Result<Insertion>,
}

/// The deepening methods, one line each. Adding a method is its file (returning an
/// [`Insertion`]), a [`DeepenMethod`] variant and a line here.
#[rustfmt::skip]
pub const DEEPEN_METHODS: [DeepenInfo; 6] = [
    DeepenInfo { method: DeepenMethod::R2r, name: "r2r", title: "R2DeeperR", sized: true, mixes: false, rounds: false, insertion: r2r_deeper::insertion },
    DeepenInfo { method: DeepenMethod::Net2net, name: "net2net", title: "Net2DeeperNet", sized: false, mixes: false, rounds: true, insertion: |i, _, _| net2net_deeper::insertion(i) },
    DeepenInfo { method: DeepenMethod::Netmorph, name: "netmorph", title: "NetMorph", sized: false, mixes: false, rounds: false, insertion: |i, _, r| netmorph_deeper::insertion(i, r) },
    DeepenInfo { method: DeepenMethod::NetmorphDense, name: "netmorph-dense", title: "NetMorph (dense)", sized: false, mixes: true, rounds: true, insertion: |i, _, r| netmorph_deeper::dense_insertion(i, r) },
    DeepenInfo { method: DeepenMethod::Random, name: "random", title: "random block", sized: true, mixes: false, rounds: false, insertion: random_deeper::insertion },
    DeepenInfo { method: DeepenMethod::Copy, name: "copy", title: "LLaMA-Pro copy", sized: false, mixes: false, rounds: false, insertion: |i, _, r| copy_deeper::insertion(i, r) },
];

impl crate::transform::methods::TableLine for DeepenInfo {
    type Method = DeepenMethod;
    fn method(&self) -> DeepenMethod {
        self.method
    }
    fn name(&self) -> &'static str {
        self.name
    }
}

impl DeepenMethod {
    /// This method's line of [`DEEPEN_METHODS`].
    pub fn info(self) -> &'static DeepenInfo {
        crate::transform::methods::line_of(&DEEPEN_METHODS, self)
    }

    pub fn parse(s: &str) -> Result<DeepenMethod> {
        crate::transform::methods::parse_method(&DEEPEN_METHODS, s, "deepening")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn title(self) -> &'static str {
        self.info().title
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

/// What a method inserts: one block, numbered after the site's in its row (or the first
/// block of a new row after a single-layer row).
#[derive(Debug, Clone)]
pub struct Insertion {
    /// In lowering's order; the last one is the new output of the site.
    pub nodes: Vec<NewNode>,
    /// Tensors of the new nodes by `key.suffix`.
    pub params: BTreeMap<String, ArrayD<f64>>,
    /// NetMorph-dense: the orthogonal mix N; readers of the new output get weights W N^T.
    pub mix: Option<Array2<f64>>,
    pub exactness: Exactness,
    pub notes: Vec<String>,
}

impl Insertion {
    /// A block of `nodes` with their starting tensors (`params`; a slot left out takes its
    /// defaults), and no mix.
    pub fn block(
        nodes: Vec<NewNode>,
        params: BTreeMap<String, ArrayD<f64>>,
        exactness: Exactness,
        notes: Vec<String>,
    ) -> Insertion {
        Insertion {
            nodes,
            params,
            mix: None,
            exactness,
            notes,
        }
    }
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
    if let Some(nodes) = transformer::layer_nodes(graph, site) {
        // A new transformer layer reads the site layer's tensors (scales, norms, copies).
        layers = nodes;
    } else if method.info().sized {
        layers.extend(scale_kernel(graph, site));
    }
    let mut stack = Vec::new();
    if method.info().mixes {
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
    if let (Some(_), Some(_)) = (args.width, &info.layer) {
        return Err(usage(
            format!(
                "--width sets the hidden width of an inserted convolutional block; after `{}`, a transformer layer, the new layer copies that layer's shape",
                args.after
            ),
            Some("drop --width (widen the new layer's MLP afterwards if needed)".into()),
        ));
    }
    if args.width.is_some() && !args.method.info().sized {
        let sized: Vec<&str> = DEEPEN_METHODS
            .iter()
            .filter(|m| m.sized)
            .map(|m| m.name)
            .collect();
        return Err(usage(
            format!(
                "--width applies to {} blocks, not {}",
                sized.join(" and "),
                args.method.name()
            ),
            Some(format!(
                "{} inserts a layer as wide as its input",
                args.method.title()
            )),
        ));
    }
    if site.inside {
        refuse_inside(&site, args)?;
    }
    if info.layer.is_none() {
        check_preact_site(graph, &site)?;
    }
    let ins = (args.method.info().insertion)(&info, args.width, &mut rng)?;
    apply_insertion(graph, params, &site, ins)
}

/// Inside a block's branch the new layer is one item of the block, which starts as the
/// identity on its own (Net2DeeperNet, NetMorph, NetMorph-dense): refuses the methods
/// whose construction needs a shortcut of its own.
fn refuse_inside(site: &Site, args: &DeepenArgs) -> Result<()> {
    let block = site.label.split_once('.').map_or("", |(b, _)| b);
    let why = match args.method {
        DeepenMethod::R2r => "R2DeeperR's exact construction is a residual block whose branch is zero (cancelling pairs), and inside a block's branch there is no shortcut for it: no layer without one starts as the identity from R2R's pairs",
        DeepenMethod::Random => "the random baseline inserts a residual block, which has no place inside a block's branch",
        DeepenMethod::Copy => "copying applies to transformer layers",
        _ => {
            if args.width.is_some() {
                return Err(usage(
                    "--width sets the hidden width of an inserted block; a layer inside a block is as wide as its input".into(),
                    Some("drop --width".into()),
                ));
            }
            return Ok(());
        }
    };
    Err(usage(
        format!(
            "cannot insert {} inside block `{block}` (after `{}`): {why}",
            args.method.title(),
            site.label
        ),
        Some(format!(
            "inside a block use --method net2net, netmorph or netmorph-dense; for {} insert a new block with --after {block}",
            args.method.title()
        )),
    ))
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
    // Where the new block lives: the site's row (it gets the next number, later blocks of
    // the row move up) or a new row after a single-layer row.
    let (row, block, shift) = match site.block {
        // Inside a block: one more item of it, no block moves.
        Some(b) if site.inside => (site.row.clone(), Some(b), None),
        Some(b) => (site.row.clone(), Some(b + 1), Some(b)),
        None => (fresh_row(graph, &site.row), Some(1), None),
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
    let where_ = match site.block {
        Some(_) if site.inside => format!("new layer `{}`", g.g[new_ix[0]].name),
        Some(_) => format!(
            "new block `{}`",
            block_of(&g, new_ix[0]).unwrap_or_default()
        ),
        None => format!("new row `{row}`"),
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
