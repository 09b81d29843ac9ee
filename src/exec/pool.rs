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
    let mut out = T::zeros(n * c * oh * ow);
    // count_include_pad=True: windows never leave the padded input, so always kh*kw.
    let area = T::from_f64((kh * kw) as f64);
    let fill = if max { T::neg_infinity() } else { T::zero() };
    out.par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * w))
        .for_each_init(Vec::new, |band, (dst, src)| {
            // NaN must propagate as in PyTorch: such planes take the exact per-window loop
            // (the check has no early exit, so it vectorises).
            if max && src.iter().fold(false, |a, v| a | v.is_nan()) {
                max_with_nan(dst, src, p, [h, w, oh, ow]);
                return;
            }
            // Separable: first each column's max (or sum) over the window's rows into a
            // padded band, then each window's over its columns; padding is -inf for max
            // (it never wins) and 0 for average.
            band.clear();
            band.resize(w + 2 * pad + s, fill);
            for (oy, orow) in dst.chunks_mut(ow).enumerate() {
                band.fill(fill);
                let cols = &mut band[pad..pad + w];
                for ki in 0..kh {
                    let iy = (oy * s + ki) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let srow = &src[iy as usize * w..(iy as usize + 1) * w];
                    if max {
                        for (c, &v) in cols.iter_mut().zip(srow) {
                            *c = if v > *c { v } else { *c };
                        }
                    } else {
                        for (c, &v) in cols.iter_mut().zip(srow) {
                            *c += v;
                        }
                    }
                }
                for (ox, o) in orow.iter_mut().enumerate() {
                    let win = &band[ox * s..ox * s + kw];
                    *o = if max {
                        win.iter().fold(fill, |m, &v| if v > m { v } else { m })
                    } else {
                        win.iter().fold(T::zero(), |a, &v| a + v) / area
                    };
                }
            }
        });
    Tensor {
        shape: vec![n, c, oh, ow],
        data: out,
    }
}

/// Max pooling of one plane that holds a NaN, window by window: a NaN wins, as in PyTorch.
fn max_with_nan<T: Float>(dst: &mut [T], src: &[T], p: &Pool, [h, w, oh, ow]: [usize; 4]) {
    let [kh, kw] = p.kernel;
    let (s, pad) = (p.stride, p.padding);
    for oy in 0..oh {
        for ox in 0..ow {
            let mut m = T::neg_infinity();
            for ki in 0..kh {
                for kj in 0..kw {
                    let iy = (oy * s + ki) as isize - pad as isize;
                    let ix = (ox * s + kj) as isize - pad as isize;
                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                        continue;
                    }
                    let v = src[iy as usize * w + ix as usize];
                    if v > m || v.is_nan() {
                        m = v;
                    }
                }
            }
            dst[oy * ow + ox] = m;
        }
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
