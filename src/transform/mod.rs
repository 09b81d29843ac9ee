//! Function-preserving widening: one structural rewrite, four fills.
//!
//! [`widen`] resolves the target to channel spaces ([`crate::analysis::spaces`]), then for
//! each space appends `E` channels at the end of every value in it: producers get new
//! output rows, batch norms and PReLUs new entries, consumers new input columns (a block
//! of `cols` columns per channel after a flatten). What goes into the new rows, entries and
//! columns is the method's [`Fill`] (one file each: [`r2r`], [`netmorph`], [`net2net`],
//! [`random`]). Spaces are widened one after another; each step is exact on its own, so
//! their composition is too (a conv whose input and output spaces both widen gets its new
//! rows first, then new columns across all rows).
//!
//! Transforms are pure: `(graph, params, args, seed) -> (graph', params')`; they never run
//! the network. Proving is [`crate::prove`]'s job.

pub mod deepen;
pub mod morph_kernel;
pub mod net2net;
pub mod net2net_deeper;
pub mod netmorph;
pub mod netmorph_deeper;
pub mod r2r;
pub mod r2r_deeper;
pub mod random;
pub mod random_deeper;

use std::collections::HashMap;

use ndarray::{concatenate, ArrayD, Axis, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::analysis::{channel_spaces, Space, Spaces};
use crate::error::{Error, Result};
use crate::ir::{Activation, Graph, NodeIndex, Op, ParamKind};
use crate::params::Params;

/// A widening method (DESIGN.md's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// R2WiderR: 2E new channels, rows U/U, columns V/-V.
    R2r,
    /// NetMorph: arbitrary rows, zero consumer columns.
    Netmorph,
    /// Net2WiderNet: replicas of existing channels, one map per space.
    Net2net,
    /// Random padding: He-initialised rows and columns; not function preserving.
    Random,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "r2r" => Ok(Method::R2r),
            "netmorph" => Ok(Method::Netmorph),
            "net2net" => Ok(Method::Net2net),
            "random" => Ok(Method::Random),
            _ => Err(Error::usage(
                format!("unknown widening method `{s}`"),
                Some("use r2r, netmorph, net2net or random".into()),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::R2r => "r2r",
            Method::Netmorph => "netmorph",
            Method::Net2net => "net2net",
            Method::Random => "random",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Method::R2r => "R2WiderR",
            Method::Netmorph => "NetMorph",
            Method::Net2net => "Net2WiderNet",
            Method::Random => "random padding",
        }
    }
}

/// How free new weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Uniform with the standard deviation of the layer's existing kernel (paper section 6).
    Match,
    /// He (kaiming normal, fan-in) init, which the paper's appendix E shows is too large.
    He,
}

impl Init {
    pub fn parse(s: &str) -> Result<Init> {
        match s {
            "match" | "std" => Ok(Init::Match),
            "he" => Ok(Init::He),
            _ => Err(Error::usage(
                format!("unknown init `{s}`"),
                Some("use match (the existing kernel's standard deviation) or he".into()),
            )),
        }
    }
}

/// How many channels to add to each space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// New width `floor(C * F)`.
    By(f64),
    /// New width `C`.
    To(usize),
    /// `E` more channels.
    Add(usize),
}

/// What to widen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A layer, block, single-layer row or stage name (LANGUAGE.md "What a command's
    /// target names").
    Name(String),
    /// Every widenable space.
    All,
}

impl Target {
    pub fn show(&self) -> String {
        match self {
            Target::Name(n) => n.clone(),
            Target::All => "--all".into(),
        }
    }
}

/// A widening request.
#[derive(Debug, Clone, Serialize)]
pub struct WidenArgs {
    pub target: Target,
    pub amount: Amount,
    pub method: Method,
    pub init: Init,
    /// Net2WiderNet only: noise of this many kernel standard deviations on new weights.
    pub noise: Option<f64>,
}

/// One widened space, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceChange {
    pub label: String,
    pub rows: Vec<String>,
    pub from: usize,
    pub to: usize,
    pub members: Vec<String>,
    pub producers: Vec<String>,
    pub params: Vec<String>,
    pub consumers: Vec<String>,
}

/// The student of a widening.
#[derive(Debug, Clone)]
pub struct Widened {
    pub graph: Graph,
    pub params: Params,
    pub changes: Vec<SpaceChange>,
    /// Sentences for the user: rounding, streams that widen together.
    pub notes: Vec<String>,
    /// Whether the method is function preserving (noisy Net2Net and random pad are not).
    pub exact: bool,
}

/// What a method puts into the new rows, entries and columns of one space.
pub trait Fill {
    /// New output rows `[E, ...]` of producer weight `w` (`[C, ...]`).
    fn rows(&mut self, w: &ArrayD<f64>) -> ArrayD<f64>;
    /// New entries `[E]` of a producer's bias `b` (`[C]`).
    fn bias(&mut self, b: &ArrayD<f64>) -> ArrayD<f64>;
    /// New entries `[E * cols]` of a channel-wise parameter `t` (`[C * cols]`).
    fn entries(&mut self, kind: ParamKind, t: &ArrayD<f64>, cols: usize) -> ArrayD<f64>;
    /// The whole new consumer weight `[O, (C + E) * cols, ...]` from `w` (`[O, C * cols, ...]`).
    fn columns(&mut self, w: &ArrayD<f64>, cols: usize) -> ArrayD<f64>;
    /// RNG words (u32) the `part` call draws for a tensor shaped `shape` (before the call),
    /// so a tensor's draws can be found without making the calls before it
    /// ([`tensor_touches`]).
    fn words(&self, part: Part, shape: &[usize], cols: usize) -> u128;
    /// The RNG the calls draw from.
    fn rng(&mut self) -> &mut ChaCha8Rng;
}

/// Which call of a [`Fill`] a tensor gets in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Rows,
    Bias,
    Entries,
    Columns,
}

/// Values in `shape[from..]` (1 for a scalar tail).
pub fn tail(shape: &[usize], from: usize) -> u128 {
    shape.iter().skip(from).map(|&d| d as u128).product()
}

/// Shared state of a fill: sizes, RNG and init rule.
pub struct FillCtx {
    /// Channels before.
    pub c: usize,
    /// Channels added.
    pub e: usize,
    pub rng: ChaCha8Rng,
    pub init: Init,
}

impl FillCtx {
    /// RNG words one free weight draws: one f64 (uniform) or two (Box-Muller normal).
    pub fn words_per_value(&self) -> u128 {
        match self.init {
            Init::Match => 2,
            Init::He => 4,
        }
    }

    /// Free weights shaped like `shape`, scaled like `existing` (or He for `fan_in`).
    pub fn free(&mut self, shape: &[usize], existing: &ArrayD<f64>, fan_in: usize) -> ArrayD<f64> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = match self.init {
            Init::Match => {
                // U(-s*sqrt(3), s*sqrt(3)) has standard deviation s (the paper's section 6
                // writes s/sqrt(3), which would give s/3).
                let s = std_of(existing);
                let s = if s > 0.0 {
                    s
                } else {
                    (2.0 / fan_in.max(1) as f64).sqrt()
                };
                let b = s * 3f64.sqrt();
                draw(&mut self.rng, n, 2, |r| uniform(r, -b, b))
            }
            Init::He => {
                let s = (2.0 / fan_in.max(1) as f64).sqrt();
                draw(&mut self.rng, n, 4, |r| s * crate::params::normal(r))
            }
        };
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape")
    }

    /// He-normal weights for `shape` with `fan_in` (random padding).
    pub fn he(&mut self, shape: &[usize], fan_in: usize) -> ArrayD<f64> {
        let s = (2.0 / fan_in.max(1) as f64).sqrt();
        let n: usize = shape.iter().product();
        let v = draw(&mut self.rng, n, 4, |r| s * crate::params::normal(r));
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape")
    }
}

/// `n` values `f(rng)`, each drawing exactly `words` RNG words: the same values as drawing
/// them one after another, computed in parallel chunks that each start the stream at their
/// first value's word; `rng` ends after the last value's words.
fn draw(
    rng: &mut ChaCha8Rng,
    n: usize,
    words: u128,
    f: impl Fn(&mut ChaCha8Rng) -> f64 + Sync,
) -> Vec<f64> {
    const CHUNK: usize = 1 << 15;
    let start = rng.get_word_pos();
    if n <= CHUNK {
        let v = (0..n).map(|_| f(rng)).collect();
        debug_assert_eq!(rng.get_word_pos(), start + n as u128 * words);
        return v;
    }
    let base = rng.clone();
    let mut v = vec![0.0; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut r = base.clone();
        r.set_word_pos(start + (i * CHUNK) as u128 * words);
        for x in c {
            *x = f(&mut r);
        }
    });
    rng.set_word_pos(start + n as u128 * words);
    v
}

pub(crate) fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    use rand::Rng;
    lo + (hi - lo) * rng.random::<f64>()
}

/// Population standard deviation of a tensor's values.
///
/// Summed in fixed chunks (8 lanes each, so it vectorises) whose partial sums are added in
/// order: the same bits however many threads run it, and fast on the hundreds of millions
/// of values of a wide layer (a plain sequential sum was a tenth of a large widening).
pub fn std_of(t: &ArrayD<f64>) -> f64 {
    let t = t.as_standard_layout();
    let v = t.as_slice().expect("standard layout");
    let n = v.len().max(1) as f64;
    let mean = chunked_sum(v, |x| x) / n;
    (chunked_sum(v, |x| (x - mean) * (x - mean)) / n).sqrt()
}

/// `sum f(x)` over `v`: fixed chunks in parallel, their sums added in order.
fn chunked_sum(v: &[f64], f: impl Fn(f64) -> f64 + Sync) -> f64 {
    const CHUNK: usize = 1 << 16;
    let parts: Vec<f64> = v.par_chunks(CHUNK).map(|c| lanes_sum(c, &f)).collect();
    parts.iter().sum()
}

/// `sum f(x)` over `c` in 8 interleaved lanes, then the lanes and the remainder in order.
fn lanes_sum(c: &[f64], f: &impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = c.chunks_exact(8);
    for ch in &mut it {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f64>() + it.remainder().iter().map(|&x| f(x)).sum::<f64>()
}

/// The shape of `t` with dimension `axis` set to `len`.
pub fn with_dim(t: &ArrayD<f64>, axis: usize, len: usize) -> Vec<usize> {
    let mut s = t.shape().to_vec();
    s[axis] = len;
    s
}

/// Fan-in of a weight whose input dimension becomes `inputs`.
pub fn fan_in(t: &ArrayD<f64>, inputs: usize) -> usize {
    inputs * t.shape().iter().skip(2).product::<usize>()
}

/// Default entries of a channel-wise parameter (BN: gamma 1, beta 0, mean 0, var 1;
/// PReLU 0.25), `n` of them.
pub fn default_entries(kind: ParamKind, n: usize) -> ArrayD<f64> {
    let v = match kind {
        ParamKind::BnWeight | ParamKind::RunningVar => 1.0,
        ParamKind::PreluWeight => 0.25,
        _ => 0.0,
    };
    ArrayD::from_elem(IxDyn(&[n]), v)
}

/// Channel indices expanded to column indices, `cols` per channel.
pub fn block_index(channels: impl IntoIterator<Item = usize>, cols: usize) -> Vec<usize> {
    channels
        .into_iter()
        .flat_map(|c| c * cols..(c + 1) * cols)
        .collect()
}

/// `[a; b]` along axis 0, reusing `a`'s buffer (growing it in place when the allocator
/// can) instead of copying both.
pub fn append0(a: ArrayD<f64>, b: &ArrayD<f64>) -> ArrayD<f64> {
    let mut shape = a.shape().to_vec();
    if !a.is_standard_layout() || shape.is_empty() || b.shape().get(1..) != shape.get(1..) {
        return cat(0, &[&a, b]);
    }
    shape[0] += b.shape()[0];
    let n = a.len();
    // Standard layout: the elements are `n` consecutive values from the offset.
    let (mut v, offset) = a.into_raw_vec_and_offset();
    v.drain(..offset.unwrap_or(0));
    v.truncate(n);
    let b = b.as_standard_layout();
    v.extend_from_slice(b.as_slice().expect("standard layout"));
    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("length matches shape")
}

/// `[w, v, -v]` along axis 1 (R2WiderR's consumer columns), without materialising `-v`.
pub fn cat_pair(w: &ArrayD<f64>, v: &ArrayD<f64>) -> ArrayD<f64> {
    let (ws, vs) = (w.as_standard_layout(), v.as_standard_layout());
    let outer = w.shape()[0];
    if outer == 0 || w.ndim() < 2 {
        let minus = v.mapv(|x| -x);
        return cat(1, &[w, v, &minus]);
    }
    let (ws, vs) = (
        ws.as_slice().expect("standard"),
        vs.as_slice().expect("standard"),
    );
    let (a, b) = (ws.len() / outer, vs.len() / outer);
    let mut shape = w.shape().to_vec();
    shape[1] += 2 * v.shape()[1];
    let mut out = vec![0.0; outer * (a + 2 * b)];
    if a + 2 * b > 0 {
        out.par_chunks_mut(a + 2 * b)
            .enumerate()
            .for_each(|(o, row)| {
                row[..a].copy_from_slice(&ws[o * a..(o + 1) * a]);
                let src = &vs[o * b..(o + 1) * b];
                row[a..a + b].copy_from_slice(src);
                for (x, &y) in row[a + b..].iter_mut().zip(src) {
                    *x = -y;
                }
            });
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).expect("length matches shape")
}

/// `[a; b]` along `axis`.
pub fn cat(axis: usize, parts: &[&ArrayD<f64>]) -> ArrayD<f64> {
    // Standard-layout parts: each output block (one index of the axes before `axis`) is
    // the parts' blocks one after another, copied whole.
    let std: Vec<_> = parts.iter().map(|p| p.as_standard_layout()).collect();
    let slices: Option<Vec<&[f64]>> = std.iter().map(|p| p.as_slice()).collect();
    let outer: usize = parts[0].shape()[..axis].iter().product();
    if let (Some(slices), true) = (slices, outer > 0) {
        let mut shape = parts[0].shape().to_vec();
        shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
        debug_assert!(parts.iter().all(|p| p.ndim() == shape.len()
            && p.shape()
                .iter()
                .enumerate()
                .all(|(i, &d)| i == axis || d == shape[i])));
        let widths: Vec<usize> = slices.iter().map(|s| s.len() / outer).collect();
        let block: usize = widths.iter().sum();
        let total = outer * block;
        let mut v = Vec::with_capacity(total);
        if outer == 1 || block == 0 {
            for o in 0..outer {
                for (s, &w) in slices.iter().zip(&widths) {
                    v.extend_from_slice(&s[o * w..(o + 1) * w]);
                }
            }
        } else {
            v.resize(total, 0.0);
            v.par_chunks_mut(block).enumerate().for_each(|(o, out)| {
                let mut at = 0;
                for (s, &w) in slices.iter().zip(&widths) {
                    out[at..at + w].copy_from_slice(&s[o * w..(o + 1) * w]);
                    at += w;
                }
            });
        }
        return ArrayD::from_shape_vec(IxDyn(&shape), v).expect("length matches shape");
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(axis), &views).expect("parts agree off the axis")
}

fn make_fill(method: Method, ctx: FillCtx, noise: Option<f64>) -> Box<dyn Fill> {
    match method {
        Method::R2r => Box::new(r2r::R2r::new(ctx)),
        Method::Netmorph => Box::new(netmorph::NetMorph::new(ctx)),
        Method::Net2net => Box::new(net2net::Net2Net::new(ctx, noise)),
        Method::Random => Box::new(random::RandomPad::new(ctx)),
    }
}

/// Every name a target may use: nodes, blocks (`conv2_1`) and rows (`conv2_x`, `head`).
pub fn target_names(graph: &Graph) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for n in graph.order() {
        let node = &graph.g[n];
        if n == graph.input {
            continue;
        }
        for name in [
            Some(node.row.clone()),
            block_name(graph, n),
            Some(node.name.clone()),
        ]
        .into_iter()
        .flatten()
        {
            if !v.contains(&name) {
                v.push(name);
            }
        }
    }
    v
}

/// `conv2_1` for a node of block 1 of row `conv2_x` (the prefix of its dotted name).
fn block_name(graph: &Graph, n: NodeIndex) -> Option<String> {
    let node = &graph.g[n];
    node.block?;
    node.name.split_once('.').map(|(b, _)| b.to_string())
}

/// The spaces a target names, and a sentence saying what that is.
pub fn resolve(graph: &Graph, spaces: &Spaces, target: &Target) -> Result<Vec<usize>> {
    let name = match target {
        Target::All => {
            let v: Vec<usize> = spaces
                .spaces
                .iter()
                .filter(|s| s.widenable())
                .map(|s| s.id)
                .collect();
            if v.is_empty() {
                return Err(Error::usage(
                    format!(
                        "network `{}` has no channel space that can be widened",
                        graph.name
                    ),
                    Some("`r2rc spaces FILE` lists every space and why it is fixed".into()),
                ));
            }
            return Ok(v);
        }
        Target::Name(n) => n.as_str(),
    };
    let order = graph.order();
    let check = |ids: Vec<usize>, what: &str| -> Result<Vec<usize>> {
        for &id in &ids {
            let s = &spaces.spaces[id];
            if !s.widenable() {
                return Err(Error::usage(
                    format!(
                        "cannot widen `{name}` ({what}): {} cannot be widened because {}",
                        s.describe(),
                        s.blockers.join("; and ")
                    ),
                    Some("`r2rc spaces FILE` lists the spaces that can be widened".into()),
                ));
            }
        }
        Ok(ids)
    };
    // A row (single-layer row or stage): the stream its last value lies in.
    let row_nodes: Vec<NodeIndex> = order
        .iter()
        .copied()
        .filter(|&n| n != graph.input && graph.g[n].row == name)
        .collect();
    if let Some(&last) = row_nodes.last() {
        return check(vec![spaces.of[&last]], "a row: its output stream");
    }
    // A layer: the channels of its output.
    if let Some(n) = graph.find(name) {
        return check(vec![spaces.of[&n]], "a layer: its output channels");
    }
    // A block: its hidden widths, the spaces of its producers except the block output's.
    let block: Vec<NodeIndex> = order
        .iter()
        .copied()
        .filter(|&n| block_name(graph, n).as_deref() == Some(name))
        .collect();
    if let Some(&last) = block.last() {
        let out = spaces.of[&last];
        let mut ids = Vec::new();
        for &n in &block {
            let id = spaces.of[&n];
            if id != out
                && matches!(graph.g[n].op, Op::Conv2d(_) | Op::Linear(_))
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Err(Error::usage(
                format!("block `{name}` has no hidden width to widen"),
                Some(format!("name the stream instead: `{}`", graph.g[last].row)),
            ));
        }
        return check(ids, "a block: its hidden widths");
    }
    let names = target_names(graph);
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let hint = match crate::lower::closest(name, &refs) {
        Some(c) => format!("did you mean `{c}`?"),
        None => "`r2rc check FILE` lists every layer name".into(),
    };
    Err(Error::usage(
        format!(
            "network `{}` has no layer, block or row named `{name}`",
            graph.name
        ),
        Some(hint),
    ))
}

/// Channels to add to a space of width `c`, and a note when R2R rounded it up.
fn added(c: usize, amount: Amount, method: Method, label: &str) -> Result<(usize, Option<String>)> {
    let e = match amount {
        Amount::By(f) => {
            if !(f.is_finite() && f > 1.0) {
                return Err(Error::usage(
                    format!("--by {f} does not widen: the factor must be greater than 1"),
                    Some("for example --by 1.5".into()),
                ));
            }
            // The language's floor, forgiving rounding error like 8 * 1.5.
            let to = (c as f64 * f + 1e-9 * (c as f64 * f)).floor() as usize;
            to.saturating_sub(c)
        }
        Amount::To(t) => {
            if t <= c {
                return Err(Error::usage(
                    format!(
                        "--to {t} does not widen space `{label}`, which already has {c} channels"
                    ),
                    Some(format!("give a width above {c}")),
                ));
            }
            t - c
        }
        Amount::Add(e) => {
            if method == Method::R2r && !e.is_multiple_of(2) {
                return Err(Error::usage(
                    format!("R2WiderR adds channels in pairs (rows U/U, columns V/-V), so --add must be even, not {e}"),
                    Some(format!("use --add {} or --add {}", e.saturating_sub(1).max(2), e + 1)),
                ));
            }
            e
        }
    };
    if e == 0 {
        return Err(Error::usage(
            format!("widening space `{label}` ({c} channels) by this amount adds no channel"),
            Some("use a larger --by, --to or --add".into()),
        ));
    }
    if method == Method::R2r && !e.is_multiple_of(2) {
        return Ok((
            e + 1,
            Some(format!(
                "R2WiderR adds channels in pairs: space `{label}` grows by {} to {} channels instead of {} to {}",
                e + 1,
                c + e + 1,
                e,
                c + e
            )),
        ));
    }
    Ok((e, None))
}

/// Recomputes every node's shape from the input's, in topological order.
pub fn reinfer_shapes(graph: &mut Graph) -> Result<()> {
    for n in graph.order() {
        if n == graph.input {
            continue;
        }
        let ins = graph.inputs(n);
        let shapes: Vec<&Vec<usize>> = ins.iter().map(|&i| &graph.g[i].shape).collect();
        let shape = graph.g[n]
            .op
            .infer_shape(&shapes)
            .map_err(|m| Error::usage(format!("layer `{}`: {m}", graph.g[n].name), None))?;
        graph.g[n].shape = shape;
    }
    Ok(())
}

/// The same network with another input size (for fast proofs of ImageNet-sized nets).
pub fn resize_input(graph: &Graph, shape: &[usize]) -> Result<Graph> {
    let mut g = graph.clone();
    let input = g.input;
    g.g[input].shape = shape.to_vec();
    reinfer_shapes(&mut g)?;
    Ok(g)
}

/// Where widening reads and writes tensors: [`Params`] in memory, or a streaming store
/// that reads the teacher lazily and writes each finished tensor out
/// ([`crate::stream`]). Widening takes a tensor, computes its new value and puts it back.
pub trait TensorStore {
    /// The current value of tensor `name`, or `None` when the network has no such tensor
    /// (a conv without bias).
    fn take(&mut self, name: &str) -> Result<Option<ArrayD<f64>>>;
    /// The new value of tensor `name`.
    fn put(&mut self, name: &str, t: ArrayD<f64>) -> Result<()>;
    /// A copy of tensor `name`'s current value, not counted as a use (for proofs).
    fn peek(&mut self, name: &str) -> Result<Option<ArrayD<f64>>>;
}

impl TensorStore for Params {
    fn take(&mut self, name: &str) -> Result<Option<ArrayD<f64>>> {
        Ok(self.tensors.remove(name))
    }

    fn put(&mut self, name: &str, t: ArrayD<f64>) -> Result<()> {
        self.tensors.insert(name.to_string(), t);
        Ok(())
    }

    fn peek(&mut self, name: &str) -> Result<Option<ArrayD<f64>>> {
        Ok(self.tensors.get(name).cloned())
    }
}

fn tensor(store: &mut dyn TensorStore, name: &str) -> Result<ArrayD<f64>> {
    store.take(name)?.ok_or_else(|| {
        Error::weights(format!(
            "the weights lack tensor `{name}`, which widening needs"
        ))
    })
}

/// The tensors widening `space` takes and puts, in order; `has` says whether a tensor
/// exists (biases are optional). A streaming store counts these to know when a tensor is
/// final.
pub fn space_tensors(graph: &Graph, space: &Space, has: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut v = Vec::new();
    for p in &space.producers {
        let name = &graph.g[p.node].name;
        v.push(format!("{name}.weight"));
        let bname = format!("{name}.bias");
        if has(&bname) {
            v.push(bname);
        }
    }
    for p in &space.params {
        let name = &graph.g[p.node].name;
        for slot in graph.g[p.node].op.param_slots() {
            if slot.kind != ParamKind::NumBatchesTracked {
                v.push(format!("{name}.{}", slot.suffix));
            }
        }
    }
    for c in &space.consumers {
        v.push(format!("{}.weight", graph.g[c.node].name));
    }
    v
}

fn grew(what: &str, name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::weights(format!(
        "widening `{name}` gave {got} new {what} where the plan says {want}"
    )))
}

/// Widens the tensors of one space by `e` channels through `store` (the graph is only
/// read: [`widen_space_graph`] updates it).
fn widen_space(
    graph: &Graph,
    store: &mut dyn TensorStore,
    space: &Space,
    e: usize,
    fill: &mut dyn Fill,
) -> Result<()> {
    for p in &space.producers {
        let name = &graph.g[p.node].name;
        let wname = format!("{name}.weight");
        let w = tensor(store, &wname)?;
        let rows = fill.rows(&w);
        grew("output rows", name, rows.shape()[0], e)?;
        store.put(&wname, append0(w, &rows))?;
        let bname = format!("{name}.bias");
        if let Some(b) = store.take(&bname)? {
            let nb = fill.bias(&b);
            store.put(&bname, append0(b, &nb))?;
        }
    }
    for p in &space.params {
        let cols = space.member(p.node).map_or(1, |m| m.cols);
        let name = &graph.g[p.node].name;
        for slot in graph.g[p.node].op.param_slots() {
            if slot.kind == ParamKind::NumBatchesTracked {
                continue;
            }
            let tname = format!("{name}.{}", slot.suffix);
            let t = tensor(store, &tname)?;
            let new = fill.entries(slot.kind, &t, cols);
            grew("entries", &tname, new.len(), e * cols)?;
            store.put(&tname, append0(t, &new))?;
        }
    }
    for c in &space.consumers {
        let name = &graph.g[c.node].name;
        let wname = format!("{name}.weight");
        let w = tensor(store, &wname)?;
        let nw = fill.columns(&w, c.cols);
        grew(
            "input columns",
            name,
            nw.shape()[1] - w.shape()[1],
            e * c.cols,
        )?;
        store.put(&wname, nw)?;
    }
    Ok(())
}

/// Gives the layers of `space` `e` more channels (shapes are re-inferred afterwards).
fn widen_space_graph(graph: &mut Graph, space: &Space, e: usize) {
    for p in &space.producers {
        match &mut graph.g[p.node].op {
            Op::Conv2d(c) => c.out_channels += e,
            Op::Linear(l) => l.out_features += e,
            _ => unreachable!("producers are convs and linears"),
        }
    }
    for p in &space.params {
        let added = e * space.member(p.node).map_or(1, |m| m.cols);
        match &mut graph.g[p.node].op {
            Op::BatchNorm(b) => b.channels += added,
            Op::Activation(Activation::Prelu { channels }) => *channels += added,
            _ => unreachable!("channel-wise parameters are batch norms and PReLUs"),
        }
    }
    for c in &space.consumers {
        match &mut graph.g[c.node].op {
            Op::Conv2d(conv) => conv.in_channels += e * c.cols,
            Op::Linear(l) => l.in_features += e * c.cols,
            _ => unreachable!("consumers are convs and linears"),
        }
    }
}

/// The .arch language gives a block whose input and output shapes match an identity
/// shortcut, so a projection (or pad) shortcut that widening made shape-preserving could
/// not be written: refuse rather than print a network that computes something else.
fn refuse_silent_shortcuts(g: &Graph, target: &Target) -> Result<()> {
    for n in g.order() {
        if !matches!(g.g[n].op, Op::Add) {
            continue;
        }
        let Some(&short) = g.inputs(n).get(1) else {
            continue;
        };
        let mut from = short;
        if matches!(g.g[from].op, Op::BatchNorm(_)) {
            from = g.inputs(from)[0];
        }
        if !matches!(g.g[from].op, Op::Conv2d(_) | Op::ShortcutPad(_)) {
            continue;
        }
        let input = g.inputs(from)[0];
        if g.g[input].shape == g.g[n].shape {
            return Err(Error::usage(
                format!(
                    "widening {} would give `{}` the shape of its input ({}), so its shortcut `{}` would be written as an identity: the .arch language has no shape-preserving projection",
                    target.show(),
                    g.g[n].name.trim_end_matches(".add"),
                    g.g[n].shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"),
                    g.g[from].name
                ),
                Some("choose a width that differs from the block's output width, or widen the block's output stream too".into()),
            ));
        }
    }
    Ok(())
}

/// A widening decided before any weight is read: the spaces, the channels each gets, the
/// student graph (shapes inferred, unprintable shortcuts refused) and the report's parts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spaces: Spaces,
    /// The widened spaces' ids with the channels each gets, in the order they are widened.
    pub steps: Vec<(usize, usize)>,
    pub student: Graph,
    pub changes: Vec<SpaceChange>,
    pub notes: Vec<String>,
    pub exact: bool,
}

impl Plan {
    /// The fill of step `k` (one RNG stream per space, so widening one space does not
    /// shift another's draws).
    fn fill(&self, k: usize, args: &WidenArgs, seed: u64) -> Box<dyn Fill> {
        let (id, e) = self.steps[k];
        let ctx = FillCtx {
            c: self.spaces.spaces[id].width,
            e,
            rng: ChaCha8Rng::seed_from_u64(
                seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k as u64 + 1)),
            ),
            init: args.init,
        };
        make_fill(args.method, ctx, args.noise)
    }
}

/// Plans widening `graph` as `args` asks; reads no weights.
pub fn plan(graph: &Graph, args: &WidenArgs) -> Result<Plan> {
    if args.noise.is_some() && args.method != Method::Net2net {
        return Err(Error::usage(
            format!(
                "--noise only applies to net2net, not {}",
                args.method.name()
            ),
            None,
        ));
    }
    let spaces = channel_spaces(graph);
    let ids = resolve(graph, &spaces, &args.target)?;
    let mut g = graph.clone();
    let mut steps = Vec::new();
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    for &id in &ids {
        let space = &spaces.spaces[id];
        let (e, note) = added(space.width, args.amount, args.method, &space.label)?;
        notes.extend(note);
        steps.push((id, e));
        widen_space_graph(&mut g, space, e);
        if let Target::Name(name) = &args.target {
            let adds: Vec<&str> = space
                .members
                .iter()
                .filter(|m| m.op == "add")
                .map(|m| m.name.as_str())
                .collect();
            if !adds.is_empty() {
                notes.push(format!(
                    "`{name}` lies in a residual stream: channels joined by shortcuts widen together, so rows {} widen with it (through {})",
                    space.rows.join(", "),
                    adds.join(", ")
                ));
            }
        }
        changes.push(SpaceChange {
            label: space.label.clone(),
            rows: space.rows.clone(),
            from: space.width,
            to: space.width + e,
            members: space.members.iter().map(|m| m.name.clone()).collect(),
            producers: space.producers.iter().map(|m| m.name.clone()).collect(),
            params: space.params.iter().map(|m| m.name.clone()).collect(),
            consumers: space.consumers.iter().map(|m| m.name.clone()).collect(),
        });
    }
    reinfer_shapes(&mut g)?;
    refuse_silent_shortcuts(&g, &args.target)?;
    let exact = match args.method {
        Method::R2r | Method::Netmorph => true,
        Method::Net2net => args.noise.is_none_or(|s| s == 0.0),
        Method::Random => false,
    };
    Ok(Plan {
        spaces,
        steps,
        student: g,
        changes,
        notes,
        exact,
    })
}

/// Computes step `k` of `plan` (one space) through `store`: the same draws, in the same
/// order, whichever store holds the tensors, as long as the steps run in order.
pub fn apply_step(
    graph: &Graph,
    plan: &Plan,
    k: usize,
    store: &mut dyn TensorStore,
    args: &WidenArgs,
    seed: u64,
) -> Result<()> {
    let (id, e) = plan.steps[k];
    let mut fill = plan.fill(k, args, seed);
    widen_space(graph, store, &plan.spaces.spaces[id], e, fill.as_mut())
}

/// `graph` with the first `k` steps of `plan` applied (shapes inferred): the network a
/// step-by-step proof compares step `k` against.
pub fn graph_after(graph: &Graph, plan: &Plan, k: usize) -> Result<Graph> {
    let mut g = graph.clone();
    for &(id, e) in &plan.steps[..k] {
        widen_space_graph(&mut g, &plan.spaces.spaces[id], e);
    }
    reinfer_shapes(&mut g)?;
    Ok(g)
}

/// One call a widening step makes on a tensor.
#[derive(Debug, Clone)]
pub struct Touch {
    /// The step (index into [`Plan::steps`]).
    pub step: usize,
    pub part: Part,
    /// The parameter's kind, for [`Part::Entries`].
    pub kind: Option<ParamKind>,
    /// Columns per channel (entries after a flatten, consumer columns).
    pub cols: usize,
    /// RNG words the step's fill draws before this call.
    pub offset: u128,
}

/// Every tensor that widening as `plan` touches, with its touches in step order, and each
/// touch's place in its step's random stream; `shapes` holds every teacher tensor's shape
/// (biases are optional). With [`apply_touches`], a tensor can be widened on its own, in
/// any order or in parallel, to exactly the values [`apply_step`]s give it.
pub fn tensor_touches(
    graph: &Graph,
    plan: &Plan,
    args: &WidenArgs,
    seed: u64,
    shapes: &HashMap<String, Vec<usize>>,
) -> Vec<(String, Vec<Touch>)> {
    let mut shapes = shapes.clone();
    let mut out: Vec<(String, Vec<Touch>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for k in 0..plan.steps.len() {
        let (id, e) = plan.steps[k];
        let space = &plan.spaces.spaces[id];
        let fill = plan.fill(k, args, seed);
        let mut offset = 0u128;
        let mut touch = |name: String, part: Part, kind: Option<ParamKind>, cols: usize| {
            let Some(shape) = shapes.get_mut(&name) else {
                return;
            };
            let t = Touch {
                step: k,
                part,
                kind,
                cols,
                offset,
            };
            offset += fill.words(part, shape, cols);
            match part {
                Part::Rows | Part::Bias => shape[0] += e,
                Part::Entries => shape[0] += e * cols,
                Part::Columns => shape[1] += e * cols,
            }
            let i = *at.entry(name.clone()).or_insert_with(|| {
                out.push((name, Vec::new()));
                out.len() - 1
            });
            out[i].1.push(t);
        };
        for p in &space.producers {
            let name = &graph.g[p.node].name;
            touch(format!("{name}.weight"), Part::Rows, None, 1);
            touch(format!("{name}.bias"), Part::Bias, None, 1);
        }
        for p in &space.params {
            let cols = space.member(p.node).map_or(1, |m| m.cols);
            let name = &graph.g[p.node].name;
            for slot in graph.g[p.node].op.param_slots() {
                if slot.kind != ParamKind::NumBatchesTracked {
                    touch(
                        format!("{name}.{}", slot.suffix),
                        Part::Entries,
                        Some(slot.kind),
                        cols,
                    );
                }
            }
        }
        for c in &space.consumers {
            let name = &graph.g[c.node].name;
            touch(format!("{name}.weight"), Part::Columns, None, c.cols);
        }
    }
    out
}

/// Tensor `name` (teacher value `t`) after `touches` (from [`tensor_touches`]).
pub fn apply_touches(
    plan: &Plan,
    args: &WidenArgs,
    seed: u64,
    name: &str,
    mut t: ArrayD<f64>,
    touches: &[Touch],
) -> Result<ArrayD<f64>> {
    let layer = name.rsplit_once('.').map_or(name, |(l, _)| l);
    for tc in touches {
        let (_, e) = plan.steps[tc.step];
        let mut fill = plan.fill(tc.step, args, seed);
        let rng = fill.rng();
        let start = rng.get_word_pos();
        rng.set_word_pos(start + tc.offset);
        t = match tc.part {
            Part::Rows => {
                let rows = fill.rows(&t);
                grew("output rows", layer, rows.shape()[0], e)?;
                append0(t, &rows)
            }
            Part::Bias => {
                let nb = fill.bias(&t);
                append0(t, &nb)
            }
            Part::Entries => {
                let kind = tc.kind.expect("entries touches carry their kind");
                let new = fill.entries(kind, &t, tc.cols);
                grew("entries", name, new.len(), e * tc.cols)?;
                append0(t, &new)
            }
            Part::Columns => {
                let nw = fill.columns(&t, tc.cols);
                grew(
                    "input columns",
                    layer,
                    nw.shape()[1] - t.shape()[1],
                    e * tc.cols,
                )?;
                nw
            }
        };
    }
    Ok(t)
}

/// Widens `graph` as `args` asks, filling new weights by `args.method`, seeded.
pub fn widen(graph: &Graph, params: &Params, args: &WidenArgs, seed: u64) -> Result<Widened> {
    params.check(graph)?;
    let plan = plan(graph, args)?;
    let mut p = params.clone();
    for k in 0..plan.steps.len() {
        apply_step(graph, &plan, k, &mut p, args, seed)?;
    }
    p.check(&plan.student)?;
    Ok(Widened {
        graph: plan.student,
        params: p,
        changes: plan.changes,
        notes: plan.notes,
        exact: plan.exact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Widening tensor by tensor (each call's draws found by [`Fill::words`]) gives exactly
    /// what the step-by-step widening gives, for every method and init, noise included.
    #[test]
    fn tensor_by_tensor_equals_step_by_step() {
        let src = std::fs::read_to_string("examples/resnet_cifar10.arch").unwrap();
        let g = crate::lower::compile(&src, &[("r".into(), "1/4".into())]).unwrap();
        let teacher = crate::params::init(&g, 3, true);
        let shapes: HashMap<String, Vec<usize>> = teacher
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape().to_vec()))
            .collect();
        for method in [
            Method::R2r,
            Method::Netmorph,
            Method::Net2net,
            Method::Random,
        ] {
            for init in [Init::Match, Init::He] {
                let noise = (method == Method::Net2net).then_some(0.1);
                let args = WidenArgs {
                    target: Target::All,
                    amount: Amount::By(1.5),
                    method,
                    init,
                    noise,
                };
                let w = widen(&g, &teacher, &args, 11).unwrap();
                let plan = plan(&g, &args).unwrap();
                let touches = tensor_touches(&g, &plan, &args, 11, &shapes);
                assert!(!touches.is_empty());
                for (name, tc) in &touches {
                    let t = teacher.tensors[name].clone();
                    let got = apply_touches(&plan, &args, 11, name, t, tc).unwrap();
                    assert_eq!(&got, &w.params.tensors[name], "{method:?} {init:?} {name}");
                }
            }
        }
    }

    /// Parallel chunked draws are the sequential draws, and leave the stream where they
    /// would.
    #[test]
    fn parallel_draws_equal_sequential_draws() {
        let n = (1 << 15) * 3 + 17;
        for words in [2u128, 4] {
            let mut a = ChaCha8Rng::seed_from_u64(9);
            let mut b = a.clone();
            let f = |r: &mut ChaCha8Rng| match words {
                2 => uniform(r, -1.0, 1.0),
                _ => crate::params::normal(r),
            };
            let seq: Vec<f64> = (0..n).map(|_| f(&mut a)).collect();
            assert_eq!(draw(&mut b, n, words, f), seq);
            assert_eq!(a.get_word_pos(), b.get_word_pos());
        }
    }

    #[test]
    fn fast_concatenation_matches_ndarray() {
        let a = ArrayD::from_shape_fn(IxDyn(&[3, 2, 2]), |i| (i[0] * 4 + i[1] * 2 + i[2]) as f64);
        let b = ArrayD::from_shape_fn(IxDyn(&[3, 1, 2]), |i| 100.0 + (i[0] * 2 + i[2]) as f64);
        let slow = |axis, p: &[&ArrayD<f64>]| {
            let v: Vec<_> = p.iter().map(|x| x.view()).collect();
            concatenate(Axis(axis), &v).unwrap()
        };
        assert_eq!(cat(1, &[&a, &b]), slow(1, &[&a, &b]));
        let minus = b.mapv(|x| -x);
        assert_eq!(cat_pair(&a, &b), slow(1, &[&a, &b, &minus]));
        let c = ArrayD::from_shape_fn(IxDyn(&[1, 2, 2]), |i| -(i[1] as f64) - i[2] as f64);
        assert_eq!(append0(a.clone(), &c), slow(0, &[&a, &c]));
        // A transposed part takes the general path.
        let t = a.clone().reversed_axes();
        let u = ArrayD::from_shape_fn(IxDyn(&[2, 2, 1]), |i| i[0] as f64);
        assert_eq!(cat(2, &[&t, &u]), slow(2, &[&t, &u]));
    }
}
