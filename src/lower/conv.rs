//! A convolution (+ batch norm) with its options applied over the defaults.

use super::expr::{eval, floor};
use super::headers::activation;
use super::{err, not_for, positive, square, unknown, Lowering};
use crate::error::{SourceError, SourceErrorKind};
use crate::ir::*;
use crate::syntax::ast::{self, ConvSpec, Expr, OptionKind};
use crate::syntax::MAX_INT;

/// The padding a convolution gets unless `pad P` says otherwise: none when the stride
/// equals the kernel (non-overlapping patches, as a ViT's patch embedding), else "same"
/// padding `dilation * (K - 1) / 2`.
pub fn default_padding(kernel: usize, stride: usize, dilation: usize) -> usize {
    if stride == kernel && dilation == 1 {
        0
    } else {
        dilation * (kernel - 1) / 2
    }
}

/// Options of a convolution after defaults are applied.
pub(super) struct ConvOptions {
    pub(super) stride: usize,
    pub(super) pad: Option<usize>,
    pub(super) dilation: usize,
    pub(super) groups: usize,
    pub(super) norm: bool,
    pub(super) bias: Option<bool>,
    pub(super) act: Option<Activation>,
}

impl Lowering {
    pub(super) fn conv_options(
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
                        return Err(unknown(
                            w,
                            format!("`no {}` is not an option", w.text),
                            &["norm", "bias", "act"],
                            "`no` takes",
                        ))
                    }
                },
                OptionKind::Shortcut(_)
                | OptionKind::KvHeads(_)
                | OptionKind::HeadDim(_)
                | OptionKind::Rope(_)
                | OptionKind::Causal
                | OptionKind::Tied
                | OptionKind::Dense => {
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
    /// A convolution with its norm, then its activation if any; the cursor ends after both.
    /// `names` are the conv's, the norm's and the activation's.
    pub(super) fn conv_act(
        &mut self,
        spec: &ConvSpec,
        o: &ConvOptions,
        [conv_name, bn_name, act_name]: [&str; 3],
        place: (&str, Option<usize>),
    ) -> Result<(), SourceError> {
        let conv = self.conv(spec, o, conv_name, bn_name, place)?;
        self.cursor = Some(conv);
        if let Some(act) = o.act.clone() {
            let act = Op::Activation(self.with_channels(act));
            self.cursor = Some(self.add(act_name.into(), act, &[conv], place, spec.span)?);
        }
        Ok(())
    }

    pub(super) fn conv(
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
            padding: o.pad.unwrap_or(default_padding(k, o.stride, o.dilation)),
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
