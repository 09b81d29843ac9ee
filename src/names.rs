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
/// the file does not fit but would under the other naming, the error says so.
pub fn load(graph: &Graph, path: &Path, naming: Naming) -> Result<Params> {
    let theirs = renamed_graph(graph, naming)?;
    let p = match params::load(&theirs, path) {
        Ok(p) => p,
        Err(e) => return Err(with_naming_hint(e, graph, path, naming)),
    };
    if naming == Naming::R2rc {
        return Ok(p);
    }
    let pairs = tensor_renames(graph, naming)?;
    rename(p, pairs.into_iter().map(|(a, b)| (b, a)))
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
    naming_hint(e, graph, naming, file_tensor_names(path), &shown)
}

/// Checks that the (memory-mapped, maybe sharded) `src` holds `graph`'s tensors under
/// `naming`'s names, with the same hint as [`load`] when they are the other naming's.
pub fn check_source(src: &crate::shards::Source, graph: &Graph, naming: Naming) -> Result<()> {
    let theirs = renamed_graph(graph, naming)?;
    src.check(&theirs).map_err(|e| {
        let names = src.tensors.keys().cloned().collect();
        naming_hint(e, graph, naming, Some(names), &src.shown)
    })
}

/// `e` with a hint to switch `--names` when the file's tensor `names` are exactly
/// `graph`'s under the other naming.
fn naming_hint(
    e: Error,
    graph: &Graph,
    naming: Naming,
    names: Option<BTreeSet<String>>,
    shown: &str,
) -> Error {
    let other = match naming {
        Naming::R2rc => Naming::Torchvision,
        Naming::Torchvision => Naming::R2rc,
    };
    let Error::Weights { message, .. } = &e else {
        return e;
    };
    let Ok(expected) = renamed_graph(graph, other) else {
        return e;
    };
    let Some(names) = names else {
        return e;
    };
    let want: BTreeSet<String> = expected.param_specs().into_iter().map(|s| s.name).collect();
    if want != names {
        return e;
    }
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

/// The tensor names in a safetensors file's header, if it can be read.
fn file_tensor_names(path: &Path) -> Option<BTreeSet<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    // Only a plausible header is read (this is a hint, not a check).
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(
        v.as_object()?
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect(),
    )
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
        let names = file_tensor_names(&path).unwrap();
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
