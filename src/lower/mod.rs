//! Syntax tree to graph: evaluates parameters, expands rows and residual blocks into ops,
//! names every node (LANGUAGE.md "Names"), infers shapes and checks size columns.
//!
//! The parts: `expr.rs` evaluates the architecture's parameters and width expressions,
//! `headers.rs` reads the header lines (input, norm, act, shortcut, eps), `rows.rs` turns
//! a row's items into nodes, `blocks.rs` expands a residual block, `conv.rs` adds a
//! convolution with its options, `dense.rs` pre-activated layers, DenseNet's dense blocks
//! and transitions, and `suggest.rs` finds the "did you mean" spelling.

mod blocks;
mod conv;
mod dense;
mod expr;
mod headers;
mod rows;
mod suggest;
mod transformer;

pub use conv::default_padding;
pub use expr::eval;
pub use suggest::{closest, suggest};

use std::collections::{BTreeMap, HashSet};

use crate::error::{SourceError, SourceErrorKind, Span};
use crate::ir::*;
use crate::syntax::ast;
use crate::syntax::parse;
use expr::evaluate_params;
use headers::{last_fc, read_headers};

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
        raw: false,
    };
    lowering.cursor = Some(lowering.graph.input);
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    for (row_index, row) in file.rows.iter().enumerate() {
        if let Some(first) = seen.get(row.name.text.as_str()) {
            let _ = first;
            return Err(name_err(
                &row.name,
                format!("the row name `{}` is used twice", row.name.text),
                "second use",
            )
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

/// A naming error at `id`, with `label` under it.
fn name_err(id: &ast::Ident, msg: impl Into<String>, label: &str) -> SourceError {
    err(SourceErrorKind::Name, id.span, msg).label(label)
}

/// An unknown word at `id`: the nearest of `valid` (listed as `what`) as the hint.
fn unknown(id: &ast::Ident, msg: impl Into<String>, valid: &[&str], what: &str) -> SourceError {
    name_err(id, msg, "unknown").hint(suggest(&id.text, valid, what))
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

/// The graph being built and where the next item attaches.
struct Lowering {
    graph: Graph,
    env: BTreeMap<String, f64>,
    cursor: Option<NodeIndex>,
    last_fc: Option<(usize, usize)>,
    /// Under `preact`: the cursor is the un-normalised output of a pre-activated block or
    /// transition, so an item that is not pre-activated gets batch norm and the activation
    /// first (the final BN-ReLU of pre-activation ResNets and DenseNet).
    raw: bool,
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
