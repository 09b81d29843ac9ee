//! Multi-head scaled dot-product attention with grouped-query heads, an optional causal
//! mask and rotary position embeddings (RoPE) as Hugging Face's Llama applies them.
//!
//! Values are `[N, T, width]` (batch, tokens, features). The projections are linear layers
//! over the last axis (`linear::linear_last`); this file takes their outputs.

use rayon::prelude::*;

use super::float::{gemm, Float, GemmDims};
use super::Tensor;

/// Query rows per block of a causal f32 attention.
const CAUSAL_ROWS: usize = 64;

/// The head layout of one attention: `heads` query heads of `head_dim` features read
/// `kv_heads` key/value heads (query head i reads kv head `i / (heads / kv_heads)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Token i attends to tokens 0..=i only.
    pub causal: bool,
    /// RoPE's base theta, when the queries and keys are rotated.
    pub rope: Option<f64>,
}

/// Hugging Face's `LlamaRotaryEmbedding` for positions `0..t`: `inv_freq[i] = 1 /
/// theta^(2i/dh)`, angles `pos * inv_freq` concatenated twice, and their cos and sin, each
/// `[t, dh]`. Every step is rounded to `T` as transformers computes it in float32
/// (`arange / dim`, the power, the reciprocal, the product), so an f32 run rotates by the
/// same angles; in f64 it is the exact formula.
pub fn rope_tables<T: Float>(t: usize, dh: usize, theta: f64) -> (Vec<T>, Vec<T>) {
    let round = |v: f64| T::from_f64(v).to_f64();
    let half = dh / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let exponent = round(round((2 * i) as f64) / round(dh as f64));
            round(1.0 / round(round(theta).powf(exponent)))
        })
        .collect();
    let mut cos = Vec::with_capacity(t * dh);
    let mut sin = Vec::with_capacity(t * dh);
    for pos in 0..t {
        for _ in 0..2 {
            for &f in &inv_freq {
                let angle = round(pos as f64 * f);
                cos.push(T::from_f64(angle.cos()));
                sin.push(T::from_f64(angle.sin()));
            }
        }
    }
    (cos, sin)
}

/// Rotates every head of `x` (`[N, T, heads * dh]`) in place: `x * cos + rotate_half(x) *
/// sin` per head, with `rotate_half([x1, x2]) = [-x2, x1]` (halves of the head's features).
pub fn apply_rope<T: Float>(x: &mut Tensor<T>, dh: usize, cos: &[T], sin: &[T]) {
    let t = x.shape[1];
    let width = x.shape[2];
    let half = dh / 2;
    x.data
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(row, token)| {
            let pos = row % t;
            let (c, s) = (
                &cos[pos * dh..(pos + 1) * dh],
                &sin[pos * dh..(pos + 1) * dh],
            );
            for head in token.chunks_mut(dh) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * c[i] + (-b) * s[i];
                    x2[i] = b * c[half + i] + a * s[half + i];
                }
            }
        });
}

/// `softmax(q k^T / sqrt(dh)) v` per head, with the causal mask and RoPE of `h`. `q` is
/// `[N, T, heads * dh]`, `k` and `v` `[N, T, kv_heads * dh]`; the result is `[N, T, heads *
/// dh]` with the heads side by side (ready for the output projection).
pub fn attention<T: Float>(
    mut q: Tensor<T>,
    mut k: Tensor<T>,
    v: &Tensor<T>,
    h: &Heads,
) -> Result<Tensor<T>, String> {
    let (heads, kvh, dh) = (h.heads, h.kv_heads, h.head_dim);
    let [n, t] = [q.shape[0], q.shape[1]];
    let width = heads * dh;
    let kv_width = kvh * dh;
    if kvh == 0 || heads % kvh != 0 {
        return Err(format!(
            "{heads} query heads cannot share {kvh} key/value heads evenly"
        ));
    }
    if q.shape != [n, t, width] || k.shape != [n, t, kv_width] || v.shape != k.shape {
        return Err(format!(
            "attention with {heads} heads and {kvh} kv heads of {dh} features needs queries \
             N x T x {width} and keys and values N x T x {kv_width}, but got {:?}, {:?} and {:?}",
            q.shape, k.shape, v.shape
        ));
    }
    if let Some(theta) = h.rope {
        if dh % 2 != 0 {
            return Err(format!("RoPE needs an even head dimension, not {dh}"));
        }
        let (cos, sin) = rope_tables::<T>(t, dh, theta);
        apply_rope(&mut q, dh, &cos, &sin);
        apply_rope(&mut k, dh, &cos, &sin);
    }
    let group = heads / kvh;
    let root = T::from_f64((dh as f64).sqrt());
    // In f32 under a causal mask, queries go in blocks of `CAUSAL_ROWS` rows that score
    // only the keys their last row sees (5/8 of the products at 256 tokens). f64 keeps one
    // block of every key, the proofs' arithmetic.
    let blocked = h.causal && T::as_f32(&q.data).is_some();
    let step = if blocked { CAUSAL_ROWS } else { t.max(1) };
    // One task per (sample, head): its [T, dh] output, placed afterwards.
    let task = |job: usize, scores: &mut Vec<T>| -> Vec<T> {
        let (b, head) = (job / heads, job % heads);
        let kv = head / group;
        let ks = &k.data[b * t * kv_width + kv * dh..];
        let vs = &v.data[b * t * kv_width + kv * dh..];
        let mut out = vec![T::zero(); t * dh];
        for i0 in (0..t).step_by(step) {
            let i1 = (i0 + step).min(t);
            let cols = if blocked { i1 } else { t };
            let qs = &q.data[(b * t + i0) * width + head * dh..];
            scores.resize((i1 - i0) * cols, T::zero());
            let qk = GemmDims {
                m: i1 - i0,
                k: dh,
                n: cols,
                lda: width,
                ldb: kv_width,
                b_transposed: true,
                ldc: cols,
            };
            gemm(&qk, qs, ks, scores);
            for (r, row) in scores.chunks_mut(cols).enumerate() {
                let seen = if h.causal { i0 + r + 1 } else { t };
                match T::as_f32_mut(&mut row[..seen]) {
                    Some(r) => super::fastmath::softmax_row(r, 1.0 / root.to_f64() as f32),
                    None => softmax_row(&mut row[..seen], root),
                }
                row[seen..].fill(T::zero());
            }
            let pv = GemmDims {
                m: i1 - i0,
                k: cols,
                n: dh,
                lda: cols,
                ldb: kv_width,
                b_transposed: false,
                ldc: dh,
            };
            gemm(&pv, scores, vs, &mut out[i0 * dh..]);
        }
        out
    };
    let jobs = n * heads;
    let parts: Vec<Vec<T>> = if super::parallel_images(jobs) {
        (0..jobs)
            .into_par_iter()
            .map(|j| T::with_scratch(|s, _| task(j, s)))
            .collect()
    } else {
        T::with_scratch(|s, _| (0..jobs).map(|j| task(j, s)).collect())
    };
    let mut out = vec![T::zero(); n * t * width];
    for (job, part) in parts.iter().enumerate() {
        let (b, head) = (job / heads, job % heads);
        for (i, src) in part.chunks(dh).enumerate() {
            let at = (b * t + i) * width + head * dh;
            out[at..at + dh].copy_from_slice(src);
        }
    }
    Ok(Tensor {
        shape: vec![n, t, width],
        data: out,
    })
}

/// `softmax(row / root)` in place, subtracting the row's maximum before `exp` so that no
/// score overflows (as PyTorch's softmax does).
fn softmax_row<T: Float>(row: &mut [T], root: T) {
    row.iter_mut().for_each(|s| *s = *s / root);
    let max = row
        .iter()
        .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
    let mut sum = T::zero();
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    row.iter_mut().for_each(|s| *s = *s / sum);
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, random};
    use super::*;

    /// Attention written out with loops, from the formula, in f64.
    fn naive(q: &[f64], k: &[f64], v: &[f64], n: usize, t: usize, h: &Heads) -> Vec<f64> {
        let (hs, kvh, dh) = (h.heads, h.kv_heads, h.head_dim);
        let mut out = vec![0.0; n * t * hs * dh];
        for b in 0..n {
            for head in 0..hs {
                let g = head * kvh / hs;
                let qa = |i: usize, d: usize| q[(b * t + i) * hs * dh + head * dh + d];
                let ka = |j: usize, d: usize| k[(b * t + j) * kvh * dh + g * dh + d];
                let va = |j: usize, d: usize| v[(b * t + j) * kvh * dh + g * dh + d];
                for i in 0..t {
                    let s: Vec<f64> = (0..t)
                        .map(|j| {
                            if h.causal && j > i {
                                f64::NEG_INFINITY
                            } else {
                                (0..dh).map(|d| qa(i, d) * ka(j, d)).sum::<f64>()
                                    / (dh as f64).sqrt()
                            }
                        })
                        .collect();
                    let z: f64 = s.iter().map(|x| x.exp()).sum();
                    for d in 0..dh {
                        out[(b * t + i) * hs * dh + head * dh + d] =
                            (0..t).map(|j| s[j].exp() / z * va(j, d)).sum();
                    }
                }
            }
        }
        out
    }

    /// RoPE from its definition: pairs (i, i + dh/2) rotated by pos / theta^(2i/dh).
    fn naive_rope(x: &[f64], t: usize, dh: usize, theta: f64) -> Vec<f64> {
        let mut y = x.to_vec();
        let half = dh / 2;
        // Rows of one token are contiguous: token index = element / width.
        let width = x.len() / t;
        for (e, out) in y.iter_mut().enumerate() {
            let pos = (e / width) as f64;
            let d = e % width % dh;
            let base = e - d;
            let i = d % half;
            let angle = pos / theta.powf(2.0 * i as f64 / dh as f64);
            let (c, s) = (angle.cos(), angle.sin());
            *out = if d < half {
                x[base + i] * c - x[base + half + i] * s
            } else {
                x[base + half + i] * c + x[base + i] * s
            };
        }
        y
    }

    fn tensor(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor {
            shape: shape.to_vec(),
            data: random(shape.iter().product(), seed),
        }
    }

    /// `heads` = [query heads, kv heads, head dim]; random q, k, v for `n` sequences of `t`
    /// tokens, seeded from `seed`.
    fn case(
        [heads, kv_heads, head_dim]: [usize; 3],
        causal: bool,
        rope: Option<f64>,
        [n, t]: [usize; 2],
        seed: u64,
    ) -> (Heads, Tensor<f64>, Tensor<f64>, Tensor<f64>) {
        let h = Heads {
            heads,
            kv_heads,
            head_dim,
            causal,
            rope,
        };
        let q = tensor(&[n, t, heads * head_dim], seed);
        let k = tensor(&[n, t, kv_heads * head_dim], seed + 1);
        let v = tensor(&[n, t, kv_heads * head_dim], seed + 2);
        (h, q, k, v)
    }

    #[test]
    fn grouped_query_attention_matches_loops() {
        for (causal, rope) in [(false, None), (true, None), (true, Some(500.0))] {
            let (n, t) = (2, 5);
            let (h, q, k, v) = case([6, 2, 4], causal, rope, [n, t], 1);
            // RoPE by its formula, then attention by loops.
            let turn = |x: &[f64], w: usize| -> Vec<f64> {
                match rope {
                    Some(theta) => x
                        .chunks(t * w)
                        .flat_map(|s| naive_rope(s, t, 4, theta))
                        .collect(),
                    None => x.to_vec(),
                }
            };
            let want = naive(&turn(&q.data, 24), &turn(&k.data, 8), &v.data, n, t, &h);
            let got = attention(q, k, &v, &h).unwrap();
            assert_eq!(got.shape, vec![n, t, 24]);
            assert_close(&got.data, &want, 1e-12);
        }
    }

    #[test]
    fn causal_mask_hides_later_tokens() {
        let (h, q, k, v) = case([2, 2, 4], true, Some(10000.0), [1, 4], 4);
        let before = attention(q.clone(), k.clone(), &v, &h).unwrap();
        // Changing the last token's key and value leaves every earlier output alone and
        // changes the last one.
        let (mut k2, mut v2) = (k.clone(), v.clone());
        k2.data[24..].iter_mut().for_each(|x| *x += 0.75);
        v2.data[24..].iter_mut().for_each(|x| *x -= 0.5);
        let after = attention(q, k2, &v2, &h).unwrap();
        assert_eq!(before.data[..24], after.data[..24]);
        assert!(before.data[24..]
            .iter()
            .zip(&after.data[24..])
            .all(|(a, b)| (a - b).abs() > 1e-6));
    }

    #[test]
    fn rope_matches_the_rotation_formula_and_hf_tables() {
        let (t, dh, theta) = (7, 8, 500.0);
        let x = tensor(&[2, t, 3 * dh], 7);
        let (cos, sin) = rope_tables::<f64>(t, dh, theta);
        // The table itself: row pos, column j, angle pos / theta^(2 (j mod dh/2) / dh).
        for pos in 0..t {
            for j in 0..dh {
                let angle = pos as f64 / theta.powf((2 * (j % (dh / 2))) as f64 / dh as f64);
                assert!((cos[pos * dh + j] - angle.cos()).abs() < 1e-14);
                assert!((sin[pos * dh + j] - angle.sin()).abs() < 1e-14);
            }
        }
        let mut y = x.clone();
        apply_rope(&mut y, dh, &cos, &sin);
        let want: Vec<f64> = x
            .data
            .chunks(t * 3 * dh)
            .flat_map(|sample| naive_rope(sample, t, dh, theta))
            .collect();
        assert_close(&y.data, &want, 1e-13);
        // A rotation keeps each pair's length.
        let pair = |v: &[f64], i: usize| v[i].hypot(v[i + dh / 2]);
        for e in (0..x.data.len()).filter(|e| e % dh < dh / 2) {
            assert!((pair(&x.data, e) - pair(&y.data, e)).abs() < 1e-12);
        }
    }

    #[test]
    fn rope_scores_depend_only_on_relative_position() {
        // <R(m) q, R(n) k> is a function of m - n: shifting both tokens by the same
        // offset leaves the score unchanged.
        let (t, dh) = (9, 6);
        let (cos, sin) = rope_tables::<f64>(t, dh, 10000.0);
        let (q, k) = (random(dh, 8), random(dh, 9));
        let at = |x: &[f64], pos: usize| {
            let mut v = Tensor {
                shape: vec![1, t, dh],
                data: vec![0.0; t * dh],
            };
            v.data[pos * dh..(pos + 1) * dh].copy_from_slice(x);
            apply_rope(&mut v, dh, &cos, &sin);
            v.data[pos * dh..(pos + 1) * dh].to_vec()
        };
        let score = |m: usize, n: usize| -> f64 {
            at(&q, m).iter().zip(at(&k, n)).map(|(a, b)| a * b).sum()
        };
        for (m, n, shift) in [(3, 1, 4), (0, 5, 3), (2, 2, 6)] {
            assert!((score(m, n) - score(m + shift, n + shift)).abs() < 1e-12);
        }
        assert!((score(3, 1) - score(1, 3)).abs() > 1e-6);
    }

    #[test]
    fn rope_tables_in_f32_round_like_float32() {
        // Position 2047 at inv_freq 1: the angle is exact; at the next frequency the f32
        // product differs from the f64 one, as in transformers.
        let (cos, _) = rope_tables::<f32>(2048, 4, 10000.0);
        let f = (1.0f32 / 10000f32.powf(0.5)) as f64;
        let angle = (2047.0 * f) as f32 as f64;
        assert_eq!(cos[2047 * 4 + 1], angle.cos() as f32);
        assert_eq!(cos[2047 * 4], 2047f64.cos() as f32);
    }

    /// Attention in f32 on the f64 case's values rounded, against f64.
    fn f32_agrees_with_f64(case: (Heads, Tensor<f64>, Tensor<f64>, Tensor<f64>)) {
        let (h, q, k, v) = case;
        let want = attention(q.clone(), k.clone(), &v, &h).unwrap();
        let down = |x: &Tensor<f64>| Tensor {
            shape: x.shape.clone(),
            data: x.data.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
        };
        let got = attention(down(&q), down(&k), &down(&v), &h).unwrap();
        let up: Vec<f64> = got.data.iter().map(|&v| v as f64).collect();
        assert_close(&up, &want.data, 1e-5);
    }

    #[test]
    fn f32_attention_agrees_with_f64() {
        f32_agrees_with_f64(case([4, 1, 8], true, Some(10000.0), [2, 6], 10));
    }

    #[test]
    fn causal_f32_in_row_blocks_agrees_with_f64() {
        // Past one and several blocks of rows (and not a multiple of them), one token,
        // an odd head dim, shared kv heads.
        for (i, &(heads, t)) in [([3, 1, 5], 1), ([2, 2, 7], 64), ([4, 2, 6], 150)]
            .iter()
            .enumerate()
        {
            f32_agrees_with_f64(case(heads, true, None, [2, t], 20 + 3 * i as u64));
        }
    }

    #[test]
    fn softmax_survives_huge_scores() {
        let mut row = vec![1000.0, 999.0, -1e300];
        softmax_row(&mut row, 1.0);
        let e = (-1.0f64).exp();
        assert_close(&row, &[1.0 / (1.0 + e), e / (1.0 + e), 0.0], 1e-15);
    }

    #[test]
    fn uneven_groups_are_refused() {
        let (h, q, k, v) = case([3, 2, 2], false, None, [1, 2], 1);
        let e = attention(q, k, &v, &h).unwrap_err();
        assert!(e.contains("3 query heads cannot share 2"), "{e}");
    }
}
