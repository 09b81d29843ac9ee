//! Max pooling (pads with -inf), average pooling (counts padded zeros) and global average.

use rayon::prelude::*;

use super::float::Float;
use super::Tensor;
use crate::ir::Pool;

/// `[N, C, H, W]` to `[N, C, OH, OW]`; `max` picks max or average pooling.
pub fn pool2d<T: Float>(x: &Tensor<T>, p: &Pool, max: bool) -> Tensor<T> {
    let [n, c, h, w] = x.dims4();
    let [kh, kw] = p.kernel;
    let (s, pad) = (p.stride, p.padding);
    let oh = (h + 2 * pad - kh) / s + 1;
    let ow = (w + 2 * pad - kw) / s + 1;
    let mut out = vec![T::zero(); n * c * oh * ow];
    // count_include_pad=True: windows never leave the padded input, so always kh*kw.
    let area = T::from_f64((kh * kw) as f64);
    out.par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for oy in 0..oh {
                let y0 = (oy * s) as isize - pad as isize;
                let ys = y0.max(0) as usize..((y0 + kh as isize).min(h as isize)) as usize;
                for ox in 0..ow {
                    let x0 = (ox * s) as isize - pad as isize;
                    let (xa, xb) = (
                        x0.max(0) as usize,
                        ((x0 + kw as isize).min(w as isize)) as usize,
                    );
                    dst[oy * ow + ox] = if max {
                        // Padding is -inf: it never wins, so only real pixels count. NaN
                        // propagates as in PyTorch.
                        let mut m = T::neg_infinity();
                        for y in ys.clone() {
                            for &v in &src[y * w + xa..y * w + xb] {
                                if v > m || v.is_nan() {
                                    m = v;
                                }
                            }
                        }
                        m
                    } else {
                        let mut sum = T::zero();
                        for y in ys.clone() {
                            for &v in &src[y * w + xa..y * w + xb] {
                                sum += v;
                            }
                        }
                        sum / area
                    };
                }
            }
        });
    Tensor {
        shape: vec![n, c, oh, ow],
        data: out,
    }
}

/// Mean over H and W: `[N, C, H, W]` to `[N, C, 1, 1]`.
pub fn global_avg_pool<T: Float>(x: &Tensor<T>) -> Tensor<T> {
    let [n, c, h, w] = x.dims4();
    let data = x
        .data
        .chunks(h * w)
        .map(|plane| T::from_f64(plane.iter().map(|v| v.to_f64()).sum::<f64>() / (h * w) as f64))
        .collect();
    Tensor {
        shape: vec![n, c, 1, 1],
        data,
    }
}
