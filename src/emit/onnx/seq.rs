//! ONNX export of the transformer ops (`ir::seq`): values are `[N, T, D]` with a dynamic
//! token count T, so reshapes copy dimensions (`0`) instead of fixing them, and tables
//! indexed by position (learned positions, RoPE's cos and sin, the causal mask) are stored
//! for the declared length and sliced to T at run time. Opset 17 (LayerNormalization).

use super::{float, int, ints, Builder};
use crate::error::{Error, Result};
use crate::ir::{Attention, Norm, NormKind, Op};

impl Builder<'_> {
    /// Writes sequence op `op` of node `name`; `false` when `op` is not a sequence op.
    pub(super) fn seq_node(
        &mut self,
        name: &str,
        op: &Op,
        inputs: Vec<String>,
        out: &str,
        in_rank: usize,
    ) -> Result<bool> {
        let t = |s: &str| format!("{name}.{s}");
        match op {
            Op::Embedding(_) => {
                let w = self.param(&format!("{name}.weight"), None);
                self.push(
                    "Gather",
                    name,
                    vec![w, inputs[0].clone()],
                    out,
                    vec![int("axis", 0)],
                );
            }
            Op::Positions(_) => {
                let table = self.param(&format!("{name}.weight"), None);
                let rows = self.rows_of(&inputs[0], &table, 0);
                self.push("Add", name, vec![inputs[0].clone(), rows], out, vec![]);
            }
            Op::ClassToken(c) => {
                // The token [D] as [N, 1, D], then before the sequence.
                let w = self.param(&format!("{name}.weight"), Some(vec![1, 1, c.dim]));
                let n = t("batch");
                self.push(
                    "Shape",
                    &n,
                    vec![inputs[0].clone()],
                    &n,
                    vec![int("end", 1)],
                );
                let rest = self.const_i64(&t("rest"), &[1, c.dim as i64]);
                let shape = t("shape");
                self.push(
                    "Concat",
                    &shape,
                    vec![n, rest],
                    &shape,
                    vec![int("axis", 0)],
                );
                let tok = t("expand");
                self.push("Expand", &tok, vec![w, shape], &tok, vec![]);
                let ins = vec![tok, inputs[0].clone()];
                self.push("Concat", name, ins, out, vec![int("axis", 1)]);
            }
            Op::ToTokens => {
                // [N, C, H, W] -> [N, C, H*W] -> [N, H*W, C].
                let flat = t("flat");
                let shape = self.const_i64(&t("shape"), &[0, 0, -1]);
                self.push(
                    "Reshape",
                    &flat,
                    vec![inputs[0].clone(), shape],
                    &flat,
                    vec![],
                );
                let perm = vec![ints("perm", &[0, 2, 1])];
                self.push("Transpose", name, vec![flat], out, perm);
            }
            Op::Norm(n) => self.norm(name, n, inputs, out),
            Op::Attention(a) => self.attention(name, a, &inputs, out)?,
            Op::Mul => self.push("Mul", name, inputs, out, vec![]),
            Op::ClassPool => {
                let zero = self.const_i64_scalar(&t("index"), 0);
                let ins = vec![inputs[0].clone(), zero];
                self.push("Gather", name, ins, out, vec![int("axis", 1)]);
            }
            Op::TiedLinear(_) => {
                let graph = self.graph;
                let emb = graph.embedding().ok_or_else(|| {
                    Error::usage(
                        format!("`{name}`: a tied head needs a token embedding"),
                        None,
                    )
                })?;
                let w = format!("{}.weight", graph.g[emb].name);
                let wt = t("weight_t");
                self.push("Transpose", &wt, vec![w], &wt, vec![ints("perm", &[1, 0])]);
                self.push("MatMul", name, vec![inputs[0].clone(), wt], out, vec![]);
            }
            Op::Linear(l) if in_rank == 2 => {
                // Over the last axis of [N, T, in]: Gemm is 2-d only.
                let w = self.param(&format!("{name}.weight"), None);
                let wt = t("weight_t");
                self.push("Transpose", &wt, vec![w], &wt, vec![ints("perm", &[1, 0])]);
                let ins = vec![inputs[0].clone(), wt];
                if l.bias {
                    let mm = t("matmul");
                    self.push("MatMul", &mm, ins, &mm, vec![]);
                    let b = self.param(&format!("{name}.bias"), None);
                    self.push("Add", name, vec![mm, b], out, vec![]);
                } else {
                    self.push("MatMul", name, ins, out, vec![]);
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The first T rows (axis `axis`) of the table `table`, T being the token count of
    /// `x` (`[N, T, ...]`); every value it adds is named after `table`.
    fn rows_of(&mut self, x: &str, table: &str, axis: i64) -> String {
        let p = |s: &str| format!("{table}.{s}");
        let attrs = vec![int("start", 1), int("end", 2)];
        self.push(
            "Shape",
            &p("tokens"),
            vec![x.to_string()],
            &p("tokens"),
            attrs,
        );
        let zero = self.const_i64(&p("start"), &[0]);
        let axes = self.const_i64(&p("axes"), &[axis]);
        let ins = vec![table.to_string(), zero, p("tokens"), axes];
        self.push("Slice", &p("rows"), ins, &p("rows"), vec![]);
        p("rows")
    }

    fn const_i64_scalar(&mut self, name: &str, v: i64) -> String {
        let s = self.const_i64(name, &[v]);
        self.initializers
            .last_mut()
            .expect("just added")
            .dims
            .clear();
        s
    }

    fn norm(&mut self, name: &str, n: &Norm, inputs: Vec<String>, out: &str) {
        let w = self.param(&format!("{name}.weight"), None);
        match n.kind {
            NormKind::Layer => {
                let mut ins = vec![inputs[0].clone(), w];
                if n.bias {
                    ins.push(self.param(&format!("{name}.bias"), None));
                }
                let attrs = vec![int("axis", -1), float("epsilon", n.eps as f32)];
                self.push("LayerNormalization", name, ins, out, attrs);
            }
            NormKind::Rms => {
                // x / sqrt(mean(x^2) + eps) * weight, as transformers' LlamaRMSNorm.
                let t = |s: &str| format!("{name}.{s}");
                let x = inputs[0].clone();
                let eps = self.const_f32(&t("eps"), n.eps as f32);
                self.push(
                    "Mul",
                    &t("sq"),
                    vec![x.clone(), x.clone()],
                    &t("sq"),
                    vec![],
                );
                let mean = vec![ints("axes", &[-1]), int("keepdims", 1)];
                self.push("ReduceMean", &t("mean"), vec![t("sq")], &t("mean"), mean);
                self.push("Add", &t("var"), vec![t("mean"), eps], &t("var"), vec![]);
                self.push("Sqrt", &t("rms"), vec![t("var")], &t("rms"), vec![]);
                self.push("Div", &t("normed"), vec![x, t("rms")], &t("normed"), vec![]);
                self.push("Mul", name, vec![t("normed"), w], out, vec![]);
            }
        }
    }

    /// `[N, T, heads * dh]` as `[N, heads, T, dh]`.
    fn split_heads(&mut self, name: &str, x: &str, heads: usize, dh: usize) -> String {
        let shape = self.const_i64(&format!("{name}.shape"), &[0, 0, heads as i64, dh as i64]);
        let r = format!("{name}.heads");
        self.push("Reshape", &r, vec![x.to_string(), shape], &r, vec![]);
        let perm = vec![ints("perm", &[0, 2, 1, 3])];
        self.push("Transpose", name, vec![r], name, perm);
        name.to_string()
    }

    /// `x` (`[N, H, T, dh]`) rotated as transformers' `apply_rotary_pos_emb`:
    /// `x * cos + rotate_half(x) * sin`, the tables sliced to T.
    fn rope(&mut self, name: &str, x: &str, cos: &str, sin: &str, dh: usize) -> String {
        let t = |s: &str| format!("{name}.{s}");
        let half = (dh / 2) as i64;
        let axes = self.const_i64(&t("axes"), &[3]);
        let (zero, mid, end) = (
            self.const_i64(&t("zero"), &[0]),
            self.const_i64(&t("mid"), &[half]),
            self.const_i64(&t("end"), &[dh as i64]),
        );
        let ins = vec![x.to_string(), zero, mid.clone(), axes.clone()];
        self.push("Slice", &t("x1"), ins, &t("x1"), vec![]);
        let ins = vec![x.to_string(), mid, end, axes];
        self.push("Slice", &t("x2"), ins, &t("x2"), vec![]);
        self.push("Neg", &t("neg_x2"), vec![t("x2")], &t("neg_x2"), vec![]);
        let ins = vec![t("neg_x2"), t("x1")];
        self.push("Concat", &t("rot"), ins, &t("rot"), vec![int("axis", 3)]);
        let ins = vec![x.to_string(), cos.to_string()];
        self.push("Mul", &t("cos"), ins, &t("cos"), vec![]);
        self.push(
            "Mul",
            &t("sin"),
            vec![t("rot"), sin.into()],
            &t("sin"),
            vec![],
        );
        self.push("Add", name, vec![t("cos"), t("sin")], name, vec![]);
        name.to_string()
    }

    /// The attention core (semantics on [`Attention`]): heads split, RoPE, grouped-query
    /// scores `q k^T / sqrt(dh)` (query head h reads kv head h / (H/K), by viewing q as
    /// `[N, K, H/K, T, dh]` against k as `[N, K, 1, T, dh]`), causal mask, softmax, `v`,
    /// heads joined.
    fn attention(&mut self, name: &str, a: &Attention, ins: &[String], out: &str) -> Result<()> {
        let t = |s: &str| format!("{name}.{s}");
        let (h, k, dh) = (a.heads, a.kv_heads, a.head_dim);
        let g = h / k;
        let tokens =
            self.graph.input_shape().first().copied().ok_or_else(|| {
                Error::usage(format!("`{name}`: attention needs token inputs"), None)
            })?;
        let mut q = self.split_heads(&t("q_heads"), &ins[0], h, dh);
        let mut kk = self.split_heads(&t("k_heads"), &ins[1], k, dh);
        let v = self.split_heads(&t("v_heads"), &ins[2], k, dh);
        if let Some(theta) = a.rope {
            let (cos, sin) = rope_tables(tokens, dh, theta);
            let cos_name = t("rope_cos");
            let sin_name = t("rope_sin");
            self.initializers
                .push(super::float_tensor(&cos_name, &[tokens, dh], &cos));
            self.initializers
                .push(super::float_tensor(&sin_name, &[tokens, dh], &sin));
            let cos = self.rows_of(&ins[0], &cos_name, 0);
            let sin = self.rows_of(&ins[0], &sin_name, 0);
            q = self.rope(&t("q_rope"), &q, &cos, &sin, dh);
            kk = self.rope(&t("k_rope"), &kk, &cos, &sin, dh);
        }
        // Groups: q [N, K, G, T, dh]; k and v [N, K, 1, T, dh].
        let qs = self.const_i64(&t("q_groups"), &[0, k as i64, g as i64, -1, dh as i64]);
        self.push("Reshape", &t("q5"), vec![q, qs], &t("q5"), vec![]);
        let one = self.const_i64(&t("group_axis"), &[2]);
        self.push(
            "Unsqueeze",
            &t("k5"),
            vec![kk, one.clone()],
            &t("k5"),
            vec![],
        );
        self.push("Unsqueeze", &t("v5"), vec![v, one], &t("v5"), vec![]);
        let perm = vec![ints("perm", &[0, 1, 2, 4, 3])];
        self.push("Transpose", &t("kt"), vec![t("k5")], &t("kt"), perm);
        self.push("MatMul", &t("qk"), vec![t("q5"), t("kt")], &t("qk"), vec![]);
        let scale = self.const_f32(&t("scale"), 1.0 / (dh as f32).sqrt());
        self.push(
            "Mul",
            &t("scores"),
            vec![t("qk"), scale],
            &t("scores"),
            vec![],
        );
        let mut scores = t("scores");
        if a.causal {
            let mask: Vec<f32> = (0..tokens * tokens)
                .map(|i| {
                    if i % tokens > i / tokens {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let m = t("causal_mask");
            self.initializers
                .push(super::float_tensor(&m, &[tokens, tokens], &mask));
            let rows = self.rows_of(&ins[0], &m, 0);
            let cols = self.rows_of(&ins[0], &rows, 1);
            self.push(
                "Add",
                &t("masked"),
                vec![scores, cols],
                &t("masked"),
                vec![],
            );
            scores = t("masked");
        }
        let axis = vec![int("axis", -1)];
        self.push("Softmax", &t("probs"), vec![scores], &t("probs"), axis);
        self.push(
            "MatMul",
            &t("heads5"),
            vec![t("probs"), t("v5")],
            &t("heads5"),
            vec![],
        );
        // [N, K, G, T, dh] -> [N, H, T, dh] -> [N, T, H, dh] -> [N, T, H * dh].
        let hs = self.const_i64(&t("heads_shape"), &[0, h as i64, -1, dh as i64]);
        self.push(
            "Reshape",
            &t("heads4"),
            vec![t("heads5"), hs],
            &t("heads4"),
            vec![],
        );
        let perm = vec![ints("perm", &[0, 2, 1, 3])];
        self.push(
            "Transpose",
            &t("tokens_first"),
            vec![t("heads4")],
            &t("tokens_first"),
            perm,
        );
        let js = self.const_i64(&t("joined"), &[0, 0, (h * dh) as i64]);
        self.push("Reshape", name, vec![t("tokens_first"), js], out, vec![]);
        Ok(())
    }
}

/// RoPE's cos and sin tables `[tokens, dh]` as transformers' Llama builds them in f32:
/// `inv_freq[i] = 1 / theta^(2i / dh)`, `freqs = t * inv_freq`, the table repeated twice.
pub fn rope_tables(tokens: usize, dh: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = dh / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dh as f32))
        .collect();
    let (mut cos, mut sin) = (
        Vec::with_capacity(tokens * dh),
        Vec::with_capacity(tokens * dh),
    );
    for p in 0..tokens {
        for j in 0..dh {
            let f = p as f32 * inv[j % half];
            cos.push(f.cos());
            sin.push(f.sin());
        }
    }
    (cos, sin)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::super::to_model;
    use super::*;
    use crate::ir::{Activation, Defaults, Embedding, Graph, Linear, TiedLinear};

    /// One pre-norm decoder layer (RMS norm, grouped-query attention with RoPE, causal,
    /// gated MLP) and a tied head, as lowering would build it.
    pub(crate) fn decoder() -> Graph {
        let defaults = Defaults {
            vocab: Some(50),
            ..Defaults::default()
        };
        let mut g = Graph::new("tiny", defaults, vec![8]);
        let add = |g: &mut Graph, name: &str, op: Op, ins: &[crate::ir::NodeIndex]| {
            g.add(name.into(), op, ins, ("layers_x", Some(1)), None)
                .unwrap()
        };
        let lin = |i, o| {
            Op::Linear(Linear {
                in_features: i,
                out_features: o,
                bias: false,
            })
        };
        let rms = Op::Norm(Norm {
            kind: NormKind::Rms,
            dim: 16,
            eps: 1e-5,
            bias: false,
        });
        let input = g.input;
        let x = add(
            &mut g,
            "embed.token",
            Op::Embedding(Embedding { vocab: 50, dim: 16 }),
            &[input],
        );
        let n = add(&mut g, "layers_1.attention.norm", rms.clone(), &[x]);
        let q = add(&mut g, "layers_1.attention.q", lin(16, 16), &[n]);
        let k = add(&mut g, "layers_1.attention.k", lin(16, 8), &[n]);
        let v = add(&mut g, "layers_1.attention.v", lin(16, 8), &[n]);
        let att = Op::Attention(Attention {
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            rope: Some(10000.0),
            causal: true,
        });
        let a = add(&mut g, "layers_1.attention.core", att, &[q, k, v]);
        let o = add(&mut g, "layers_1.attention.o", lin(16, 16), &[a]);
        let r = add(&mut g, "layers_1.attention.add", Op::Add, &[o, x]);
        let n2 = add(&mut g, "layers_1.mlp.norm", rms, &[r]);
        let gate = add(&mut g, "layers_1.mlp.gate", lin(16, 24), &[n2]);
        let act = add(
            &mut g,
            "layers_1.mlp.act",
            Op::Activation(Activation::Silu),
            &[gate],
        );
        let up = add(&mut g, "layers_1.mlp.up", lin(16, 24), &[n2]);
        let m = add(&mut g, "layers_1.mlp.mul", Op::Mul, &[act, up]);
        let d = add(&mut g, "layers_1.mlp.down", lin(24, 16), &[m]);
        let r2 = add(&mut g, "layers_1.mlp.add", Op::Add, &[d, r]);
        let tied = Op::TiedLinear(TiedLinear { dim: 16, vocab: 50 });
        g.output = add(&mut g, "head.fc", tied, &[r2]);
        g
    }

    /// Opset 17, int64 `[N, T]` ids, and a well-formed graph: every value is written once,
    /// and every node reads the input, an initializer or an earlier node's output.
    #[test]
    fn a_decoder_exports_as_a_well_formed_opset_17_model() {
        let g = decoder();
        let p = crate::params::init(&g, 1, true);
        let m = to_model(&g, &p).unwrap();
        assert_eq!(m.opset_import[0].version, 17);
        let graph = m.graph.unwrap();
        let input = &graph.input[0];
        let Some(crate::emit::onnx_proto::type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.clone())
        else {
            panic!("tensor input")
        };
        assert_eq!(t.elem_type, crate::emit::onnx_proto::data_type::INT64);
        assert_eq!(t.shape.unwrap().dim.len(), 2);
        let mut known: HashSet<String> = graph.initializer.iter().map(|i| i.name.clone()).collect();
        assert_eq!(
            known.len(),
            graph.initializer.len(),
            "initializer names are unique"
        );
        known.insert("input".into());
        for n in &graph.node {
            for i in &n.input {
                assert!(
                    known.contains(i),
                    "{} reads `{i}` before it is written",
                    n.name
                );
            }
            for o in &n.output {
                assert!(known.insert(o.clone()), "`{o}` is written twice");
            }
        }
        assert!(known.contains("output"));
        // The tied head reads the embedding's one tensor; no `head.fc.weight` exists.
        assert!(graph
            .initializer
            .iter()
            .any(|i| i.name == "embed.token.weight"));
        assert!(!graph
            .initializer
            .iter()
            .any(|i| i.name.starts_with("head.fc.weight")));
        let ops: HashSet<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        for op in [
            "Gather",
            "MatMul",
            "Softmax",
            "Neg",
            "Unsqueeze",
            "ReduceMean",
        ] {
            assert!(ops.contains(op), "{op} missing from {ops:?}");
        }
    }

    /// The RoPE tables follow transformers' layout: position 0 is the identity rotation,
    /// and column j and j + dh/2 share a frequency.
    #[test]
    fn rope_tables_repeat_the_frequencies_twice() {
        let (cos, sin) = rope_tables(3, 4, 10000.0);
        assert_eq!(&cos[..4], &[1.0; 4]);
        assert_eq!(&sin[..4], &[0.0; 4]);
        // Position 1: frequencies 1 and 1/100.
        assert!((sin[4] - 1f32.sin()).abs() < 1e-7 && sin[4] == sin[6]);
        assert!((sin[5] - 0.01f32.sin()).abs() < 1e-7 && sin[5] == sin[7]);
    }
}
