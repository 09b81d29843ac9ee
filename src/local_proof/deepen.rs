//! Local proof of a deepening (`deepen --prove local`). The inserted layers start as the
//! identity on the site value, and nothing else changes except, for NetMorph-dense, the
//! layers that absorb its mix. So it is enough to run the inserted layers (and those
//! readers) on random values shaped like the site's and compare the new output with its
//! input, and each reader's output with the teacher reader's on the same input: by
//! composition that proves the whole deepening, at the cost of one block.
//!
//! The random values are made non-negative (a ReLU in front) where the sign analysis proves
//! the site value is: methods that end in ReLU are exact only there, and only there are
//! they asked to be.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::analysis::sign;
use crate::error::{Error, Result};
use crate::ir::{Activation, Graph, NodeIndex, Op};
use crate::params::Params;
use crate::prove::{check_equivalence, Evidence, ProveOptions};
use crate::transform::deepen::{Deepened, Site};

/// Name of the region's first value: the random input, made non-negative where the site is.
const SITE: &str = "__site";

/// `start` and the layers reading it through flattens and global pools, up to and including
/// the first layers that are neither, in `graph`'s order (`start` excluded).
fn readers(graph: &Graph, start: NodeIndex) -> Vec<NodeIndex> {
    let mut seen = HashSet::new();
    let mut stack = vec![start];
    while let Some(n) = stack.pop() {
        for r in graph.consumers(n) {
            if seen.insert(r) && matches!(graph.g[r].op, Op::Flatten | Op::GlobalAvgPool) {
                stack.push(r);
            }
        }
    }
    graph
        .order()
        .into_iter()
        .filter(|n| seen.contains(n))
        .collect()
}

/// A graph of `nodes` of `src` (in order; inputs outside them read the site value), after
/// an input shaped like the site and the `SITE` node; each node named by `name`.
pub(crate) fn region(
    src: &Graph,
    site: NodeIndex,
    nodes: &[NodeIndex],
    shape: &[usize],
    first: &Op,
    name: &dyn Fn(&str) -> String,
) -> Result<Graph> {
    let bad = |m: String| Error::usage(format!("local proof of the deepening: {m}"), None);
    // The region reads values shaped like the site, never token ids.
    let defaults = crate::ir::Defaults {
        vocab: None,
        ..src.defaults.clone()
    };
    let mut g = Graph::new(&format!("{}.region", src.name), defaults, shape.to_vec());
    let x = g.input;
    let s = g
        .add(SITE.into(), first.clone(), &[x], ("__region", None), None)
        .map_err(bad)?;
    let mut map: HashMap<NodeIndex, NodeIndex> = HashMap::from([(site, s)]);
    for &n in nodes {
        let inputs: Vec<NodeIndex> = src
            .inputs(n)
            .iter()
            .map(|i| {
                map.get(i).copied().ok_or_else(|| {
                    bad(format!(
                        "`{}` reads `{}`, outside the region",
                        src.g[n].name, src.g[*i].name
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let m = g
            .add(
                name(&src.g[n].name),
                src.g[n].op.clone(),
                &inputs,
                ("__region", None),
                None,
            )
            .map_err(bad)?;
        map.insert(n, m);
    }
    Ok(g)
}

/// The tensors of `region`'s layers, taken from `params` under `source`'s names.
pub(crate) fn region_params(
    region: &Graph,
    params: &Params,
    source: &dyn Fn(&str) -> String,
) -> Result<Params> {
    let mut tensors = BTreeMap::new();
    for spec in region.param_specs() {
        let (layer, suffix) = spec.name.rsplit_once('.').expect("layer.suffix");
        let key = format!("{}.{suffix}", source(layer));
        let t = params
            .get(&key)
            .ok_or_else(|| Error::weights(format!("the local proof lacks tensor `{key}`")))?;
        tensors.insert(spec.name.clone(), t.clone());
    }
    Ok(Params {
        tensors,
        dtype: params.dtype,
    })
}

/// Proves the deepening `d` of `teacher` after `site` on its region, in every mode of
/// `opts`. `tp` needs only the tensors of the layers reading the site (NetMorph-dense);
/// `d.params` needs the inserted and changed layers'.
pub fn prove(
    teacher: &Graph,
    tp: &Params,
    d: &Deepened,
    site: &Site,
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    let student = &d.graph;
    let find = |name: &str| {
        student
            .find(name)
            .ok_or_else(|| Error::weights(format!("the deepened network lacks layer `{name}`")))
    };
    let tname = &teacher.g[site.value].name;
    let s_site = find(d.name_map.get(tname).unwrap_or(tname))?;
    let inserted: Vec<NodeIndex> = d.inserted.iter().map(|n| find(n)).collect::<Result<_>>()?;
    let out = *inserted.last().expect("a deepening inserts layers");
    let first = if sign::is_non_negative(teacher, site.value) {
        Op::Activation(Activation::Relu)
    } else {
        Op::Activation(Activation::Identity)
    };
    let dense = !d.changed.is_empty();
    // Student: the inserted layers, then (NetMorph-dense) the readers that absorbed N^T.
    let mut s_nodes = inserted.clone();
    if dense {
        s_nodes.extend(readers(student, out));
    }
    let same = |n: &str| n.to_string();
    let s_region = region(student, s_site, &s_nodes, &site.shape, &first, &same)?;
    // The region's layers keep their names, so it runs on `d.params` as they are (no copy
    // of a new block that may hold hundreds of megabytes).
    // Teacher: the site value itself under the new output's name, or (NetMorph-dense) the
    // readers under their new names; values that hold N x by design are not compared.
    let out_name = student.g[out].name.clone();
    let mixed: HashSet<&String> = d.mixed.iter().collect();
    let t_name = |n: &str| -> String {
        let new = d.name_map.get(n).cloned().unwrap_or_else(|| n.to_string());
        if mixed.contains(&new) {
            format!("{new} (before the mix)")
        } else {
            new
        }
    };
    let t_nodes = if dense {
        readers(teacher, site.value)
    } else {
        vec![]
    };
    let mut t_region = region(teacher, site.value, &t_nodes, &site.shape, &first, &t_name)?;
    if !dense {
        let s = t_region.find(SITE).expect("the region starts with it");
        t_region
            .add(
                out_name,
                Op::Activation(Activation::Identity),
                &[s],
                ("__region", None),
                None,
            )
            .map_err(|m| Error::usage(format!("local proof of the deepening: {m}"), None))?;
    }
    // The teacher's region tensors under its own names (the region names them the
    // student's way).
    let back: HashMap<String, String> = d
        .name_map
        .iter()
        .map(|(old, new)| (new.clone(), old.clone()))
        .collect();
    let tpr = region_params(&t_region, tp, &|n: &str| {
        back.get(n).cloned().unwrap_or_else(|| n.to_string())
    })?;
    check_equivalence(&t_region, &tpr, &s_region, &d.params, opts)
}
