//! A row's items (convolutions, pools, fc layers, softmax, residual blocks) to nodes,
//! named as LANGUAGE.md "Names" says, and the row's size column checked.

use std::collections::BTreeMap;

use super::blocks::Block;
use super::headers::{activation, shortcut_kind};
use super::transformer::{is_seq_item, Place};
use super::{err, not_for, positive, square, Lowering};
use crate::error::{SourceError, SourceErrorKind, Span};
use crate::ir::*;
use crate::syntax::ast::{self, ItemKind, OptionKind};

/// What may follow `x N`, for refusals.
const BLOCK_OPTIONS: &str = "stride S, shortcut projection|pad|none, act NAME, dense (layer options go inside the brackets)";

/// A row being lowered, as its items see it.
struct RowState<'a> {
    row: &'a ast::Row,
    /// The stem of its block names: the row name without `_x` (`conv2` for `conv2_x`).
    prefix: String,
    /// The number of its last block so far (blocks are numbered across the row's items).
    block_number: usize,
    /// Whether the item after the current one reads tokens: a convolution before it is a
    /// patch embedding, with no activation unless one is written.
    patches: bool,
}

impl Lowering {
    pub(super) fn cursor(&self) -> NodeIndex {
        self.cursor.expect("cursor is set")
    }

    pub(super) fn add(
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

    pub(super) fn row(&mut self, row_index: usize, row: &ast::Row) -> Result<(), SourceError> {
        let single = row.items.len() == 1
            && !matches!(row.items[0].kind, ItemKind::Block { .. })
            && !is_seq_item(&row.items[0].kind);
        let mut kind_counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut at = RowState {
            row,
            prefix: row
                .name
                .text
                .strip_suffix("_x")
                .unwrap_or(&row.name.text)
                .to_string(),
            block_number: 0,
            patches: false,
        };
        for (i, item) in row.items.iter().enumerate() {
            let kind = match item.kind {
                ItemKind::Conv(_) => "conv",
                ItemKind::Pool { .. } | ItemKind::GlobalAvgPool => "pool",
                ItemKind::Fc { .. } => "fc",
                ItemKind::Softmax => "softmax",
                ItemKind::Transition { .. } => "transition",
                ItemKind::Block { .. } | ItemKind::Transformer { .. } => "block",
                ItemKind::TokenEmbedding { .. } => "token",
                ItemKind::Positions => "position",
                ItemKind::ClassToken => "class_token",
                ItemKind::Norm => "norm",
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
            at.patches = row.items.get(i + 1).is_some_and(|n| is_seq_item(&n.kind));
            self.item(&mut at, item, &name, is_last_fc)?;
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
            // Tokens: `T x D`.
            [t, d] => written.as_slice() == [*t, *d],
            [_] => written.iter().all(|v| *v == 1),
            _ => false,
        };
        if fits {
            return Ok(());
        }
        let actual = match shape.as_slice() {
            [_, h, w] => format!("{h}x{w}"),
            [t, d] => format!("{t}x{d}"),
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

    /// Adds item `name` of row `at.row`; `is_last_fc` marks the file's last fc (no ReLU
    /// by default).
    fn item(
        &mut self,
        state: &mut RowState,
        item: &ast::Item,
        name: &str,
        is_last_fc: bool,
    ) -> Result<(), SourceError> {
        let row = state.row;
        let place = (row.name.text.as_str(), None);
        let at = Place {
            row: &row.name.text,
            block: None,
            span: item.span,
        };
        let pre_activated = matches!(
            item.kind,
            ItemKind::Conv(_) | ItemKind::Block { .. } | ItemKind::Transition { .. }
        );
        if !pre_activated {
            self.finish_raw(&row.name.text, item.span)?;
        }
        match &item.kind {
            ItemKind::Conv(spec) => {
                let opts = self.conv_options(&item.options, spec, !state.patches)?;
                let (bn, act) = (format!("{name}.bn"), format!("{name}.act"));
                // Under `preact` a conv reading a pre-activated block's output is
                // pre-activated too (and its output stays un-normalised).
                if self.raw {
                    self.layer(spec, &opts, [name, &bn, &act], place)?;
                } else {
                    self.conv_act(spec, &opts, [name, &bn, &act], place)?;
                }
            }
            ItemKind::Transition { compression } => {
                if let Some(o) = item.options.first() {
                    return Err(not_for(o, "a transition", "none").hint(
                        "a transition is `transition THETA`: BN, the activation, a 1x1 conv to floor(THETA C) channels and a 2x2 average pool, stride 2",
                    ));
                }
                self.transition(compression, name, place, item.span)?;
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
                let mut bias = self.graph.defaults.bias;
                let mut tied = false;
                let mut act = (!is_last_fc).then(|| self.graph.defaults.act.clone());
                for o in &item.options {
                    match &o.kind {
                        OptionKind::Bias => bias = true,
                        OptionKind::No(w) if w.text.eq_ignore_ascii_case("bias") => bias = false,
                        OptionKind::No(w) if w.text.eq_ignore_ascii_case("act") => act = None,
                        OptionKind::Act(a) => act = Some(activation(a, features)?),
                        OptionKind::Tied => tied = true,
                        _ => {
                            return Err(not_for(
                                o,
                                "an fc layer",
                                "bias, no bias, act NAME, no act, tied",
                            ))
                        }
                    }
                }
                if tied {
                    return self.tied_fc(features, name.to_string(), at);
                }
                let mut c = self.cursor();
                // A feature map is flattened; an fc over tokens `[T, D]` acts on each token.
                if self.graph.g[c].shape.len() == 3 {
                    c = self.add(
                        format!("{name}.flatten"),
                        Op::Flatten,
                        &[c],
                        place,
                        item.span,
                    )?;
                }
                let in_features = *self.graph.g[c].shape.last().expect("a value has a shape");
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
            ItemKind::TokenEmbedding { dim } => self.token_embedding(*dim, name.to_string(), at)?,
            ItemKind::Positions => self.positions(name.to_string(), at)?,
            ItemKind::ClassToken => self.class_token(&row.name.text, at)?,
            ItemKind::Norm => self.norm(name.to_string(), at)?,
            ItemKind::Transformer { sublayers, count } => {
                if let Some(o) = item.options.first() {
                    return Err(not_for(
                        o,
                        "a transformer block",
                        "none (options go inside the brackets, after each sublayer)",
                    ));
                }
                repeated(*count, item.span)?;
                for _ in 0..*count {
                    state.block_number += 1;
                    let block_name = format!("{}_{}", state.prefix, state.block_number);
                    let place = Place {
                        block: Some(state.block_number),
                        ..at
                    };
                    self.transformer_block(sublayers, &block_name, place)?;
                }
            }
            ItemKind::Block { layers, count } => {
                let mut outer_stride = None;
                let mut shortcut = self.graph.defaults.shortcut;
                let mut post_act = self.graph.defaults.act.clone();
                let mut dense = false;
                for o in &item.options {
                    let preact = self.graph.defaults.preact;
                    if dense || o.kind == OptionKind::Dense {
                        dense_option(o, &item.options)?;
                    }
                    if preact && matches!(o.kind, OptionKind::Act(_)) {
                        return Err(not_for(o, "a pre-activated block", BLOCK_OPTIONS).hint(
                            "under `preact` a block ends at its add; its layers' activations are written inside the brackets (`act NAME` after a layer)",
                        ));
                    }
                    match &o.kind {
                        OptionKind::Stride(s) => outer_stride = Some(positive(*s, o.span, "stride")?),
                        OptionKind::Shortcut(id) => {
                            shortcut = shortcut_kind(id)?;
                        }
                        // The activation that ends each block (after the add, or after the
                        // last layer without a shortcut).
                        OptionKind::Act(a) => post_act = activation(a, 0)?,
                        OptionKind::Dense => dense = true,
                        OptionKind::No(w) if w.text.eq_ignore_ascii_case("act") => {
                            return Err(not_for(o, "a residual block", BLOCK_OPTIONS).hint(
                                "a block always ends in an activation; write `act identity` for none",
                            ))
                        }
                        _ => return Err(not_for(o, "a residual block", BLOCK_OPTIONS)),
                    }
                }
                repeated(*count, item.span)?;
                let block = Block {
                    row,
                    layers,
                    outer_stride,
                    shortcut,
                    post_act,
                    dense,
                    span: item.span,
                };
                for rep in 0..*count {
                    state.block_number += 1;
                    let block_name = format!("{}_{}", state.prefix, state.block_number);
                    self.block(&block, &block_name, state.block_number, rep == 0)?;
                }
            }
        }
        Ok(())
    }

    /// Gives PReLU the channel count of the value it follows.
    pub(super) fn with_channels(&self, act: Activation) -> Activation {
        match act {
            Activation::Prelu { .. } => Activation::Prelu {
                channels: self.graph.g[self.cursor()].shape[0],
            },
            a => a,
        }
    }
}

/// With `dense`, the block options that do not fit a dense block (a stride, a shortcut, an
/// activation after the concatenation), refused at the first of them.
fn dense_option(o: &ast::ItemOption, all: &[ast::ItemOption]) -> Result<(), SourceError> {
    let bad = all
        .iter()
        .find(|x| x.kind != OptionKind::Dense)
        .unwrap_or(o);
    if bad.kind == OptionKind::Dense {
        return Ok(());
    }
    Err(err(
        SourceErrorKind::Syntax,
        bad.span,
        "a dense block takes no other option: its input is concatenated to its output",
    )
    .label("not with `dense`")
    .hint("a dense block's layers keep the size (no stride), have no shortcut and end in their own activation; write layer options inside the brackets"))
}

/// A block's count `x N`, refused when zero.
fn repeated(count: usize, span: Span) -> Result<(), SourceError> {
    if count == 0 {
        return Err(err(
            SourceErrorKind::Value,
            span,
            "a block is repeated at least once",
        )
        .hint("write `x 1` or more"));
    }
    Ok(())
}
