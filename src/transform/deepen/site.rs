//! The site of a deepening: `--after NAME` resolved to a block or row value, and what a
//! method needs to know about it (its sign, the scale of nearby weights, the site
//! block's layers).

use crate::analysis::sign;
use crate::error::Result;
use crate::ir::{Activation, Graph, NodeIndex, Op};
use crate::params::Params;

use super::{usage, LayerSpec};

/// Where new layers go.
#[derive(Debug, Clone)]
pub struct Site {
    /// What the user named.
    pub label: String,
    /// The value the new layers read (the block's or row's output).
    pub value: NodeIndex,
    pub row: String,
    /// The block number when the site is a block; new layers then join its row.
    pub block: Option<usize>,
    /// `[C, H, W]` of the value.
    pub shape: Vec<usize>,
    /// Inside a block's branch (`--after conv2_1.conv1`): the new layer is an item of the
    /// block, between the named layer and the next (the block keeps its number).
    pub inside: bool,
}

impl Site {
    pub fn channels(&self) -> usize {
        self.shape[0]
    }
}

/// What a method knows about the site.
pub struct SiteInfo<'a> {
    pub graph: &'a Graph,
    pub params: &'a Params,
    pub site: Site,
    /// The sign analysis proves the site value non-negative.
    pub non_negative: bool,
    /// Why it may be negative, for refusals.
    pub why_negative: String,
    /// Standard deviation of the previous block's last kernel (paper section 6).
    pub scale: f64,
    /// The site block's branch layers, when the site is a block.
    pub template: Vec<LayerSpec>,
    /// The site layer's nodes in order, when the site is a transformer layer.
    pub layer: Option<Vec<NodeIndex>>,
}

/// The block name (`conv2_1`) of a node inside a block.
pub(super) fn block_of(graph: &Graph, n: NodeIndex) -> Option<String> {
    graph.g[n].block?;
    graph.g[n].name.split_once('.').map(|(b, _)| b.to_string())
}

/// Resolves `--after NAME` to a site.
pub fn resolve_site(graph: &Graph, name: &str) -> Result<Site> {
    let order: Vec<NodeIndex> = graph
        .order()
        .into_iter()
        .filter(|&n| n != graph.input)
        .collect();
    let site = |value: NodeIndex| -> Site {
        let node = &graph.g[value];
        Site {
            label: name.to_string(),
            value,
            row: node.row.clone(),
            block: node.block,
            shape: node.shape.clone(),
            inside: false,
        }
    };
    let found = if let Some(&last) = order.iter().rev().find(|&&n| graph.g[n].row == name) {
        // A row: its output; when the row ends with a block, that block.
        Some(site(last))
    } else if let Some(&last) = order
        .iter()
        .rev()
        .find(|&&n| block_of(graph, n).as_deref() == Some(name))
    {
        Some(site(last))
    } else {
        None
    };
    let found = match found {
        Some(s) => Some(s),
        None => inside_site(graph, name)?.map(|value| Site {
            inside: true,
            ..site(value)
        }),
    };
    let Some(s) = found else {
        if let Some(n) = graph.find(name) {
            let node = &graph.g[n];
            let hint = match block_of(graph, n) {
                Some(b) => format!("to insert after its block, use --after {b}"),
                None => format!("to insert after its row, use --after {}", node.row),
            };
            return Err(usage(
                format!(
                    "`{name}` is a layer inside {}; deepening inserts after a block (like `conv2_1`) or a row (like `conv1`)",
                    block_of(graph, n).map_or(format!("row `{}`", node.row), |b| format!("block `{b}`"))
                ),
                Some(hint),
            ));
        }
        // A sublayer or layer inside a transformer layer: deepening inserts whole layers.
        if let Some((b, _)) = name.split_once('.') {
            if transformer_blocks(graph).iter().any(|l| l == b) {
                return Err(usage(
                    format!(
                        "`{name}` is part of transformer layer `{b}`; deepening inserts a whole layer after a layer"
                    ),
                    Some(format!("to insert after that layer, use --after {b}")),
                ));
            }
        }
        let names = crate::transform::target_names(graph);
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let hint = match crate::lower::closest(name, &refs) {
            Some(c) => format!("did you mean `{c}`?"),
            None => "`r2rc check FILE` lists every layer; blocks are named like `conv2_1`".into(),
        };
        return Err(usage(
            format!(
                "network `{}` has no block or row named `{name}`",
                graph.name
            ),
            Some(hint),
        ));
    };
    let value = &graph.g[s.value].name;
    match s.shape.as_slice() {
        [_, _, _] => {}
        [t, d] if super::transformer::layer_nodes(graph, &s).is_none() => {
            let layers = transformer_blocks(graph);
            let hint = match (layers.first(), layers.last()) {
                (Some(a), Some(b)) => format!(
                    "deepening a transformer inserts a layer after one of its layers, `{a}` to `{b}` (or after a row of them); the new layer takes the next number"
                ),
                _ => "deepening a transformer inserts a layer after one of its layers (a block of a row written `[attention ...; mlp ...]`)".into(),
            };
            return Err(usage(
                format!(
                    "cannot deepen after `{name}`: `{value}` outputs a sequence of {t} tokens of width {d} but is not a transformer layer, and a convolution cannot be inserted on tokens"
                ),
                Some(hint),
            ));
        }
        [_, _] => {}
        _ => {
            return Err(usage(
                format!(
                    "cannot deepen after `{name}`: deepening inserts convolutions, which need a CxHxW feature map, but `{value}` outputs a vector of {}",
                    s.shape[0]
                ),
                Some("choose a block or row before the flatten / fc layers".into()),
            ))
        }
    }
    Ok(s)
}

/// The value after which a layer goes inside a block's branch, when `name` is a layer of
/// one of its items (`conv2_1.conv1`, `conv2_1.bn1`, `conv2_1.act1`) other than the last
/// (whose output the shortcut joins); `None` when `name` is no such layer.
fn inside_site(graph: &Graph, name: &str) -> Result<Option<NodeIndex>> {
    let Some(n) = graph.find(name) else {
        return Ok(None);
    };
    let Some(b) = block_of(graph, n) else {
        return Ok(None);
    };
    let rest = &graph.g[n].name[b.len() + 1..];
    let Some(i) = ["conv", "bn", "act"]
        .iter()
        .find_map(|p| rest.strip_prefix(p)?.parse::<usize>().ok())
    else {
        return Ok(None);
    };
    let items = block_template(graph, &b).len();
    // What the block does with its last layer's output.
    let joins = if graph.find(&format!("{b}.cat")).is_some() {
        "the dense layer concatenates to its input"
    } else {
        "the shortcut joins"
    };
    if i >= items && items == 1 {
        return Err(usage(
            format!("block `{b}` has one layer (`{name}` is part of it), whose output {joins}, so there is no place between two of its layers"),
            Some(format!("use --after {b} (a new block after it)")),
        ));
    }
    if i >= items {
        return Err(usage(
            format!(
                "`{name}` is part of the last layer of block `{b}`, whose output {joins}; a layer inserted inside a block goes between two of its layers ({})",
                (1..items)
                    .map(|k| format!("`{b}.conv{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(if items > 1 {
                format!("use --after {b}.conv{} (before the last layer) or --after {b} (a new block)", items - 1)
            } else {
                format!("use --after {b} (a new block after it)")
            }),
        ));
    }
    // The item's last value: its activation, else its batch norm, else its conv. Under
    // `preact` an item is BN-act-conv, and its conv's output may be negative; the new layer
    // goes after the next item's BN-act instead (still between the two convs), where a
    // conv-BN-act layer starts as the identity on the non-negative pre-activation and the
    // printed block reads it back as one more BN-act-conv layer.
    let item = if graph.defaults.preact { i + 1 } else { i };
    let value = ["act", "bn"]
        .iter()
        .find_map(|p| graph.find(&format!("{b}.{p}{item}")))
        .or_else(|| graph.find(&format!("{b}.conv{i}")))
        .expect("the item has its conv");
    Ok(Some(value))
}

/// The transformer layers of `graph` (`layers_1`, ...), in order.
fn transformer_blocks(graph: &Graph) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in graph.order() {
        if matches!(graph.g[n].op, Op::Attention(_) | Op::Norm(_)) {
            if let Some(b) = block_of(graph, n) {
                if out.last() != Some(&b) {
                    out.push(b);
                }
            }
        }
    }
    out
}

/// The branch layers of block `b` (`conv2_1`): `b.conv1`, `b.bn1`, `b.act1`, ...
fn block_template(graph: &Graph, b: &str) -> Vec<LayerSpec> {
    let mut layers = Vec::new();
    for i in 1.. {
        let Some(c) = graph.find(&format!("{b}.conv{i}")) else {
            break;
        };
        let Op::Conv2d(conv) = &graph.g[c].op else {
            break;
        };
        let act = graph
            .find(&format!("{b}.act{i}"))
            .and_then(|a| match &graph.g[a].op {
                Op::Activation(a) => Some(a.clone()),
                _ => None,
            });
        layers.push(LayerSpec {
            kernel: conv.kernel[0],
            padding: conv.padding,
            dilation: conv.dilation,
            width: conv.out_channels,
            groups: conv.groups,
            norm: graph.find(&format!("{b}.bn{i}")).is_some(),
            bias: conv.bias,
            act,
        });
    }
    layers
}

/// The conv whose weights' scale new weights match: the site block's last branch conv, or
/// else the last conv before the site.
pub(super) fn scale_kernel(graph: &Graph, site: &Site) -> Option<NodeIndex> {
    let block = site.block.and_then(|_| block_of(graph, site.value));
    let template_len = block
        .as_deref()
        .map_or(0, |b| block_template(graph, b).len());
    block
        .as_deref()
        .and_then(|b| graph.find(&format!("{b}.conv{template_len}")))
        .or_else(|| {
            let order = graph.order();
            let upto = order.iter().position(|&n| n == site.value).unwrap_or(0);
            order[..=upto]
                .iter()
                .rev()
                .copied()
                .find(|&n| matches!(graph.g[n].op, Op::Conv2d(_)))
        })
}

/// What the methods need to know about the site.
pub fn site_info<'a>(graph: &'a Graph, params: &'a Params, site: Site) -> SiteInfo<'a> {
    let block = site.block.and_then(|_| block_of(graph, site.value));
    let template = block
        .as_deref()
        .map_or(Vec::new(), |b| block_template(graph, b));
    let scale = scale_kernel(graph, &site)
        .and_then(|n| params.get(&format!("{}.weight", graph.g[n].name)))
        .map(crate::transform::std_of)
        .filter(|s| *s > 0.0)
        .unwrap_or_else(|| (2.0 / (9 * site.channels()) as f64).sqrt());
    let non_negative = sign::is_non_negative(graph, site.value);
    let why_negative = if non_negative {
        String::new()
    } else {
        sign::why_maybe_negative(graph, site.value)
    };
    let layer = super::transformer::layer_nodes(graph, &site);
    SiteInfo {
        layer,
        graph,
        params,
        site,
        non_negative,
        why_negative,
        scale,
        template,
    }
}

/// Refuses unless the network's activation, applied after the inserted layers, leaves the
/// site value unchanged: identity always, ReLU-like ones on a non-negative value.
pub fn check_post_act(info: &SiteInfo, title: &str) -> Result<()> {
    let act = &info.graph.defaults.act;
    // A pre-activated block's activation comes first, right on the site value.
    let preact = info.graph.defaults.preact && !info.site.inside;
    let (ends, hint) = if preact {
        ("start with batch norm and", "under `preact` every block or transition output is un-normalised and may be negative: insert inside a block (like `--after conv2_1.conv1`, after the next layer's BN-ReLU), or use --method netmorph, which is exact for any input")
    } else {
        ("end in", "insert after a block or row that ends in ReLU (or pooling of ReLU outputs), or use --method netmorph, which is exact for any input")
    };
    match act {
        Activation::Identity => Ok(()),
        Activation::Relu | Activation::LeakyRelu { .. } | Activation::Prelu { .. } if info.non_negative => Ok(()),
        Activation::Relu | Activation::LeakyRelu { .. } | Activation::Prelu { .. } => Err(usage(
            format!(
                "cannot insert {title} after `{}`: the new layers {ends} {}, which leaves its input unchanged only where it is non-negative, and the sign analysis cannot prove `{}` non-negative: it comes from {}",
                info.site.label,
                act.keyword(),
                info.graph.g[info.site.value].name,
                info.why_negative
            ),
            Some(hint.into()),
        )),
        _ => Err(usage(
            format!(
                "cannot insert {title} after `{}`: the network's activation {} changes non-negative values too, so the new layers would not start as the identity",
                info.site.label,
                act.keyword()
            ),
            Some("use --method netmorph, which is exact for any input".into()),
        )),
    }
}

/// Under `preact` a value is raw when it has not been normalised since its conv: a
/// pre-activated block's add or concatenation, a transition's pooled conv. The language
/// puts the header's BN-act before the next item that is not pre-activated only after raw
/// values.
fn is_raw(graph: &Graph, v: NodeIndex) -> bool {
    match &graph.g[v].op {
        Op::Conv2d(_) | Op::Add | Op::Concat => true,
        Op::MaxPool(_) | Op::AvgPool(_) => {
            graph.inputs(v).first().is_some_and(|&i| is_raw(graph, i))
        }
        _ => false,
    }
}

/// Under `preact` a block inserted after a block or row is pre-activated, so its output
/// is raw: refuses a site whose value is normalised (the stem's conv-BN-act, a pool of it)
/// unless every reader is a BN or activation (the next layer's pre-activation) or part of
/// a block (pre-activated, or its identity shortcut), since the item after it would
/// otherwise get a BN-act of its own when the student is written.
pub fn check_preact_site(graph: &Graph, site: &Site) -> Result<()> {
    if !graph.defaults.preact || site.inside || site.shape.len() != 3 || is_raw(graph, site.value) {
        return Ok(());
    }
    let readers = graph.consumers(site.value);
    let pre = |r: &&NodeIndex| {
        matches!(graph.g[**r].op, Op::BatchNorm(_) | Op::Activation(_))
            || graph.g[**r].block.is_some()
    };
    let odd = readers.iter().find(|r| !pre(r));
    if !readers.is_empty() && odd.is_none() {
        return Ok(());
    }
    let value = &graph.g[site.value].name;
    let reader = odd.map_or("the network output".to_string(), |&r| {
        format!("`{}`", graph.g[r].name)
    });
    Err(usage(
        format!(
            "cannot deepen after `{}` in a pre-activated network: `{value}` is already normalised and read by {reader}, not by a pre-activation, but a block inserted under `preact` is BN-act-conv and leaves its output un-normalised, so {reader} would need a BN-act of its own",
            site.label
        ),
        Some("insert after a block (like `conv2_1`), after a transition, or inside a block (like `--after conv2_1.conv1`)".into()),
    ))
}
