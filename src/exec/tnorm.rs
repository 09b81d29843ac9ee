//! Norms over the last axis of token values: layer norm and RMS norm.
//!
//! The statistics of each token are accumulated in f64 (at least the float32 transformers
//! and PyTorch use), then the normalised value is rounded to the run's precision and
//! scaled there, as PyTorch does after its statistics. In f32 the sums run in 16 lanes
//! (a fixed order, so the bits do not depend on the threads) rather than one chain: one
//! chain's additions wait on each other, and GPT-2's 25 norms took 8 ms of a 330 ms
//! forward.

use rayon::prelude::*;

use super::float::Float;
use super::Tensor;

/// Tokens per parallel task (a token's norm is a few hundred operations).
const MIN_TOKENS: usize = 16;

/// PyTorch `nn.LayerNorm(D)`: `(x - mean) / sqrt(var + eps) * weight + bias` per token,
/// with the biased variance; in place.
pub fn layer_norm<T: Float>(
    mut x: Tensor<T>,
    weight: &[T],
    bias: Option<&[T]>,
    eps: f64,
) -> Tensor<T> {
    let d = weight.len();
    if let (Some(xs), Some(w)) = (T::as_f32_mut(&mut x.data), T::as_f32(weight)) {
        let b = bias.map(|b| T::as_f32(b).expect("f32 like the weights"));
        xs.par_chunks_mut(d)
            .with_min_len(MIN_TOKENS)
            .for_each(|token| layer_norm_f32(token, w, b, eps));
        return x;
    }
    x.data
        .par_chunks_mut(d)
        .with_min_len(MIN_TOKENS)
        .for_each(|token| {
            let mean = token.iter().map(|v| v.to_f64()).sum::<f64>() / d as f64;
            let var = token
                .iter()
                .map(|v| (v.to_f64() - mean).powi(2))
                .sum::<f64>()
                / d as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for (i, v) in token.iter_mut().enumerate() {
                let y = T::from_f64((v.to_f64() - mean) * rstd) * weight[i];
                *v = match bias {
                    Some(b) => y + b[i],
                    None => y,
                };
            }
        });
    x
}

/// transformers' `LlamaRMSNorm`: `weight * (x * rsqrt(mean(x^2) + eps))` per token, in
/// place. The statistics are at least float32, as there (an f64 run keeps f64).
pub fn rms_norm<T: Float>(mut x: Tensor<T>, weight: &[T], eps: f64) -> Tensor<T> {
    let d = weight.len();
    if let (Some(xs), Some(w)) = (T::as_f32_mut(&mut x.data), T::as_f32(weight)) {
        xs.par_chunks_mut(d)
            .with_min_len(MIN_TOKENS)
            .for_each(|token| rms_norm_f32(token, w, eps));
        return x;
    }
    x.data
        .par_chunks_mut(d)
        .with_min_len(MIN_TOKENS)
        .for_each(|token| {
            let var = token.iter().map(|v| v.to_f64().powi(2)).sum::<f64>() / d as f64;
            let r = 1.0 / (var + eps).sqrt();
            for (v, &w) in token.iter_mut().zip(weight) {
                *v = w * T::from_f64(v.to_f64() * r);
            }
        });
    x
}

/// Lanes of the f32 sums.
const LANES: usize = 16;

/// `sum f(v)` over a token's values in f64, in [`LANES`] lanes.
#[inline(always)]
fn lane_sum(token: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    crate::cpu::lanes_sum::<LANES, f32>(token, |v| f(v as f64))
}

crate::avx512_twice! {
    /// [`layer_norm`] of one f32 token.
    fn layer_norm_f32(token: &mut [f32], weight: &[f32], bias: Option<&[f32]>, eps: f64) {
        let d = token.len() as f64;
        let mean = lane_sum(token, |v| v) / d;
        let var = lane_sum(token, |v| (v - mean) * (v - mean)) / d;
        let rstd = 1.0 / (var + eps).sqrt();
        let scaled = |v: f32, w: f32| ((v as f64 - mean) * rstd) as f32 * w;
        match bias {
            Some(b) => token
                .iter_mut()
                .zip(weight.iter().zip(b))
                .for_each(|(v, (&w, &b))| *v = scaled(*v, w) + b),
            None => token
                .iter_mut()
                .zip(weight)
                .for_each(|(v, &w)| *v = scaled(*v, w)),
        }
    }
}

crate::avx512_twice! {
    /// [`rms_norm`] of one f32 token.
    fn rms_norm_f32(token: &mut [f32], weight: &[f32], eps: f64) {
        let var = lane_sum(token, |v| v * v) / token.len() as f64;
        let r = 1.0 / (var + eps).sqrt();
        token
            .iter_mut()
            .zip(weight)
            .for_each(|(v, &w)| *v = w * (*v as f64 * r) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, random};
    use super::*;

    fn tokens(n: usize, d: usize, seed: u64) -> Tensor<f64> {
        // Offset and stretched so that the mean and the spread are far from 0 and 1.
        let data = random(n * d, seed).iter().map(|v| 3.0 * v + 1.5).collect();
        Tensor {
            shape: vec![1, n, d],
            data,
        }
    }

    #[test]
    fn layer_norm_matches_two_pass_formula() {
        let (n, d, eps) = (5, 7, 1e-5);
        let x = tokens(n, d, 11);
        let w: Vec<f64> = random(d, 12).iter().map(|v| v + 0.3).collect();
        let b = random(d, 13);
        let got = layer_norm(x.clone(), &w, Some(&b), eps);
        let mut want = Vec::new();
        for tok in x.data.chunks(d) {
            let mean = tok.iter().sum::<f64>() / d as f64;
            let var = tok.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            for i in 0..d {
                want.push((tok[i] - mean) / (var + eps).sqrt() * w[i] + b[i]);
            }
        }
        assert_close(&got.data, &want, 1e-13);
        // Without bias: the same less b.
        let nb = layer_norm(x, &w, None, eps);
        let less: Vec<f64> = want.iter().enumerate().map(|(i, v)| v - b[i % d]).collect();
        assert_close(&nb.data, &less, 1e-13);
    }

    #[test]
    fn rms_norm_matches_llama_formula() {
        let (n, d, eps) = (4, 6, 1e-6);
        let x = tokens(n, d, 21);
        let w: Vec<f64> = random(d, 22).iter().map(|v| 2.0 * v - 0.2).collect();
        let got = rms_norm(x.clone(), &w, eps);
        let mut want = Vec::new();
        for tok in x.data.chunks(d) {
            let ms = tok.iter().map(|v| v * v).sum::<f64>() / d as f64;
            want.extend((0..d).map(|i| w[i] * tok[i] / (ms + eps).sqrt()));
        }
        assert_close(&got.data, &want, 1e-13);
        // RMS norm does not centre: a shifted token gives a different result.
        let mut shifted = x.clone();
        shifted.data[..d].iter_mut().for_each(|v| *v += 1.0);
        let other = rms_norm(shifted, &w, eps);
        assert!((other.data[0] - got.data[0]).abs() > 1e-3);
    }

    #[test]
    fn f32_norms_agree_with_f64() {
        // Whole groups of lanes, a remainder past them, and fewer values than lanes.
        for (i, d) in [64, 70, 9].into_iter().enumerate() {
            let s = 10 * i as u64;
            let n = 3;
            let x = tokens(n, d, 31 + s);
            let w: Vec<f64> = random(d, 32 + s).iter().map(|v| v + 1.1).collect();
            let b = random(d, 33 + s);
            let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let x32 = Tensor {
                shape: x.shape.clone(),
                data: to32(&x.data),
            };
            let agree = |got: Tensor<f32>, want: Tensor<f64>| {
                let up: Vec<f64> = got.data.iter().map(|&v| v as f64).collect();
                assert_close(&up, &want.data, 1e-6);
            };
            agree(
                layer_norm(x32.clone(), &to32(&w), Some(&to32(&b)), 1e-5),
                layer_norm(x.clone(), &w, Some(&b), 1e-5),
            );
            agree(
                layer_norm(x32.clone(), &to32(&w), None, 1e-5),
                layer_norm(x.clone(), &w, None, 1e-5),
            );
            agree(rms_norm(x32, &to32(&w), 1e-5), rms_norm(x, &w, 1e-5));
        }
    }
}
