//! Tensor names of other libraries, applied when weights are read and written.
//!
//! r2rc names tensors after the rows of the ResNet tables (`conv1.bn`, `conv2_1.conv1`,
//! `head.fc`); torchvision's ResNets name the same tensors `bn1`, `layer1.0.conv1`, `fc`.
//! A naming renames the graph's parameter-owning layers, so a file in that naming is read
//! and written by the ordinary safetensors code with every check (missing, extra,
//! misshaped tensors) reported under the file's own names.
//!
//! Transformers' and timm's schemes are layouts as well as names: a file tensor may hold
//! several r2rc tensors (fused q, k, v), transposed (GPT-2's Conv1D) or reshaped (timm's
//! `cls_token`); `layout.rs` reads and writes those, `hf.rs` and `timm.rs` say where each
//! tensor goes. Paths that read and write tensor by tensor (streamed rewrites, sharded
//! writes) go through [`stored`] and serve every layout; only what needs the network's
//! layers renamed ([`renamed_graph`]: exports) is refused under one that fuses.
//!
//! The parts: `torchvision.rs` holds torchvision's ResNet scheme (layer and module names),
//! `targets.rs` reads a command's target (`--layer`, `--after`) written in either naming;
//! this file renames graphs and tensors and reads and writes weights under a naming.

pub mod hf;
pub mod layout;
mod targets;
pub mod timm;
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
    /// Hugging Face transformers' `LlamaForCausalLM` or `GPT2LMHeadModel`, layouts
    /// included (`model.layers.0.self_attn.q_proj.weight`, `transformer.h.0.attn.c_attn.weight`).
    Hf,
    /// timm's `VisionTransformer` (`blocks.0.attn.qkv.weight`, `cls_token`).
    Timm,
}

/// Every naming, for hints.
const NAMINGS: [Naming; 4] = [Naming::R2rc, Naming::Torchvision, Naming::Hf, Naming::Timm];

impl Naming {
    /// `r2rc`, `torchvision`, `hf` or `timm`.
    pub fn parse(s: &str) -> Result<Naming> {
        match NAMINGS.into_iter().find(|n| n.keyword() == s) {
            Some(n) => Ok(n),
            None => Err(Error::usage(
                format!(
                    "--names {s}: the namings are r2rc and torchvision (ResNets), hf and timm (transformers)"
                ),
                Some(
                    "torchvision reads and writes ResNet weights under torchvision's names, hf \
                     transformers' LlamaForCausalLM and GPT2LMHeadModel, timm its \
                     VisionTransformer"
                        .into(),
                ),
            )),
        }
    }

    pub fn keyword(self) -> &'static str {
        match self {
            Naming::R2rc => "r2rc",
            Naming::Torchvision => "torchvision",
            Naming::Hf => "hf",
            Naming::Timm => "timm",
        }
    }

    /// Whether the naming is a layout ([`layout::Layout`]) rather than a rename.
    fn is_layout(self) -> bool {
        matches!(self, Naming::Hf | Naming::Timm)
    }
}

/// The layout of `graph` under a layout naming (`hf`, `timm`); `None` for a renaming.
pub fn layout(graph: &Graph, naming: Naming) -> Result<Option<layout::Layout>> {
    match naming {
        Naming::Hf => hf::layout(graph).map(Some),
        Naming::Timm => timm::layout(graph).map(Some),
        Naming::R2rc | Naming::Torchvision => Ok(None),
    }
}

/// The tensors (name -> shape) a file of `graph`'s weights holds under `naming`, if the
/// naming covers `graph`.
fn file_shapes(graph: &Graph, naming: Naming) -> Option<BTreeMap<String, Vec<usize>>> {
    if let Some(l) = layout(graph, naming).ok()? {
        return Some(l.shapes());
    }
    let specs = renamed_graph(graph, naming).ok()?.param_specs();
    Some(specs.into_iter().map(|s| (s.name, s.slot.shape)).collect())
}

/// For reports under `naming`: r2rc layer name -> `naming`'s module name, for every
/// parameter-owning layer of `graphs` (teacher and student) that has one; `None` for r2rc's
/// own naming. A torchvision name depends on the r2rc name alone, so one map serves both.
pub fn report_names(graphs: &[&Graph], naming: Naming) -> Option<BTreeMap<String, String>> {
    if naming == Naming::R2rc {
        return None;
    }
    let mut map = BTreeMap::new();
    if naming.is_layout() {
        for g in graphs {
            if let Ok(Some(l)) = layout(g, naming) {
                map.extend(l.modules());
            }
        }
        return Some(map);
    }
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
/// or an error naming the first layer it has no name for. Under a layout that does more
/// than rename (GPT-2, timm), an error naming the first tensor that is fused, transposed
/// or reshaped: such a layout names file tensors, not layers, so what needs a renamed
/// graph (exports) cannot serve it. Reading and writing tensors goes through [`stored`],
/// which serves every naming.
pub fn layer_renames(graph: &Graph, naming: Naming) -> Result<BTreeMap<String, String>> {
    if let Some(l) = layout(graph, naming)? {
        return l.plain_layers().map_err(|s| {
            Error::usage(
                format!(
                    "under {} tensor `{}` is not one r2rc tensor renamed (it holds {}), so \
                     the network's layers have no names of their own in this naming: \
                     exports (ONNX, JSON, torch modules) under it are not available yet",
                    l.shown(),
                    s.name,
                    s.parts
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(
                    "export under r2rc's names (drop --names), or convert the weights to r2rc's \
                     names first (`r2rc run`/`init` read and write --names hf|timm files)"
                        .into(),
                ),
            )
        });
    }
    let mut map = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for n in graph.order() {
        let node = &graph.g[n];
        if node.op.param_slots().is_empty() {
            continue;
        }
        let theirs = match naming {
            Naming::R2rc | Naming::Hf | Naming::Timm => node.name.clone(),
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

/// Every tensor of a file of `graph`'s weights under `naming`, in file order, with the r2rc
/// tensors it holds: a layout's stored tensors (fused, transposed, reshaped), or under a
/// renaming one r2rc tensor each, renamed. What reads and writes files tensor by tensor
/// (streamed rewrites, sharded outputs) goes through this, so it serves every naming.
pub fn stored(graph: &Graph, naming: Naming) -> Result<Vec<layout::Stored>> {
    if let Some(l) = layout(graph, naming)? {
        return Ok(l.stored);
    }
    let shapes: BTreeMap<String, Vec<usize>> = graph
        .param_specs()
        .into_iter()
        .map(|s| (s.name, s.slot.shape))
        .collect();
    Ok(tensor_renames(graph, naming)?
        .into_iter()
        .map(|(ours, theirs)| layout::Stored::renamed(theirs, &ours, &shapes[&ours]))
        .collect())
}

/// Where each r2rc tensor lies among `stored`: (file tensor, part) by r2rc name.
pub fn part_index(stored: &[layout::Stored]) -> std::collections::HashMap<String, (usize, usize)> {
    let mut index = std::collections::HashMap::new();
    for (i, s) in stored.iter().enumerate() {
        for (k, (p, _)) in s.parts.iter().enumerate() {
            index.insert(p.clone(), (i, k));
        }
    }
    index
}

/// The entries (name, shape, whether a batch counter) of a file of `graph`'s weights
/// under `naming`, in file order ([`stored`]): what a writer lays out.
pub fn file_entries(graph: &Graph, naming: Naming) -> Result<Vec<crate::shards::Entry>> {
    let counters: BTreeSet<String> = graph
        .param_specs()
        .into_iter()
        .filter(|s| s.slot.kind == crate::ir::ParamKind::NumBatchesTracked)
        .map(|s| s.name)
        .collect();
    Ok(stored(graph, naming)?
        .into_iter()
        .map(|s| crate::shards::Entry {
            counter: s.parts.len() == 1 && counters.contains(&s.parts[0].0),
            name: s.name,
            shape: s.shape,
        })
        .collect())
}

/// Writes `params` (r2rc's names) at `path` under `naming`, sharded by `shard_size` when
/// given, in file order ([`file_entries`]); returns the files written.
pub fn save_sharded(
    params: &Params,
    graph: &Graph,
    path: &Path,
    metadata: Option<&BTreeMap<String, String>>,
    naming: Naming,
    shard_size: Option<u64>,
) -> Result<Vec<std::path::PathBuf>> {
    params.check(graph)?;
    let entries = file_entries(graph, naming)?;
    let mut w =
        crate::shards::Writer::create(path, &entries, params.dtype, metadata, shard_size, 0)?;
    for s in stored(graph, naming)? {
        let t = if s.is_plain() {
            params.tensors[&s.parts[0].0].clone()
        } else {
            s.join(&params.tensors)?
        };
        w.write_values(&s.name, &t)?;
    }
    w.finish()
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
    if let Some(l) = layout(graph, naming)? {
        let src = crate::shards::Source::open(path)?;
        let p = l
            .read(&src)
            .map_err(|e| naming_hint(e, graph, naming, Some(source_shapes(&src)), &src.shown))?;
        return Ok((p, src.notes()));
    }
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
    if let Some(l) = layout(graph, naming)? {
        return l.write(params);
    }
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
    if let Some(l) = layout(graph, naming)? {
        // The bytes the streaming writer gives ([`crate::shards::Writer`]): tensors in file
        // order, metadata sorted, `format: pt` under hf.
        params.check(graph)?;
        let theirs = l.write(params)?;
        let meta =
            crate::hf_config_out::file_metadata(metadata.unwrap_or(&BTreeMap::new()), naming);
        let entries = file_entries(graph, naming)?;
        let mut out =
            crate::shards::header(&entries, params.dtype, (!meta.is_empty()).then_some(&meta));
        for e in &entries {
            let t = theirs.tensors[&e.name].as_standard_layout();
            let values = t.as_slice().expect("standard layout");
            crate::shards::encode_append(values, params.dtype, e.counter, &mut out);
        }
        return Ok(out);
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
    let checked = match layout(graph, naming)? {
        Some(l) => l.check(src),
        None => src.check(&renamed_graph(graph, naming)?),
    };
    checked.map_err(|e| naming_hint(e, graph, naming, Some(source_shapes(src)), &src.shown))
}

/// `e` with a hint to switch `--names` when the file's tensors (`names` with their
/// shapes) fit another naming rather than `naming` ([`other_fits`]), or are another
/// scheme's or model family's checkpoint ([`family_hint`]).
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
    let Some(names) = names else {
        return e;
    };
    let hint = match other_fits(graph, naming, &names) {
        Some(other) => {
            let flag = match other {
                Naming::R2rc => format!("drop --names {} (or pass --names r2rc)", naming.keyword()),
                _ => format!("pass --names {}", other.keyword()),
            };
            format!(
                "{shown} names its tensors the {} way: {flag}",
                other.keyword()
            )
        }
        None => match family_hint(graph, naming, &names, shown) {
            Some(h) => h,
            None => return e,
        },
    };
    Error::Weights {
        message: message.clone(),
        hint: Some(hint),
    }
}

/// A hint when the file is a checkpoint of a scheme `naming` is not (transformers', timm's),
/// or, under `hf`, of the other model family than `graph`'s.
fn family_hint(
    graph: &Graph,
    naming: Naming,
    names: &BTreeMap<String, Vec<usize>>,
    shown: &str,
) -> Option<String> {
    let list: Vec<&str> = names.keys().map(|k| k.as_str()).collect();
    if let Some(file) = hf::file_family(&list) {
        if naming != Naming::Hf {
            return Some(format!(
                "{shown} is a transformers {} checkpoint: pass --names hf (and the model's .arch: `r2rc from-hf config.json`)",
                file.class()
            ));
        }
        let ours = hf::family(graph).ok()?;
        return (ours != file).then(|| {
            format!(
                "{shown} is a {} checkpoint, but network `{}` is laid out as {}: pass the .arch of the checkpoint's model (`r2rc from-hf` its config.json)",
                file.class(),
                graph.name,
                ours.class()
            )
        });
    }
    (naming != Naming::Timm && timm::is_timm_file(&list)).then(|| {
        format!(
            "{shown} is a {} checkpoint: pass --names timm",
            timm::FAMILY
        )
    })
}

/// Another naming, when the file's tensors (name -> shape) are rather `graph`'s under it
/// than under `naming`: more of them match its tensors, by name and shape, than
/// `naming`'s, and they hold at least half of its tensors. (A checkpoint of another
/// architecture whose names happen to fit another naming gets no such hint: its shapes
/// differ, and the error's own hint stands.)
fn other_fits(
    graph: &Graph,
    naming: Naming,
    names: &BTreeMap<String, Vec<usize>>,
) -> Option<Naming> {
    let hits = |n: Naming| -> Option<(usize, usize)> {
        let specs = file_shapes(graph, n)?;
        let hit = specs
            .iter()
            .filter(|(name, shape)| names.get(*name) == Some(*shape))
            .count();
        Some((hit, specs.len()))
    };
    let ours_hit = hits(naming).map_or(0, |(h, _)| h);
    NAMINGS
        .into_iter()
        .filter(|n| *n != naming)
        .filter_map(|n| Some((n, hits(n)?)))
        .filter(|(_, (hit, len))| *hit > ours_hit && hit * 2 >= *len)
        .max_by_key(|(_, (hit, _))| *hit)
        .map(|(n, _)| n)
}

/// The naming a state dict's tensors (`names` with their shapes) use for `graph` when it
/// is not `naming`: for the Python API's `names=` hint.
pub fn suggested_naming_of(
    graph: &Graph,
    names: &BTreeMap<String, Vec<usize>>,
    naming: Naming,
) -> Option<Naming> {
    other_fits(graph, naming, names)
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
