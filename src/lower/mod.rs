//! Syntax tree to graph: evaluates parameters, expands rows and residual blocks into ops,
//! names every node (LANGUAGE.md "Names"), infers shapes and checks size columns.

use std::collections::{BTreeMap, HashSet};

use crate::error::{SourceError, SourceErrorKind, Span};
use crate::ir::*;
use crate::syntax::ast::{self, ActSpec, ConvSpec, Expr, Header, ItemKind, OptionKind};
use crate::syntax::{parse, parse_expr, MAX_INT};

/// Parses and lowers `src`; `sets` override the architecture's parameters (`r=3/16`).
pub fn compile(src: &str, sets: &[(String, String)]) -> Result<Graph, SourceError> {
    let file = parse(src)?;
    lower(&file, sets)
}

/// Lowers a parsed file to a graph with inferred shapes.
pub fn lower(file: &ast::File, sets: &[(String, String)]) -> Result<Graph, SourceError> {
    let env = evaluate_params(file, sets)?;
    let (defaults, input) = read_headers(file)?;
    let mut lowering = Lowering {
        graph: Graph::new(&file.name.text, defaults, input),
        env,
        cursor: None,
        last_fc: last_fc(file),
    };
    lowering.cursor = Some(lowering.graph.input);
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    for (row_index, row) in file.rows.iter().enumerate() {
        if let Some(first) = seen.get(row.name.text.as_str()) {
            let _ = first;
            return Err(err(
                SourceErrorKind::Name,
                row.name.span,
                format!("the row name `{}` is used twice", row.name.text),
            )
            .label("second use")
            .hint("every row needs its own name"));
        }
        if row.name.text.eq_ignore_ascii_case("input") {
            return Err(err(
                SourceErrorKind::Name,
                row.name.span,
                "`input` is reserved for the network input",
            )
            .hint("give the row another name"));
        }
        seen.insert(&row.name.text, row.name.span);
        lowering.row(row_index, row)?;
    }
    if file.rows.is_empty() {
        return Err(err(
            SourceErrorKind::Syntax,
            file.name.span,
            "the architecture has no rows",
        )
        .label("empty architecture")
        .hint("add rows such as `conv1  32x32  3x3, 16`"));
    }
    let mut graph = lowering.graph;
    graph.output = lowering.cursor.expect("cursor is set");
    check_unique_names(&graph, file)?;
    Ok(graph)
}

fn err(kind: SourceErrorKind, span: Span, msg: impl Into<String>) -> SourceError {
    SourceError::new(kind, span, msg)
}

/// Generated names may collide with a row written as `conv2_1` next to `conv2_x`.
fn check_unique_names(graph: &Graph, file: &ast::File) -> Result<(), SourceError> {
    let mut names = HashSet::new();
    for n in graph.order() {
        let node = &graph.g[n];
        if !names.insert(node.name.as_str()) {
            let span = node.span.unwrap_or(file.name.span);
            return Err(err(
                SourceErrorKind::Name,
                span,
                format!("two layers would both be named `{}`", node.name),
            )
            .hint(
                "rename one of the rows; block names are the row name without `_x` plus a number",
            ));
        }
    }
    Ok(())
}

// ---- parameters --------------------------------------------------------------------

fn evaluate_params(
    file: &ast::File,
    sets: &[(String, String)],
) -> Result<BTreeMap<String, f64>, SourceError> {
    let mut env = BTreeMap::new();
    for (name, _) in sets {
        if !file.params.iter().any(|p| &p.name.text == name) {
            let known: Vec<&str> = file.params.iter().map(|p| p.name.text.as_str()).collect();
            let hint = if known.is_empty() {
                format!("`{}` takes no parameters", file.name.text)
            } else {
                format!("its parameters are: {}", known.join(", "))
            };
            return Err(err(
                SourceErrorKind::Name,
                file.params_span,
                format!("--set {name}: the architecture has no parameter `{name}`"),
            )
            .label("parameters are declared here")
            .hint(hint));
        }
    }
    for (i, p) in file.params.iter().enumerate() {
        if file.params[..i].iter().any(|q| q.name.text == p.name.text) {
            return Err(err(
                SourceErrorKind::Name,
                p.name.span,
                format!("parameter `{}` is declared twice", p.name.text),
            )
            .label("declared again here")
            .hint("give each parameter one default; override it with `--set`"));
        }
        let value = match sets.iter().rev().find(|(n, _)| n == &p.name.text) {
            Some((_, text)) => {
                let expr = parse_expr(text).map_err(|e| {
                    err(
                        SourceErrorKind::Value,
                        p.value.span(),
                        format!("--set {}={text}: {}", p.name.text, e.message),
                    )
                    .hint("values are expressions such as 3/16, 2^-3.5 or 0.125")
                })?;
                eval(&expr, &env).map_err(|e| SourceError {
                    span: p.value.span(),
                    message: format!("--set {}={text}: {}", p.name.text, e.message),
                    ..e
                })?
            }
            None => eval(&p.value, &env)?,
        };
        env.insert(p.name.text.clone(), value);
    }
    Ok(env)
}

/// Evaluates an expression; parameters must be defined before use.
pub fn eval(e: &Expr, env: &BTreeMap<String, f64>) -> Result<f64, SourceError> {
    let v = match e {
        Expr::Number(v, _) => *v,
        Expr::Var(id) => *env.get(&id.text).ok_or_else(|| {
            let known: Vec<&str> = env.keys().map(|k| k.as_str()).collect();
            let hint = if known.is_empty() {
                "declare it in the arch line: `arch Name(r = 1/8)`".to_string()
            } else {
                suggest(&id.text, &known, "known parameters")
            };
            err(
                SourceErrorKind::Name,
                id.span,
                format!("unknown parameter `{}`", id.text),
            )
            .label("not declared")
            .hint(hint)
        })?,
        Expr::Neg(x, _) => -eval(x, env)?,
        Expr::Floor(x, _) => floor(eval(x, env)?),
        Expr::Binary(a, op, b, _) => {
            let (a, b) = (eval(a, env)?, eval(b, env)?);
            match op {
                ast::BinOp::Add => a + b,
                ast::BinOp::Sub => a - b,
                ast::BinOp::Mul => a * b,
                ast::BinOp::Div => {
                    if b == 0.0 {
                        return Err(err(SourceErrorKind::Value, e.span(), "division by zero")
                            .label("divides by 0")
                            .hint("check the divisor and the parameters it uses"));
                    }
                    a / b
                }
                ast::BinOp::Pow => a.powf(b),
            }
        }
    };
    if !v.is_finite() {
        return Err(err(
            SourceErrorKind::Value,
            e.span(),
            "this expression has no finite value",
        )
        .label("not finite")
        .hint("check the parameters it uses"));
    }
    Ok(v)
}

/// The paper's ⌊·⌋, forgiving the rounding error of products like 64 * (1/3) * 3.
fn floor(v: f64) -> f64 {
    (v + 1e-9 * v.abs().max(1.0)).floor()
}

/// The closest name within a small edit distance, for "did you mean" hints; ties go to
/// the first in alphabetical order.
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

/// A hint for an unknown word: the nearest valid spelling when one is close, then every
/// valid one: "did you mean `relu`? activations: `relu`, `prelu` or `gelu`".
pub fn suggest(name: &str, valid: &[&str], what: &str) -> String {
    let quoted: Vec<String> = valid.iter().map(|v| format!("`{v}`")).collect();
    let all = match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    };
    match closest(&name.to_ascii_lowercase(), valid) {
        Some(c) => format!("did you mean `{c}`? {what}: {all}"),
        None => format!("{what}: {all}"),
    }
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// neighbours cost 1, so `conv_3x` is 1 from `conv3_x` (and 2 from `conv2_x`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j]; three rows suffice for the swap.
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

// ---- headers -----------------------------------------------------------------------

fn read_headers(file: &ast::File) -> Result<(Defaults, Shape), SourceError> {
    let mut defaults = Defaults::default();
    let mut input = None;
    for h in &file.headers {
        match h {
            Header::Input(d) => {
                if input.is_some() {
                    return Err(err(
                        SourceErrorKind::Syntax,
                        d.span,
                        "the input is declared twice",
                    )
                    .hint("keep one `input` line"));
                }
                if d.values.len() != 3 && d.values.len() != 1 || d.values.contains(&0) {
                    return Err(err(
                        SourceErrorKind::Value,
                        d.span,
                        "the input is `CxHxW` (an image) or `N` (a vector) with sizes of at least 1",
                    )
                    .label("not an input shape")
                    .hint("for example `input 3x32x32`"));
                }
                input = Some(d.values.clone());
            }
            Header::Norm(id) => {
                defaults.norm = match id.text.to_ascii_lowercase().as_str() {
                    "batch" => true,
                    "none" => false,
                    _ => {
                        return Err(err(
                            SourceErrorKind::Name,
                            id.span,
                            format!("unknown norm `{}`", id.text),
                        )
                        .label("unknown")
                        .hint(suggest(
                            &id.text,
                            &["batch", "none"],
                            "norms",
                        )))
                    }
                }
            }
            Header::Act(a) => defaults.act = activation(a, 0)?,
            Header::Shortcut(id) => defaults.shortcut = shortcut_kind(id)?,
            Header::Eps(v, s) => {
                if *v <= 0.0 {
                    return Err(err(SourceErrorKind::Value, *s, "eps must be positive")
                        .label("not positive")
                        .hint("PyTorch's default is 1e-5"));
                }
                defaults.eps = *v;
            }
        }
    }
    let input = input.ok_or_else(|| {
        err(
            SourceErrorKind::Syntax,
            file.name.span,
            "the architecture has no `input` line",
        )
        .label("declared here")
        .hint("add `input 3x32x32` (channels x height x width) after the arch line")
    })?;
    Ok((defaults, input))
}

const ACTIVATIONS: [&str; 7] = [
    "relu",
    "prelu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "gelu",
    "identity",
];

/// An activation by name; `channels` sizes PReLU.
fn activation(a: &ActSpec, channels: usize) -> Result<Activation, SourceError> {
    let name = a.name.text.to_ascii_lowercase();
    if a.arg.is_some() && name != "leaky_relu" {
        return Err(err(
            SourceErrorKind::Value,
            a.span,
            format!("`{name}` takes no argument"),
        )
        .hint("only leaky_relu takes a slope: `act leaky_relu(0.1)`"));
    }
    Ok(match name.as_str() {
        "relu" => Activation::Relu,
        "prelu" => Activation::Prelu { channels },
        "leaky_relu" => Activation::LeakyRelu {
            slope: a.arg.unwrap_or(0.01),
        },
        "tanh" => Activation::Tanh,
        "sigmoid" => Activation::Sigmoid,
        "gelu" => Activation::Gelu,
        "identity" => Activation::Identity,
        _ => {
            let hint = format!(
                "{} (leaky_relu takes a slope: `leaky_relu(0.1)`)",
                suggest(&name, &ACTIVATIONS, "activations")
            );
            return Err(err(
                SourceErrorKind::Name,
                a.name.span,
                format!("unknown activation `{}`", a.name.text),
            )
            .label("unknown")
            .hint(hint));
        }
    })
}

fn shortcut_kind(id: &ast::Ident) -> Result<ShortcutKind, SourceError> {
    Ok(match id.text.to_ascii_lowercase().as_str() {
        "projection" => ShortcutKind::Projection,
        "pad" => ShortcutKind::Pad,
        "none" => ShortcutKind::None,
        _ => {
            return Err(err(
                SourceErrorKind::Name,
                id.span,
                format!("unknown shortcut `{}`", id.text),
            )
            .label("unknown")
            .hint(suggest(
                &id.text,
                &["projection", "pad", "none"],
                "shortcuts",
            )))
        }
    })
}

/// (row index, item index) of the file's last fc: the only fc without a ReLU by default.
fn last_fc(file: &ast::File) -> Option<(usize, usize)> {
    let mut last = None;
    for (r, row) in file.rows.iter().enumerate() {
        for (i, item) in row.items.iter().enumerate() {
            if matches!(item.kind, ItemKind::Fc { .. }) {
                last = Some((r, i));
            }
        }
    }
    last
}

// ---- rows --------------------------------------------------------------------------

struct Lowering {
    graph: Graph,
    env: BTreeMap<String, f64>,
    cursor: Option<NodeIndex>,
    last_fc: Option<(usize, usize)>,
}

/// Options of a convolution after defaults are applied.
struct ConvOptions {
    stride: usize,
    pad: Option<usize>,
    dilation: usize,
    groups: usize,
    norm: bool,
    bias: Option<bool>,
    act: Option<Activation>,
}

impl Lowering {
    fn cursor(&self) -> NodeIndex {
        self.cursor.expect("cursor is set")
    }

    fn add(
        &mut self,
        name: String,
        op: Op,
        inputs: &[NodeIndex],
        place: (&str, Option<usize>),
        span: Span,
    ) -> Result<NodeIndex, SourceError> {
        if inputs
            .iter()
            .any(|&i| matches!(self.graph.g[i].op, Op::Softmax))
        {
            return Err(err(
                SourceErrorKind::Shape,
                span,
                "softmax ends a network: nothing may follow it",
            )
            .label("after the softmax")
            .hint("move `softmax` to the end of the last row"));
        }
        self.graph
            .add(name, op, inputs, place, Some(span))
            .map_err(|msg| {
                err(SourceErrorKind::Shape, span, msg)
                    .label("shapes do not fit here")
                    .hint("`r2rc check` prints every layer's output shape")
            })
    }

    fn row(&mut self, row_index: usize, row: &ast::Row) -> Result<(), SourceError> {
        let single = row.items.len() == 1 && !matches!(row.items[0].kind, ItemKind::Block { .. });
        let mut kind_counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut block_number = 0;
        let prefix = row
            .name
            .text
            .strip_suffix("_x")
            .unwrap_or(&row.name.text)
            .to_string();
        for (i, item) in row.items.iter().enumerate() {
            let kind = match item.kind {
                ItemKind::Conv(_) => "conv",
                ItemKind::Pool { .. } | ItemKind::GlobalAvgPool => "pool",
                ItemKind::Fc { .. } => "fc",
                ItemKind::Softmax => "softmax",
                ItemKind::Block { .. } => "block",
            };
            let count = kind_counts.entry(kind).or_insert(0);
            *count += 1;
            let name = if single {
                row.name.text.clone()
            } else if *count == 1 {
                format!("{}.{kind}", row.name.text)
            } else {
                format!("{}.{kind}{count}", row.name.text)
            };
            let is_last_fc = self.last_fc == Some((row_index, i));
            self.item(row, item, &name, &prefix, &mut block_number, is_last_fc)?;
        }
        self.check_size(row)
    }

    fn check_size(&self, row: &ast::Row) -> Result<(), SourceError> {
        let Some(size) = &row.size else {
            return Ok(());
        };
        let shape = &self.graph.g[self.cursor()].shape;
        let written = &size.values;
        let fits = match shape.as_slice() {
            [_, h, w] => {
                written.as_slice() == [*h, *w] || written.len() == 1 && written[0] == *h && *h == *w
            }
            [_] => written.iter().all(|v| *v == 1),
            _ => false,
        };
        if fits {
            return Ok(());
        }
        let actual = match shape.as_slice() {
            [_, h, w] => format!("{h}x{w}"),
            _ => "1x1 (a vector)".to_string(),
        };
        let said = written
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("x");
        Err(err(
            SourceErrorKind::Size,
            size.span,
            format!(
                "row `{}` outputs {actual} ({}), but its size column says {said}",
                row.name.text,
                show_shape(shape)
            ),
        )
        .label(format!("should be {actual}"))
        .hint(format!(
            "the size column is the output size after the whole row; write {actual} or check strides and padding"
        )))
    }

    #[allow(clippy::too_many_arguments)]
    fn item(
        &mut self,
        row: &ast::Row,
        item: &ast::Item,
        name: &str,
        prefix: &str,
        block_number: &mut usize,
        is_last_fc: bool,
    ) -> Result<(), SourceError> {
        let place = (row.name.text.as_str(), None);
        match &item.kind {
            ItemKind::Conv(spec) => {
                let opts = self.conv_options(&item.options, spec, true)?;
                let node = self.conv(spec, &opts, name, &format!("{name}.bn"), place)?;
                self.cursor = Some(node);
                if let Some(act) = opts.act {
                    let act = self.with_channels(act);
                    self.cursor = Some(self.add(
                        format!("{name}.act"),
                        Op::Activation(act),
                        &[node],
                        place,
                        spec.span,
                    )?);
                }
            }
            ItemKind::Pool { kernel, max } => {
                let k = square(kernel, "a pooling window")?;
                let mut stride = 1;
                let mut pad = (k - 1) / 2;
                for o in &item.options {
                    match &o.kind {
                        OptionKind::Stride(s) => stride = positive(*s, o.span, "stride")?,
                        OptionKind::Pad(p) => pad = *p,
                        _ => return Err(not_for(o, "pooling", "stride S, pad P")),
                    }
                }
                let pool = Pool {
                    kernel: [k, k],
                    stride,
                    padding: pad,
                };
                let op = if *max {
                    Op::MaxPool(pool)
                } else {
                    Op::AvgPool(pool)
                };
                let c = self.cursor();
                self.cursor = Some(self.add(name.to_string(), op, &[c], place, item.span)?);
            }
            ItemKind::GlobalAvgPool => {
                if let Some(o) = item.options.first() {
                    // `head 2x2 avg pool, stride 2` without a size column reads `2x2` as the
                    // size column; say how to write a pooling window there.
                    return Err(not_for(o, "global average pooling", "none").hint(
                        "global average pooling takes no options; for a KxK average pool at the start of a row, write the row's size column first (`pool  8x8  2x2 avg pool, stride 2`)",
                    ));
                }
                let c = self.cursor();
                self.cursor =
                    Some(self.add(name.to_string(), Op::GlobalAvgPool, &[c], place, item.span)?);
            }
            ItemKind::Fc { features } => {
                let features = positive(*features, item.span, "an fc width")?;
                let mut bias = true;
                let mut act = (!is_last_fc).then(|| self.graph.defaults.act.clone());
                for o in &item.options {
                    match &o.kind {
                        OptionKind::Bias => bias = true,
                        OptionKind::No(w) if w.text.eq_ignore_ascii_case("bias") => bias = false,
                        OptionKind::No(w) if w.text.eq_ignore_ascii_case("act") => act = None,
                        OptionKind::Act(a) => act = Some(activation(a, features)?),
                        _ => {
                            return Err(not_for(
                                o,
                                "an fc layer",
                                "bias, no bias, act NAME, no act",
                            ))
                        }
                    }
                }
                let mut c = self.cursor();
                if self.graph.g[c].shape.len() != 1 {
                    c = self.add(
                        format!("{name}.flatten"),
                        Op::Flatten,
                        &[c],
                        place,
                        item.span,
                    )?;
                }
                let in_features = self.graph.g[c].shape[0];
                let linear = Op::Linear(Linear {
                    in_features,
                    out_features: features,
                    bias,
                });
                c = self.add(name.to_string(), linear, &[c], place, item.span)?;
                if let Some(act) = act {
                    let act = match act {
                        Activation::Prelu { .. } => Activation::Prelu { channels: features },
                        a => a,
                    };
                    c = self.add(
                        format!("{name}.act"),
                        Op::Activation(act),
                        &[c],
                        place,
                        item.span,
                    )?;
                }
                self.cursor = Some(c);
            }
            ItemKind::Softmax => {
                if let Some(o) = item.options.first() {
                    return Err(not_for(o, "softmax", "none"));
                }
                let c = self.cursor();
                self.cursor =
                    Some(self.add(name.to_string(), Op::Softmax, &[c], place, item.span)?);
            }
            ItemKind::Block { layers, count } => {
                let mut outer_stride = None;
                let mut shortcut = self.graph.defaults.shortcut;
                for o in &item.options {
                    match &o.kind {
                        OptionKind::Stride(s) => outer_stride = Some(positive(*s, o.span, "stride")?),
                        OptionKind::Shortcut(id) => {
                            shortcut = shortcut_kind(id)?;
                        }
                        _ => {
                            return Err(not_for(
                                o,
                                "a residual block",
                                "stride S, shortcut projection|pad|none (layer options go inside the brackets)",
                            ))
                        }
                    }
                }
                if *count == 0 {
                    return Err(err(
                        SourceErrorKind::Value,
                        item.span,
                        "a block is repeated at least once",
                    )
                    .hint("write `x 1` or more"));
                }
                for rep in 0..*count {
                    *block_number += 1;
                    let block_name = format!("{prefix}_{block_number}");
                    self.block(
                        row,
                        layers,
                        &block_name,
                        *block_number,
                        rep == 0,
                        outer_stride,
                        shortcut,
                        item.span,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Gives PReLU the channel count of the value it follows.
    fn with_channels(&self, act: Activation) -> Activation {
        match act {
            Activation::Prelu { .. } => Activation::Prelu {
                channels: self.graph.g[self.cursor()].shape[0],
            },
            a => a,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        row: &ast::Row,
        layers: &[ConvSpec],
        block_name: &str,
        number: usize,
        first: bool,
        outer_stride: Option<usize>,
        shortcut: ShortcutKind,
        span: Span,
    ) -> Result<(), SourceError> {
        let place = (row.name.text.as_str(), Some(number));
        let block_input = self.cursor();
        let mut total_stride = 1;
        for (i, spec) in layers.iter().enumerate() {
            let last = i + 1 == layers.len();
            let mut opts = self.conv_options(&spec.options, spec, !last)?;
            if !first {
                opts.stride = 1;
            } else if i == 0 {
                if let Some(s) = outer_stride {
                    if opts.stride != 1 {
                        return Err(err(
                            SourceErrorKind::Value,
                            spec.span,
                            "this layer has a stride inside the brackets and the block has one outside",
                        )
                        .hint("write the stride once"));
                    }
                    opts.stride = s;
                }
            }
            total_stride *= opts.stride;
            let n = i + 1;
            let conv = self.conv(
                spec,
                &opts,
                &format!("{block_name}.conv{n}"),
                &format!("{block_name}.bn{n}"),
                place,
            )?;
            self.cursor = Some(conv);
            if let Some(act) = opts.act {
                let act = self.with_channels(act);
                self.cursor = Some(self.add(
                    format!("{block_name}.act{n}"),
                    Op::Activation(act),
                    &[conv],
                    place,
                    spec.span,
                )?);
            }
        }
        let branch = self.cursor();
        let in_shape = self.graph.g[block_input].shape.clone();
        let out_shape = self.graph.g[branch].shape.clone();
        let mut joined = branch;
        if shortcut != ShortcutKind::None {
            let short = if in_shape == out_shape {
                block_input
            } else if shortcut == ShortcutKind::Pad {
                let op = Op::ShortcutPad(ShortcutPad {
                    stride: total_stride,
                    out_channels: out_shape[0],
                });
                self.add(
                    format!("{block_name}.downsample"),
                    op,
                    &[block_input],
                    place,
                    span,
                )?
            } else {
                let norm = self.graph.defaults.norm;
                let op = Op::Conv2d(Conv2d {
                    in_channels: in_shape[0],
                    out_channels: out_shape[0],
                    kernel: [1, 1],
                    stride: total_stride,
                    padding: 0,
                    dilation: 1,
                    groups: 1,
                    bias: !norm,
                });
                let mut s = self.add(
                    format!("{block_name}.downsample.0"),
                    op,
                    &[block_input],
                    place,
                    span,
                )?;
                if norm {
                    let bn = Op::BatchNorm(BatchNorm {
                        channels: out_shape[0],
                        eps: self.graph.defaults.eps,
                    });
                    s = self.add(format!("{block_name}.downsample.1"), bn, &[s], place, span)?;
                }
                s
            };
            joined = self.add(
                format!("{block_name}.add"),
                Op::Add,
                &[branch, short],
                place,
                span,
            )?;
        }
        self.cursor = Some(joined);
        let act = self.with_channels(self.graph.defaults.act.clone());
        self.cursor = Some(self.add(
            format!("{block_name}.act"),
            Op::Activation(act),
            &[joined],
            place,
            span,
        )?);
        Ok(())
    }

    fn conv_options(
        &self,
        options: &[ast::ItemOption],
        spec: &ConvSpec,
        default_act: bool,
    ) -> Result<ConvOptions, SourceError> {
        let mut o = ConvOptions {
            stride: 1,
            pad: None,
            dilation: 1,
            groups: 1,
            norm: self.graph.defaults.norm,
            bias: None,
            act: default_act.then(|| self.graph.defaults.act.clone()),
        };
        for opt in options.iter().chain(spec.options.iter()) {
            match &opt.kind {
                OptionKind::Stride(s) => o.stride = positive(*s, opt.span, "stride")?,
                OptionKind::Pad(p) => o.pad = Some(*p),
                OptionKind::Dilation(d) => o.dilation = positive(*d, opt.span, "dilation")?,
                OptionKind::Groups(g) => o.groups = positive(*g, opt.span, "groups")?,
                OptionKind::Bias => o.bias = Some(true),
                OptionKind::Norm => o.norm = true,
                OptionKind::Act(a) => o.act = Some(activation(a, 0)?),
                OptionKind::No(w) => match w.text.to_ascii_lowercase().as_str() {
                    "norm" => o.norm = false,
                    "bias" => o.bias = Some(false),
                    "act" => o.act = None,
                    _ => {
                        return Err(err(
                            SourceErrorKind::Name,
                            w.span,
                            format!("`no {}` is not an option", w.text),
                        )
                        .label("unknown")
                        .hint(suggest(
                            &w.text,
                            &["norm", "bias", "act"],
                            "`no` takes",
                        )))
                    }
                },
                OptionKind::Shortcut(_) => {
                    return Err(not_for(
                        opt,
                        "a convolution",
                        "stride, pad, dilation, groups, bias, no bias, no norm, act NAME, no act",
                    ))
                }
            }
        }
        Ok(o)
    }

    /// Adds conv (+ BN) and returns the last node.
    fn conv(
        &mut self,
        spec: &ConvSpec,
        o: &ConvOptions,
        conv_name: &str,
        bn_name: &str,
        place: (&str, Option<usize>),
    ) -> Result<NodeIndex, SourceError> {
        let k = square(&spec.kernel, "a convolution kernel")?;
        let width = self.width(&spec.width)?;
        let input = self.cursor();
        let in_shape = self.graph.g[input].shape.clone();
        if in_shape.len() != 3 {
            return Err(err(
                SourceErrorKind::Shape,
                spec.span,
                format!(
                    "a convolution needs a CxHxW feature map, but its input is a vector of {}",
                    in_shape[0]
                ),
            )
            .hint("convolutions come before flattening fc layers"));
        }
        let conv = Op::Conv2d(Conv2d {
            in_channels: in_shape[0],
            out_channels: width,
            kernel: [k, k],
            stride: o.stride,
            padding: o.pad.unwrap_or(o.dilation * (k - 1) / 2),
            dilation: o.dilation,
            groups: o.groups,
            bias: o.bias.unwrap_or(!o.norm),
        });
        let mut node = self.add(conv_name.to_string(), conv, &[input], place, spec.span)?;
        if o.norm {
            let bn = Op::BatchNorm(BatchNorm {
                channels: width,
                eps: self.graph.defaults.eps,
            });
            node = self.add(bn_name.to_string(), bn, &[node], place, spec.span)?;
        }
        Ok(node)
    }

    fn width(&self, e: &Expr) -> Result<usize, SourceError> {
        let v = eval(e, &self.env)?;
        let w = floor(v);
        if w < 1.0 {
            return Err(err(
                SourceErrorKind::Value,
                e.span(),
                format!(
                    "this width is {v}, which floors to {w}: a layer needs at least one channel"
                ),
            )
            .label("no channels")
            .hint("check the architecture's parameters (`--set`)"));
        }
        if w > MAX_INT as f64 {
            return Err(err(
                SourceErrorKind::Value,
                e.span(),
                format!("this width ({v}) is too large"),
            )
            .hint(format!("widths are at most {MAX_INT}")));
        }
        Ok(w as usize)
    }
}

fn square(d: &ast::Dims, what: &str) -> Result<usize, SourceError> {
    match d.values.as_slice() {
        [a, b] if a == b && *a > 0 => Ok(*a),
        [a, b] if a != b => Err(err(
            SourceErrorKind::Value,
            d.span,
            format!("{what} must be square, got {a}x{b}"),
        )
        .hint("write KxK with equal sides")),
        _ => Err(err(
            SourceErrorKind::Value,
            d.span,
            format!("{what} is written KxK with K at least 1"),
        )
        .hint("for example `3x3`")),
    }
}

fn positive(v: usize, span: Span, what: &str) -> Result<usize, SourceError> {
    if v == 0 {
        return Err(err(
            SourceErrorKind::Value,
            span,
            format!("{what} must be at least 1"),
        )
        .label("zero")
        .hint("use a whole number of 1 or more (an option left out takes its default)"));
    }
    Ok(v)
}

fn not_for(o: &ast::ItemOption, what: &str, allowed: &str) -> SourceError {
    err(
        SourceErrorKind::Syntax,
        o.span,
        format!("this option does not apply to {what}"),
    )
    .label("not allowed here")
    .hint(format!("options for {what}: {allowed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapped_neighbours_are_one_edit() {
        assert_eq!(edit_distance("conv_3x", "conv3_x"), 1);
        assert_eq!(edit_distance("conv_3x", "conv2_x"), 2);
        assert_eq!(edit_distance("gleu", "gelu"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_nearest_name_wins_over_alphabetical_order() {
        let rows = ["conv1", "conv2_x", "conv3_x", "head"];
        assert_eq!(closest("conv_3x", &rows), Some("conv3_x"));
        assert_eq!(closest("conv_2x", &rows), Some("conv2_x"));
        assert_eq!(closest("fc", &rows), None);
    }

    #[test]
    fn suggestions_name_the_nearest_and_list_every_valid_spelling() {
        let acts = ["relu", "gelu", "tanh"];
        assert_eq!(
            suggest("Relu6", &acts, "activations"),
            "did you mean `relu`? activations: `relu`, `gelu` or `tanh`"
        );
        assert_eq!(
            suggest("swish", &acts, "activations"),
            "activations: `relu`, `gelu` or `tanh`"
        );
    }
}
