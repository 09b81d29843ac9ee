//! torchvision's ResNet naming (ResNeXt's too): its name for each r2rc layer and back,
//! and the module names (stages, blocks, the modules of a block, stem and head) a target
//! may use; and its DenseNet naming, for a network whose rows are named after
//! torchvision's modules (`conv0`, `denseK_x`, `transK`, `classifier`, as
//! examples/densenet121.arch).

use std::collections::BTreeMap;

use super::{layer_renames, Naming};
use crate::ir::{Graph, Op};

/// torchvision's name for a parameter-owning layer of a ResNet-family graph:
/// `conv1` -> `conv1`, `conv1.bn` -> `bn1`, `conv1.act` -> `relu` (a PReLU stem),
/// `convK_N.rest` -> `layer{K-1}.{N-1}.rest` for K >= 2, `head.fc` -> `fc`.
pub fn torchvision_layer(name: &str, row: &str, block: Option<usize>) -> Option<String> {
    if let Some(dense) = densenet_layer(name, row, block) {
        return Some(dense);
    }
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
    if let Some(ours) = from_densenet_layer(tv) {
        return Some(ours);
    }
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

/// torchvision's DenseNet name of a parameter-owning layer: `conv0` -> `features.conv0`,
/// `conv0.bn` -> `features.norm0`, `denseK_N.bnI` / `.convI` ->
/// `features.denseblockK.denselayerN.normI` / `.convI`, `transK.bn` / `.conv` ->
/// `features.transitionK.norm` / `.conv`, `classifier.bn` -> `features.norm5` (the BN-ReLU
/// before the head, always `norm5` in torchvision), `classifier.fc` -> `classifier`.
fn densenet_layer(name: &str, row: &str, block: Option<usize>) -> Option<String> {
    match (name, block) {
        ("conv0", None) => return Some("features.conv0".into()),
        ("conv0.bn", None) => return Some("features.norm0".into()),
        ("classifier.bn", None) => return Some("features.norm5".into()),
        ("classifier.fc", None) => return Some("classifier".into()),
        _ => {}
    }
    if let Some(b) = block {
        let k = numbered(row.strip_prefix("dense")?.strip_suffix("_x")?)?;
        let rest = name.strip_prefix(&format!("dense{k}_{b}."))?;
        let rest = match rest.strip_prefix("bn") {
            Some(i) => format!("norm{}", numbered(i)?),
            None => format!("conv{}", numbered(rest.strip_prefix("conv")?)?),
        };
        return (b >= 1).then(|| format!("features.denseblock{k}.denselayer{b}.{rest}"));
    }
    let k = numbered(row.strip_prefix("trans")?)?;
    let part = match name.strip_prefix(row)? {
        ".bn" => "norm",
        ".conv" => "conv",
        _ => return None,
    };
    Some(format!("features.transition{k}.{part}"))
}

/// The inverse of [`densenet_layer`].
fn from_densenet_layer(tv: &str) -> Option<String> {
    match tv {
        "features.conv0" => return Some("conv0".into()),
        "features.norm0" => return Some("conv0.bn".into()),
        "features.norm5" => return Some("classifier.bn".into()),
        "classifier" => return Some("classifier.fc".into()),
        _ => {}
    }
    let rest = tv.strip_prefix("features.")?;
    if let Some(t) = rest.strip_prefix("transition") {
        let (k, part) = t.split_once('.')?;
        let k = numbered(k)?;
        let part = match part {
            "norm" => "bn",
            "conv" => "conv",
            _ => return None,
        };
        return Some(format!("trans{k}.{part}"));
    }
    let (k, rest) = rest.strip_prefix("denseblock")?.split_once('.')?;
    let (n, module) = rest.strip_prefix("denselayer")?.split_once('.')?;
    let (k, n) = (numbered(k)?, numbered(n)?);
    let module = match module.strip_prefix("norm") {
        Some(i) => format!("bn{}", numbered(i)?),
        None => format!("conv{}", numbered(module.strip_prefix("conv")?)?),
    };
    (n >= 1).then(|| format!("dense{k}_{n}.{module}"))
}

/// A positive number written canonically (`3`, not `03` or `0`).
fn numbered(s: &str) -> Option<usize> {
    let v: usize = s.parse().ok()?;
    (v >= 1 && s == v.to_string()).then_some(v)
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
        // DenseNet's blocks, layers and transitions (`features.denseblock1`,
        // `features.denseblock1.denselayer2`, `features.transition1`).
        let dense = node
            .row
            .strip_prefix("dense")
            .and_then(|r| r.strip_suffix("_x"));
        if let (Some(k), Some(b)) = (dense.and_then(numbered), node.block) {
            map.entry(format!("features.denseblock{k}"))
                .or_insert_with(|| node.row.clone());
            map.entry(format!("features.denseblock{k}.denselayer{b}"))
                .or_insert_with(|| format!("dense{k}_{b}"));
            continue;
        }
        if let Some(k) = node.row.strip_prefix("trans").and_then(numbered) {
            map.entry(format!("features.transition{k}"))
                .or_insert_with(|| node.row.clone());
            continue;
        }
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
