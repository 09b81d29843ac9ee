//! The header lines (`input`, `norm`, `act`, `shortcut`, `eps`) and the activation and
//! shortcut names they and the rows share.

use super::{err, name_err, suggest, unknown};
use crate::error::{SourceError, SourceErrorKind};
use crate::ir::*;
use crate::syntax::ast::{self, ActSpec, Header, ItemKind};

pub(super) fn read_headers(file: &ast::File) -> Result<(Defaults, Shape), SourceError> {
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
            Header::Tokens {
                tokens,
                vocab,
                span,
            } => {
                if input.is_some() {
                    return Err(err(
                        SourceErrorKind::Syntax,
                        *span,
                        "the input is declared twice",
                    )
                    .hint("keep one `input` line"));
                }
                if *tokens == 0 || *vocab == 0 {
                    return Err(err(
                        SourceErrorKind::Value,
                        *span,
                        "a token input needs at least one token and a vocabulary of at least one",
                    )
                    .label("empty")
                    .hint("for example `input 1024 tokens, vocab 50257`"));
                }
                input = Some(vec![*tokens]);
                defaults.vocab = Some(*vocab);
            }
            Header::Bias(b, _) => defaults.bias = *b,
            Header::Postnorm(_) => defaults.postnorm = true,
            Header::Preact(_) => defaults.preact = true,
            Header::Norm(id) => {
                match id.text.to_ascii_lowercase().as_str() {
                    "batch" => defaults.norm = true,
                    "none" => defaults.norm = false,
                    // The norm of transformer rows; convolutions keep theirs.
                    "layer" => defaults.seq_norm = NormKind::Layer,
                    "rms" => defaults.seq_norm = NormKind::Rms,
                    _ => {
                        return Err(unknown(
                            id,
                            format!("unknown norm `{}`", id.text),
                            &["batch", "none", "layer", "rms"],
                            "norms",
                        ))
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

const ACTIVATIONS: [&str; 9] = [
    "relu",
    "prelu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "gelu",
    "gelu_tanh",
    "silu",
    "identity",
];

/// An activation by name; `channels` sizes PReLU.
pub(super) fn activation(a: &ActSpec, channels: usize) -> Result<Activation, SourceError> {
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
        "gelu_tanh" => Activation::GeluTanh,
        "silu" => Activation::Silu,
        "identity" => Activation::Identity,
        _ => {
            let hint = format!(
                "{} (leaky_relu takes a slope: `leaky_relu(0.1)`)",
                suggest(&name, &ACTIVATIONS, "activations")
            );
            return Err(name_err(
                &a.name,
                format!("unknown activation `{}`", a.name.text),
                "unknown",
            )
            .hint(hint));
        }
    })
}

pub(super) fn shortcut_kind(id: &ast::Ident) -> Result<ShortcutKind, SourceError> {
    Ok(match id.text.to_ascii_lowercase().as_str() {
        "projection" => ShortcutKind::Projection,
        "pad" => ShortcutKind::Pad,
        "none" => ShortcutKind::None,
        _ => {
            return Err(unknown(
                id,
                format!("unknown shortcut `{}`", id.text),
                &["projection", "pad", "none"],
                "shortcuts",
            ))
        }
    })
}

/// (row index, item index) of the file's last fc: the only fc without a ReLU by default.
pub(super) fn last_fc(file: &ast::File) -> Option<(usize, usize)> {
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
