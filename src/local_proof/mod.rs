//! Local proofs (`--prove local`): each widened space is proved on its own region, the
//! subgraph from its producers' inputs to its consumers' outputs, before and after that
//! one step. Steps compose (each is exact on its own), so proving every step's region
//! proves the whole widening, and a region is far cheaper to run than a large network.
//!
//! The executor runs graphs with one input, so a region with several inputs gets one
//! random image `X` and, for each of its inputs, an *adapter*: a conv with fixed random
//! weights from `X` to that input's shape (a flatten after it for vector inputs; for a
//! token sequence `[T, D]`, a conv to `[D, T, 1]` read as T tokens). A region that reads a
//! transformer's token ids (its embedding) takes token ids instead, and its other inputs
//! come from a fixed random embedding of those ids through a linear adapter. Teacher and
//! student regions share the adapters, so they see the same inputs; the comparison is
//! [`crate::prove::check_equivalence`]'s, on every value of the region.

use std::collections::{BTreeMap, HashSet};

use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::analysis::Space;
use crate::error::{Error, Result};
use crate::ir::{Conv2d, Defaults, Embedding, Graph, Linear, NodeIndex, Op, ParamKind};
use crate::params::{DType, Params};
use crate::prove::{check_equivalence, Evidence, ProveOptions};

pub mod deepen;
pub mod morph;

/// Channels of the shared random image feeding the adapters.
const SEED_CHANNELS: usize = 4;

/// The nodes of `space`'s region in topological order, and its inputs (nodes outside it
/// that feed it), in topological order.
pub fn region(graph: &Graph, space: &Space) -> (Vec<NodeIndex>, Vec<NodeIndex>) {
    let mut inside: HashSet<NodeIndex> = HashSet::new();
    inside.extend(space.producers.iter().map(|p| p.node));
    inside.extend(space.members.iter().map(|m| m.node));
    inside.extend(space.consumers.iter().map(|c| c.node));
    let order = graph.order();
    let nodes: Vec<NodeIndex> = order
        .iter()
        .copied()
        .filter(|n| inside.contains(n))
        .collect();
    let mut feeds: HashSet<NodeIndex> = HashSet::new();
    for &n in &nodes {
        feeds.extend(graph.inputs(n).into_iter().filter(|i| !inside.contains(i)));
    }
    let inputs = order.into_iter().filter(|n| feeds.contains(n)).collect();
    (nodes, inputs)
}

/// The names of the tensors the region of `space` in `graph` owns.
pub fn region_tensors(graph: &Graph, space: &Space) -> Vec<String> {
    let (nodes, _) = region(graph, space);
    let mut v = Vec::new();
    for n in nodes {
        let node = &graph.g[n];
        for slot in node.op.param_slots() {
            v.push(format!("{}.{}", node.name, slot.suffix));
        }
    }
    v
}

/// The region of `space` in `graph` as a graph of its own: input `X`, an adapter per
/// region input, then the region's nodes under their own names.
fn region_graph(graph: &Graph, space: &Space, inputs_like: &Graph) -> Result<Graph> {
    let (nodes, inputs) = region(graph, space);
    let bad =
        |m: String| Error::usage(format!("local proof of space `{}`: {m}", space.label), None);
    let add = |g: &mut Graph, name: String, op: Op, ins: &[NodeIndex]| {
        g.add(name, op, ins, ("__region", None), None).map_err(bad)
    };
    // A region reading the network's token ids (an embedding) runs on token ids.
    if let (Some(vocab), true) = (graph.defaults.vocab, inputs.contains(&graph.input)) {
        let tokens = inputs_like.g[graph.input].shape.clone();
        let mut g = Graph::new(
            &format!("{}.region", graph.name),
            graph.defaults.clone(),
            tokens,
        );
        let x = g.input;
        let embed = Op::Embedding(Embedding {
            vocab,
            dim: SEED_CHANNELS,
        });
        let e = add(&mut g, "__region_input_embed".into(), embed, &[x])?;
        let mut map: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
        for (k, &i) in inputs.iter().enumerate() {
            if i == graph.input {
                map.insert(i, x);
                continue;
            }
            let s = &inputs_like.g[i].shape;
            let [_, d] = s[..] else {
                return Err(bad(format!(
                    "input `{}` has shape {s:?}, not a token sequence",
                    graph.g[i].name
                )));
            };
            let linear = Op::Linear(Linear {
                in_features: SEED_CHANNELS,
                out_features: d,
                bias: false,
            });
            map.insert(i, add(&mut g, format!("__region_input{k}"), linear, &[e])?);
        }
        return copy_nodes(g, graph, &nodes, map).map_err(bad);
    }
    // The image is as large as the largest spatial input, so every adapter fits (a token
    // sequence of T tokens is a T x 1 map).
    let (mut h0, mut w0) = (1, 1);
    for &i in &inputs {
        let s = &inputs_like.g[i].shape;
        match s[..] {
            [_, h, w] => {
                h0 = h0.max(h);
                w0 = w0.max(w);
            }
            [t, _] => h0 = h0.max(t),
            _ => {}
        }
    }
    let defaults = Defaults {
        vocab: None,
        ..graph.defaults.clone()
    };
    let mut g = Graph::new(
        &format!("{}.region", graph.name),
        defaults,
        vec![SEED_CHANNELS, h0, w0],
    );
    let x = g.input;
    let mut map: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    for (k, &i) in inputs.iter().enumerate() {
        let s = inputs_like.g[i].shape.clone();
        let (c, h, w) = match s[..] {
            [c, h, w] => (c, h, w),
            [t, d] => (d, t, 1),
            [f] => (f, 1, 1),
            _ => return Err(bad(format!("input `{}` has shape {s:?}", graph.g[i].name))),
        };
        // A smaller input than the image is reached by striding, so the kernel stays small
        // (a stride-1 kernel as large as the size difference costs more than the region).
        let fit = |big: usize, small: usize| (big - 1).checked_div(small - 1).unwrap_or(usize::MAX);
        let stride = match fit(h0, h).min(fit(w0, w)) {
            usize::MAX => 1,
            s => s.max(1),
        };
        let conv = Op::Conv2d(Conv2d {
            in_channels: SEED_CHANNELS,
            out_channels: c,
            kernel: [h0 - stride * (h - 1), w0 - stride * (w - 1)],
            stride,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: false,
        });
        let name = format!("__region_input{k}");
        let mut a = g
            .add(name.clone(), conv, &[x], ("__region", None), None)
            .map_err(bad)?;
        match s.len() {
            1 => a = add(&mut g, format!("{name}.flatten"), Op::Flatten, &[a])?,
            2 => a = add(&mut g, format!("{name}.tokens"), Op::ToTokens, &[a])?,
            _ => {}
        }
        map.insert(i, a);
    }
    copy_nodes(g, graph, &nodes, map).map_err(bad)
}

/// `g` with `graph`'s `nodes` appended under their own names, their inputs mapped by `map`
/// (the adapters); the last node is the output.
fn copy_nodes(
    mut g: Graph,
    graph: &Graph,
    nodes: &[NodeIndex],
    mut map: BTreeMap<NodeIndex, NodeIndex>,
) -> std::result::Result<Graph, String> {
    for &n in nodes {
        let node = &graph.g[n];
        let ins: Vec<NodeIndex> = graph.inputs(n).iter().map(|i| map[i]).collect();
        let m = g.add(
            node.name.clone(),
            node.op.clone(),
            &ins,
            (&node.row, node.block),
            None,
        )?;
        map.insert(n, m);
    }
    g.output = *map
        .get(nodes.last().expect("a space has members"))
        .expect("mapped");
    Ok(g)
}

/// Fixed random weights of the adapters of a region graph (the same for teacher and
/// student).
fn adapter_params(g: &Graph, seed: u64) -> BTreeMap<String, ArrayD<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_AD47);
    let mut out = BTreeMap::new();
    for spec in g.param_specs() {
        if !spec.name.starts_with("__region_input") {
            continue;
        }
        let shape = &spec.slot.shape;
        let fan_in: usize = shape.iter().skip(1).product();
        let s = 1.0 / (fan_in.max(1) as f64).sqrt();
        let v = (0..shape.iter().product::<usize>())
            .map(|_| s * crate::params::normal(&mut rng))
            .collect();
        out.insert(
            spec.name.clone(),
            ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches"),
        );
    }
    out
}

fn region_params(
    g: &Graph,
    adapters: &BTreeMap<String, ArrayD<f64>>,
    lookup: &mut dyn FnMut(&str) -> Result<ArrayD<f64>>,
) -> Result<Params> {
    let mut tensors = adapters.clone();
    for spec in g.param_specs() {
        if tensors.contains_key(&spec.name) {
            continue;
        }
        let t = if spec.slot.kind == ParamKind::NumBatchesTracked {
            ArrayD::zeros(IxDyn(&spec.slot.shape))
        } else {
            lookup(&spec.name)?
        };
        tensors.insert(spec.name, t);
    }
    Ok(Params {
        tensors,
        dtype: DType::F64,
    })
}

/// Proves one step locally: `before` is the network before widening `space`
/// (`lookup_before` gives its tensors), `after` the network after (`lookup_after`). The
/// evidence has one entry per mode of `opts`, covering every value of the region.
pub fn prove_step(
    before: &Graph,
    after: &Graph,
    space: &Space,
    lookup_before: &mut dyn FnMut(&str) -> Result<ArrayD<f64>>,
    lookup_after: &mut dyn FnMut(&str) -> Result<ArrayD<f64>>,
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    let tg = region_graph(before, space, before)?;
    let sg = region_graph(after, space, before)?;
    let adapters = adapter_params(&tg, opts.seed);
    let tp = region_params(&tg, &adapters, lookup_before)?;
    let sp = region_params(&sg, &adapters, lookup_after)?;
    check_equivalence(&tg, &tp, &sg, &sp, opts)
}

/// Folds the evidence of many regions into one entry per mode: the largest errors, every
/// value counted, the first failing region's value named.
pub fn combine(all: Vec<Vec<Evidence>>, regions: usize) -> Vec<Evidence> {
    let mut out: Vec<Evidence> = Vec::new();
    for evs in all {
        for e in evs {
            match out.iter_mut().find(|o| o.mode.starts_with(&e.mode)) {
                None => out.push(e),
                Some(o) => {
                    if e.max_rel_err > o.max_rel_err {
                        o.worst = e.worst.clone();
                    }
                    o.max_abs_err = o.max_abs_err.max(e.max_abs_err);
                    o.max_rel_err = o.max_rel_err.max(e.max_rel_err);
                    o.values += e.values;
                    o.passed &= e.passed;
                    if o.first_divergence.is_none() {
                        o.first_divergence = e.first_divergence;
                    }
                }
            }
        }
    }
    for o in &mut out {
        o.mode = format!("{} (local, {regions} regions)", o.mode);
    }
    out
}

/// The note of a deepening or morph proved locally.
pub const LOCAL_NOTE: &str = "proved locally: the inserted layers (and the layers absorbing a dense mix) on random values shaped like the site's";

/// The note of a widening proved locally, region by region.
pub fn widening_note(w: &crate::transform::Widening) -> String {
    let steps = w.plan.steps.len();
    let regions = widening_regions(w).len();
    format!("proved locally: each of the {steps} widened spaces on its region (its producers' inputs to its consumers' outputs), before and after its step; overlapping regions run as one ({regions} regions)")
}

/// The steps of widening `w` proved together, in order: consecutive steps share a region
/// (the union of theirs) when running it costs fewer multiply-accumulates than running
/// theirs apart (their regions overlap: a block's spaces share its middle convolutions; a
/// dense block's spaces share every later layer, since each concatenation is read by all of
/// them) and the union holds at most a quarter of the student's parameters (or a single
/// step's, when larger), so a local proof stays local. Proving the union before and after
/// its steps proves each of them: every value they change lies inside it.
pub fn widening_regions(w: &crate::transform::Widening) -> Vec<std::ops::Range<usize>> {
    let fp = &w.plan.footprints;
    if fp.is_empty() {
        return Vec::new();
    }
    let g = &w.plan.student;
    let budget = crate::stats::param_count(g) / 4;
    let cost = |s: &Space| region_graph(g, s, g).map_or(u64::MAX, |r| crate::stats::mac_count(&r));
    let mut out = Vec::new();
    let (mut start, mut space) = (0, fp[0].clone());
    let mut spent = cost(&space);
    for (k, next) in fp.iter().enumerate().skip(1) {
        let merged = union(&space, next);
        let (alone, together) = (cost(next), cost(&merged));
        let size = region_size(g, &merged);
        if together < spent.saturating_add(alone) && size <= budget {
            (space, spent) = (merged, together);
        } else {
            out.push(start..k);
            (start, space, spent) = (k, next.clone(), alone);
        }
    }
    out.push(start..fp.len());
    out
}

/// Multiply-accumulates per input and mode of the local proof of widening `w` (each region
/// run before and after its steps) and of a full proof (teacher and student whole). Regions
/// that overlap each other's layers (a ResNet's residual streams are read by every block)
/// can cost more in all than the whole networks: then a full proof is the cheaper one.
pub fn widening_costs(w: &crate::transform::Widening) -> (u64, u64) {
    use crate::stats::mac_count;
    let student = &w.plan.student;
    let local = widening_regions(w)
        .into_iter()
        .map(|r| {
            let s = steps_space(w, r);
            let cost = |g: &Graph| region_graph(g, &s, g).map_or(u64::MAX, |r| mac_count(&r));
            cost(w.graph).saturating_add(cost(student))
        })
        .fold(0u64, u64::saturating_add);
    (local, mac_count(w.graph).saturating_add(mac_count(student)))
}

/// The space whose region is the union of the regions of `steps` of widening `w` (a region
/// of [`widening_regions`]).
pub fn steps_space(w: &crate::transform::Widening, steps: std::ops::Range<usize>) -> Space {
    let fp = &w.plan.footprints[steps];
    fp[1..].iter().fold(fp[0].clone(), |u, s| union(&u, s))
}

/// One space listing every value and layer of `a` and `b`: their regions' union.
fn union(a: &Space, b: &Space) -> Space {
    let mut u = a.clone();
    u.members.extend(b.members.iter().cloned());
    u.producers.extend(b.producers.iter().cloned());
    u.params.extend(b.params.iter().cloned());
    u.consumers.extend(b.consumers.iter().cloned());
    u
}

/// The parameters of the region of `space` in `graph`.
fn region_size(graph: &Graph, space: &Space) -> u64 {
    let (nodes, _) = region(graph, space);
    nodes
        .iter()
        .flat_map(|&n| graph.g[n].op.param_slots())
        .map(|s| s.shape.iter().product::<usize>() as u64)
        .sum()
}

/// Proves every step of widening `w` on its region ([`widening_regions`] groups steps whose
/// regions overlap) and folds the evidence into one entry per mode; `teacher` gives a
/// teacher tensor by its r2rc name. The graph and each tensor are carried from one region
/// to the next (each step applied once), a tensor dropped after the last region reading it;
/// each region's tensors before and after its steps are rounded to `dtype`, the precision
/// they are stored in. Judging the evidence is [`crate::pipeline::judge`]'s.
pub fn prove_widening(
    w: &crate::transform::Widening,
    teacher: &mut dyn FnMut(&str) -> Result<ArrayD<f64>>,
    dtype: DType,
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    use crate::transform::graph_steps;
    let groups = widening_regions(w);
    let spaces: Vec<Space> = groups.iter().map(|r| steps_space(w, r.clone())).collect();
    // Widening renames nothing: a region's tensors have the same names before and after.
    let names: Vec<Vec<String>> = spaces
        .iter()
        .map(|s| region_tensors(&w.plan.student, s))
        .collect();
    let mut last: std::collections::HashMap<&str, usize> = Default::default();
    for (i, ns) in names.iter().enumerate() {
        ns.iter().for_each(|n| {
            last.insert(n.as_str(), i);
        });
    }
    // Each tensor read so far, after the steps of the regions before the current one.
    let mut carried: BTreeMap<String, ArrayD<f64>> = BTreeMap::new();
    let mut g0 = w.graph.clone();
    let mut all = Vec::new();
    for (i, steps) in groups.iter().enumerate() {
        let g1 = graph_steps(&g0, &w.plan, steps.clone())?;
        let mut before = BTreeMap::new();
        let mut after = BTreeMap::new();
        for n in &names[i] {
            // A tensor met for the first time has no earlier touches (every step touching
            // it has it in its region), so the teacher's is its value before these steps.
            let t0 = match carried.remove(n) {
                Some(t) => t,
                None => w.tensor(n, teacher(n)?, 0..steps.start)?,
            };
            let t1 = w.tensor(n, t0.clone(), steps.clone())?;
            before.insert(n.clone(), t0.mapv(|x| dtype.round(x)));
            after.insert(n.clone(), t1.mapv(|x| dtype.round(x)));
            if last[n.as_str()] > i {
                carried.insert(n.clone(), t1);
            }
        }
        // Each tensor is looked up once: it moves into the region's weights.
        let get = |m: &mut BTreeMap<String, ArrayD<f64>>, n: &str| {
            m.remove(n)
                .ok_or_else(|| Error::weights(format!("the local proof lacks tensor `{n}`")))
        };
        let ev = prove_step(
            &g0,
            &g1,
            &spaces[i],
            &mut |n| get(&mut before, n),
            &mut |n| get(&mut after, n),
            opts,
        )?;
        // An exact method stops at its first failing region (the rest cannot pass).
        let failed = w.plan.exact && crate::prove::failure(&ev).is_some();
        all.push(ev);
        if failed {
            break;
        }
        g0 = g1;
    }
    let regions = all.len();
    Ok(combine(all, regions))
}
