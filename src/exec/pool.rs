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
    out.par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(dst, src)| {
            // NaN must propagate as in PyTorch; planes without one take the branch-free max.
            let nan = max && src.iter().any(|v| v.is_nan());
            for (oy, orow) in dst.chunks_mut(ow).enumerate() {
                // Padding is -inf for max (it never wins) and 0 for average.
                orow.fill(if max { T::neg_infinity() } else { T::zero() });
                for ki in 0..kh {
                    let iy = (oy * s + ki) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let srow = &src[iy as usize * w..(iy as usize + 1) * w];
                    for kj in 0..kw {
                        // Output columns whose input column is inside the row: [lo, hi).
                        let off = kj as isize - pad as isize;
                        let lo = (if off < 0 { (-off) as usize } else { 0 }).div_ceil(s);
                        let hi = ((w as isize - off).max(0) as usize).div_ceil(s).min(ow);
                        let cols = lo..hi.max(lo);
                        let at = |ox: usize| srow[((ox * s) as isize + off) as usize];
                        if nan {
                            for ox in cols {
                                let v = at(ox);
                                if v > orow[ox] || v.is_nan() {
                                    orow[ox] = v;
                                }
                            }
                        } else if max {
                            for ox in cols {
                                let (v, m) = (at(ox), orow[ox]);
                                orow[ox] = if v > m { v } else { m };
                            }
                        } else {
                            for ox in cols {
                                orow[ox] += at(ox);
                            }
                        }
                    }
                }
                if !max {
                    orow.iter_mut().for_each(|v| *v = *v / area);
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
