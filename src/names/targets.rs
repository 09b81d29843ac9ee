//! A command's target (`--layer`, `--after`) in either naming, read as r2rc's name; an
//! unknown one is refused with the nearest spelling and a listing of the names there are.

use std::collections::{BTreeMap, BTreeSet};

use super::{torchvision_targets, Naming};
use crate::error::{Error, Result};
use crate::ir::{Graph, Op};

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
    if matches!(naming, Naming::Hf | Naming::Timm) {
        if let Some(ours) = module_targets(graph, naming).get(target) {
            return Ok(ours.clone());
        }
    }
    let ours = crate::transform::target_names(graph);
    if ours.iter().any(|n| n == target) {
        return Ok(target.to_string());
    }
    Err(unknown_target(graph, naming, target, &tv, &ours))
}

/// A layout's module names as targets (theirs -> ours): each module of the file, and each
/// module above them, names what its layers share: one layer (`model.layers.0.mlp.gate_proj`
/// -> `layers_1.mlp.gate`), the longest prefix of r2rc's names they have in common
/// (`model.layers.0.mlp` -> `layers_1.mlp`, `blocks.0` -> `blocks_1`, a fused
/// `transformer.h.0.attn.c_attn` -> `layers_1.attention`), or, for several blocks of one
/// row, the row (`model.layers` -> `layers_x`). A module holding layers of several rows
/// (`model`) names nothing.
pub fn module_targets(graph: &Graph, naming: Naming) -> BTreeMap<String, String> {
    let Ok(Some(layout)) = super::layout(graph, naming) else {
        return BTreeMap::new();
    };
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (ours, theirs) in layout.modules() {
        let mut t = theirs.as_str();
        loop {
            held.entry(t.to_string()).or_default().push(ours.clone());
            match t.rsplit_once('.') {
                Some((up, _)) => t = up,
                None => break,
            }
        }
    }
    let mut out = BTreeMap::new();
    for (theirs, layers) in held {
        let first: Vec<&str> = layers[0].split('.').collect();
        let common = layers.iter().fold(first.len(), |n, l| {
            l.split('.')
                .zip(&first)
                .take(n)
                .take_while(|(a, b)| a == *b)
                .count()
        });
        let ours = if common > 0 {
            first[..common].join(".")
        } else {
            let rows: BTreeSet<&str> = layers
                .iter()
                .filter_map(|l| graph.find(l).map(|n| graph.g[n].row.as_str()))
                .collect();
            match rows.into_iter().collect::<Vec<_>>()[..] {
                [row] => row.to_string(),
                _ => continue,
            }
        };
        out.insert(theirs, ours);
    }
    out
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
    let modules = module_targets(graph, naming);
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
        candidates.extend(modules.keys().map(|s| s.as_str()));
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
        // Their modules are named as they stand in the file, blocks included.
        Naming::Hf | Naming::Timm => {
            let some: Vec<&str> = modules.keys().map(|k| k.as_str()).take(6).collect();
            format!(
                "under --names {} a target is one of the file's modules ({}, ...) or an r2rc name; {}",
                naming.keyword(),
                some.join(", "),
                r2rc_listing(graph)
            )
        }
    });
    let what = match naming {
        Naming::Torchvision => "module, layer, block or row",
        Naming::R2rc | Naming::Hf | Naming::Timm => "layer, block or row",
    };
    let under = match naming {
        Naming::Torchvision => " (under --names torchvision)",
        Naming::R2rc | Naming::Hf | Naming::Timm => "",
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
