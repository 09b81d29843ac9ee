//! Pictures of a network: Graphviz dot text with rows and residual blocks drawn as nested
//! clusters and each node's op and output shape on it; a diff picture of a student that
//! marks what a rewrite added (green) or widened (orange, with old -> new widths); and
//! rendering to SVG or PNG through Graphviz's `dot`, run as a subprocess.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::io::Write as _;
use std::process::{Command, Stdio};

use petgraph::stable_graph::NodeIndex;

use crate::ir::{show_shape, Graph, Op};
use crate::{Error, Result};

/// How a student node relates to the teacher.
#[derive(Debug, Clone, PartialEq)]
enum Mark {
    /// Present in the teacher with the same op and shape.
    Same,
    /// Not in the teacher: added by the rewrite.
    New,
    /// Same kind of op, different channel counts; the lines say old -> new.
    Widened(Vec<String>),
    /// Same name, otherwise different (a kernel morph, a new stride).
    Changed(String),
}

/// Dot text of a graph: one cluster per row, nested clusters per residual block.
pub fn dot(graph: &Graph) -> String {
    render(graph, &HashMap::new(), None, None).expect("no focus to miss")
}

/// Dot text of the part of a graph named by `focus` (a row such as `conv2_x`, a block such
/// as `conv2_1`, or a node), with its neighbours outside drawn as dashed context; the
/// whole graph when `focus` is None.
pub fn dot_focus(graph: &Graph, focus: Option<&str>) -> Result<String> {
    render(graph, &HashMap::new(), None, focus)
}

/// Dot text of the student `b`, marking nodes that are new or widened relative to the
/// teacher `a`; teacher nodes the student dropped are listed in the caption.
pub fn diff_dot(a: &Graph, b: &Graph) -> String {
    diff_dot_focus(a, b, None).expect("no focus to miss")
}

/// [`diff_dot`] restricted to a row, block or node of the student, as in [`dot_focus`].
pub fn diff_dot_focus(a: &Graph, b: &Graph, focus: Option<&str>) -> Result<String> {
    diff_dot_renamed(a, b, &BTreeMap::new(), focus)
}

/// [`diff_dot_focus`] where the rewrite renamed teacher nodes (`renames`: teacher name ->
/// student name, a report's `name_map`), so a block inserted before others is the one
/// marked new rather than the last of the row.
pub fn diff_dot_renamed(
    a: &Graph,
    b: &Graph,
    renames: &BTreeMap<String, String>,
    focus: Option<&str>,
) -> Result<String> {
    let teacher_of: HashMap<&str, &str> = renames
        .iter()
        .map(|(t, s)| (s.as_str(), t.as_str()))
        .collect();
    let mut marks = HashMap::new();
    let (mut new, mut widened, mut changed) = (0, 0, 0);
    for n in b.order() {
        let node = &b.g[n];
        let name = node.name.as_str();
        let teacher = match teacher_of.get(name) {
            Some(t) => a.find(t),
            // The teacher's node of this name now lives under another name.
            None if renames.contains_key(name) => None,
            None => a.find(name),
        };
        let mark = match teacher {
            None => Mark::New,
            Some(m) => compare(&a.g[m].op, &a.g[m].shape, &node.op, &node.shape),
        };
        match mark {
            Mark::New => new += 1,
            Mark::Widened(_) => widened += 1,
            Mark::Changed(_) => changed += 1,
            Mark::Same => {}
        }
        marks.insert(n, mark);
    }
    let removed: Vec<&str> = a
        .order()
        .into_iter()
        .map(|m| a.g[m].name.as_str())
        .filter(|t| b.find(renames.get(*t).map_or(t, |s| s.as_str())).is_none())
        .collect();
    let names = if a.name == b.name {
        format!("{} grown", b.name)
    } else {
        format!("{} -> {}", a.name, b.name)
    };
    let mut caption = format!(
        "{names}: {new} new (green), {widened} widened (orange), {changed} changed (yellow)"
    );
    if !removed.is_empty() {
        write!(caption, "; removed: {}", removed.join(", ")).unwrap();
    }
    render(b, &marks, Some(caption), focus)
}

/// The channel counts an op consumes and produces, for describing a widening.
fn widths(op: &Op) -> Option<(usize, usize)> {
    match op {
        Op::Conv2d(c) => Some((c.in_channels, c.out_channels)),
        Op::Linear(l) => Some((l.in_features, l.out_features)),
        Op::BatchNorm(b) => Some((b.channels, b.channels)),
        Op::ShortcutPad(p) => Some((p.out_channels, p.out_channels)),
        _ => None,
    }
}

fn compare(old_op: &Op, old_shape: &[usize], op: &Op, shape: &[usize]) -> Mark {
    if old_op == op && old_shape == shape {
        return Mark::Same;
    }
    if old_op.kind_name() != op.kind_name() {
        return Mark::Changed(format!("was {}", old_op.kind_name()));
    }
    let mut lines = Vec::new();
    if let (Some((i0, o0)), Some((i1, o1))) = (widths(old_op), widths(op)) {
        if i0 != i1 && !matches!(op, Op::BatchNorm(_) | Op::ShortcutPad(_)) {
            lines.push(format!("in {i0} -> {i1}"));
        }
        if o0 != o1 {
            let label = match op {
                Op::BatchNorm(_) => "channels",
                _ => "out",
            };
            lines.push(format!("{label} {o0} -> {o1}"));
        }
    } else if old_shape.first() != shape.first() && old_shape.len() == shape.len() {
        // Activations, pools, adds: their channel count follows their input.
        lines.push(format!(
            "channels {} -> {}",
            old_shape.first().copied().unwrap_or(0),
            shape.first().copied().unwrap_or(0)
        ));
    }
    // Anything besides the widths (kernel size, stride) changed too.
    let same_otherwise = match (old_op, op) {
        (Op::Conv2d(x), Op::Conv2d(y)) => {
            x.kernel == y.kernel && x.stride == y.stride && x.padding == y.padding
        }
        _ => old_shape.get(1..) == shape.get(1..),
    };
    if lines.is_empty() || !same_otherwise {
        return Mark::Changed(format!(
            "was {} {}",
            op_text(old_op),
            show_shape(&old_shape.to_vec())
        ));
    }
    Mark::Widened(lines)
}

/// A short description of an op in the paper's notation.
fn op_text(op: &Op) -> String {
    match op {
        Op::Conv2d(c) => {
            let mut s = format!("conv {}x{}, {}", c.kernel[0], c.kernel[1], c.out_channels);
            if c.stride != 1 {
                write!(s, ", stride {}", c.stride).unwrap();
            }
            if c.groups != 1 {
                write!(s, ", groups {}", c.groups).unwrap();
            }
            s
        }
        Op::BatchNorm(_) => "batch norm".into(),
        Op::Activation(a) => a.keyword().into(),
        Op::MaxPool(p) | Op::AvgPool(p) => crate::print::pool_text(op, p),
        Op::GlobalAvgPool => "global avg pool".into(),
        Op::Flatten => "flatten".into(),
        Op::Linear(l) => format!("{}-d fc", l.out_features),
        Op::Add => "add".into(),
        Op::Concat => "concat".into(),
        Op::Softmax => "softmax".into(),
        Op::ShortcutPad(p) => format!("pad shortcut, stride {}", p.stride),
        Op::Input => "input".into(),
        Op::Embedding(e) => format!("{}-d token embedding", e.dim),
        Op::Positions(_) => "learned positions".into(),
        Op::ClassToken(_) => "class token".into(),
        Op::ToTokens => "to tokens".into(),
        Op::Norm(n) => format!("{} norm", n.kind.keyword()),
        Op::Attention(a) => {
            let mut s = format!("attention, {} heads", a.heads);
            if a.kv_heads != a.heads {
                write!(s, ", {} kv heads", a.kv_heads).unwrap();
            }
            if let Some(theta) = a.rope {
                write!(s, ", rope {theta}").unwrap();
            }
            if a.causal {
                s.push_str(", causal");
            }
            s
        }
        Op::Mul => "mul".into(),
        Op::ClassPool => "class token pool".into(),
        Op::TiedLinear(l) => format!("{}-d fc, tied", l.vocab),
    }
}

/// Quotes a string for a dot label or identifier.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for ch in s.chars() {
        match ch {
            '"' | '\\' => {
                q.push('\\');
                q.push(ch);
            }
            '\n' => q.push_str("\\n"),
            _ => q.push(ch),
        }
    }
    q.push('"');
    q
}

fn node_style(op: &Op) -> (&'static str, &'static str) {
    match op {
        Op::Input => ("invhouse", "#dddddd"),
        Op::Conv2d(_) => ("box", "#cfe2f3"),
        Op::Linear(_) | Op::TiedLinear(_) => ("box", "#d9d2e9"),
        Op::Attention(_) => ("box", "#fce5cd"),
        Op::Embedding(_) | Op::Positions(_) | Op::ClassToken(_) => ("box", "#d9ead3"),
        Op::BatchNorm(_) => ("box", "#f3f3f3"),
        Op::Add => ("circle", "#ffffff"),
        Op::MaxPool(_) | Op::AvgPool(_) | Op::GlobalAvgPool => ("trapezium", "#eeeeee"),
        _ => ("box", "#ffffff"),
    }
}

fn node_line(graph: &Graph, n: NodeIndex, mark: &Mark) -> String {
    let node = &graph.g[n];
    let (shape, mut fill) = node_style(&node.op);
    // Inside a block's cluster the block's name is already on the frame.
    let short = match node.block {
        Some(b) => node
            .name
            .strip_prefix(&format!("{}.", block_name(&node.row, b)))
            .unwrap_or(&node.name),
        None => &node.name,
    };
    let mut label = if matches!(node.op, Op::Add) {
        format!("+\n{}", show_shape(&node.shape))
    } else if matches!(node.op, Op::Input) {
        format!("input\n{}", show_shape(&node.shape))
    } else {
        format!(
            "{}\n{}\n{}",
            short,
            op_text(&node.op),
            show_shape(&node.shape)
        )
    };
    let mut extra = String::new();
    match mark {
        Mark::Same => {}
        Mark::New => {
            fill = "#b6e3a8";
            label.push_str("\n(new)");
            extra.push_str(", penwidth=2, color=\"#2e7d32\"");
        }
        Mark::Widened(lines) => {
            fill = "#ffcc80";
            for l in lines {
                label.push('\n');
                label.push_str(l);
            }
            extra.push_str(", penwidth=2, color=\"#e65100\"");
        }
        Mark::Changed(why) => {
            fill = "#fff59d";
            label.push('\n');
            label.push_str(why);
            extra.push_str(", penwidth=2, color=\"#9e9d24\"");
        }
    }
    let shape = if matches!(node.op, Op::Add) && *mark != Mark::Same {
        "doublecircle"
    } else {
        shape
    };
    format!(
        "{} [label={}, shape={shape}, fillcolor=\"{fill}\"{extra}];",
        quote(&node.name),
        quote(&label)
    )
}

/// A row's nodes by block number (None: outside any block).
type Blocks = BTreeMap<Option<usize>, Vec<NodeIndex>>;

/// Whether a node belongs to the focus: its row, its block or itself.
fn in_focus(graph: &Graph, n: NodeIndex, focus: &str) -> bool {
    let node = &graph.g[n];
    node.row == focus
        || node.name == focus
        || node
            .block
            .is_some_and(|b| block_name(&node.row, b) == focus)
}

fn render(
    graph: &Graph,
    marks: &HashMap<NodeIndex, Mark>,
    caption: Option<String>,
    focus: Option<&str>,
) -> Result<String> {
    let all = graph.order();
    let (order, context): (Vec<NodeIndex>, Vec<NodeIndex>) = match focus {
        None => (all, Vec::new()),
        Some(f) => {
            let kept: Vec<NodeIndex> = all
                .iter()
                .copied()
                .filter(|&n| in_focus(graph, n, f))
                .collect();
            if kept.is_empty() {
                let mut rows: Vec<String> = Vec::new();
                for &n in &all {
                    let node = &graph.g[n];
                    let name = match node.block {
                        Some(b) => block_name(&node.row, b),
                        None => node.row.clone(),
                    };
                    if !rows.contains(&node.row) {
                        rows.push(node.row.clone());
                    }
                    if !rows.contains(&name) {
                        rows.push(name);
                    }
                }
                return Err(Error::usage(
                    format!(
                        "--focus {f}: no row, block or layer of {} has that name",
                        graph.name
                    ),
                    Some(format!("rows and blocks: {}", rows.join(", "))),
                ));
            }
            let context = all
                .iter()
                .copied()
                .filter(|&n| {
                    !kept.contains(&n)
                        && (graph.inputs(n).iter().any(|i| kept.contains(i))
                            || graph.consumers(n).iter().any(|c| kept.contains(c)))
                })
                .collect();
            (kept, context)
        }
    };
    // Rows in order of first appearance; within a row, blocks in order.
    let mut rows: Vec<(String, Blocks)> = Vec::new();
    for &n in &order {
        let node = &graph.g[n];
        if matches!(node.op, Op::Input) {
            continue;
        }
        let pos = match rows.iter().position(|(r, _)| *r == node.row) {
            Some(p) => p,
            None => {
                rows.push((node.row.clone(), BTreeMap::new()));
                rows.len() - 1
            }
        };
        rows[pos].1.entry(node.block).or_default().push(n);
    }
    let mut out = String::new();
    writeln!(out, "digraph {} {{", quote(&graph.name)).unwrap();
    out.push_str("  rankdir=TB;\n  newrank=true;\n  compound=true;\n");
    out.push_str("  fontname=\"Helvetica\";\n");
    let title = match &caption {
        Some(c) => c.clone(),
        None => format!("{} (input {})", graph.name, show_shape(graph.input_shape())),
    };
    writeln!(
        out,
        "  label={};\n  labelloc=t;\n  fontsize=16;",
        quote(&title)
    )
    .unwrap();
    out.push_str(
        "  node [style=\"filled,rounded\", fontname=\"Helvetica\", fontsize=10, margin=\"0.1,0.03\"];\n",
    );
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9, arrowsize=0.6];\n");
    let same = Mark::Same;
    let mark_of = |n: NodeIndex| marks.get(&n).unwrap_or(&same);
    for &n in &order {
        if matches!(graph.g[n].op, Op::Input) {
            writeln!(out, "  {}", node_line(graph, n, mark_of(n))).unwrap();
        }
    }
    for &n in &context {
        let node = &graph.g[n];
        writeln!(
            out,
            "  {} [label={}, shape=box, style=\"dashed,rounded\", color=\"#888888\", fontcolor=\"#666666\"];",
            quote(&node.name),
            quote(&format!("{}\n{}", node.name, show_shape(&node.shape)))
        )
        .unwrap();
    }
    for (ri, (row, blocks)) in rows.iter().enumerate() {
        writeln!(out, "  subgraph cluster_{ri} {{").unwrap();
        writeln!(
            out,
            "    label={};\n    style=\"rounded\";\n    color=\"#999999\";",
            quote(row)
        )
        .unwrap();
        for (block, nodes) in blocks {
            let indent = match block {
                Some(b) => {
                    let name = block_name(row, *b);
                    writeln!(out, "    subgraph cluster_{ri}_{b} {{").unwrap();
                    writeln!(
                        out,
                        "      label={};\n      style=\"rounded,filled\";\n      fillcolor=\"#fafafa\";\n      color=\"#bbbbbb\";",
                        quote(&name)
                    )
                    .unwrap();
                    "      "
                }
                None => "    ",
            };
            for &n in nodes {
                writeln!(out, "{indent}{}", node_line(graph, n, mark_of(n))).unwrap();
            }
            if block.is_some() {
                out.push_str("    }\n");
            }
        }
        out.push_str("  }\n");
    }
    let shown = |n: &NodeIndex| order.contains(n) || context.contains(n);
    for n in graph.order() {
        let ins = graph.inputs(n);
        let is_add = matches!(graph.g[n].op, Op::Add);
        for (port, i) in ins.into_iter().enumerate() {
            // Edges between two context nodes belong to the part not drawn.
            if !shown(&n) || !shown(&i) || (context.contains(&n) && context.contains(&i)) {
                continue;
            }
            // The shortcut (port 1 of an add) is dashed and does not pull the layout.
            let style = if is_add && port == 1 {
                " [style=dashed, color=\"#555555\", weight=0]"
            } else {
                ""
            };
            writeln!(
                out,
                "  {} -> {}{style};",
                quote(&graph.g[i].name),
                quote(&graph.g[n].name)
            )
            .unwrap();
        }
    }
    out.push_str("}\n");
    Ok(out)
}

/// `conv2_x` block 1 is `conv2_1`, as lowering names it.
fn block_name(row: &str, b: usize) -> String {
    match row.strip_suffix("_x") {
        Some(stem) => format!("{stem}_{b}"),
        None => format!("{row} block {b}"),
    }
}

/// Picture formats Graphviz can produce from our dot text.
pub const RENDERED_FORMATS: &[&str] = &["svg", "png", "pdf"];

/// Renders dot text with Graphviz's `dot -T<format>`; a clear usage error when `dot` is
/// not installed or fails.
pub fn render_with_graphviz(dot_text: &str, format: &str) -> Result<Vec<u8>> {
    if !RENDERED_FORMATS.contains(&format) {
        return Err(Error::usage(
            format!("Graphviz format `{format}` is not supported"),
            Some(format!("use one of {}", RENDERED_FORMATS.join(", "))),
        ));
    }
    let child = Command::new("dot")
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::usage(
                format!(
                    "--format {format} needs Graphviz's `dot` program, which was not found on PATH"
                ),
                Some(
                    "install Graphviz (e.g. `apt-get install graphviz`), or write --format dot and render it elsewhere"
                        .into(),
                ),
            ))
        }
        Err(e) => {
            return Err(Error::usage(
                format!("could not start Graphviz's `dot`: {e}"),
                Some("use --format dot and render it elsewhere".into()),
            ))
        }
    };
    let mut stdin = child.stdin.take().expect("stdin was piped");
    // Write on a thread so a large picture cannot deadlock against dot's stdout.
    let text = dot_text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().map_err(|e| {
        Error::usage(
            format!("Graphviz's `dot` failed: {e}"),
            Some("use --format dot and render it elsewhere".into()),
        )
    })?;
    let wrote = writer.join().expect("writer thread does not panic");
    if !output.status.success() || wrote.is_err() {
        return Err(Error::usage(
            format!(
                "Graphviz's `dot -T{format}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Some("use --format dot to see the text it was given".into()),
        ));
    }
    Ok(output.stdout)
}
