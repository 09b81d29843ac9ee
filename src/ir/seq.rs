//! The ops of transformer rows (LANGUAGE.md "Transformers") and their shape rules.
//!
//! A sequence value is `[T, D]`: T tokens (positions) of width D, without the batch
//! dimension; token ids are `[T]` (whole numbers held as floats, each below the vocabulary
//! size). Every op here acts on each sequence of a batch on its own; T may be shorter than
//! the declared length at run time (ops with a table of positions read its first T rows).

use serde::Serialize;

use super::op::{show_shape, Op, Shape};

/// Token embedding (PyTorch `nn.Embedding(vocab, dim)`): ids `[T]` to `[T, dim]`, row `id`
/// of the weight `[vocab, dim]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    pub vocab: usize,
    pub dim: usize,
}

/// Learned positions: `y[t] = x[t] + weight[t]` with weight `[tokens, dim]`; an input of
/// T <= tokens rows reads the first T rows of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Positions {
    pub tokens: usize,
    pub dim: usize,
}

/// Which normalisation over the last axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `nn.LayerNorm(dim, eps)`: `(x - mean) / sqrt(var + eps) * weight + bias`, mean and
    /// biased variance over the last axis.
    Layer,
    /// Llama's RMSNorm: `x / sqrt(mean(x^2) + eps) * weight`; never a bias.
    Rms,
}

impl NormKind {
    /// The header keyword (`norm layer`, `norm rms`).
    pub fn keyword(self) -> &'static str {
        match self {
            NormKind::Layer => "layer",
            NormKind::Rms => "rms",
        }
    }
}

/// Layer or RMS norm over the last axis of `[T, dim]` (or a vector `[dim]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Norm {
    pub kind: NormKind,
    pub dim: usize,
    pub eps: f64,
    /// Layer norm only: a learned shift `bias` `[dim]` (RMS norm has none).
    pub bias: bool,
}

/// Scaled dot-product attention with grouped-query heads, the core between the q, k, v
/// projections (linears over the last axis) and the output projection.
///
/// Inputs (ports): 0 q `[T, heads * head_dim]`, 1 k `[T, kv_heads * head_dim]`, 2 v
/// `[T, kv_heads * head_dim]`; output `[T, heads * head_dim]`. Head `h` is columns
/// `h*head_dim .. (h+1)*head_dim` of q (and of the output); query head `h` reads kv head
/// `h / (heads / kv_heads)` (Hugging Face's `repeat_kv`). With `rope`, q and k of each head
/// are rotated first, as Hugging Face's `apply_rotary_pos_emb` (rotate-half): for position
/// `t` and `i < head_dim/2`, `angle = t * theta^(-2i/head_dim)`,
/// `x'[i] = x[i] cos - x[i + head_dim/2] sin`, `x'[i + head_dim/2] = x[i + head_dim/2] cos
/// + x[i] sin`. Then `softmax(q k^T / sqrt(head_dim)) v` per head, with `causal` masking
/// key `s > t` for query `t` (weight 0). No dropout, no parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// RoPE base theta (10000 in Llama), none for learned or no positions.
    pub rope: Option<f64>,
    pub causal: bool,
}

/// A class token (ViT): prepends the learned `weight` `[dim]` to `[T, dim]`, giving
/// `[T + 1, dim]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassToken {
    pub dim: usize,
}

/// A head that reuses the token embedding's weight `[vocab, dim]` (one tensor, stored once
/// under the embedding's name): `[T, dim]` to `[T, vocab]`, `y = x @ weight.t()`, no bias.
/// It reads the weight of the graph's `Embedding` node (lowering allows one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TiedLinear {
    pub dim: usize,
    pub vocab: usize,
}

pub(super) fn seq_shape(s: &Shape, what: &str) -> Result<[usize; 2], String> {
    match s.as_slice() {
        [t, d] => Ok([*t, *d]),
        _ => Err(format!(
            "{what} needs a sequence of tokens (T x D), but its input is {}",
            describe(s)
        )),
    }
}

fn describe(s: &Shape) -> String {
    match s.len() {
        1 => format!("a vector of {}", s[0]),
        3 => format!("a feature map {}", show_shape(s)),
        _ => show_shape(s),
    }
}

/// Output shapes of the sequence ops, or a sentence saying why the inputs do not fit.
pub(super) fn infer_shape(op: &Op, inputs: &[&Shape]) -> Result<Shape, String> {
    let one = |what: &str| -> Result<&Shape, String> {
        match inputs {
            [s] => Ok(*s),
            _ => Err(format!("{what} takes one input, got {}", inputs.len())),
        }
    };
    let width = |what: &str, got: usize, want: usize| -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} expects width {want} but receives {got}"))
        }
    };
    match op {
        Op::Embedding(e) => match one("a token embedding")?.as_slice() {
            [t] => Ok(vec![*t, e.dim]),
            s => Err(format!(
                "a token embedding reads token ids (`input T tokens, vocab V`), but its input is {}",
                describe(&s.to_vec())
            )),
        },
        Op::Positions(p) => {
            let [t, d] = seq_shape(one("learned positions")?, "learned positions")?;
            width("the position table", d, p.dim)?;
            if t > p.tokens {
                return Err(format!(
                    "the position table has {} positions but the sequence has {t} tokens",
                    p.tokens
                ));
            }
            Ok(vec![t, d])
        }
        Op::ClassToken(c) => {
            let [t, d] = seq_shape(one("a class token")?, "a class token")?;
            width("the class token", d, c.dim)?;
            Ok(vec![t + 1, d])
        }
        Op::ToTokens => match one("tokens from a feature map")?.as_slice() {
            [c, h, w] => Ok(vec![h * w, *c]),
            s => Err(format!(
                "only a feature map (CxHxW) becomes tokens, but this input is {}",
                describe(&s.to_vec())
            )),
        },
        Op::Norm(n) => {
            let s = one("a norm")?;
            let [_, d] = seq_shape(s, "a layer or RMS norm")?;
            width("the norm", d, n.dim)?;
            Ok(s.clone())
        }
        Op::Attention(a) => {
            let [q, k, v] = match inputs {
                [q, k, v] => [*q, *k, *v],
                _ => return Err(format!("attention takes q, k and v, got {} inputs", inputs.len())),
            };
            let [t, qd] = seq_shape(q, "attention")?;
            let [tk, kd] = seq_shape(k, "attention")?;
            let [tv, vd] = seq_shape(v, "attention")?;
            if a.heads == 0 || a.kv_heads == 0 || a.head_dim == 0 || a.heads % a.kv_heads != 0 {
                return Err(format!(
                    "{} kv heads must divide {} heads (and both be at least 1)",
                    a.kv_heads, a.heads
                ));
            }
            if a.rope.is_some() && a.head_dim % 2 != 0 {
                return Err(format!(
                    "RoPE rotates pairs of features, so the head dimension ({}) must be even",
                    a.head_dim
                ));
            }
            width("attention's q", qd, a.heads * a.head_dim)?;
            width("attention's k", kd, a.kv_heads * a.head_dim)?;
            width("attention's v", vd, a.kv_heads * a.head_dim)?;
            if tk != t || tv != t {
                return Err(format!(
                    "attention's q, k and v have {t}, {tk} and {tv} tokens"
                ));
            }
            Ok(vec![t, a.heads * a.head_dim])
        }
        Op::Mul => match inputs {
            [a, b] if a == b => Ok((*a).clone()),
            [a, b] => Err(format!(
                "a product joins shapes {} and {}",
                show_shape(a),
                show_shape(b)
            )),
            _ => Err(format!("a product takes two inputs, got {}", inputs.len())),
        },
        Op::ClassPool => {
            let [_, d] = seq_shape(one("class-token pooling")?, "class-token pooling")?;
            Ok(vec![d])
        }
        Op::TiedLinear(l) => {
            let [t, d] = seq_shape(one("a tied head")?, "a tied head")?;
            width("the tied head", d, l.dim)?;
            Ok(vec![t, l.vocab])
        }
        other => Err(format!("{} is not a sequence op", other.kind_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Activation, Linear};

    fn attention(heads: usize, kv_heads: usize, head_dim: usize) -> Op {
        Op::Attention(Attention {
            heads,
            kv_heads,
            head_dim,
            rope: Some(10000.0),
            causal: true,
        })
    }

    /// The output shape of `op`, which must accept `inputs`.
    fn out(op: Op, inputs: &[&Shape]) -> Shape {
        op.infer_shape(inputs).unwrap()
    }

    #[test]
    fn shapes_of_a_decoder_layer() {
        let ids = vec![16];
        let x = out(
            Op::Embedding(Embedding {
                vocab: 100,
                dim: 64,
            }),
            &[&ids],
        );
        assert_eq!(x, vec![16, 64]);
        let q = out(
            Op::Linear(Linear {
                in_features: 64,
                out_features: 64,
                bias: false,
            }),
            &[&x],
        );
        assert_eq!(q, vec![16, 64]);
        let kv = vec![16, 16];
        let out = attention(8, 2, 8).infer_shape(&[&q, &kv, &kv]).unwrap();
        assert_eq!(out, vec![16, 64]);
        // 2 x T x T x heads x head_dim.
        assert_eq!(attention(8, 2, 8).macs(&out), 2 * 16 * 16 * 64);
        let e = attention(8, 3, 8).infer_shape(&[&q, &kv, &kv]).unwrap_err();
        assert!(e.contains("3 kv heads must divide 8 heads"), "{e}");
        let e = attention(8, 2, 8).infer_shape(&[&q, &q, &q]).unwrap_err();
        assert!(e.contains("attention's k expects width 16"), "{e}");
        let act = Op::Activation(Activation::Silu).infer_shape(&[&x]).unwrap();
        assert_eq!(act, x);
        assert_eq!(Op::Mul.infer_shape(&[&x, &x]).unwrap(), x);
        assert_eq!(Op::ClassPool.infer_shape(&[&x]).unwrap(), vec![64]);
    }

    #[test]
    fn patches_class_token_and_positions() {
        let map = vec![768, 14, 14];
        let t = Op::ToTokens.infer_shape(&[&map]).unwrap();
        assert_eq!(t, vec![196, 768]);
        let c = out(Op::ClassToken(ClassToken { dim: 768 }), &[&t]);
        assert_eq!(c, vec![197, 768]);
        let short = Op::Positions(Positions {
            tokens: 196,
            dim: 768,
        });
        assert!(short
            .infer_shape(&[&c])
            .unwrap_err()
            .contains("196 positions"));
        let e = Op::Norm(Norm {
            kind: NormKind::Layer,
            dim: 768,
            eps: 1e-6,
            bias: true,
        })
        .infer_shape(&[&map])
        .unwrap_err();
        assert!(e.contains("sequence of tokens"), "{e}");
    }

    #[test]
    fn rms_norm_has_no_shift_and_a_tied_head_no_tensor() {
        let rms = Op::Norm(Norm {
            kind: NormKind::Rms,
            dim: 8,
            eps: 1e-5,
            bias: true,
        });
        assert_eq!(rms.param_slots().len(), 1);
        let tied = Op::TiedLinear(TiedLinear { dim: 8, vocab: 50 });
        assert!(tied.param_slots().is_empty());
        assert_eq!(tied.infer_shape(&[&vec![4, 8]]).unwrap(), vec![4, 50]);
        assert_eq!(tied.macs(&vec![4, 50]), 4 * 8 * 50);
    }
}
