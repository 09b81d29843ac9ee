//! A residual block: its layers, the shortcut (identity, zero-padded or projection), the
//! add and the activation after it. Under `preact` its layers are BN-act-conv, a shortcut
//! that is not the identity reads the first layer's pre-activation, and nothing follows
//! the add (He et al. 2016, "Identity Mappings"); dense blocks are in `dense.rs`.

use super::{err, Lowering};
use crate::error::{SourceError, SourceErrorKind, Span};
use crate::ir::*;
use crate::syntax::ast::{self, ConvSpec};

/// A residual block item's settings, shared by its repetitions
/// (`[3x3, 64; 3x3, 64] x 2, stride 2, shortcut pad`).
pub(super) struct Block<'a> {
    pub(super) row: &'a ast::Row,
    pub(super) layers: &'a [ConvSpec],
    /// The stride written outside the brackets, for the first repetition's first layer.
    pub(super) outer_stride: Option<usize>,
    pub(super) shortcut: ShortcutKind,
    /// The activation ending every repetition (`act NAME` after `x N`; the header's
    /// activation by default).
    pub(super) post_act: Activation,
    /// `dense`: DenseNet's block (its output concatenated to its input).
    pub(super) dense: bool,
    /// The item's span, for the shortcut, add and activation nodes.
    pub(super) span: Span,
}

impl Lowering {
    /// Adds repetition `number` (1-based within the row) of `block`, named `block_name`;
    /// only the `first` repetition takes a stride.
    pub(super) fn block(
        &mut self,
        block: &Block,
        block_name: &str,
        number: usize,
        first: bool,
    ) -> Result<(), SourceError> {
        if block.dense {
            return self.dense_block(block, block_name, number);
        }
        let &Block {
            row,
            layers,
            outer_stride,
            shortcut,
            ref post_act,
            span,
            ..
        } = block;
        let preact = self.graph.defaults.preact;
        // What a shortcut other than the identity reads (under `preact`, the first layer's
        // pre-activation).
        let mut pre = self.cursor();
        let place = (row.name.text.as_str(), Some(number));
        let block_input = self.cursor();
        let mut total_stride = 1;
        for (i, spec) in layers.iter().enumerate() {
            let last = i + 1 == layers.len();
            let mut opts = self.conv_options(&spec.options, spec, !last || preact)?;
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
            self.block_layer(spec, &opts, block_name, i + 1, place)?;
            if preact && i == 0 {
                let conv = self.graph.find(&format!("{block_name}.conv1"));
                pre = conv.map_or(pre, |c| self.graph.inputs(c)[0]);
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
                self.add(format!("{block_name}.downsample"), op, &[pre], place, span)?
            } else {
                // A pre-activated projection is a bare 1x1 convolution.
                let norm = self.graph.defaults.norm && !preact;
                let bias = !self.graph.defaults.norm;
                let op = Op::Conv2d(Conv2d {
                    in_channels: in_shape[0],
                    out_channels: out_shape[0],
                    kernel: [1, 1],
                    stride: total_stride,
                    padding: 0,
                    dilation: 1,
                    groups: 1,
                    bias,
                });
                let mut s = self.add(
                    format!("{block_name}.downsample.0"),
                    op,
                    &[pre],
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
        if preact {
            self.raw = true;
            return Ok(());
        }
        let act = self.with_channels(post_act.clone());
        self.cursor = Some(self.add(
            format!("{block_name}.act"),
            Op::Activation(act),
            &[joined],
            place,
            span,
        )?);
        Ok(())
    }
}
