//! Tensor names of other libraries, applied when weights are read and written.
//!
//! r2rc names tensors after the rows of the ResNet tables (`conv1.bn`, `conv2_1.conv1`,
//! `head.fc`); torchvision's ResNets name the same tensors `bn1`, `layer1.0.conv1`, `fc`.
//! A naming renames the graph's parameter-owning layers, so a file in that naming is read
//! and written by the ordinary safetensors code with every check (missing, extra,
//! misshaped tensors) reported under the file's own names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{Graph, Op};
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

/// torchvision's name for a parameter-owning layer of a ResNet-family graph:
/// `conv1` -> `conv1`, `conv1.bn` -> `bn1`, `conv1.act` -> `relu` (a PReLU stem),
/// `convK_N.rest` -> `layer{K-1}.{N-1}.rest` for K >= 2, `head.fc` -> `fc`.
pub fn torchvision_layer(name: &str, row: &str, block: Option<usize>) -> Option<String> {
    match (name, block) {
        ("conv1", None) => return Some("conv1".into()),
        ("conv1.bn", None) => return Some("bn1".into()),
        ("conv1.act", None) => return Some("relu".into()),
        ("head.fc", None) => return Some("fc".into()),
        _ => {}
    }
    let b = block?;
    let stage: usize = row.strip_prefix("conv")?.strip_suffix("_x")?.parse().ok()?;
    if stage < 2 || b == 0 || row != format!("conv{stage}_x") {
        return None;
    }
    let rest = name.strip_prefix(&format!("conv{stage}_{b}."))?;
    Some(format!("layer{}.{}.{rest}", stage - 1, b - 1))
}

/// r2rc's name for a layer torchvision names `tv` (the inverse of [`torchvision_layer`]).
pub fn from_torchvision_layer(tv: &str) -> Option<String> {
    match tv {
        "conv1" => return Some("conv1".into()),
        "bn1" => return Some("conv1.bn".into()),
        "relu" => return Some("conv1.act".into()),
        "fc" => return Some("head.fc".into()),
        _ => {}
    }
    let rest = tv.strip_prefix("layer")?;
    let (stage, rest) = rest.split_once('.')?;
    let (block, rest) = rest.split_once('.')?;
    let stage: usize = stage.parse().ok()?;
    let block: usize = block.parse().ok()?;
    // Canonical numbers only, so the two directions stay inverse.
    if rest.is_empty() || tv != format!("layer{stage}.{block}.{rest}") || stage == 0 {
        return None;
    }
    Some(format!("conv{}_{}.{rest}", stage + 1, block + 1))
}

/// `K` of a stage row `convK_x` with K >= 2 (torchvision's `layer{K-1}`).
fn stage_number(row: &str) -> Option<usize> {
    let k: usize = row.strip_prefix("conv")?.strip_suffix("_x")?.parse().ok()?;
    (k >= 2 && row == format!("conv{k}_x")).then_some(k)
}

/// Whether `rest` (what follows `layerK.N.`) names a module of torchvision's BasicBlock or
/// Bottleneck: `conv1`, `bn2`, `downsample`, `downsample.0`, `downsample.1`. The block's
/// one `relu` module is applied several times, so it names no single r2rc layer.
fn is_block_module(rest: &str) -> bool {
    let numbered = |p: &str| {
        rest.strip_prefix(p)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
    };
    numbered("conv")
        || numbered("bn")
        || matches!(rest, "downsample" | "downsample.0" | "downsample.1")
}

/// The module names a command's target may use under torchvision's naming, for `graph`:
/// torchvision name -> r2rc name. Stages (`layer2` -> `conv3_x`), blocks (`layer2.0` ->
/// `conv3_1`), the modules of a block (`layer2.0.conv1`, `layer2.0.downsample.0`), the stem
/// (`conv1`, `bn1`, `relu`, `maxpool`) and the head (`avgpool`, `fc`). Holds only what
/// `graph` has; nothing for a network outside torchvision's ResNet layout.
pub fn torchvision_targets(graph: &Graph) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    // Outside the layout its weights have no torchvision names, so its modules have none.
    if layer_renames(graph, Naming::Torchvision).is_err() {
        return map;
    }
    for n in graph.order() {
        if n == graph.input {
            continue;
        }
        let node = &graph.g[n];
        if let (Some(k), Some(b)) = (stage_number(&node.row), node.block) {
            let block = format!("conv{k}_{b}");
            let Some(rest) = node.name.strip_prefix(&format!("{block}.")) else {
                continue;
            };
            if b == 0 {
                continue;
            }
            let theirs = format!("layer{}.{}", k - 1, b - 1);
            map.entry(format!("layer{}", k - 1))
                .or_insert_with(|| node.row.clone());
            if is_block_module(rest) {
                map.insert(format!("{theirs}.{rest}"), node.name.clone());
            }
            map.entry(theirs).or_insert(block);
            continue;
        }
        if node.block.is_some() {
            continue;
        }
        let theirs = match (node.name.as_str(), &node.op) {
            ("conv1" | "conv1.bn" | "conv1.act" | "head.fc", _) => {
                torchvision_layer(&node.name, &node.row, None)
            }
            ("head.pool", Op::GlobalAvgPool) => Some("avgpool".into()),
            // torchvision's stem max pool, which r2rc's ResNet table writes in conv2_x.
            (_, Op::MaxPool(_)) if node.row == "conv2_x" => Some("maxpool".into()),
            _ => None,
        };
        if let Some(t) = theirs {
            map.entry(t).or_insert_with(|| node.name.clone());
        }
    }
    map
}

/// The r2rc name of a command's target (`--layer`, `--after`) written in `naming`'s names:
/// under torchvision a layer (`layer2.0.conv1` -> `conv3_1.conv1`, `bn1` -> `conv1.bn`,
/// `fc` -> `head.fc`), a block (`layer2.0` -> `conv3_1`) or a stage (`layer3` ->
/// `conv4_x`); r2rc's own names are accepted under either naming and returned as they
/// are. A name `graph` does not have is refused with the nearest spelling and the names
/// it does have.
pub fn target_to_r2rc(graph: &Graph, naming: Naming, target: &str) -> Result<String> {
    let tv = torchvision_targets(graph);
    if naming == Naming::Torchvision {
        if let Some(ours) = tv.get(target) {
            return Ok(ours.clone());
        }
    }
    let ours = crate::transform::target_names(graph);
    if ours.iter().any(|n| n == target) {
        return Ok(target.to_string());
    }
    Err(unknown_target(graph, naming, target, &tv, &ours))
}

/// The refusal of a target `graph` does not have, with the nearest spelling and the names
/// it has.
fn unknown_target(
    graph: &Graph,
    naming: Naming,
    target: &str,
    tv: &BTreeMap<String, String>,
    ours: &[String],
) -> Error {
    let mut hints = Vec::new();
    // Written in the other naming: say which flag (or which name) fits.
    if naming == Naming::R2rc {
        if let Some(r) = tv.get(target) {
            hints.push(format!(
                "`{target}` is torchvision's name for `{r}`: pass --names torchvision, or write `{r}`"
            ));
        }
    }
    // torchvision's blocks share one `relu` module; r2rc names each use.
    if let Some(block) = target.strip_suffix(".relu").and_then(|b| tv.get(b)) {
        let acts: Vec<String> = graph
            .order()
            .into_iter()
            .map(|n| &graph.g[n])
            .filter(|n| {
                matches!(n.op, Op::Activation(_))
                    && n.name
                        .strip_prefix(block.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
            .map(|n| format!("`{}`", n.name))
            .collect();
        if !acts.is_empty() {
            hints.push(format!(
                "torchvision's block applies its one `relu` module {} times; r2rc names them {}",
                acts.len(),
                acts.join(", ")
            ));
        }
    }
    if hints.is_empty() {
        let mut candidates: Vec<&str> = ours.iter().map(|s| s.as_str()).collect();
        if naming == Naming::Torchvision {
            candidates.extend(tv.keys().map(|s| s.as_str()));
        }
        if let Some(c) = crate::lower::closest(target, &candidates) {
            match tv.get(c) {
                Some(r) if naming == Naming::Torchvision => {
                    hints.push(format!("did you mean `{c}` (r2rc's `{r}`)?"))
                }
                _ => hints.push(format!("did you mean `{c}`?")),
            }
        }
    }
    hints.push(match naming {
        Naming::Torchvision if !tv.is_empty() => format!(
            "its torchvision names are {}; r2rc's names (`r2rc check FILE` lists every layer) are accepted too",
            torchvision_listing(tv)
        ),
        Naming::Torchvision => format!(
            "`{}` is not in torchvision's ResNet layout, so only r2rc's names apply: {}",
            graph.name,
            r2rc_listing(graph)
        ),
        Naming::R2rc => r2rc_listing(graph),
    });
    let what = match naming {
        Naming::Torchvision => "module, layer, block or row",
        Naming::R2rc => "layer, block or row",
    };
    let under = match naming {
        Naming::Torchvision => " (under --names torchvision)",
        Naming::R2rc => "",
    };
    Error::usage(
        format!(
            "network `{}` has no {what} named `{target}`{under}",
            graph.name
        ),
        Some(hints.join("; ")),
    )
}

/// `a` or `a-b` for the first and last of a run of names.
fn span(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first}-{last}"),
    }
}

/// The stem, stages with their blocks, the modules inside a block and the head, in
/// torchvision's names: `conv1, bn1, relu, maxpool, layer1 (blocks layer1.0-layer1.1),
/// ..., avgpool, fc; in a block conv1, bn1, conv2, bn2, downsample.0, downsample.1`.
fn torchvision_listing(tv: &BTreeMap<String, String>) -> String {
    let mut parts: Vec<String> = ["conv1", "bn1", "relu", "maxpool"]
        .into_iter()
        .filter(|n| tv.contains_key(*n))
        .map(String::from)
        .collect();
    let mut stages: Vec<(usize, &str)> = tv
        .keys()
        .filter_map(|k| Some((k.strip_prefix("layer")?.parse().ok()?, k.as_str())))
        .collect();
    stages.sort();
    let mut inside: Vec<&str> = Vec::new();
    for (_, stage) in &stages {
        let mut blocks: Vec<(usize, &str)> = tv
            .keys()
            .filter_map(|k| {
                let b = k.strip_prefix(*stage)?.strip_prefix('.')?;
                Some((b.parse().ok()?, k.as_str()))
            })
            .collect();
        blocks.sort();
        let blocks: Vec<&str> = blocks.into_iter().map(|(_, b)| b).collect();
        parts.push(format!("{stage} (blocks {})", span(&blocks)));
        for b in &blocks {
            for k in tv.keys() {
                if let Some(rest) = k.strip_prefix(*b).and_then(|r| r.strip_prefix('.')) {
                    if !inside.contains(&rest) {
                        inside.push(rest);
                    }
                }
            }
        }
    }
    parts.extend(
        ["avgpool", "fc"]
            .into_iter()
            .filter(|n| tv.contains_key(*n))
            .map(String::from),
    );
    // In a block's order: conv1, bn1, conv2, bn2, ..., then the shortcut.
    inside.sort_by_key(|m| {
        let num = |p: &str| m.strip_prefix(p).and_then(|d| d.parse::<usize>().ok());
        match (num("conv"), num("bn")) {
            (Some(k), _) => (0, k, 0, *m),
            (_, Some(k)) => (0, k, 1, *m),
            _ => (1, 0, 0, *m),
        }
    });
    let mut text = parts.join(", ");
    if !inside.is_empty() {
        text.push_str(&format!("; in a block {}", inside.join(", ")));
    }
    text
}

/// r2rc's rows with their blocks: `rows conv1, conv2_x (blocks conv2_1-conv2_2), ...,
/// head; `r2rc check FILE` lists every layer`.
fn r2rc_listing(graph: &Graph) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for n in graph.order() {
        if n == graph.input {
            continue;
        }
        let node = &graph.g[n];
        if rows.last().is_none_or(|(r, _)| *r != node.row) {
            rows.push((node.row.clone(), Vec::new()));
        }
        let blocks = &mut rows.last_mut().expect("pushed").1;
        if let (Some(_), Some((b, _))) = (node.block, node.name.split_once('.')) {
            if !blocks.iter().any(|x| x == b) {
                blocks.push(b.to_string());
            }
        }
    }
    let rows: Vec<String> = rows
        .iter()
        .map(|(r, blocks)| {
            let refs: Vec<&str> = blocks.iter().map(|s| s.as_str()).collect();
            if refs.is_empty() {
                r.clone()
            } else {
                format!("{r} (blocks {})", span(&refs))
            }
        })
        .collect();
    format!(
        "its rows are {}; `r2rc check FILE` lists every layer",
        rows.join(", ")
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::compile;

    fn example(name: &str) -> Graph {
        let path = format!("{}/examples/{name}.arch", env!("CARGO_MANIFEST_DIR"));
        compile(&std::fs::read_to_string(path).unwrap(), &[]).unwrap()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("r2rc-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn resnet18_has_torchvisions_tensor_names() {
        let g = example("resnet18");
        let pairs = tensor_renames(&g, Naming::Torchvision).unwrap();
        let map: BTreeMap<&str, &str> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(map["conv1.weight"], "conv1.weight");
        assert_eq!(map["conv1.bn.running_var"], "bn1.running_var");
        assert_eq!(map["conv2_1.conv1.weight"], "layer1.0.conv1.weight");
        assert_eq!(map["conv2_2.bn2.bias"], "layer1.1.bn2.bias");
        assert_eq!(
            map["conv3_1.downsample.0.weight"],
            "layer2.0.downsample.0.weight"
        );
        assert_eq!(
            map["conv5_1.downsample.1.num_batches_tracked"],
            "layer4.0.downsample.1.num_batches_tracked"
        );
        assert_eq!(map["head.fc.weight"], "fc.weight");
        assert_eq!(map["head.fc.bias"], "fc.bias");
        // torchvision's resnet18 state_dict has 122 entries (102 BN, 20 conv/fc tensors).
        assert_eq!(pairs.len(), 122);
        let theirs: BTreeSet<&str> = pairs.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(theirs.len(), pairs.len());
        assert!(theirs.iter().all(|n| !n.contains("conv2_")));
    }

    #[test]
    fn layer_names_round_trip_on_every_resnet() {
        for ex in [
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet_cifar10",
            "resnet_cifar18",
        ] {
            let g = example(ex);
            for (ours, theirs) in layer_renames(&g, Naming::Torchvision).unwrap() {
                assert_eq!(
                    from_torchvision_layer(&theirs).as_deref(),
                    Some(ours.as_str()),
                    "{ex}: {theirs}"
                );
            }
        }
        assert_eq!(
            from_torchvision_layer("layer3.5.bn3").as_deref(),
            Some("conv4_6.bn3")
        );
        for bad in [
            "layer0.0.conv1",
            "layer1.00.conv1",
            "layer1.x.conv1",
            "layer1.0",
            "bn2",
        ] {
            assert_eq!(from_torchvision_layer(bad), None, "{bad}");
        }
    }

    #[test]
    fn weights_round_trip_through_torchvision_names() {
        let g = example("resnet_cifar10");
        let p = params::init(&g, 3, true);
        let path = tmp("cifar10_tv.safetensors");
        save(&p, &g, &path, None, Naming::Torchvision).unwrap();
        // The file holds torchvision's names only...
        let names: BTreeSet<String> = file_tensors(&path).unwrap().into_keys().collect();
        assert!(names.contains("layer1.0.bn1.running_mean"));
        assert!(names.contains("bn1.weight") && names.contains("fc.bias"));
        assert!(!names
            .iter()
            .any(|n| n.starts_with("conv2_") || n.starts_with("head")));
        // ...and reads back bit for bit under r2rc's names.
        let back = load(&g, &path, Naming::Torchvision).unwrap();
        assert_eq!(back, p);
        // Read with the wrong naming, the error says which flag to pass.
        let e = load(&g, &path, Naming::R2rc).unwrap_err();
        assert!(e.to_string().contains("conv1.bn"), "{e}");
        let hint = e.hint_text().unwrap_or_default();
        assert!(hint.contains("--names torchvision"), "{hint}");
        // And the other way round.
        let ours = tmp("cifar10_r2rc.safetensors");
        save(&p, &g, &ours, None, Naming::R2rc).unwrap();
        let e = load(&g, &ours, Naming::Torchvision).unwrap_err();
        assert!(e.hint_text().unwrap_or_default().contains("r2rc"), "{e}");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(ours);
    }

    #[test]
    fn unknown_tensor_in_a_torchvision_file_is_named() {
        let g = example("resnet_cifar10");
        let p = to_naming(&params::init(&g, 1, false), &g, Naming::Torchvision).unwrap();
        let mut p2 = p.clone();
        let t = p2.tensors["fc.bias"].clone();
        p2.tensors.insert("layer9.0.conv1.weight".into(), t);
        // Written by hand (r2rc refuses to write tensors the network lacks).
        let bytes = raw_safetensors(&p2);
        let path = tmp("unknown.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let e = load(&g, &path, Naming::Torchvision)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`layer9.0.conv1.weight`"), "{e}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_ddp_torchvision_checkpoint_without_counters_loads_with_notes() {
        let g = example("resnet_cifar10");
        let p = params::init(&g, 2, true);
        let mut tv = to_naming(&p, &g, Naming::Torchvision).unwrap();
        tv.tensors
            .retain(|k, _| !k.ends_with(".num_batches_tracked"));
        tv.tensors = std::mem::take(&mut tv.tensors)
            .into_iter()
            .map(|(k, v)| (format!("module.{k}"), v))
            .collect();
        let path = tmp("ddp_tv.safetensors");
        std::fs::write(&path, raw_safetensors(&tv)).unwrap();
        let (back, notes) = load_with_notes(&g, &path, Naming::Torchvision).unwrap();
        assert_eq!(back, p, "the counters of init are 0 too");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("`module.`") && notes[0].contains("DistributedDataParallel"));
        assert!(notes[1].contains("num_batches_tracked") && notes[1].contains("read as 0"));
        // Read under r2rc's names, the hint still sees torchvision's names.
        let e = load(&g, &path, Naming::R2rc).unwrap_err();
        let hint = e.hint_text().unwrap_or_default();
        assert!(hint.contains("pass --names torchvision"), "{e}: {hint}");
        // A torchvision checkpoint of another network (one tensor missing) gets the
        // hint too, and under --names torchvision the error names the missing tensor.
        tv.tensors.remove("module.layer2.0.conv2.weight");
        std::fs::write(&path, raw_safetensors(&tv)).unwrap();
        let e = load(&g, &path, Naming::R2rc).unwrap_err();
        let hint = e.hint_text().unwrap_or_default();
        assert!(hint.contains("pass --names torchvision"), "{e}: {hint}");
        let e = load(&g, &path, Naming::Torchvision).unwrap_err();
        assert!(e.to_string().contains("`layer2.0.conv2.weight`"), "{e}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn another_networks_torchvision_checkpoint_is_not_taken_for_a_naming_slip() {
        // resnet18's torchvision names include every one of the CIFAR net's, but their
        // shapes differ: the error keeps its "another architecture" hint.
        let c10 = example("resnet_cifar10");
        let r18 = example("resnet18");
        let path = tmp("r18_tv.safetensors");
        save(
            &params::init(&r18, 1, false),
            &r18,
            &path,
            None,
            Naming::Torchvision,
        )
        .unwrap();
        let e = load(&c10, &path, Naming::R2rc).unwrap_err();
        let hint = e.hint_text().unwrap_or_default();
        assert!(hint.contains("another architecture"), "{e}: {hint}");
        assert_eq!(suggested_naming(&c10, &path, Naming::R2rc), None);
        assert_eq!(
            suggested_naming(&r18, &path, Naming::R2rc),
            Some(Naming::Torchvision)
        );
        let _ = std::fs::remove_file(path);
    }

    /// A minimal f32/i64 safetensors writer for files r2rc would not write.
    fn raw_safetensors(p: &Params) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, t) in &p.tensors {
            let start = data.len();
            let dtype = if name.ends_with("num_batches_tracked") {
                t.iter()
                    .for_each(|&x| data.extend_from_slice(&(x as i64).to_le_bytes()));
                "I64"
            } else {
                t.iter()
                    .for_each(|&x| data.extend_from_slice(&(x as f32).to_le_bytes()));
                "F32"
            };
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [start, data.len()]}),
            );
        }
        let mut h = serde_json::to_string(&header).unwrap();
        while !(h.len() + 8).is_multiple_of(8) {
            h.push(' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        out
    }

    fn to_r2rc(g: &Graph, naming: Naming, t: &str) -> String {
        target_to_r2rc(g, naming, t).unwrap_or_else(|e| panic!("{t}: {e}"))
    }

    #[test]
    fn torchvision_targets_name_layers_blocks_and_stages() {
        let tv = Naming::Torchvision;
        let g = example("resnet18");
        // Layers of the stem, of blocks, of a projection shortcut, and of the head.
        for (theirs, ours) in [
            ("conv1", "conv1"),
            ("bn1", "conv1.bn"),
            ("relu", "conv1.act"),
            ("maxpool", "conv2_x.pool"),
            ("layer1.0.conv1", "conv2_1.conv1"),
            ("layer2.0.conv1", "conv3_1.conv1"),
            ("layer2.1.bn2", "conv3_2.bn2"),
            ("layer4.1.conv2", "conv5_2.conv2"),
            ("layer2.0.downsample.0", "conv3_1.downsample.0"),
            ("layer3.0.downsample.1", "conv4_1.downsample.1"),
            ("avgpool", "head.pool"),
            ("fc", "head.fc"),
            // Blocks and stages.
            ("layer1.0", "conv2_1"),
            ("layer2.0", "conv3_1"),
            ("layer3.1", "conv4_2"),
            ("layer1", "conv2_x"),
            ("layer3", "conv4_x"),
            ("layer4", "conv5_x"),
        ] {
            assert_eq!(to_r2rc(&g, tv, theirs), ours, "{theirs}");
        }
        // r2rc's own names stay valid under torchvision's naming, and are the identity
        // under r2rc's.
        for ours in [
            "conv3_1.conv1",
            "conv4_2",
            "conv5_x",
            "head.fc",
            "head",
            "conv1.bn",
        ] {
            assert_eq!(to_r2rc(&g, tv, ours), ours);
            assert_eq!(to_r2rc(&g, Naming::R2rc, ours), ours);
        }
        // A bottleneck's third conv, a deep stage's late block.
        let g50 = example("resnet50");
        assert_eq!(to_r2rc(&g50, tv, "layer3.5.conv3"), "conv4_6.conv3");
        assert_eq!(to_r2rc(&g50, tv, "layer3.5"), "conv4_6");
        assert_eq!(
            to_r2rc(&g50, tv, "layer1.0.downsample.0"),
            "conv2_1.downsample.0"
        );
        // A padding shortcut (option A) is one module, `downsample`.
        let src = "arch Pad\ninput 3x16x16\nshortcut pad\nconv1 16x16 3x3, 8\n\
                   conv2_x 16x16 [3x3, 8; 3x3, 8] x 1\n\
                   conv3_x 8x8 [3x3, 16; 3x3, 16] x 2, stride 2\nhead 1x1 avg pool, 10-d fc\n";
        let pad = compile(src, &[]).unwrap();
        assert_eq!(
            to_r2rc(&pad, tv, "layer2.0.downsample"),
            "conv3_1.downsample"
        );
        assert_eq!(to_r2rc(&pad, tv, "layer2.1"), "conv3_2");
        assert_eq!(to_r2rc(&pad, tv, "layer2"), "conv3_x");
    }

    #[test]
    fn every_torchvision_target_is_a_target_and_every_tensor_layer_has_one() {
        for ex in [
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet_cifar10",
            "resnet_cifar18",
        ] {
            let g = example(ex);
            let tv = torchvision_targets(&g);
            let ours = crate::transform::target_names(&g);
            for (theirs, r) in &tv {
                assert!(ours.contains(r), "{ex}: {theirs} -> {r}");
            }
            // The module of every tensor in a torchvision file can be named as a target.
            for (r, theirs) in layer_renames(&g, Naming::Torchvision).unwrap() {
                assert_eq!(tv.get(&theirs), Some(&r), "{ex}: {theirs}");
            }
        }
    }

    #[test]
    fn unknown_targets_are_refused_with_the_nearest_name_and_the_valid_ones() {
        let tv = Naming::Torchvision;
        let g = example("resnet18");
        let err = |naming, t: &str| {
            let e = target_to_r2rc(&g, naming, t).unwrap_err();
            assert!(matches!(e, Error::Usage { .. }), "{e:?}");
            assert!(e.to_string().contains(&format!("`{t}`")), "{e}");
            e.hint_text().unwrap_or_default().to_string()
        };
        // A stage resnet18 lacks: the hint lists its stages with their blocks.
        let h = err(tv, "layer5");
        assert!(h.contains("layer4 (blocks layer4.0-layer4.1)"), "{h}");
        assert!(h.contains("in a block conv1, bn1, conv2, bn2"), "{h}");
        assert!(h.contains("downsample.0"), "{h}");
        // Misspellings get the nearest name, with its r2rc name.
        let h = err(tv, "layer2.0.conv3");
        assert!(
            h.contains("did you mean `layer2.0.conv1` (r2rc's `conv3_1.conv1`)?"),
            "{h}"
        );
        let h = err(tv, "layer2.2");
        assert!(h.contains("did you mean `layer2."), "{h}");
        assert!(h.contains("layer2 (blocks layer2.0-layer2.1)"), "{h}");
        // A block's shared relu: which r2rc layers it stands for.
        let h = err(tv, "layer2.0.relu");
        assert!(
            h.contains("`conv3_1.act1`") && h.contains("`conv3_1.act`"),
            "{h}"
        );
        // A torchvision name without --names torchvision: say which flag fits.
        let h = err(Naming::R2rc, "layer2.0.conv1");
        assert!(
            h.contains("pass --names torchvision, or write `conv3_1.conv1`"),
            "{h}"
        );
        let h = err(Naming::R2rc, "layer3");
        assert!(h.contains("`conv4_x`"), "{h}");
        // r2rc misspellings under r2rc's naming.
        let h = err(Naming::R2rc, "conv3_1.conv9");
        assert!(h.contains("did you mean `conv3_1.conv1`?"), "{h}");
        assert!(h.contains("conv2_x (blocks conv2_1-conv2_2)"), "{h}");
        // A network outside the ResNet layout: r2rc's names only, and said so.
        let small = example("smallconv");
        assert!(torchvision_targets(&small).is_empty());
        let name = crate::transform::target_names(&small)
            .into_iter()
            .last()
            .unwrap();
        assert_eq!(to_r2rc(&small, tv, &name), name);
        let e = target_to_r2rc(&small, tv, "layer1").unwrap_err();
        let h = e.hint_text().unwrap_or_default();
        assert!(h.contains("not in torchvision's ResNet layout"), "{h}");
    }

    #[test]
    fn networks_outside_the_resnet_layout_are_refused_by_layer() {
        let g = example("smallconv");
        let e = layer_renames(&g, Naming::Torchvision).unwrap_err();
        assert!(e.to_string().contains("`fc1`"), "{e}");
        assert!(e.hint_text().unwrap_or_default().contains("conv1"));
        // r2rc's own naming is the identity on any network.
        for (a, b) in layer_renames(&g, Naming::R2rc).unwrap() {
            assert_eq!(a, b);
        }
        assert!(Naming::parse("timm").is_err());
        assert_eq!(Naming::parse("torchvision").unwrap(), Naming::Torchvision);
    }
}
