//! Token values in and out: token embedding, learned positions, feature maps as tokens
//! (ViT's patch embedding), the class token and class-token pooling.
//!
//! Token ids travel through the executor as floats (exact in f32 below 2^24, and every
//! vocabulary r2rc reads is far smaller); [`check_tokens`] says which one is not an id.

use rayon::prelude::*;

use super::float::Float;
use super::Tensor;

/// The first value of `ids` that is not a whole number in `0..vocab`, as a sentence naming
/// its sequence and position.
pub fn check_tokens<T: Float>(ids: &Tensor<T>, vocab: usize) -> Result<(), String> {
    let t = ids.shape.get(1).copied().unwrap_or(1).max(1);
    for (at, &id) in ids.data.iter().enumerate() {
        let v = id.to_f64();
        if !(v >= 0.0 && v < vocab as f64 && v.fract() == 0.0) {
            let what = if v.fract() == 0.0 {
                format!("token id {v}")
            } else {
                format!("token id {v} (not a whole number)")
            };
            return Err(format!(
                "{what} at sequence {}, position {} is outside the vocabulary of {vocab} (ids 0 to {})",
                at / t,
                at % t,
                vocab.saturating_sub(1)
            ));
        }
    }
    Ok(())
}

/// `nn.Embedding`: row `id` of `table` (`[V, D]`) for every id of `ids` (`[N, T]`), giving
/// `[N, T, D]`.
pub fn embedding<T: Float>(ids: &Tensor<T>, table: &[T], dim: usize) -> Result<Tensor<T>, String> {
    check_tokens(ids, table.len() / dim)?;
    let mut out = vec![T::zero(); ids.data.len() * dim];
    out.par_chunks_mut(dim)
        .zip(ids.data.par_iter())
        .for_each(|(row, &id)| {
            let id = id.to_f64() as usize;
            row.copy_from_slice(&table[id * dim..(id + 1) * dim]);
        });
    let mut shape = ids.shape.clone();
    shape.push(dim);
    Ok(Tensor { shape, data: out })
}

/// Adds the learned position table (`[T_max, D]`) to `x` (`[N, T, D]`, `T <= T_max`): token
/// t gets row t. In place.
pub fn add_positions<T: Float>(mut x: Tensor<T>, table: &[T]) -> Result<Tensor<T>, String> {
    let (t, d) = (x.shape[1], x.shape[2]);
    if t * d > table.len() {
        return Err(format!(
            "the sequence has {t} tokens but the position table only {}",
            table.len() / d
        ));
    }
    let rows = &table[..t * d];
    x.data.par_chunks_mut(t * d).for_each(|seq| {
        seq.iter_mut().zip(rows).for_each(|(v, &p)| *v += p);
    });
    Ok(x)
}

/// Prepends the learned class token (`[D]`) to every sequence: `[N, T, D]` to `[N, T+1, D]`.
pub fn class_token<T: Float>(x: &Tensor<T>, token: &[T]) -> Tensor<T> {
    let (n, t, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let mut data = Vec::with_capacity(n * (t + 1) * d);
    for seq in x.data.chunks(t * d) {
        data.extend_from_slice(token);
        data.extend_from_slice(seq);
    }
    Tensor {
        shape: vec![n, t + 1, d],
        data,
    }
}

/// A feature map `[N, C, H, W]` as tokens `[N, H*W, C]`, row-major over (H, W):
/// `x.flatten(2).transpose(1, 2)` (after the convolution of a ViT patch embedding).
pub fn to_tokens<T: Float>(x: &Tensor<T>) -> Tensor<T> {
    let [n, d, ph, pw] = x.dims4();
    let p = ph * pw;
    let mut data = vec![T::zero(); n * p * d];
    data.par_chunks_mut(p * d)
        .zip(x.data.par_chunks(d * p))
        .for_each(|(dst, src)| {
            for (ch, plane) in src.chunks(p).enumerate() {
                for (tok, &v) in plane.iter().enumerate() {
                    dst[tok * d + ch] = v;
                }
            }
        });
    Tensor {
        shape: vec![n, p, d],
        data,
    }
}

/// Token `index` of each sequence: `[N, T, D]` to `[N, D]` (ViT's class-token pooling).
pub fn token_pool<T: Float>(x: &Tensor<T>, index: usize) -> Tensor<T> {
    let (n, t, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let data = x
        .data
        .chunks(t * d)
        .flat_map(|seq| seq[index * d..(index + 1) * d].iter().copied())
        .collect();
    Tensor {
        shape: vec![n, d],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, random};
    use super::*;
    use crate::ir::Conv2d;

    fn ids(n: usize, t: usize, v: &[usize]) -> Tensor<f64> {
        Tensor {
            shape: vec![n, t],
            data: v.iter().map(|&i| i as f64).collect(),
        }
    }

    #[test]
    fn embedding_looks_up_rows_and_positions_add() {
        let (vocab, d) = (7, 3);
        let table = random(vocab * d, 1);
        let x = ids(2, 3, &[4, 0, 6, 6, 2, 4]);
        let e = embedding(&x, &table, d).unwrap();
        assert_eq!(e.shape, vec![2, 3, 3]);
        for (k, &id) in [4, 0, 6, 6, 2, 4].iter().enumerate() {
            assert_eq!(e.data[k * d..(k + 1) * d], table[id * d..(id + 1) * d]);
        }
        // A table of 5 positions; sequences of 3 read its first 3 rows.
        let pos = random(5 * d, 2);
        let y = add_positions(e.clone(), &pos).unwrap();
        for k in 0..6 {
            for j in 0..d {
                let want = e.data[k * d + j] + pos[(k % 3) * d + j];
                assert_eq!(y.data[k * d + j], want);
            }
        }
        let long = add_positions(embedding(&ids(1, 6, &[0; 6]), &table, d).unwrap(), &pos);
        assert!(long
            .unwrap_err()
            .contains("6 tokens but the position table only 5"));
    }

    #[test]
    fn out_of_vocabulary_ids_are_named() {
        let table = random(4 * 2, 3);
        let e = embedding(&ids(2, 3, &[0, 1, 2, 3, 4, 1]), &table, 2).unwrap_err();
        assert_eq!(
            e,
            "token id 4 at sequence 1, position 1 is outside the vocabulary of 4 (ids 0 to 3)"
        );
        let frac = Tensor {
            shape: vec![1, 2],
            data: vec![1.0, 2.5],
        };
        let e = check_tokens(&frac, 4).unwrap_err();
        assert!(
            e.contains("2.5 (not a whole number) at sequence 0, position 1"),
            "{e}"
        );
        let neg = Tensor {
            shape: vec![1, 1],
            data: vec![-1.0],
        };
        assert!(check_tokens(&neg, 4).is_err());
    }

    #[test]
    fn patch_embedding_is_a_strided_conv_read_as_tokens() {
        let (n, ci, hw, p, d) = (2, 3, 8, 4, 5);
        let c = Conv2d {
            in_channels: ci,
            out_channels: d,
            kernel: [p, p],
            stride: p,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        };
        let x = Tensor {
            shape: vec![n, ci, hw, hw],
            data: random(n * ci * hw * hw, 4),
        };
        let w = random(d * ci * p * p, 5);
        let b = random(d, 6);
        let y = to_tokens(&super::super::conv::conv2d(&x, &c, &w, Some(&b), None));
        let g = hw / p;
        assert_eq!(y.shape, vec![n, g * g, d]);
        // Token (py, px) of image i, feature o: the dot product of patch (py, px) with
        // filter o, plus its bias.
        let mut want = Vec::new();
        for i in 0..n {
            for py in 0..g {
                for px in 0..g {
                    for o in 0..d {
                        let mut acc = b[o];
                        for ch in 0..ci {
                            for u in 0..p {
                                for v in 0..p {
                                    let xv =
                                        x.data[((i * ci + ch) * hw + py * p + u) * hw + px * p + v];
                                    acc += xv * w[((o * ci + ch) * p + u) * p + v];
                                }
                            }
                        }
                        want.push(acc);
                    }
                }
            }
        }
        assert_close(&y.data, &want, 1e-12);
    }

    #[test]
    fn class_token_prepends_and_pooling_selects_a_token() {
        let (n, t, d) = (2, 3, 4);
        let x = Tensor {
            shape: vec![n, t, d],
            data: random(n * t * d, 7),
        };
        let cls = random(d, 8);
        let y = class_token(&x, &cls);
        assert_eq!(y.shape, vec![n, t + 1, d]);
        for i in 0..n {
            let seq = &y.data[i * (t + 1) * d..(i + 1) * (t + 1) * d];
            assert_eq!(seq[..d], cls[..]);
            assert_eq!(seq[d..], x.data[i * t * d..(i + 1) * t * d]);
        }
        let first = token_pool(&y, 0);
        assert_eq!(first.shape, vec![n, d]);
        assert_eq!(first.data[..d], cls[..]);
        assert_eq!(first.data[d..], cls[..]);
        let second = token_pool(&x, 1);
        assert_eq!(second.data[d..], x.data[(t + 1) * d..(t + 2) * d]);
    }
}
