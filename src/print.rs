//! Graph to canonical `.arch` text, the inverse of lowering: resolved integer widths,
//! options only where they differ from the defaults, identical consecutive blocks merged
//! into `x N`. `compile(&print(g)) == g` for every graph lowering can produce.

mod families;
mod seq;

use std::fmt::Write;

use crate::ir::*;

/// Canonical text of a graph.
pub fn print(graph: &Graph) -> String {
    let rows = group_rows(graph);
    let mut lines: Vec<(String, String, Vec<String>)> = Vec::new();
    for (row, nodes) in &rows {
        let last = *nodes.last().expect("rows are not empty");
        let size = match graph.g[last].shape.as_slice() {
            [_, h, w] => format!("{h}x{w}"),
            [t, d] => format!("{t}x{d}"),
            _ => "1x1".to_string(),
        };
        lines.push((row.clone(), size, row_items(graph, nodes)));
    }
    let name_w = lines.iter().map(|l| l.0.chars().count()).max().unwrap_or(0) + 2;
    let size_w = lines.iter().map(|l| l.1.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    let d = &graph.defaults;
    writeln!(out, "arch {}", graph.name).unwrap();
    match d.vocab {
        Some(v) => writeln!(out, "input {} tokens, vocab {v}", graph.input_shape()[0]).unwrap(),
        None => writeln!(out, "input {}", show_shape(graph.input_shape())).unwrap(),
    }
    if !d.norm {
        out.push_str("norm none\n");
    }
    if d.act != Activation::Relu {
        writeln!(out, "act {}", act_text(&d.act)).unwrap();
    }
    if d.shortcut != ShortcutKind::Projection {
        writeln!(out, "shortcut {}", d.shortcut.keyword()).unwrap();
    }
    if d.eps != 1e-5 {
        writeln!(out, "eps {}", d.eps).unwrap();
    }
    if d.preact {
        out.push_str("preact\n");
    }
    seq::headers(d, &mut out);
    out.push('\n');
    for (name, size, items) in lines {
        // Blocks start their own line, as in the paper's tables.
        let mut row_lines: Vec<String> = Vec::new();
        for item in items {
            match row_lines.last_mut() {
                Some(line) if !item.starts_with('[') && !line.starts_with('[') => {
                    line.push_str(", ");
                    line.push_str(&item);
                }
                _ => row_lines.push(item),
            }
        }
        for (k, line) in row_lines.iter().enumerate() {
            let (n, z) = if k == 0 {
                (name.as_str(), size.as_str())
            } else {
                ("", "")
            };
            writeln!(out, "{n:name_w$}{z:size_w$}{line}").unwrap();
        }
    }
    out
}

/// Consecutive nodes (in topological order) of the same row.
fn group_rows(graph: &Graph) -> Vec<(String, Vec<NodeIndex>)> {
    let mut rows: Vec<(String, Vec<NodeIndex>)> = Vec::new();
    for n in graph.order() {
        if n == graph.input {
            continue;
        }
        let row = &graph.g[n].row;
        match rows.last_mut() {
            Some((r, nodes)) if r == row => nodes.push(n),
            _ => rows.push((row.clone(), vec![n])),
        }
    }
    rows
}

/// `3x3 max pool, stride 2`: kernel, kind and a stride other than 1 (printer and picture).
pub(crate) fn pool_text(op: &Op, p: &Pool) -> String {
    let kind = if matches!(op, Op::MaxPool(_)) {
        "max"
    } else {
        "avg"
    };
    let mut s = format!("{}x{} {kind} pool", p.kernel[0], p.kernel[1]);
    if p.stride != 1 {
        write!(s, ", stride {}", p.stride).unwrap();
    }
    s
}

fn act_text(a: &Activation) -> String {
    match a {
        Activation::LeakyRelu { slope } if *slope != 0.01 => format!("leaky_relu({slope})"),
        a => a.keyword().to_string(),
    }
}

fn same_act(a: &Activation, b: &Activation) -> bool {
    match (a, b) {
        (Activation::Prelu { .. }, Activation::Prelu { .. }) => true,
        _ => a == b,
    }
}

/// Item texts of a row, with consecutive identical blocks merged.
fn row_items(graph: &Graph, nodes: &[NodeIndex]) -> Vec<String> {
    let mut items = Vec::new();
    let mut blocks: Vec<BlockSpec> = Vec::new();
    // Transformer layers as text, merged into `x N` when consecutive ones are equal.
    let mut layers: Vec<String> = Vec::new();
    let mut i = 0;
    // The last fc item (outside blocks) has no activation by default.
    let last_linear = graph.order().into_iter().rfind(|n| {
        graph.g[*n].block.is_none() && matches!(graph.g[*n].op, Op::Linear(_) | Op::TiedLinear(_))
    });
    while i < nodes.len() {
        let n = nodes[i];
        if let Some(b) = graph.g[n].block {
            let end = nodes[i..]
                .iter()
                .position(|m| graph.g[*m].block != Some(b))
                .map_or(nodes.len(), |p| i + p);
            if seq::is_transformer_block(graph, &nodes[i..end]) {
                flush_blocks(graph, &mut blocks, &mut items);
                layers.push(seq::block_text(graph, &nodes[i..end]));
            } else {
                flush_layers(&mut layers, &mut items);
                blocks.push(block_spec(graph, &nodes[i..end]));
            }
            i = end;
            continue;
        }
        flush_blocks(graph, &mut blocks, &mut items);
        flush_layers(&mut layers, &mut items);
        // Transitions, pre-activated convs and the implied final BN-act of `preact`.
        if let Some((k, text)) = families::pre_activated_item(graph, &nodes[i..]) {
            items.extend(text);
            i += k;
            continue;
        }
        let node = &graph.g[n];
        let at = i;
        let next = |k: usize| nodes.get(at + k).map(|m| &graph.g[*m].op);
        match &node.op {
            Op::Conv2d(c) => {
                let mut layer = LayerSpec::from_conv(c);
                let mut k = 1;
                // Under `preact` a BN-act after a conv without its own may be the one
                // implied before the next item of the row (`ROW.bn`): only `X.bn` and
                // `X.act` are conv X's.
                let own = |k: usize, suffix: &str| {
                    !graph.defaults.preact
                        || nodes
                            .get(at + k)
                            .is_some_and(|m| graph.g[*m].name == format!("{}.{suffix}", node.name))
                };
                if let (Some(Op::BatchNorm(_)), true) = (next(k), own(k, "bn")) {
                    layer.norm = true;
                    k += 1;
                }
                if let (Some(Op::Activation(a)), true) = (next(k), own(k, "act")) {
                    layer.act = Some(a.clone());
                    k += 1;
                }
                // A patch embedding (its output becomes tokens) has no activation by default.
                let patches = matches!(next(k), Some(Op::ToTokens));
                i += k;
                items.push(layer.text(&graph.defaults, !patches, false));
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let mut s = pool_text(&node.op, p);
                if p.padding != (p.kernel[0] - 1) / 2 {
                    write!(s, ", pad {}", p.padding).unwrap();
                }
                items.push(s);
                i += 1;
            }
            Op::GlobalAvgPool => {
                items.push("avg pool".into());
                i += 1;
            }
            Op::Flatten if matches!(next(1), Some(Op::Linear(_))) => i += 1,
            Op::Linear(l) => {
                let mut s = format!("{}-d fc", l.out_features);
                if l.bias != graph.defaults.bias {
                    s.push_str(if l.bias { ", bias" } else { ", no bias" });
                }
                let is_last = Some(n) == last_linear;
                let act = match next(1) {
                    Some(Op::Activation(a)) => {
                        i += 1;
                        Some(a.clone())
                    }
                    _ => None,
                };
                let default = (!is_last).then(|| graph.defaults.act.clone());
                push_act_option(&mut s, &act, &default);
                items.push(s);
                i += 1;
            }
            Op::Softmax => {
                items.push("softmax".into());
                i += 1;
            }
            op @ (Op::Embedding(_)
            | Op::Positions(_)
            | Op::ClassToken(_)
            | Op::ClassPool
            | Op::Norm(_)
            | Op::TiedLinear(_)
            | Op::ToTokens) => {
                items.extend(seq::item_text(op));
                i += 1;
            }
            op => {
                // Lowering never produces this outside a block; say so instead of guessing.
                items.push(format!("# cannot print {} ({})", node.name, op.kind_name()));
                i += 1;
            }
        }
    }
    flush_blocks(graph, &mut blocks, &mut items);
    flush_layers(&mut layers, &mut items);
    items
}

/// Transformer layers as `[...] x N`, consecutive equal ones merged.
fn flush_layers(layers: &mut Vec<String>, items: &mut Vec<String>) {
    let mut i = 0;
    while i < layers.len() {
        let count = layers[i..].iter().take_while(|l| **l == layers[i]).count();
        items.push(format!("{} x {count}", layers[i]));
        i += count;
    }
    layers.clear();
}

fn push_act_option(s: &mut String, act: &Option<Activation>, default: &Option<Activation>) {
    match (act, default) {
        (None, None) => {}
        (None, Some(_)) => s.push_str(", no act"),
        (Some(a), Some(d)) if same_act(a, d) => {}
        (Some(a), _) => write!(s, ", act {}", act_text(a)).unwrap(),
    }
}

/// A convolution with what follows it.
#[derive(Debug, Clone, PartialEq)]
struct LayerSpec {
    kernel: usize,
    width: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
    bias: bool,
    norm: bool,
    act: Option<Activation>,
}

impl LayerSpec {
    fn from_conv(c: &Conv2d) -> LayerSpec {
        LayerSpec {
            kernel: c.kernel[0],
            width: c.out_channels,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
            bias: c.bias,
            norm: false,
            act: None,
        }
    }

    /// `3x3, 64, stride 2, ...`; `act_by_default` is false for a block's last layer;
    /// `in_block` writes groups as ResNeXt's cardinality `C=G`.
    fn text(&self, d: &Defaults, act_by_default: bool, in_block: bool) -> String {
        let mut s = format!("{}x{}, {}", self.kernel, self.kernel, self.width);
        if self.stride != 1 {
            write!(s, ", stride {}", self.stride).unwrap();
        }
        if self.padding != crate::lower::default_padding(self.kernel, self.stride, self.dilation) {
            write!(s, ", pad {}", self.padding).unwrap();
        }
        if self.dilation != 1 {
            write!(s, ", dilation {}", self.dilation).unwrap();
        }
        if self.groups != 1 && in_block {
            write!(s, ", C={}", self.groups).unwrap();
        } else if self.groups != 1 {
            write!(s, ", groups {}", self.groups).unwrap();
        }
        if self.norm != d.norm {
            s.push_str(if self.norm { ", norm" } else { ", no norm" });
        }
        if self.bias == self.norm {
            s.push_str(if self.bias { ", bias" } else { ", no bias" });
        }
        let default = act_by_default.then(|| d.act.clone());
        push_act_option(&mut s, &self.act, &default);
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shortcut {
    Identity,
    Projection,
    Pad,
    None,
}

#[derive(Debug, Clone, PartialEq)]
struct BlockSpec {
    layers: Vec<LayerSpec>,
    shortcut: Shortcut,
    /// The activation ending the block (after the add, or after the last layer).
    post: Option<Activation>,
    /// DenseNet's block: the last layer's output concatenated to the block's input.
    dense: bool,
}

impl BlockSpec {
    fn without_strides(&self) -> BlockSpec {
        let mut b = self.clone();
        for l in &mut b.layers {
            l.stride = 1;
        }
        b
    }
}

/// Reads a block back: the residual branch from the block input to the add (port 0), and
/// what the shortcut (port 1) is.
fn block_spec(graph: &Graph, nodes: &[NodeIndex]) -> BlockSpec {
    let add = nodes.iter().copied().find(|n| graph.g[*n].op == Op::Add);
    let cat = nodes.iter().copied().find(|n| graph.g[*n].op == Op::Concat);
    let post = *nodes.last().expect("blocks are not empty");
    let (branch_end, shortcut) = match (add, cat) {
        (_, Some(cat)) => (graph.inputs(cat)[1], Shortcut::None),
        (Some(add), None) => {
            let ins = graph.inputs(add);
            let short = match &graph.g[ins[1]].op {
                _ if !nodes.contains(&ins[1]) => Shortcut::Identity,
                Op::ShortcutPad(_) => Shortcut::Pad,
                _ => Shortcut::Projection,
            };
            (ins[0], short)
        }
        // A pre-activated block has no activation after its branch.
        (None, None) if graph.defaults.preact => (post, Shortcut::None),
        (None, None) => (graph.inputs(post)[0], Shortcut::None),
    };
    // Walk back from the end of the branch to the block input.
    let mut chain = vec![branch_end];
    loop {
        let ins = graph.inputs(*chain.last().expect("chain is not empty"));
        match ins.first() {
            Some(p) if nodes.contains(p) => chain.push(*p),
            _ => break,
        }
    }
    chain.reverse();
    let layers = if graph.defaults.preact {
        families::preact_layers(graph, &chain)
    } else {
        let mut layers: Vec<LayerSpec> = Vec::new();
        for n in chain {
            match &graph.g[n].op {
                Op::Conv2d(c) => layers.push(LayerSpec::from_conv(c)),
                Op::BatchNorm(_) => {
                    if let Some(l) = layers.last_mut() {
                        l.norm = true;
                    }
                }
                Op::Activation(a) => {
                    if let Some(l) = layers.last_mut() {
                        l.act = Some(a.clone());
                    }
                }
                _ => {}
            }
        }
        layers
    };
    let post = match &graph.g[post].op {
        Op::Activation(a) if cat.is_none() => Some(a.clone()),
        _ => None,
    };
    BlockSpec {
        layers,
        shortcut,
        post,
        dense: cat.is_some(),
    }
}

fn flush_blocks(graph: &Graph, blocks: &mut Vec<BlockSpec>, items: &mut Vec<String>) {
    let d = &graph.defaults;
    let mut i = 0;
    while i < blocks.len() {
        let first = &blocks[i];
        let follower = BlockSpec {
            shortcut: if first.shortcut == Shortcut::None {
                Shortcut::None
            } else {
                Shortcut::Identity
            },
            ..first.without_strides()
        };
        let mut count = 1;
        while i + count < blocks.len() && blocks[i + count] == follower {
            count += 1;
        }
        let n = first.layers.len();
        // Pre-activated layers and a dense block's layers all have their activation.
        let every_act = d.preact || first.dense;
        let layers: Vec<String> = first
            .layers
            .iter()
            .enumerate()
            .map(|(k, l)| l.text(d, k + 1 < n || every_act, true))
            .collect();
        let mut s = format!("[{}] x {count}", layers.join("; "));
        let option = match (first.shortcut, d.shortcut) {
            _ if first.dense => None,
            (Shortcut::None, ShortcutKind::None) => None,
            (Shortcut::None, _) => Some("none"),
            (Shortcut::Identity, ShortcutKind::None) => Some("projection"),
            (Shortcut::Projection, ShortcutKind::Projection) => None,
            (Shortcut::Projection, _) => Some("projection"),
            (Shortcut::Pad, ShortcutKind::Pad) => None,
            (Shortcut::Pad, _) => Some("pad"),
            (Shortcut::Identity, _) => None,
        };
        if let Some(o) = option {
            write!(s, ", shortcut {o}").unwrap();
        }
        if first.dense {
            s.push_str(", dense");
        }
        match &first.post {
            Some(a) if !same_act(a, &d.act) => write!(s, ", act {}", act_text(a)).unwrap(),
            _ => {}
        }
        items.push(s);
        i += count;
    }
    blocks.clear();
}

/// Graphviz dot text of a graph (rows and blocks as clusters, shapes on nodes); see
/// [`crate::picture`].
pub fn dot(graph: &Graph) -> String {
    crate::picture::dot(graph)
}
