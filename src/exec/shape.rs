//! Ops that move values without arithmetic on weights: flatten, add, the padding shortcut.

use rayon::prelude::*;

use super::float::Float;
use super::Tensor;
use crate::ir::ShortcutPad;

/// `[N, C, H, W]` to `[N, C*H*W]`, channel-major (the data is already in that order).
pub fn flatten<T: Float>(mut x: Tensor<T>) -> Tensor<T> {
    let n = x.shape[0];
    let f = x.shape[1..].iter().product();
    x.shape = vec![n, f];
    x
}

/// Element-wise sum, accumulated into the first input's buffer; with `relu`, the ReLU
/// that reads it is applied in the same pass.
pub fn add<T: Float>(mut first: Tensor<T>, rest: &[&Tensor<T>], relu: bool) -> Tensor<T> {
    for (k, r) in rest.iter().enumerate() {
        let last = relu && k + 1 == rest.len();
        first
            .data
            .par_chunks_mut(1 << 14)
            .zip(r.data.par_chunks(1 << 14))
            .for_each(|(a, b)| {
                if last {
                    a.iter_mut()
                        .zip(b)
                        .for_each(|(x, &y)| *x = super::act::relu(*x + y));
                } else {
                    a.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
                }
            });
    }
    if relu && rest.is_empty() {
        first
            .data
            .iter_mut()
            .for_each(|v| *v = super::act::relu(*v));
    }
    first
}

/// Element-wise product of two values of one shape (a gated MLP's `act(gate(x)) * up(x)`),
/// into the first input's buffer.
pub fn mul<T: Float>(mut first: Tensor<T>, other: &Tensor<T>) -> Tensor<T> {
    first
        .data
        .par_chunks_mut(1 << 14)
        .zip(other.data.par_chunks(1 << 14))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, &y)| *x *= y));
    first
}

/// Option-A shortcut: `x[:, :, ::s, ::s]`, then zero channels appended at the end.
pub fn shortcut_pad<T: Float>(x: &Tensor<T>, p: &ShortcutPad) -> Tensor<T> {
    let [n, c, h, w] = x.dims4();
    let s = p.stride;
    let (oh, ow) = ((h - 1) / s + 1, (w - 1) / s + 1);
    let co = p.out_channels;
    let mut out = vec![T::zero(); n * co * oh * ow];
    for img in 0..n {
        for ch in 0..c {
            let src = &x.data[(img * c + ch) * h * w..(img * c + ch + 1) * h * w];
            let dst = &mut out[(img * co + ch) * oh * ow..(img * co + ch + 1) * oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    dst[oy * ow + ox] = src[oy * s * w + ox * s];
                }
            }
        }
    }
    Tensor {
        shape: vec![n, co, oh, ow],
        data: out,
    }
}
