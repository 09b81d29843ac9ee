//! Tensor names of other libraries, applied when weights are read and written.
//!
//! r2rc names tensors after the rows of the ResNet tables (`conv1.bn`, `conv2_1.conv1`,
//! `head.fc`); torchvision's ResNets name the same tensors `bn1`, `layer1.0.conv1`, `fc`.
//! A naming renames the graph's parameter-owning layers, so a file in that naming is read
//! and written by the ordinary safetensors code with every check (missing, extra,
//! misshaped tensors) reported under the file's own names.
//!
//! The parts: `torchvision.rs` holds torchvision's ResNet scheme (layer and module names),
//! `targets.rs` reads a command's target (`--layer`, `--after`) written in either naming;
//! this file renames graphs and tensors and reads and writes weights under a naming.

mod targets;
mod torchvision;

#[cfg(test)]
mod tests;

pub use targets::target_to_r2rc;
pub use torchvision::{from_torchvision_layer, torchvision_layer, torchvision_targets};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::params::{self, Params};

/// Whose names a weights file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// r2rc's own (`conv2_1.bn1.running_var`).
    R2rc,
    /// torchvision's ResNet family (`layer1.0.bn1.running_var`).
    Torchvision,
}

impl Naming {
    /// `r2rc` or `torchvision`.
    pub fn parse(s: &str) -> Result<Naming> {
        match s {
            "r2rc" => Ok(Naming::R2rc),
            "torchvision" => Ok(Naming::Torchvision),
            other => Err(Error::usage(
                format!("--names {other}: the namings are r2rc and torchvision"),
                Some(
                    "torchvision reads and writes ResNet weights under torchvision's names".into(),
                ),
            )),
        }
    }

    pub fn keyword(self) -> &'static str {
        match self {
            Naming::R2rc => "r2rc",
            Naming::Torchvision => "torchvision",
        }
    }
}

/// For reports under `naming`: r2rc layer name -> `naming`'s module name, for every
/// parameter-owning layer of `graphs` (teacher and student) that has one; `None` for r2rc's
/// own naming. A torchvision name depends on the r2rc name alone, so one map serves both.
pub fn report_names(graphs: &[&Graph], naming: Naming) -> Option<BTreeMap<String, String>> {
    if naming == Naming::R2rc {
        return None;
    }
    let mut map = BTreeMap::new();
    for g in graphs {
        for n in g.g.node_indices() {
            let node = &g.g[n];
            if node.op.param_slots().is_empty() {
                continue;
            }
            if let Some(theirs) = torchvision_layer(&node.name, &node.row, node.block) {
                map.insert(node.name.clone(), theirs);
            }
        }
    }
    Some(map)
}

/// `name`, followed by its name in `names` when there is one: `conv2_1.conv1
/// (layer1.0.conv1)`.
pub fn shown(name: &str, names: Option<&BTreeMap<String, String>>) -> String {
    match names.and_then(|m| m.get(name)) {
        Some(theirs) if theirs != name => format!("{name} ({theirs})"),
        _ => name.to_string(),
    }
}

/// The renames of `naming` for every parameter-owning layer of `graph` (ours -> theirs),
/// or an error naming the first layer it has no name for.
pub fn layer_renames(graph: &Graph, naming: Naming) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for n in graph.order() {
        let node = &graph.g[n];
        if node.op.param_slots().is_empty() {
            continue;
        }
        let theirs = match naming {
            Naming::R2rc => node.name.clone(),
            Naming::Torchvision => torchvision_layer(&node.name, &node.row, node.block)
                .ok_or_else(|| {
                    Error::usage(
                        format!(
                            "layer `{}` of network `{}` has no torchvision name",
                            node.name, graph.name
                        ),
                        Some(
                            "--names torchvision covers torchvision's ResNet layout: a `conv1` \
                             stem row, stages `conv2_x`, `conv3_x`, ... of residual blocks and \
                             one `head` fc"
                                .into(),
                        ),
                    )
                })?,
        };
        if !seen.insert(theirs.clone()) {
            return Err(Error::usage(
                format!(
                    "two layers of `{}` would both be named `{theirs}` under --names {}",
                    graph.name,
                    naming.keyword()
                ),
                None,
            ));
        }
        map.insert(node.name.clone(), theirs);
    }
    Ok(map)
}

/// `graph` with its parameter-owning layers renamed to `naming`: the graph whose
/// parameter specs are the tensor names of a file in that naming.
pub fn renamed_graph(graph: &Graph, naming: Naming) -> Result<Graph> {
    let map = layer_renames(graph, naming)?;
    let mut g = graph.clone();
    let nodes: Vec<_> = g.g.node_indices().collect();
    for n in nodes {
        if let Some(theirs) = map.get(&g.g[n].name) {
            g.g[n].name = theirs.clone();
        }
    }
    Ok(g)
}

/// Full tensor names (ours, theirs) in the graph's order.
pub fn tensor_renames(graph: &Graph, naming: Naming) -> Result<Vec<(String, String)>> {
    let theirs = renamed_graph(graph, naming)?;
    Ok(graph
        .param_specs()
        .into_iter()
        .zip(theirs.param_specs())
        .map(|(a, b)| (a.name, b.name))
        .collect())
}

/// Renames the tensors of `p` with `pairs` (from, to); every tensor must be listed.
fn rename(p: Params, pairs: impl Iterator<Item = (String, String)>) -> Result<Params> {
    let mut from = p.tensors;
    let mut tensors = BTreeMap::new();
    for (a, b) in pairs {
        let t = from
            .remove(&a)
            .ok_or_else(|| Error::weights(format!("the parameters lack tensor `{a}`")))?;
        tensors.insert(b, t);
    }
    if let Some(extra) = from.keys().next() {
        return Err(Error::weights(format!(
            "tensor `{extra}` belongs to no layer of the network"
        )));
    }
    Ok(Params {
        tensors,
        dtype: p.dtype,
    })
}

/// Reads weights for `graph` stored under `naming`; the result uses r2rc's names. When
/// the file does not fit but would under the other naming, the error says so. Reads
/// through a wrapper prefix and missing counters as [`params::load`] does;
/// [`load_with_notes`] also says when it did.
pub fn load(graph: &Graph, path: &Path, naming: Naming) -> Result<Params> {
    load_with_notes(graph, path, naming).map(|(p, _)| p)
}

/// [`load`], with what to tell the user about how the checkpoint was read (a stripped
/// `module.` prefix, `num_batches_tracked` counters read as 0): one sentence each, empty
/// for a plain state_dict.
pub fn load_with_notes(
    graph: &Graph,
    path: &Path,
    naming: Naming,
) -> Result<(Params, Vec<String>)> {
    let theirs = renamed_graph(graph, naming)?;
    let (p, notes) = match params::load_with_notes(&theirs, path) {
        Ok(v) => v,
        Err(e) => return Err(with_naming_hint(e, graph, path, naming)),
    };
    if naming == Naming::R2rc {
        return Ok((p, notes));
    }
    let pairs = tensor_renames(graph, naming)?;
    Ok((rename(p, pairs.into_iter().map(|(a, b)| (b, a)))?, notes))
}

/// Converts `params` (r2rc's names) to `naming`'s names.
pub fn to_naming(params: &Params, graph: &Graph, naming: Naming) -> Result<Params> {
    params.check(graph)?;
    rename(params.clone(), tensor_renames(graph, naming)?.into_iter())
}

/// The bytes of a safetensors file holding `params` (r2rc's names) under `naming`.
pub fn to_bytes(
    params: &Params,
    graph: &Graph,
    metadata: Option<&BTreeMap<String, String>>,
    naming: Naming,
) -> Result<Vec<u8>> {
    if naming == Naming::R2rc {
        return params::to_bytes(params, graph, metadata);
    }
    let theirs = renamed_graph(graph, naming)?;
    params::to_bytes(&to_naming(params, graph, naming)?, &theirs, metadata)
}

/// Writes `params` (r2rc's names) at `path` under `naming`, atomically.
pub fn save(
    params: &Params,
    graph: &Graph,
    path: &Path,
    metadata: Option<&BTreeMap<String, String>>,
    naming: Naming,
) -> Result<()> {
    let bytes = to_bytes(params, graph, metadata, naming)?;
    params::write_atomic(path, &bytes)
}

/// Adds "pass --names X" to a load error when the file's tensor names are those of the
/// other naming.
fn with_naming_hint(e: Error, graph: &Graph, path: &Path, naming: Naming) -> Error {
    let shown = path.display().to_string();
    naming_hint(e, graph, naming, file_tensors(path), &shown)
}

/// Checks that the (memory-mapped, maybe sharded) `src` holds `graph`'s tensors under
/// `naming`'s names, with the same hint as [`load`] when they are the other naming's.
pub fn check_source(src: &crate::shards::Source, graph: &Graph, naming: Naming) -> Result<()> {
    let theirs = renamed_graph(graph, naming)?;
    src.check(&theirs)
        .map_err(|e| naming_hint(e, graph, naming, Some(source_shapes(src)), &src.shown))
}

/// `e` with a hint to switch `--names` when the file's tensors (`names` with their
/// shapes) fit the other naming rather than `naming` ([`other_fits`]).
fn naming_hint(
    e: Error,
    graph: &Graph,
    naming: Naming,
    names: Option<BTreeMap<String, Vec<usize>>>,
    shown: &str,
) -> Error {
    let Error::Weights { message, .. } = &e else {
        return e;
    };
    let Some(other) = names.and_then(|n| other_fits(graph, naming, &n)) else {
        return e;
    };
    let flag = match other {
        Naming::R2rc => "drop --names torchvision (or pass --names r2rc)".to_string(),
        Naming::Torchvision => "pass --names torchvision".to_string(),
    };
    Error::Weights {
        message: message.clone(),
        hint: Some(format!(
            "{shown} names its tensors the {} way: {flag}",
            other.keyword()
        )),
    }
}

/// The other naming, when the file's tensors (name -> shape) are rather `graph`'s under it
/// than under `naming`: more of them match its tensors, by name and shape, than
/// `naming`'s, and they hold at least half of its tensors. (A checkpoint of another
/// architecture whose names happen to fit the other naming gets no such hint: its shapes
/// differ, and the error's own hint stands.)
fn other_fits(
    graph: &Graph,
    naming: Naming,
    names: &BTreeMap<String, Vec<usize>>,
) -> Option<Naming> {
    let other = match naming {
        Naming::R2rc => Naming::Torchvision,
        Naming::Torchvision => Naming::R2rc,
    };
    let hits = |n: Naming| -> Option<(usize, usize)> {
        let specs = renamed_graph(graph, n).ok()?.param_specs();
        let hit = specs
            .iter()
            .filter(|s| names.get(&s.name) == Some(&s.slot.shape))
            .count();
        Some((hit, specs.len()))
    };
    let ((theirs_hit, theirs_len), (ours_hit, _)) = (hits(other)?, hits(naming)?);
    (theirs_hit > ours_hit && theirs_hit * 2 >= theirs_len).then_some(other)
}

/// The naming the weights at `path` (a file or sharded set) use for `graph` when it is
/// not `naming`: for a command with its own flag to suggest (`prove --student-names`).
pub fn suggested_naming(graph: &Graph, path: &Path, naming: Naming) -> Option<Naming> {
    other_fits(graph, naming, &file_tensors(path)?)
}

/// The tensors (name -> shape) of a weights file or sharded set, read as a state_dict's
/// (a wrapper prefix stripped, missing counters present: [`crate::shards::Variants`]),
/// if it can be read.
fn file_tensors(path: &Path) -> Option<BTreeMap<String, Vec<usize>>> {
    Some(source_shapes(&crate::shards::Source::open(path).ok()?))
}

fn source_shapes(src: &crate::shards::Source) -> BTreeMap<String, Vec<usize>> {
    src.tensors
        .iter()
        .map(|(k, info)| (k.clone(), info.shape.clone()))
        .collect()
}
