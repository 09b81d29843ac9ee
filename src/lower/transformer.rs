//! Transformer rows (LANGUAGE.md "Transformers"): token embeddings, learned positions, class
//! tokens, norms over the width, and blocks of residual sublayers `[attention ...; mlp ...]`.
//!
//! A sublayer is `x + F(Norm(x))` (pre-norm) or, with the header's `postnorm`,
//! `Norm(x + F(x))`. Attention is `q`, `k`, `v` (linears over the last axis), the attention
//! core, and `o`; an MLP is `fc1`, the activation, `fc2`, or, gated,
//! `down(act(gate(x)) * up(x))`. Names: `layers_1.attention.norm`, `.q`, `.k`, `.v`,
//! `.core`, `.o`, `.add`; `layers_1.mlp.norm`, `.fc1`, `.act`, `.fc2` (or `.gate`, `.up`,
//! `.act`, `.mul`, `.down`), `.add`.

use super::headers::activation;
use super::{err, not_for, positive, Lowering};
use crate::error::{SourceError, SourceErrorKind, Span};
use crate::ir::*;
use crate::syntax::ast::{self, OptionKind, Sublayer, SublayerKind};

/// Where nodes go: their row and block, and the span they came from.
#[derive(Clone, Copy)]
pub(super) struct Place<'a> {
    pub(super) row: &'a str,
    pub(super) block: Option<usize>,
    pub(super) span: Span,
}

/// An attention sublayer's settings after defaults.
struct AttentionSpec {
    attention: Attention,
    bias: bool,
}

impl Lowering {
    fn put(
        &mut self,
        name: String,
        op: Op,
        inputs: &[NodeIndex],
        at: Place,
    ) -> Result<NodeIndex, SourceError> {
        self.add(name, op, inputs, (at.row, at.block), at.span)
    }

    /// The current value as tokens `[T, D]`: a feature map becomes `H*W` tokens first
    /// (a patch embedding is a convolution, then this), named `{row}.tokens`.
    pub(super) fn tokens(&mut self, at: Place, what: &str) -> Result<[usize; 2], SourceError> {
        let c = self.cursor();
        if self.graph.g[c].shape.len() == 3 {
            let t = self.put(format!("{}.tokens", at.row), Op::ToTokens, &[c], at)?;
            self.cursor = Some(t);
        }
        match self.graph.g[self.cursor()].shape.as_slice() {
            [t, d] => Ok([*t, *d]),
            s => Err(err(
                SourceErrorKind::Shape,
                at.span,
                format!(
                    "{what} needs a sequence of tokens (T x D), but its input is {}",
                    if s.len() == 1 {
                        format!("a vector of {}", s[0])
                    } else {
                        show_shape(&s.to_vec())
                    }
                ),
            )
            .label("not tokens")
            .hint("transformer items read tokens: start from `input T tokens, vocab V` and a token embedding, or a patch convolution")),
        }
    }

    /// A layer or RMS norm (the header's kind) over the width of the current value.
    pub(super) fn norm(&mut self, name: String, at: Place) -> Result<(), SourceError> {
        let [_, d] = self.tokens(at, "a norm")?;
        let d_ = &self.graph.defaults;
        let op = Op::Norm(Norm {
            kind: d_.seq_norm,
            dim: d,
            eps: d_.eps,
            bias: d_.bias && d_.seq_norm == NormKind::Layer,
        });
        let c = self.cursor();
        self.cursor = Some(self.put(name, op, &[c], at)?);
        Ok(())
    }

    /// `D-d token embedding`: reads the token input.
    pub(super) fn token_embedding(
        &mut self,
        dim: usize,
        name: String,
        at: Place,
    ) -> Result<(), SourceError> {
        let dim = positive(dim, at.span, "an embedding width")?;
        let c = self.cursor();
        let vocab = match self.graph.defaults.vocab {
            Some(v) if c == self.graph.input => v,
            _ => {
                return Err(err(
                    SourceErrorKind::Shape,
                    at.span,
                    "a token embedding reads the token input, so it must be the network's first item",
                )
                .label("not reading token ids")
                .hint("declare `input T tokens, vocab V` and start the first row with `D-d token embedding`"))
            }
        };
        let op = Op::Embedding(Embedding { vocab, dim });
        self.cursor = Some(self.put(name, op, &[c], at)?);
        Ok(())
    }

    /// `learned positions`: a table as long as the sequence at this point.
    pub(super) fn positions(&mut self, name: String, at: Place) -> Result<(), SourceError> {
        let [t, d] = self.tokens(at, "learned positions")?;
        let c = self.cursor();
        let op = Op::Positions(Positions { tokens: t, dim: d });
        self.cursor = Some(self.put(name, op, &[c], at)?);
        Ok(())
    }

    /// `class token`: the first in the file prepends a learned token (`{row}.class_token`);
    /// a later one selects it (class-token pooling, `{row}.pool`).
    pub(super) fn class_token(&mut self, row: &str, at: Place) -> Result<(), SourceError> {
        let [_, d] = self.tokens(at, "a class token")?;
        let c = self.cursor();
        let has_one = self
            .graph
            .g
            .node_weights()
            .any(|n| matches!(n.op, Op::ClassToken(_)));
        let (name, op) = if has_one {
            (format!("{row}.pool"), Op::ClassPool)
        } else {
            (
                format!("{row}.class_token"),
                Op::ClassToken(ClassToken { dim: d }),
            )
        };
        self.cursor = Some(self.put(name, op, &[c], at)?);
        Ok(())
    }

    /// A head fc written `tied`: reuses the token embedding's weight.
    pub(super) fn tied_fc(
        &mut self,
        features: usize,
        name: String,
        at: Place,
    ) -> Result<(), SourceError> {
        let [_, d] = self.tokens(at, "a tied fc")?;
        let emb = self.graph.embedding().map(|n| self.graph.g[n].op.clone());
        let fits = matches!(&emb, Some(Op::Embedding(e)) if e.vocab == features && e.dim == d);
        if !fits {
            let what = match emb {
                Some(Op::Embedding(e)) => format!(
                    "the token embedding is {} x {}, but this fc maps {d} to {features}",
                    e.vocab, e.dim
                ),
                _ => "the network has no token embedding".into(),
            };
            return Err(err(
                SourceErrorKind::Shape,
                at.span,
                format!("a tied fc reuses the token embedding's weight, but {what}"),
            )
            .label("cannot be tied")
            .hint("a tied head has as many outputs as the vocabulary and reads the embedding's width; or drop `tied`"));
        }
        let c = self.cursor();
        let op = Op::TiedLinear(TiedLinear {
            dim: d,
            vocab: features,
        });
        self.cursor = Some(self.put(name, op, &[c], at)?);
        Ok(())
    }

    /// One transformer layer `block_name` (`layers_1`) of `sublayers`.
    pub(super) fn transformer_block(
        &mut self,
        sublayers: &[Sublayer],
        block_name: &str,
        at: Place,
    ) -> Result<(), SourceError> {
        // The second sublayer of a kind in one block is `mlp2`, the third `mlp3`.
        let (mut attentions, mut mlps) = (0, 0);
        let nth = |kind: &str, k: usize| match k {
            1 => format!("{block_name}.{kind}"),
            k => format!("{block_name}.{kind}{k}"),
        };
        for sub in sublayers {
            let at = Place {
                span: sub.span,
                ..at
            };
            let [_, d] = self.tokens(at, "a transformer block")?;
            match &sub.kind {
                SublayerKind::Attention { heads } => {
                    let spec = self.attention_spec(*heads, d, sub)?;
                    attentions += 1;
                    let name = nth("attention", attentions);
                    self.residual(&name, at, |l, x| l.attention(&name, &spec, d, x, at))?;
                }
                SublayerKind::Mlp { width, gated } => {
                    let (act, bias) = self.mlp_options(sub)?;
                    let width = positive(*width, sub.span, "an mlp width")?;
                    mlps += 1;
                    let name = nth("mlp", mlps);
                    let mlp = Mlp {
                        width,
                        gated: *gated,
                        act,
                        bias,
                        dim: d,
                    };
                    self.residual(&name, at, |l, x| l.mlp(&name, &mlp, x, at))?;
                }
            }
        }
        Ok(())
    }

    /// `x + F(Norm(x))`, or `Norm(x + F(x))` under `postnorm`; `f` builds F from its input.
    fn residual(
        &mut self,
        name: &str,
        at: Place,
        f: impl FnOnce(&mut Self, NodeIndex) -> Result<NodeIndex, SourceError>,
    ) -> Result<(), SourceError> {
        let x = self.cursor();
        let post = self.graph.defaults.postnorm;
        let branch_in = if post {
            x
        } else {
            self.norm(format!("{name}.norm"), at)?;
            self.cursor()
        };
        let branch = f(self, branch_in)?;
        let sum = self.put(format!("{name}.add"), Op::Add, &[branch, x], at)?;
        self.cursor = Some(sum);
        if post {
            self.norm(format!("{name}.norm"), at)?;
        }
        Ok(())
    }

    fn linear(
        &mut self,
        name: String,
        x: NodeIndex,
        out: usize,
        bias: bool,
        at: Place,
    ) -> Result<NodeIndex, SourceError> {
        let in_features = *self.graph.g[x].shape.last().expect("tokens have a width");
        let op = Op::Linear(Linear {
            in_features,
            out_features: out,
            bias,
        });
        self.put(name, op, &[x], at)
    }

    fn attention(
        &mut self,
        name: &str,
        s: &AttentionSpec,
        d: usize,
        x: NodeIndex,
        at: Place,
    ) -> Result<NodeIndex, SourceError> {
        let a = &s.attention;
        let q = self.linear(format!("{name}.q"), x, a.heads * a.head_dim, s.bias, at)?;
        let k = self.linear(format!("{name}.k"), x, a.kv_heads * a.head_dim, s.bias, at)?;
        let v = self.linear(format!("{name}.v"), x, a.kv_heads * a.head_dim, s.bias, at)?;
        let core = self.put(
            format!("{name}.core"),
            Op::Attention(a.clone()),
            &[q, k, v],
            at,
        )?;
        self.linear(format!("{name}.o"), core, d, s.bias, at)
    }

    fn mlp(
        &mut self,
        name: &str,
        m: &Mlp,
        x: NodeIndex,
        at: Place,
    ) -> Result<NodeIndex, SourceError> {
        let act = |l: &mut Self, h: NodeIndex| {
            l.put(
                format!("{name}.act"),
                Op::Activation(m.act.clone()),
                &[h],
                at,
            )
        };
        if m.gated {
            let gate = self.linear(format!("{name}.gate"), x, m.width, m.bias, at)?;
            let up = self.linear(format!("{name}.up"), x, m.width, m.bias, at)?;
            let g = act(self, gate)?;
            let prod = self.put(format!("{name}.mul"), Op::Mul, &[g, up], at)?;
            self.linear(format!("{name}.down"), prod, m.dim, m.bias, at)
        } else {
            let h = self.linear(format!("{name}.fc1"), x, m.width, m.bias, at)?;
            let h = act(self, h)?;
            self.linear(format!("{name}.fc2"), h, m.dim, m.bias, at)
        }
    }

    fn attention_spec(
        &self,
        heads: usize,
        d: usize,
        sub: &Sublayer,
    ) -> Result<AttentionSpec, SourceError> {
        let heads = positive(heads, sub.span, "the number of heads")?;
        let mut kv_heads = heads;
        let mut head_dim = None;
        let mut rope = None;
        let mut causal = false;
        let mut bias = self.graph.defaults.bias;
        for o in &sub.options {
            match &o.kind {
                OptionKind::KvHeads(k) => {
                    kv_heads = positive(*k, o.span, "the number of kv heads")?
                }
                OptionKind::HeadDim(h) => {
                    head_dim = Some(positive(*h, o.span, "the head dimension")?)
                }
                OptionKind::Rope(theta) if *theta > 0.0 => rope = Some(*theta),
                OptionKind::Rope(_) => {
                    return Err(err(
                        SourceErrorKind::Value,
                        o.span,
                        "RoPE's theta must be positive",
                    )
                    .label("not positive")
                    .hint("Llama uses `rope 10000`, Llama 3 `rope 500000`"))
                }
                OptionKind::Causal => causal = true,
                OptionKind::Bias => bias = true,
                OptionKind::No(w) if w.text.eq_ignore_ascii_case("bias") => bias = false,
                _ => return Err(not_for(o, "attention", ATTENTION_OPTIONS)),
            }
        }
        if heads % kv_heads != 0 {
            let span = option_span(sub, |k| matches!(k, OptionKind::KvHeads(_)));
            return Err(err(
                SourceErrorKind::Value,
                span,
                format!("{kv_heads} kv heads do not divide {heads} heads"),
            )
            .label("does not divide the heads")
            .hint(format!("each kv head serves heads / kv heads query heads; use a divisor of {heads}, e.g. {}", divisor_below(heads, kv_heads))));
        }
        let head_dim = match head_dim {
            Some(h) => h,
            None if d.is_multiple_of(heads) => d / heads,
            None => {
                return Err(err(
                    SourceErrorKind::Value,
                    sub.span,
                    format!("{heads} heads do not divide the width {d}"),
                )
                .label("heads do not divide the width")
                .hint(format!("the head dimension is width / heads by default: use a number of heads that divides {d} (e.g. {}), or write `head dim D`", divisor_below(d, heads))))
            }
        };
        if rope.is_some() && head_dim % 2 != 0 {
            return Err(err(
                SourceErrorKind::Value,
                sub.span,
                format!("RoPE rotates pairs of features, but the head dimension {head_dim} is odd"),
            )
            .hint("use an even head dimension (`head dim D`) or drop `rope`"));
        }
        Ok(AttentionSpec {
            attention: Attention {
                heads,
                kv_heads,
                head_dim,
                rope,
                causal,
            },
            bias,
        })
    }

    fn mlp_options(&self, sub: &Sublayer) -> Result<(Activation, bool), SourceError> {
        let mut act = self.graph.defaults.act.clone();
        let mut bias = self.graph.defaults.bias;
        for o in &sub.options {
            match &o.kind {
                OptionKind::Act(a) => act = activation(a, 0)?,
                OptionKind::Bias => bias = true,
                OptionKind::No(w) if w.text.eq_ignore_ascii_case("bias") => bias = false,
                _ => return Err(not_for(o, "an mlp", "act NAME, bias, no bias")),
            }
        }
        if matches!(act, Activation::Prelu { .. }) {
            return Err(err(
                SourceErrorKind::Value,
                sub.span,
                "prelu learns one slope per channel of a feature map; an mlp over tokens cannot use it",
            )
            .hint("use gelu, gelu_tanh, silu or relu"));
        }
        Ok((act, bias))
    }
}

/// An MLP sublayer's settings after defaults.
struct Mlp {
    width: usize,
    gated: bool,
    act: Activation,
    bias: bool,
    /// The model width it maps back to.
    dim: usize,
}

const ATTENTION_OPTIONS: &str = "K kv heads, head dim D, rope THETA, causal, bias, no bias";

/// The span of the first option of `sub` that `pick` selects, else the sublayer's.
fn option_span(sub: &Sublayer, pick: impl Fn(&OptionKind) -> bool) -> Span {
    sub.options
        .iter()
        .find(|o| pick(&o.kind))
        .map_or(sub.span, |o| o.span)
}

/// The largest divisor of `n` not above `k` (at least 1).
fn divisor_below(n: usize, k: usize) -> usize {
    (1..=k.min(n))
        .rev()
        .find(|m| n.is_multiple_of(*m))
        .unwrap_or(1)
}

/// Whether an item is one of the transformer rows' (named `ROW.KIND` even alone in a row).
pub(super) fn is_seq_item(kind: &ast::ItemKind) -> bool {
    use ast::ItemKind::*;
    matches!(
        kind,
        TokenEmbedding { .. } | Positions | ClassToken | Norm | Transformer { .. }
    )
}

#[cfg(test)]
mod tests {
    use crate::lower::compile;
    use crate::print::print;
    use crate::stats::layer_stats;

    fn check(src: &str, params: u64) {
        let g = compile(src, &[]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(layer_stats(&g).1.params, params);
        let text = print(&g);
        let again = compile(&text, &[]).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert!(g == again, "print does not round trip:\n{text}");
        assert_eq!(print(&again), text);
    }

    #[test]
    fn the_examples_count_the_published_parameters_and_print_back() {
        check(include_str!("../../examples/gpt2.arch"), 124_439_808);
        check(include_str!("../../examples/tinyllama.arch"), 1_100_048_384);
        check(include_str!("../../examples/vit_b16.arch"), 86_567_656);
    }
}
