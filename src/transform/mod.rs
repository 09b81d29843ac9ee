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
//! A widening is planned before any weight is read ([`plan`]): the student graph and, per
//! tensor, the calls each step makes on it ([`tensor_touches`]). Every call draws from its
//! own stream keyed by (seed, step, tensor, part), so one tensor is rewritten on its own
//! ([`apply_touches`]) to the same bits in memory, streamed in file order, or for a local
//! proof: the paths agree by construction.
//!
//! Transforms are pure: `(graph, params, args, seed) -> (graph', params')`; they never run
//! the network. Proving is [`crate::prove`]'s job.

pub mod chacha;
pub mod copy_deeper;
pub mod deepen;
pub mod fill;
pub mod lazy;
pub mod methods;
pub use methods::{net2net, netmorph, r2r, random};
pub mod morph_kernel;
pub mod net2net_deeper;
pub mod netmorph_deeper;
pub mod norms;
pub mod r2r_deeper;
pub mod random_deeper;
pub mod target;

use std::collections::HashMap;

use ndarray::ArrayD;
use rayon::prelude::*;
use serde::Serialize;

use crate::analysis::{channel_spaces, Space, Spaces};
use crate::error::{Error, Result};
use crate::exec::Mode;
use crate::ir::{Activation, Graph, Op, ParamKind};
use crate::params::Params;
use norms::StreamRule;

pub(crate) use fill::uniform;
pub use fill::{
    append0, block_index, cat, cat_pair, default_entries, fan_in, keyed_rng, std_of, with_dim,
    Fill, FillCtx, Part,
};
pub use methods::{Method, MethodInfo, Noise, METHODS};
use target::{added, refuse_silent_shortcuts};
pub use target::{resolve, target_names};

/// In which batch-norm modes a method preserves the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exactness {
    /// Exact in eval and train mode.
    Exact,
    /// Exact with running statistics only; batch statistics change it (Net2DeeperNet).
    EvalOnly,
    /// Not function preserving (the random baseline): measured, never proved.
    NotPreserving,
}

impl Exactness {
    /// Whether a proof in `mode` must pass for the rewrite to be accepted.
    pub fn required(self, mode: Mode) -> bool {
        match self {
            Exactness::Exact => true,
            Exactness::EvalOnly => mode == Mode::Eval,
            Exactness::NotPreserving => false,
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
    /// Every free draw is zero: the linear part of a widening's edit, which maps Adam's
    /// moments ([`crate::optim`]); never parsed from the command line.
    Zero,
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
    /// A stage or row whole: its stream and the hidden widths of every block in it.
    Stage(String),
    /// Every widenable space.
    All,
}

impl Target {
    pub fn show(&self) -> String {
        match self {
            Target::Name(n) => n.clone(),
            Target::Stage(n) => format!("--stage {n}"),
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
    /// Net2WiderNet only: symmetry-breaking noise (cancelling, or approximate).
    pub noise: Option<Noise>,
}

/// One widened space, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceChange {
    pub label: String,
    /// What the widths count: channels, features or kv groups.
    pub unit: crate::analysis::Unit,
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
    /// Whether the method is function preserving (random pad and Net2Net with
    /// `--noise-approx` are not).
    pub exact: bool,
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

fn grew(what: &str, name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::weights(format!(
        "widening `{name}` gave {got} new {what} where the plan says {want}"
    )))
}

/// Gives the layers of `space` `e` more channels (shapes are re-inferred afterwards);
/// `rule` says how a normalised space's norms change.
fn widen_space_graph(graph: &mut Graph, space: &Space, e: usize, rule: Option<StreamRule>) {
    for p in &space.producers {
        match &mut graph.g[p.node].op {
            Op::Conv2d(c) => c.out_channels += e * p.per,
            Op::Linear(l) => l.out_features += e * p.per,
            Op::Embedding(t) => t.dim += e,
            Op::Positions(t) => t.dim += e,
            Op::ClassToken(t) => t.dim += e,
            _ => unreachable!("producers are convs, linears and token writers"),
        }
    }
    for p in &space.params {
        let added = e * space.member(p.node).map_or(1, |m| m.cols);
        match &mut graph.g[p.node].op {
            Op::BatchNorm(b) => b.channels += added,
            Op::Activation(Activation::Prelu { channels }) => *channels += added,
            Op::Norm(n) => {
                n.dim += added;
                if let Some(StreamRule::Held { eps_scale, .. }) = rule {
                    n.eps *= eps_scale;
                }
            }
            _ => unreachable!("channel-wise parameters are batch norms, PReLUs and norms"),
        }
    }
    for m in &space.members {
        // An option-A shortcut's output holds its input's channels, then its zeros: it
        // gains the channels its value gains.
        if let Op::ShortcutPad(p) = &mut graph.g[m.node].op {
            p.out_channels += e;
        }
    }
    for c in &space.consumers {
        match &mut graph.g[c.node].op {
            Op::Conv2d(conv) => conv.in_channels += e * c.cols,
            Op::Linear(l) => l.in_features += e * c.cols,
            Op::TiedLinear(l) => l.dim += e * c.cols,
            _ => unreachable!("consumers are convs and linears"),
        }
    }
    for m in &space.members {
        if let Op::Attention(a) = &mut graph.g[m.node].op {
            // A channel is a kv group with its query heads.
            a.heads += e * (a.heads / a.kv_heads);
            a.kv_heads += e;
        }
    }
}
/// Where one step's new channels land in one space holding the widened space's channels
/// (the space itself, a pad shortcut's stream, a concatenation).
#[derive(Debug, Clone)]
pub struct Landing {
    pub space: usize,
    /// The widened space's runs in this space, `(offset, width)` in channels, at the
    /// widths before the step: each gets [`Plan::ctxs`]'s `e` new channels at its end.
    pub runs: Vec<(usize, usize)>,
    /// This space's channels before the step.
    pub width: usize,
}

/// A widening decided before any weight is read: the spaces, the channels each gets, the
/// student graph (shapes inferred, unprintable shortcuts refused) and the report's parts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spaces: Spaces,
    /// The widened spaces' ids with the channels each gets, in the order they are widened.
    pub steps: Vec<(usize, usize)>,
    /// For each step, the spaces its channels land in.
    pub landings: Vec<Vec<Landing>>,
    /// For each step, the fill's sizes: channels of one run before, channels each run
    /// gains (a grouped space widens each group; a plain one is one run).
    pub ctxs: Vec<(usize, usize)>,
    /// For each step, one space listing every layer it touches (for local proofs' regions).
    pub footprints: Vec<Space>,
    /// For each step of a normalised space, how its norms keep their statistics.
    pub rules: Vec<Option<StreamRule>>,
    pub student: Graph,
    pub changes: Vec<SpaceChange>,
    pub notes: Vec<String>,
    pub exact: bool,
    /// Whether the fills compute values a narrow dtype cannot hold exactly (replica
    /// divisions, rescaled norm scales, means).
    pub rounds: bool,
}

impl Plan {
    /// The fill of step `k`.
    fn fill(&self, k: usize, args: &WidenArgs, seed: u64) -> Box<dyn Fill> {
        let (c, e) = self.ctxs[k];
        let ctx = FillCtx {
            c,
            e,
            init: args.init,
        };
        if let Some(rule) = self.rules[k] {
            return norms::fill(rule, ctx, args.noise);
        }
        let mut step_rng = keyed_rng(seed, k, "", Part::Step);
        (args.method.info().fill)(ctx, args.noise, &mut step_rng)
    }
}

/// Plans widening `graph` as `args` asks; reads no weights.
pub fn plan(graph: &Graph, args: &WidenArgs) -> Result<Plan> {
    let info = args.method.info();
    if let Some(n) = args.noise {
        n.check()?;
        if !info.noisy {
            let noisy: Vec<&str> = METHODS.iter().filter(|m| m.noisy).map(|m| m.name).collect();
            return Err(Error::usage(
                format!(
                    "{} only applies to {}, not {}",
                    n.flag(),
                    noisy.join(", "),
                    info.name
                ),
                None,
            ));
        }
    }
    let spaces = channel_spaces(graph);
    let ids = resolve(graph, &spaces, &args.target)?;
    let mut g = graph.clone();
    let mut steps = Vec::new();
    let mut rules = Vec::new();
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let mut rounds = info.rounds;
    let mut landings = Vec::new();
    let mut ctxs = Vec::new();
    let mut footprints = Vec::new();
    // Widths as the steps go: each space's channels, and its own channels.
    let mut cur: Vec<usize> = spaces.spaces.iter().map(|s| s.width).collect();
    let mut own: Vec<usize> = spaces.spaces.iter().map(|s| s.own).collect();
    for &id in &ids {
        let space = &spaces.spaces[id];
        let grown = cur[id] - space.width;
        let (e, note) = added(space.width, grown, args.amount, args.method, &space.label)?;
        target::check_groups(space, grown, e, args.method)?;
        notes.extend(note);
        let groups = space.groups.max(1);
        let e_run = e / groups;
        ctxs.push((own[id] / groups, e_run));
        let land = landing(&spaces, id, &cur, &own);
        footprints.push(footprint(&spaces, &land));
        let rule = match space.norm {
            Some(_) => {
                let r = norms::rule(args.method, space, e)?;
                notes.push(r.note(space, e));
                rounds |= r.rounds();
                Some(r)
            }
            None => None,
        };
        steps.push((id, e));
        rules.push(rule);
        for l in &land {
            let added = l.runs.len() * e_run;
            let r = if l.space == id { rule } else { None };
            widen_space_graph(&mut g, &spaces.spaces[l.space], added, r);
            cur[l.space] += added;
        }
        own[id] += e;
        landings.push(land);
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
            unit: space.unit,
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
    if rules
        .iter()
        .any(|r| matches!(r, Some(StreamRule::Held { .. })))
    {
        norms::header_eps(&mut g)?;
    }
    let exact = info.exact && !args.noise.is_some_and(|n| n.approximate());
    notes.extend(args.noise.and_then(|n| n.note(info.title)));
    Ok(Plan {
        spaces,
        steps,
        landings,
        ctxs,
        footprints,
        rules,
        student: g,
        changes,
        notes,
        exact,
        rounds,
    })
}

/// `graph` with the first `k` steps of `plan` applied (shapes inferred): the network a
/// step-by-step proof compares step `k` against.
pub fn graph_after(graph: &Graph, plan: &Plan, k: usize) -> Result<Graph> {
    graph_steps(graph, plan, 0..k)
}

/// `graph`, the network after the steps of `plan` before `steps.start`, taken through
/// `steps` (shapes inferred): a proof walking the steps in order applies each once.
pub fn graph_steps(graph: &Graph, plan: &Plan, steps: std::ops::Range<usize>) -> Result<Graph> {
    let mut g = graph.clone();
    for i in steps {
        let (id, _) = plan.steps[i];
        for l in &plan.landings[i] {
            let r = if l.space == id {
                plan.rules.get(i).copied().flatten()
            } else {
                None
            };
            let added = l.runs.len() * plan.ctxs[i].1;
            widen_space_graph(&mut g, &plan.spaces.spaces[l.space], added, r);
        }
    }
    reinfer_shapes(&mut g)?;
    Ok(g)
}

/// Where widening space `id` lands: every space holding a run of it, with the runs'
/// offsets at the current widths (`cur` channels, `own` own channels per space).
fn landing(spaces: &Spaces, id: usize, cur: &[usize], own: &[usize]) -> Vec<Landing> {
    let mut v = Vec::new();
    for t in &spaces.spaces {
        if !t.layout.contains(&id) {
            continue;
        }
        let mut runs = Vec::new();
        let mut off = 0;
        for &o in &t.layout {
            let w = own[o] / spaces.spaces[o].groups.max(1);
            if o == id {
                runs.push((off, w));
            }
            off += w;
        }
        debug_assert_eq!(off, cur[t.id], "runs cover space `{}`", t.label);
        v.push(Landing {
            space: t.id,
            runs,
            width: cur[t.id],
        });
    }
    v
}

/// One space listing every value and layer of the spaces in `land` (the widened one
/// first): a step's region for a local proof.
fn footprint(spaces: &Spaces, land: &[Landing]) -> Space {
    let mut ids: Vec<usize> = land.iter().map(|l| l.space).collect();
    ids.sort_by_key(|&i| !spaces.spaces[i].layout.iter().all(|&o| o == i));
    let mut f = spaces.spaces[ids[0]].clone();
    for &i in &ids[1..] {
        let s = &spaces.spaces[i];
        f.members.extend(s.members.iter().cloned());
        f.producers.extend(s.producers.iter().cloned());
        f.params.extend(s.params.iter().cloned());
        f.consumers.extend(s.consumers.iter().cloned());
    }
    f
}

/// One call a widening step makes on a tensor.
#[derive(Debug, Clone)]
pub struct Touch {
    /// The step (index into [`Plan::steps`]).
    pub step: usize,
    pub part: Part,
    /// The parameter's kind, for [`Part::Entries`].
    pub kind: Option<ParamKind>,
    /// Rows, entries or columns per channel (a producer's rows per kv group, entries after
    /// a flatten, consumer columns).
    pub cols: usize,
    /// Where the new channels go: the widened space's runs `(offset, width)` in the
    /// tensor's space, in channels ([`Landing::runs`]).
    pub runs: Vec<(usize, usize)>,
    /// The tensor's space's channels before the step.
    pub width: usize,
    /// A grouped consumer's groups: each group of rows reads its own slice of channels.
    pub row_groups: usize,
}

/// Every tensor that widening as `plan` touches, with its touches in step order; `has`
/// says whether a teacher tensor exists (biases are optional). With [`apply_touches`], a
/// tensor can be widened on its own, in any order or in parallel.
pub fn tensor_touches(
    graph: &Graph,
    plan: &Plan,
    has: &dyn Fn(&str) -> bool,
) -> Vec<(String, Vec<Touch>)> {
    let mut out: Vec<(String, Vec<Touch>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (k, land) in plan.landings.iter().enumerate() {
        for l in land {
            let space = &plan.spaces.spaces[l.space];
            let mut touch = |name: String,
                             part: Part,
                             kind: Option<ParamKind>,
                             cols: usize,
                             row_groups: usize| {
                if !has(&name) {
                    return;
                }
                let t = Touch {
                    step: k,
                    part,
                    kind,
                    cols,
                    runs: l.runs.clone(),
                    width: l.width,
                    row_groups,
                };
                let i = *at.entry(name.clone()).or_insert_with(|| {
                    out.push((name, Vec::new()));
                    out.len() - 1
                });
                out[i].1.push(t);
            };
            for p in &space.producers {
                let name = &graph.g[p.node].name;
                match graph.g[p.node].op {
                    Op::Conv2d(_) | Op::Linear(_) => {
                        touch(format!("{name}.weight"), Part::Rows, None, p.per, 1);
                        touch(format!("{name}.bias"), Part::Bias, None, p.per, 1);
                    }
                    _ => touch(format!("{name}.weight"), Part::Features, None, 1, 1),
                }
            }
            for p in &space.params {
                let cols = space.member(p.node).map_or(1, |m| m.cols);
                let name = &graph.g[p.node].name;
                let part = match graph.g[p.node].op {
                    Op::Norm(_) => Part::Norm,
                    _ => Part::Entries,
                };
                for slot in graph.g[p.node].op.param_slots() {
                    if slot.kind != ParamKind::NumBatchesTracked {
                        touch(
                            format!("{name}.{}", slot.suffix),
                            part,
                            Some(slot.kind),
                            cols,
                            1,
                        );
                    }
                }
            }
            for c in &space.consumers {
                let name = &graph.g[c.node].name;
                let groups = match &graph.g[c.node].op {
                    Op::Conv2d(conv) => conv.groups.max(1),
                    _ => 1,
                };
                touch(
                    format!("{name}.weight"),
                    Part::Columns,
                    None,
                    c.cols,
                    groups,
                );
            }
        }
    }
    out
}

/// `t` with each run `(offset, width)` (in channels of `unit` entries along `axis`)
/// replaced by `f` of its slice, the rest kept.
fn splice(
    t: &ArrayD<f64>,
    axis: usize,
    runs: &[(usize, usize)],
    unit: usize,
    f: &mut dyn FnMut(&ArrayD<f64>) -> ArrayD<f64>,
) -> ArrayD<f64> {
    let mut parts: Vec<ArrayD<f64>> = Vec::new();
    let mut at = 0;
    let ax = ndarray::Axis(axis);
    for &(off, w) in runs {
        let (a, b) = (off * unit, (off + w) * unit);
        if a > at {
            parts.push(t.slice_axis(ax, (at..a).into()).to_owned());
        }
        parts.push(f(&t.slice_axis(ax, (a..b).into()).to_owned()));
        at = b;
    }
    if at < t.shape()[axis] {
        parts.push(t.slice_axis(ax, (at..).into()).to_owned());
    }
    let refs: Vec<&ArrayD<f64>> = parts.iter().collect();
    cat(axis, &refs)
}

/// A touch's new channels go after one run covering the whole tensor (a plain space): the
/// fill applies to the whole tensor.
fn whole(tc: &Touch) -> bool {
    tc.row_groups <= 1 && tc.runs.len() == 1 && tc.runs[0] == (0, tc.width)
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
        let fill = plan.fill(tc.step, args, seed);
        let rng = &mut keyed_rng(seed, tc.step, name, tc.part);
        if !whole(tc) {
            t = apply_runs(&*fill, tc, name, t, rng)?;
            continue;
        }
        let e = plan.ctxs[tc.step].1;
        t = match tc.part {
            Part::Step => unreachable!("tensors are not touched by step draws"),
            Part::Rows => {
                let rows = fill.rows(&t, tc.cols, rng);
                grew("output rows", layer, rows.shape()[0], e * tc.cols)?;
                append0(t, &rows)
            }
            Part::Bias => {
                let nb = fill.bias(&t, tc.cols, rng);
                append0(t, &nb)
            }
            Part::Features => {
                let nf = fill.features(&t, rng);
                let last = t.ndim() - 1;
                grew("features", layer, nf.shape()[last], e)?;
                cat(last, &[&t, &nf])
            }
            Part::Norm => {
                let kind = tc.kind.expect("norm touches carry their kind");
                let nt = fill.norm(kind, &t, rng);
                grew("entries", name, nt.len() - t.len(), e)?;
                nt
            }
            Part::Entries => {
                let kind = tc.kind.expect("entries touches carry their kind");
                let new = fill.entries(kind, &t, tc.cols, rng);
                grew("entries", name, new.len(), e * tc.cols)?;
                append0(t, &new)
            }
            Part::Columns => {
                let nw = fill.columns(&t, tc.cols, rng);
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

/// Tensor `name` after touch `tc`, whose new channels go after several runs (the groups of
/// a grouped space, a space's channels inside a pad shortcut's stream or a
/// concatenation): the fill applies to each run's slice on its own, in order.
fn apply_runs(
    fill: &dyn Fill,
    tc: &Touch,
    name: &str,
    t: ArrayD<f64>,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<ArrayD<f64>> {
    let layer = name.rsplit_once('.').map_or(name, |(l, _)| l);
    let e = fill.added();
    let want = e * tc.runs.len() * tc.cols;
    let before = t.shape().to_vec();
    let out = match tc.part {
        Part::Rows => splice(&t, 0, &tc.runs, tc.cols, &mut |s| {
            cat(0, &[s, &fill.rows(s, tc.cols, rng)])
        }),
        Part::Bias => splice(&t, 0, &tc.runs, tc.cols, &mut |s| {
            cat(0, &[s, &fill.bias(s, tc.cols, rng)])
        }),
        Part::Entries => {
            let kind = tc.kind.expect("entries touches carry their kind");
            splice(&t, 0, &tc.runs, tc.cols, &mut |s| {
                cat(0, &[s, &fill.entries(kind, s, tc.cols, rng)])
            })
        }
        Part::Columns => {
            let g = tc.row_groups.max(1);
            let per = tc.width / g;
            let rows = t.shape()[0] / g;
            let mut blocks = Vec::with_capacity(g);
            for r in 0..g {
                let block = t
                    .slice_axis(ndarray::Axis(0), (r * rows..(r + 1) * rows).into())
                    .to_owned();
                let runs: Vec<(usize, usize)> = tc
                    .runs
                    .iter()
                    .filter(|(o, _)| (r * per..(r + 1) * per).contains(o))
                    .map(|&(o, w)| (o - r * per, w))
                    .collect();
                blocks.push(splice(&block, 1, &runs, tc.cols, &mut |s| {
                    fill.columns(s, tc.cols, rng)
                }));
            }
            let refs: Vec<&ArrayD<f64>> = blocks.iter().collect();
            let out = cat(0, &refs);
            grew(
                "input columns",
                layer,
                (out.shape()[1] - before[1]) * g,
                want,
            )?;
            return Ok(out);
        }
        Part::Features | Part::Norm | Part::Step => {
            return Err(Error::weights(format!(
                "`{name}` lies in a grouped or concatenated space, which widens only convolutions, linears and batch norms"
            )))
        }
    };
    let what = if tc.part == Part::Entries {
        "entries"
    } else {
        "output rows"
    };
    grew(what, layer, out.shape()[0] - before[0], want)?;
    Ok(out)
}

/// A planned widening with its per-tensor touches: everything needed to compute any
/// student tensor from its teacher tensor, alone.
pub struct Widening<'a> {
    pub graph: &'a Graph,
    pub plan: Plan,
    pub args: &'a WidenArgs,
    pub seed: u64,
    touches: HashMap<String, Vec<Touch>>,
}

impl<'a> Widening<'a> {
    /// Plans `args` on `graph`; `has` says which teacher tensors exist.
    pub fn new(
        graph: &'a Graph,
        args: &'a WidenArgs,
        seed: u64,
        has: &dyn Fn(&str) -> bool,
    ) -> Result<Widening<'a>> {
        let plan = plan(graph, args)?;
        let touches = tensor_touches(graph, &plan, has).into_iter().collect();
        Ok(Widening {
            graph,
            plan,
            args,
            seed,
            touches,
        })
    }

    /// Whether widening changes tensor `name`.
    pub fn touches(&self, name: &str) -> bool {
        self.touches.contains_key(name)
    }

    /// Tensor `name` (value `t` before step `steps.start`) after the steps in `steps`
    /// (all of them: `0..usize::MAX`, or [`Widening::ALL`]).
    pub fn tensor(
        &self,
        name: &str,
        t: ArrayD<f64>,
        steps: std::ops::Range<usize>,
    ) -> Result<ArrayD<f64>> {
        match self.touches.get(name) {
            None => Ok(t),
            Some(tc) => {
                // Touches are in step order.
                let from = tc.iter().take_while(|x| x.step < steps.start).count();
                let to = tc.iter().take_while(|x| x.step < steps.end).count();
                apply_touches(&self.plan, self.args, self.seed, name, t, &tc[from..to])
            }
        }
    }

    /// Every step.
    pub const ALL: std::ops::Range<usize> = 0..usize::MAX;

    /// Tensor `name` after every step, as [`Widening::tensor`] computes it, but range by
    /// range ([`lazy::Lazy`]) from the teacher's values `base` (shape `shape`): `None`
    /// when a touch is not R2WiderR's rows or columns of a whole space, or none is.
    pub fn lazy(
        &self,
        name: &str,
        shape: &[usize],
        base: &lazy::Base,
        ready: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<lazy::Lazy>> {
        let Some(tc) = self.touches.get(name).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let touches: Vec<(Touch, Option<fill::Lazily>)> = tc
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    self.plan.fill(t.step, self.args, self.seed).lazily(),
                )
            })
            .collect();
        lazy::Lazy::new(self.seed, name, shape, &touches, base, ready)
    }

    /// The student's tensors from the teacher's `params` (touched ones computed in
    /// parallel, the rest shared unchanged).
    pub fn student_params(&self, params: &Params) -> Result<Params> {
        let names: Vec<&String> = params.tensors.keys().filter(|n| self.touches(n)).collect();
        let new: Vec<(String, ArrayD<f64>)> = names
            .into_par_iter()
            .map(|n| {
                Ok((
                    n.clone(),
                    self.tensor(n, params.tensors[n].clone(), Self::ALL)?,
                ))
            })
            .collect::<Result<_>>()?;
        let mut p = params.clone();
        p.tensors.extend(new);
        p.check(&self.plan.student)?;
        Ok(p)
    }

    /// The student of this widening, from the teacher's `params`.
    pub fn widened(self, params: &Params) -> Result<Widened> {
        let params = self.student_params(params)?;
        Ok(Widened {
            graph: self.plan.student,
            params,
            changes: self.plan.changes,
            notes: self.plan.notes,
            exact: self.plan.exact,
        })
    }
}

/// Widens `graph` as `args` asks, filling new weights by `args.method`, seeded.
pub fn widen(graph: &Graph, params: &Params, args: &WidenArgs, seed: u64) -> Result<Widened> {
    params.check(graph)?;
    Widening::new(graph, args, seed, &|n| params.tensors.contains_key(n))?.widened(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{concatenate, Axis, IxDyn};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A tensor's rewrite depends only on (seed, step, tensor, part): widening the tensors
    /// in reverse order gives the same bits as in file order, for every method and init.
    #[test]
    fn any_order_gives_the_same_bits() {
        let src = std::fs::read_to_string("examples/resnet_cifar10.arch").unwrap();
        let g = crate::lower::compile(&src, &[("r".into(), "1/4".into())]).unwrap();
        let teacher = crate::params::init(&g, 3, true);
        for method in METHODS.iter().map(|m| m.method) {
            for init in [Init::Match, Init::He] {
                // Net2Net's noise draws per tensor too: cancelling with one init,
                // approximate with the other.
                let noise = method.info().noisy.then_some(if init == Init::Match {
                    Noise::Cancelling(0.1)
                } else {
                    Noise::Approx(0.1)
                });
                let args = WidenArgs {
                    target: Target::All,
                    amount: Amount::By(1.5),
                    method,
                    init,
                    noise,
                };
                let w = widen(&g, &teacher, &args, 11).unwrap();
                let plan = plan(&g, &args).unwrap();
                let touches = tensor_touches(&g, &plan, &|n| teacher.tensors.contains_key(n));
                assert!(!touches.is_empty());
                let mut changed = 0;
                for (name, tc) in touches.iter().rev() {
                    let t = teacher.tensors[name].clone();
                    let got = apply_touches(&plan, &args, 11, name, t, tc).unwrap();
                    assert_eq!(&got, &w.params.tensors[name], "{method:?} {init:?} {name}");
                    changed += usize::from(got.shape() != teacher.tensors[name].shape());
                }
                assert_eq!(changed, touches.len(), "every touched tensor grows");
                // Another seed draws other weights (except NetMorph's zero columns).
                let other = widen(&g, &teacher, &args, 12).unwrap();
                assert_ne!(
                    other.params.tensors, w.params.tensors,
                    "{method:?} {init:?}"
                );
            }
        }
    }

    /// Streams are keyed: another step, tensor or part gives other bits.
    #[test]
    fn keyed_streams_differ_by_every_key_part() {
        use rand::Rng;
        let first = |mut r: ChaCha8Rng| r.random::<u64>();
        let a = first(keyed_rng(1, 0, "conv1.weight", Part::Rows));
        assert_eq!(a, first(keyed_rng(1, 0, "conv1.weight", Part::Rows)));
        assert_ne!(a, first(keyed_rng(2, 0, "conv1.weight", Part::Rows)));
        assert_ne!(a, first(keyed_rng(1, 1, "conv1.weight", Part::Rows)));
        assert_ne!(a, first(keyed_rng(1, 0, "conv1.bias", Part::Rows)));
        assert_ne!(a, first(keyed_rng(1, 0, "conv1.weight", Part::Columns)));
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
                2 => fill::uniform(r, -1.0, 1.0),
                _ => crate::params::normal(r),
            };
            let seq: Vec<f64> = (0..n).map(|_| f(&mut a)).collect();
            assert_eq!(fill::draw(&mut b, n, words, f), seq);
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
