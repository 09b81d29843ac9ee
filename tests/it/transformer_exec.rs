//! The executor on transformer graphs (GPT-2-, Llama- and ViT-shaped, built with
//! `Graph::add`) against a reference written here with plain loops over `Vec<f64>`, from the
//! formulas of transformers and timm; token inputs, their errors, and shorter sequences.

use ndarray::{ArrayD, IxDyn};
use r2rc::exec::{self, Executor, Mode};
use r2rc::ir::{
    Activation, Attention, ClassToken, Conv2d, Defaults, Embedding, Graph, Linear, NodeIndex, Norm,
    NormKind, Op, Positions, TiedLinear,
};
use r2rc::params::{self, Params};

/// A token (or feature) per row.
type Seq = Vec<Vec<f64>>;

struct Net {
    g: Graph,
    heads: (usize, usize, usize),
    rope: Option<f64>,
    causal: bool,
    gated: bool,
    act: Activation,
    norm: NormKind,
    bias: bool,
}

impl Net {
    fn add(&mut self, name: &str, op: Op, inputs: &[NodeIndex]) -> NodeIndex {
        let n = self
            .g
            .add(name.into(), op, inputs, (name, None), None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self.g.output = n;
        n
    }

    fn linear(&mut self, name: &str, x: NodeIndex, i: usize, o: usize) -> NodeIndex {
        let op = Op::Linear(Linear {
            in_features: i,
            out_features: o,
            bias: self.bias,
        });
        self.add(name, op, &[x])
    }

    fn norm(&mut self, name: &str, x: NodeIndex, d: usize) -> NodeIndex {
        let op = Op::Norm(Norm {
            kind: self.norm,
            dim: d,
            eps: 1e-5,
            bias: self.bias,
        });
        self.add(name, op, &[x])
    }

    /// `x + o(attention(q, k, v of norm(x)))`, then `x + mlp(norm(x))`.
    fn block(&mut self, b: &str, x: NodeIndex, d: usize, mlp: usize) -> NodeIndex {
        let (h, k, dh) = self.heads;
        let n = self.norm(&format!("{b}.attention.norm"), x, d);
        let q = self.linear(&format!("{b}.attention.q"), n, d, h * dh);
        let kk = self.linear(&format!("{b}.attention.k"), n, d, k * dh);
        let v = self.linear(&format!("{b}.attention.v"), n, d, k * dh);
        let op = Op::Attention(Attention {
            heads: h,
            kv_heads: k,
            head_dim: dh,
            rope: self.rope,
            causal: self.causal,
        });
        let a = self.add(&format!("{b}.attention.core"), op, &[q, kk, v]);
        let o = self.linear(&format!("{b}.attention.o"), a, h * dh, d);
        let x = self.add(&format!("{b}.attention.add"), Op::Add, &[o, x]);
        let n = self.norm(&format!("{b}.mlp.norm"), x, d);
        let act = Op::Activation(self.act.clone());
        let y = if self.gated {
            let g = self.linear(&format!("{b}.mlp.gate"), n, d, mlp);
            let g = self.add(&format!("{b}.mlp.act"), act, &[g]);
            let u = self.linear(&format!("{b}.mlp.up"), n, d, mlp);
            let m = self.add(&format!("{b}.mlp.mul"), Op::Mul, &[g, u]);
            self.linear(&format!("{b}.mlp.down"), m, mlp, d)
        } else {
            let f = self.linear(&format!("{b}.mlp.fc1"), n, d, mlp);
            let f = self.add(&format!("{b}.mlp.act"), act, &[f]);
            self.linear(&format!("{b}.mlp.fc2"), f, mlp, d)
        };
        self.add(&format!("{b}.mlp.add"), Op::Add, &[y, x])
    }
}

fn defaults(vocab: Option<usize>) -> Defaults {
    Defaults {
        vocab,
        ..Defaults::default()
    }
}

/// GPT-2's shape: token and learned positions, layer norms with bias, causal attention,
/// GELU tanh MLP, final norm, tied head.
fn gpt2(t: usize, vocab: usize) -> Net {
    let (d, layers) = (16, 2);
    let mut net = Net {
        g: Graph::new("gpt", defaults(Some(vocab)), vec![t]),
        heads: (4, 4, 4),
        rope: None,
        causal: true,
        gated: false,
        act: Activation::GeluTanh,
        norm: NormKind::Layer,
        bias: true,
    };
    let input = net.g.input;
    let x = net.add(
        "embed.token",
        Op::Embedding(Embedding { vocab, dim: d }),
        &[input],
    );
    let mut x = net.add(
        "embed.position",
        Op::Positions(Positions { tokens: t, dim: d }),
        &[x],
    );
    for l in 1..=layers {
        x = net.block(&format!("layers_{l}"), x, d, 24);
    }
    let x = net.norm("head.norm", x, d);
    net.add(
        "head.fc",
        Op::TiedLinear(TiedLinear { dim: d, vocab }),
        &[x],
    );
    net
}

/// Llama's shape: RMS norms, no biases, grouped-query attention with RoPE, SiLU-gated MLP,
/// untied head.
fn llama(t: usize, vocab: usize) -> Net {
    let d = 16;
    let mut net = Net {
        g: Graph::new("llama", defaults(Some(vocab)), vec![t]),
        heads: (4, 2, 4),
        rope: Some(10000.0),
        causal: true,
        gated: true,
        act: Activation::Silu,
        norm: NormKind::Rms,
        bias: false,
    };
    let input = net.g.input;
    let mut x = net.add(
        "embed.token",
        Op::Embedding(Embedding { vocab, dim: d }),
        &[input],
    );
    for l in 1..=2 {
        x = net.block(&format!("layers_{l}"), x, d, 20);
    }
    let x = net.norm("head.norm", x, d);
    net.linear("head.fc", x, d, vocab);
    net
}

/// ViT's shape: 4x4 patches of a 3x8x8 image, class token, positions, bidirectional
/// attention, erf GELU, final norm, class-token pooling, fc.
fn vit() -> Net {
    let d = 12;
    let mut net = Net {
        g: Graph::new("vit", defaults(None), vec![3, 8, 8]),
        heads: (3, 3, 4),
        rope: None,
        causal: false,
        gated: false,
        act: Activation::Gelu,
        norm: NormKind::Layer,
        bias: true,
    };
    let conv = Op::Conv2d(Conv2d {
        in_channels: 3,
        out_channels: d,
        kernel: [4, 4],
        stride: 4,
        padding: 0,
        dilation: 1,
        groups: 1,
        bias: true,
    });
    let input = net.g.input;
    let x = net.add("embed.patch", conv, &[input]);
    let x = net.add("embed.tokens", Op::ToTokens, &[x]);
    let x = net.add("embed.class", Op::ClassToken(ClassToken { dim: d }), &[x]);
    let mut x = net.add(
        "embed.position",
        Op::Positions(Positions { tokens: 5, dim: d }),
        &[x],
    );
    x = net.block("blocks_1", x, d, 20);
    let x = net.norm("head.norm", x, d);
    let x = net.add("head.pool", Op::ClassPool, &[x]);
    net.linear("head.fc", x, d, 10);
    net
}

// ---- the reference, from the formulas ----

fn w(p: &Params, name: &str) -> Vec<f64> {
    p.tensors[name].iter().copied().collect()
}

fn ref_linear(p: &Params, name: &str, x: &Seq) -> Seq {
    let wt = w(p, &format!("{name}.weight"));
    let bias = p
        .tensors
        .get(&format!("{name}.bias"))
        .map(|b| b.iter().copied().collect::<Vec<_>>());
    let i = x[0].len();
    let o = wt.len() / i;
    x.iter()
        .map(|row| {
            (0..o)
                .map(|r| {
                    let dot: f64 = (0..i).map(|c| wt[r * i + c] * row[c]).sum();
                    dot + bias.as_ref().map_or(0.0, |b| b[r])
                })
                .collect()
        })
        .collect()
}

fn ref_norm(p: &Params, name: &str, x: &Seq, kind: NormKind) -> Seq {
    let g = w(p, &format!("{name}.weight"));
    let b = p.tensors.get(&format!("{name}.bias"));
    x.iter()
        .map(|row| {
            let d = row.len() as f64;
            let mean = if kind == NormKind::Layer {
                row.iter().sum::<f64>() / d
            } else {
                0.0
            };
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
            (0..row.len())
                .map(|i| (row[i] - mean) / (var + 1e-5).sqrt() * g[i] + b.map_or(0.0, |b| b[[i]]))
                .collect()
        })
        .collect()
}

/// Rotates head features (i, i + dh/2) of token `pos` by `pos / theta^(2i/dh)`, written as
/// a complex product.
fn ref_rope(x: &mut [f64], pos: usize, theta: f64) {
    let half = x.len() / 2;
    for i in 0..half {
        let angle = pos as f64 * theta.powf(-2.0 * i as f64 / x.len() as f64);
        let (re, im) = (x[i], x[i + half]);
        x[i] = re * angle.cos() - im * angle.sin();
        x[i + half] = re * angle.sin() + im * angle.cos();
    }
}

fn ref_attention(net: &Net, q: &Seq, k: &Seq, v: &Seq) -> Seq {
    let (h, kvh, dh) = net.heads;
    let t = q.len();
    let mut out = vec![vec![0.0; h * dh]; t];
    for head in 0..h {
        let g = head / (h / kvh);
        let part = |x: &Seq, at: usize, pos: usize| -> Vec<f64> {
            let mut s = x[pos][at * dh..(at + 1) * dh].to_vec();
            if let Some(theta) = net.rope {
                ref_rope(&mut s, pos, theta);
            }
            s
        };
        for (i, row) in out.iter_mut().enumerate() {
            let qi = part(q, head, i);
            let seen = if net.causal { i + 1 } else { t };
            let scores: Vec<f64> = (0..seen)
                .map(|j| {
                    let kj = part(k, g, j);
                    qi.iter().zip(&kj).map(|(a, b)| a * b).sum::<f64>() / (dh as f64).sqrt()
                })
                .collect();
            let z: f64 = scores.iter().map(|s| s.exp()).sum();
            for (j, s) in scores.iter().enumerate() {
                for d in 0..dh {
                    row[head * dh + d] += s.exp() / z * v[j][g * dh + d];
                }
            }
        }
    }
    out
}

fn ref_act(a: &Activation, x: f64) -> f64 {
    match a {
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + exec::erf(x / 2f64.sqrt())),
        other => panic!("no reference for {other:?}"),
    }
}

fn plus(a: &Seq, b: &Seq) -> Seq {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(u, v)| u + v).collect())
        .collect()
}

fn ref_block(net: &Net, p: &Params, b: &str, x: &Seq) -> Seq {
    let n = ref_norm(p, &format!("{b}.attention.norm"), x, net.norm);
    let q = ref_linear(p, &format!("{b}.attention.q"), &n);
    let k = ref_linear(p, &format!("{b}.attention.k"), &n);
    let v = ref_linear(p, &format!("{b}.attention.v"), &n);
    let a = ref_attention(net, &q, &k, &v);
    let x = plus(&ref_linear(p, &format!("{b}.attention.o"), &a), x);
    let n = ref_norm(p, &format!("{b}.mlp.norm"), &x, net.norm);
    let act = |s: Seq| -> Seq {
        s.into_iter()
            .map(|r| r.into_iter().map(|v| ref_act(&net.act, v)).collect())
            .collect()
    };
    let y = if net.gated {
        let g = act(ref_linear(p, &format!("{b}.mlp.gate"), &n));
        let u = ref_linear(p, &format!("{b}.mlp.up"), &n);
        let m: Seq = g
            .iter()
            .zip(&u)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).collect())
            .collect();
        ref_linear(p, &format!("{b}.mlp.down"), &m)
    } else {
        let f = act(ref_linear(p, &format!("{b}.mlp.fc1"), &n));
        ref_linear(p, &format!("{b}.mlp.fc2"), &f)
    };
    plus(&y, &x)
}

/// A language model's logits `[T, V]` for one sequence of ids.
fn ref_lm(net: &Net, p: &Params, ids: &[usize], tied: bool) -> Seq {
    let e = w(p, "embed.token.weight");
    let d = p.tensors["embed.token.weight"].shape()[1];
    let mut x: Seq = ids
        .iter()
        .map(|&i| e[i * d..(i + 1) * d].to_vec())
        .collect();
    if let Some(pos) = p.tensors.get("embed.position.weight") {
        for (t, row) in x.iter_mut().enumerate() {
            row.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v += pos[[t, j]]);
        }
    }
    for l in 1..=2 {
        x = ref_block(net, p, &format!("layers_{l}"), &x);
    }
    let x = ref_norm(p, "head.norm", &x, net.norm);
    ref_linear(p, if tied { "embed.token" } else { "head.fc" }, &x)
}

fn ref_vit(net: &Net, p: &Params, img: &[f64]) -> Vec<f64> {
    let (cw, cb) = (w(p, "embed.patch.weight"), w(p, "embed.patch.bias"));
    let mut x: Seq = vec![w(p, "embed.class.weight")];
    for (py, px) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        x.push(
            (0..12)
                .map(|o| {
                    let mut acc = cb[o];
                    for c in 0..3 {
                        for u in 0..4 {
                            for v in 0..4 {
                                let at = (c * 8 + py * 4 + u) * 8 + px * 4 + v;
                                acc += img[at] * cw[((o * 3 + c) * 4 + u) * 4 + v];
                            }
                        }
                    }
                    acc
                })
                .collect(),
        );
    }
    let pos = &p.tensors["embed.position.weight"];
    for (t, row) in x.iter_mut().enumerate() {
        row.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v += pos[[t, j]]);
    }
    let x = ref_block(net, p, "blocks_1", &x);
    let x = ref_norm(p, "head.norm", &x, net.norm);
    ref_linear(p, "head.fc", &vec![x[0].clone()]).remove(0)
}

// ---- the tests ----

fn ids(rows: &[Vec<usize>]) -> ArrayD<f64> {
    let t = rows[0].len();
    let v = rows.iter().flatten().map(|&i| i as f64).collect();
    ArrayD::from_shape_vec(IxDyn(&[rows.len(), t]), v).unwrap()
}

/// `got` (f64 or f32 run) within `tol * max |want|` of `want`.
fn assert_near(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * scale,
            "element {i}: got {a}, want {b} (scale {scale})"
        );
    }
}

/// The network's output on `x`, in f64 and in f32, against the reference `want`.
fn assert_matches(g: &Graph, p: &Params, x: &ArrayD<f64>, want: &[f64]) {
    let y64 = Executor::<f64>::new(g, p)
        .unwrap()
        .forward(x.clone(), Mode::Eval)
        .unwrap();
    let y32 = Executor::<f32>::new(g, p)
        .unwrap()
        .forward(x.mapv(|v| v as f32), Mode::Eval)
        .unwrap();
    assert_near(&y64.iter().copied().collect::<Vec<_>>(), want, 1e-12);
    assert_near(
        &y32.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        want,
        1e-5,
    );
}

#[test]
fn gpt2_shaped_network_matches_the_reference() {
    let (t, vocab) = (6, 50);
    let net = gpt2(t, vocab);
    let p = params::init(&net.g, 3, true);
    // The tied head stores no tensor of its own.
    assert!(!p.tensors.contains_key("head.fc.weight"));
    let seqs = vec![vec![3, 49, 0, 17, 17, 8], vec![21, 5, 30, 2, 44, 9]];
    let want: Vec<f64> = seqs
        .iter()
        .flat_map(|s| ref_lm(&net, &p, s, true))
        .flatten()
        .collect();
    assert_matches(&net.g, &p, &ids(&seqs), &want);
}

#[test]
fn llama_shaped_network_matches_the_reference() {
    let (t, vocab) = (7, 40);
    let net = llama(t, vocab);
    let p = params::init(&net.g, 5, true);
    let seqs = vec![vec![1, 39, 22, 22, 0, 13, 7]];
    let want: Vec<f64> = ref_lm(&net, &p, &seqs[0], false)
        .into_iter()
        .flatten()
        .collect();
    assert_matches(&net.g, &p, &ids(&seqs), &want);
}

#[test]
fn vit_shaped_network_matches_the_reference() {
    let net = vit();
    let p = params::init(&net.g, 7, true);
    let x = exec::random_input(&net.g, 2, 11);
    let imgs: Vec<f64> = x.iter().copied().collect();
    let want: Vec<f64> = imgs
        .chunks(3 * 64)
        .flat_map(|img| ref_vit(&net, &p, img))
        .collect();
    assert_matches(&net.g, &p, &x, &want);
}

#[test]
fn shorter_sequences_give_the_prefix_of_a_causal_model() {
    // Causal attention: the logits of a prefix do not depend on the tokens after it (with
    // learned positions, and through RoPE).
    let cases = [
        (gpt2(6, 50), vec![4, 8, 15, 16, 23, 42], 3),
        (llama(7, 40), vec![1, 2, 3, 4, 5, 6, 7], 2),
    ];
    for (net, seq, cut) in cases {
        let p = params::init(&net.g, 9, true);
        let ex = Executor::<f64>::new(&net.g, &p).unwrap();
        let full = ex
            .forward(ids(std::slice::from_ref(&seq)), Mode::Eval)
            .unwrap();
        let short = ex.forward(ids(&[seq[..cut].to_vec()]), Mode::Eval).unwrap();
        let vocab = full.shape()[2];
        assert_eq!(short.shape(), &[1, cut, vocab]);
        let head: Vec<f64> = full.iter().take(cut * vocab).copied().collect();
        assert_near(&short.iter().copied().collect::<Vec<_>>(), &head, 1e-13);
    }
}

#[test]
fn bad_token_inputs_are_clear_errors() {
    let net = gpt2(6, 50);
    let p = params::init(&net.g, 1, false);
    let ex = Executor::<f64>::new(&net.g, &p).unwrap();
    let cases = [
        (
            ids(&[vec![1, 2, 3], vec![4, 50, 6]]),
            "in the input, token id 50 at sequence 1, position 1 is outside the vocabulary of 50 (ids 0 to 49)",
        ),
        (
            ids(&[vec![1; 7]]),
            "sequences have 7 tokens but the network takes at most 6",
        ),
        (
            ArrayD::zeros(IxDyn(&[2, 3, 4])),
            "takes token ids N x T",
        ),
    ];
    for (x, want) in cases {
        let e = ex.forward(x, Mode::Eval).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn random_inputs_of_a_token_network_are_ids_in_the_vocabulary() {
    let net = gpt2(6, 50);
    let x = exec::random_input(&net.g, 40, 2);
    assert_eq!(x.shape(), &[40, 6]);
    assert!(x
        .iter()
        .all(|&v| v.fract() == 0.0 && (0.0..50.0).contains(&v)));
    // Uniform over the vocabulary: most ids appear among 240 draws.
    let mut seen = [false; 50];
    x.iter().for_each(|&v| seen[v as usize] = true);
    assert!(seen.iter().filter(|&&s| s).count() > 40);
    let p = params::init(&net.g, 1, true);
    let all = Executor::<f64>::new(&net.g, &p)
        .unwrap()
        .forward_all(x, Mode::Eval)
        .unwrap();
    assert!(all.iter().all(|v| v.data.iter().all(|x| x.is_finite())));
}
