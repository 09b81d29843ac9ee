//! What a widening target names: a layer, block, row or `--all`, resolved to channel spaces,
//! and how many channels each space gets.

use super::{Amount, Method, Target};
use crate::analysis::{Space, Spaces};
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeIndex, Op};

/// Every name a target may use: nodes, blocks (`conv2_1`) and rows (`conv2_x`, `head`).
pub fn target_names(graph: &Graph) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for n in graph.order() {
        let node = &graph.g[n];
        if n == graph.input {
            continue;
        }
        // Sublayers of transformer blocks: `layers_3.mlp` and `layers_x.mlp`.
        let block = block_name(graph, n);
        let sub = block.as_ref().and_then(|b| {
            let rest = node.name.strip_prefix(b.as_str())?.strip_prefix('.')?;
            let (sub, _) = rest.split_once('.')?;
            Some(sub.to_string())
        });
        let subs = sub.map(|s| {
            [
                format!("{}.{s}", node.row),
                format!("{}.{s}", block.as_deref().unwrap_or_default()),
            ]
        });
        for name in [
            Some(node.row.clone()),
            block.clone(),
            subs.as_ref().map(|s| s[1].clone()),
            subs.as_ref().map(|s| s[0].clone()),
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
        Target::Name(n) | Target::Stage(n) => n.as_str(),
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
                        spaces.why_fixed(id).join("; and ")
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
    if let (Target::Stage(_), Some(&last)) = (target, row_nodes.last()) {
        // The stream, then every block's hidden widths.
        let mut ids = vec![spaces.of[&last]];
        for id in hidden_widths(graph, spaces, &row_nodes) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        return check(ids, "a stage: its stream and its blocks' hidden widths");
    }
    if let Some(&last) = row_nodes.last() {
        return check(vec![spaces.of[&last]], "a row: its output stream");
    }
    if matches!(target, Target::Stage(_)) {
        let rows: Vec<&str> = order
            .iter()
            .filter(|&&n| n != graph.input)
            .map(|&n| graph.g[n].row.as_str())
            .collect();
        return Err(no_such(graph, "row", name, &rows));
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
        let ids = hidden_widths(graph, spaces, &block);
        if ids.is_empty() {
            return Err(Error::usage(
                format!("block `{name}` has no hidden width to widen"),
                Some(format!("name the stream instead: `{}`", graph.g[last].row)),
            ));
        }
        return check(ids, "a block: its hidden widths");
    }
    // A sublayer of a transformer block or of every block of a row (`layers_3.mlp`,
    // `layers_x.attention`): its hidden widths.
    if let Some((owner, sub)) = name.rsplit_once('.') {
        let part = format!(".{sub}.");
        let nodes: Vec<NodeIndex> = order
            .iter()
            .copied()
            .filter(|&n| {
                let node = &graph.g[n];
                (node.row == owner || block_name(graph, n).as_deref() == Some(owner))
                    && node.name.contains(&part)
            })
            .collect();
        if !nodes.is_empty() {
            let ids = hidden_widths(graph, spaces, &nodes);
            if ids.is_empty() {
                return Err(Error::usage(
                    format!("`{name}` has no hidden width to widen"),
                    Some(format!(
                        "name the stream instead: `{}`",
                        graph.g[nodes[0]].row
                    )),
                ));
            }
            return check(ids, "a sublayer: its hidden widths");
        }
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

/// The hidden widths among `nodes` (a block, or a row of blocks): the spaces of each
/// block's producers except the block output's, in order.
fn hidden_widths(graph: &Graph, spaces: &Spaces, nodes: &[NodeIndex]) -> Vec<usize> {
    let mut ids = Vec::new();
    let mut blocks: Vec<String> = nodes.iter().filter_map(|&n| block_name(graph, n)).collect();
    blocks.dedup();
    for b in blocks {
        let block: Vec<NodeIndex> = nodes
            .iter()
            .copied()
            .filter(|&n| block_name(graph, n).as_deref() == Some(b.as_str()))
            .collect();
        let out = spaces.of[block.last().expect("a block has nodes")];
        for &n in &block {
            let id = spaces.of[&n];
            if id != out
                && matches!(graph.g[n].op, Op::Conv2d(_) | Op::Linear(_))
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
    }
    ids
}

/// Channels to add to a space of width `c` that earlier steps already grew by `grown`
/// (the channels of another space it holds, through a pad shortcut or concatenation, so
/// `--by` and `--to` name its whole width), and a note when R2R rounded it up.
pub(crate) fn added(
    c: usize,
    grown: usize,
    amount: Amount,
    method: Method,
    label: &str,
) -> Result<(usize, Option<String>)> {
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
            to.saturating_sub(c + grown)
        }
        Amount::To(t) => {
            let c = c + grown;
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
            if method.info().pairs && !e.is_multiple_of(2) {
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
    if method.info().pairs && !e.is_multiple_of(2) {
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

/// A grouped space widens every group by the same number of channels (R2R: pairs inside
/// each group), so it must grow by a multiple of its groups (twice that for R2R): refuses
/// other amounts, naming the widths that work.
pub(crate) fn check_groups(space: &Space, grown: usize, e: usize, method: Method) -> Result<()> {
    let g = space.groups.max(1);
    if g == 1 {
        return Ok(());
    }
    let pairs = method.info().pairs;
    let step = if pairs { 2 * g } else { g };
    if e.is_multiple_of(step) {
        return Ok(());
    }
    let c = space.width + grown;
    let below = e / step * step;
    let works = if below > 0 {
        format!(
            "--to {} or --to {} (--add {below} or --add {})",
            c + below,
            c + below + step,
            below + step
        )
    } else {
        format!("--to {} (--add {step})", c + step)
    };
    Err(Error::usage(
        format!(
            "{} is split into {g} groups by grouped convolution `{}`, and every group widens by the same number of channels{}: it must grow by a multiple of {step} channels, not {e} (to {})",
            space.describe(),
            space.grouped_by.as_deref().unwrap_or("?"),
            if pairs { " in pairs (R2WiderR's U/U rows inside each group)" } else { "" },
            c + e
        ),
        Some(format!("widths that work are {c} + a multiple of {step}: {works}")),
    ))
}

/// The .arch language gives a block whose input and output shapes match an identity
/// shortcut, so a projection (or pad) shortcut that widening made shape-preserving could
/// not be written: refuse rather than print a network that computes something else.
pub(crate) fn refuse_silent_shortcuts(g: &Graph, target: &Target) -> Result<()> {
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

/// "network N has no WHAT named NAME", with the closest of `known` as a hint.
pub fn no_such(graph: &Graph, what: &str, name: &str, known: &[&str]) -> Error {
    let hint = match crate::lower::closest(name, known) {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!("`r2rc check FILE` lists every {what}"),
    };
    Error::usage(
        format!("network `{}` has no {what} named `{name}`", graph.name),
        Some(hint),
    )
}
