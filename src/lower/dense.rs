//! Pre-activated layers (`preact`: BN-act-conv), DenseNet's dense blocks (`[...] x N,
//! dense`: each repetition's output concatenated to its input) and transitions
//! (`transition THETA`: a 1x1 convolution to floor(THETA C) channels and a 2x2 average
//! pool, stride 2), and the final BN-act of a pre-activated network.

use super::blocks::Block;
use super::conv::ConvOptions;
use super::expr::{eval, floor};
use super::{err, Lowering};
use crate::error::{SourceError, SourceErrorKind, Span};
use crate::ir::*;
use crate::syntax::ast::{ConvSpec, Expr};

impl Lowering {
    /// One layer of a block in the network's order: conv-BN-act, or under `preact`
    /// BN-act-conv (the conv keeps the bias rule of a conv followed by its norm).
    /// Layer `n` of a block: `BLOCK.convN`, `BLOCK.bnN`, `BLOCK.actN`.
    pub(super) fn block_layer(
        &mut self,
        spec: &ConvSpec,
        o: &ConvOptions,
        block_name: &str,
        n: usize,
        place: (&str, Option<usize>),
    ) -> Result<(), SourceError> {
        let names = ["conv", "bn", "act"].map(|k| format!("{block_name}.{k}{n}"));
        self.layer(spec, o, [&names[0], &names[1], &names[2]], place)
    }

    pub(super) fn layer(
        &mut self,
        spec: &ConvSpec,
        o: &ConvOptions,
        names: [&str; 3],
        place: (&str, Option<usize>),
    ) -> Result<(), SourceError> {
        if !self.graph.defaults.preact {
            return self.conv_act(spec, o, names, place);
        }
        let [conv_name, bn_name, act_name] = names;
        self.pre_activation(o.norm, o.act.clone(), [bn_name, act_name], place, spec.span)?;
        let bare = ConvOptions {
            norm: false,
            bias: Some(o.bias.unwrap_or(!o.norm)),
            act: None,
            ..*o
        };
        let conv = self.conv(spec, &bare, conv_name, bn_name, place)?;
        self.cursor = Some(conv);
        Ok(())
    }

    /// Batch norm (when `norm`) and `act` on the cursor, named `names`.
    pub(super) fn pre_activation(
        &mut self,
        norm: bool,
        act: Option<Activation>,
        [bn_name, act_name]: [&str; 2],
        place: (&str, Option<usize>),
        span: Span,
    ) -> Result<(), SourceError> {
        let mut c = self.cursor();
        if norm {
            let bn = Op::BatchNorm(BatchNorm {
                channels: self.graph.g[c].shape[0],
                eps: self.graph.defaults.eps,
            });
            c = self.add(bn_name.into(), bn, &[c], place, span)?;
            self.cursor = Some(c);
        }
        if let Some(act) = act {
            let act = Op::Activation(self.with_channels(act));
            c = self.add(act_name.into(), act, &[c], place, span)?;
            self.cursor = Some(c);
        }
        Ok(())
    }

    /// Under `preact`, after a pre-activated block or transition: the header's batch norm
    /// and activation (`ROW.bn`, `ROW.act`) before an item that is not pre-activated. A
    /// row that needs a second one (a transition between two pools) numbers it
    /// `ROW.bn2`, `ROW.act2`.
    pub(super) fn finish_raw(&mut self, row: &str, span: Span) -> Result<(), SourceError> {
        if !self.raw {
            return Ok(());
        }
        self.raw = false;
        let d = &self.graph.defaults;
        let (norm, act) = (d.norm, Some(d.act.clone()));
        let taken = |k: usize| {
            let n = if k == 1 { String::new() } else { k.to_string() };
            let names = [format!("{row}.bn{n}"), format!("{row}.act{n}")];
            (names.iter().any(|x| self.graph.find(x).is_some()), names)
        };
        let names = (1..)
            .map(taken)
            .find_map(|(t, names)| (!t).then_some(names))
            .expect("a free number");
        self.pre_activation(norm, act, [&names[0], &names[1]], (row, None), span)
    }

    /// Repetition `number` of a dense block: its layers (each with its activation, the
    /// last too), then `BLOCK.cat` joining the block's input (port 0) and the new features.
    pub(super) fn dense_block(
        &mut self,
        block: &Block,
        block_name: &str,
        number: usize,
    ) -> Result<(), SourceError> {
        let place = (block.row.name.text.as_str(), Some(number));
        let input = self.cursor();
        for (i, spec) in block.layers.iter().enumerate() {
            let opts = self.conv_options(&spec.options, spec, true)?;
            if opts.stride != 1 {
                let at = spec
                    .options
                    .iter()
                    .map(|o| o.span)
                    .next()
                    .unwrap_or(spec.span);
                return Err(err(
                    SourceErrorKind::Value,
                    at,
                    "a dense block's layers keep the size of their input: it is concatenated to their output",
                )
                .label("a stride in a dense block")
                .hint("downsample between dense blocks with a `transition` (a 1x1 conv and a 2x2 average pool, stride 2)"));
            }
            self.block_layer(spec, &opts, block_name, i + 1, place)?;
        }
        let new = self.cursor();
        self.cursor = Some(self.add(
            format!("{block_name}.cat"),
            Op::Concat,
            &[input, new],
            place,
            block.span,
        )?);
        self.raw = self.graph.defaults.preact;
        Ok(())
    }

    /// `transition THETA` named `prefix` (`trans1` -> `trans1.bn`, `.act`, `.conv`,
    /// `.pool`): BN-act-conv under `preact`, else conv-BN-act; then a 2x2 average pool,
    /// stride 2.
    pub(super) fn transition(
        &mut self,
        compression: &Expr,
        prefix: &str,
        place: (&str, Option<usize>),
        span: Span,
    ) -> Result<(), SourceError> {
        let theta = eval(compression, &self.env)?;
        if !(theta > 0.0 && theta <= 1.0) {
            return Err(err(
                SourceErrorKind::Value,
                compression.span(),
                format!("a transition's compression is between 0 and 1, got {theta}"),
            )
            .label("not in (0, 1]")
            .hint("DenseNet-BC compresses by 0.5 (`transition 0.5`); 1 keeps every channel"));
        }
        let c = self.graph.g[self.cursor()].shape.clone();
        if c.len() != 3 {
            return Err(err(
                SourceErrorKind::Shape,
                span,
                "a transition needs a CxHxW feature map, but its input is a vector",
            )
            .hint("transitions sit between dense blocks, before the head"));
        }
        let width = floor(theta * c[0] as f64);
        if width < 1.0 {
            return Err(err(
                SourceErrorKind::Value,
                compression.span(),
                format!(
                    "compression {theta} of {} channels leaves {width}: a layer needs at least one channel",
                    c[0]
                ),
            )
            .label("no channels")
            .hint("use a larger compression"));
        }
        let d = &self.graph.defaults;
        let (norm, act) = (d.norm, Some(d.act.clone()));
        let names = [
            format!("{prefix}.bn"),
            format!("{prefix}.act"),
            format!("{prefix}.conv"),
        ];
        let conv = Op::Conv2d(Conv2d {
            in_channels: c[0],
            out_channels: width as usize,
            kernel: [1, 1],
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: !norm,
        });
        if self.graph.defaults.preact {
            self.pre_activation(norm, act, [&names[0], &names[1]], place, span)?;
            let x = self.cursor();
            self.cursor = Some(self.add(names[2].clone(), conv, &[x], place, span)?);
        } else {
            let x = self.cursor();
            self.cursor = Some(self.add(names[2].clone(), conv, &[x], place, span)?);
            self.pre_activation(norm, act, [&names[0], &names[1]], place, span)?;
        }
        let pool = Op::AvgPool(Pool {
            kernel: [2, 2],
            stride: 2,
            padding: 0,
        });
        let x = self.cursor();
        self.cursor = Some(self.add(format!("{prefix}.pool"), pool, &[x], place, span)?);
        self.raw = self.graph.defaults.preact;
        Ok(())
    }
}
