//! Batch normalisation in eval mode (running statistics) and train mode (batch statistics).

use rayon::prelude::*;

use super::float::Float;
use super::Tensor;

/// The per-channel parameters of a batch norm, already in the run's precision.
pub struct BnParams<T> {
    pub gamma: Vec<T>,
    pub beta: Vec<T>,
    pub mean: Vec<T>,
    pub var: Vec<T>,
    pub eps: f64,
}

/// Eval mode: `(x - running_mean) / sqrt(running_var + eps) * gamma + beta`, in place.
pub fn batch_norm_eval<T: Float>(x: Tensor<T>, bn: &BnParams<T>, relu: bool) -> Tensor<T> {
    let (scale, shift) = eval_affine(bn);
    affine(x, &scale, &shift, relu)
}

/// Eval mode as a per-channel affine map `v * scale + shift` (also used when a conv runs
/// its batch norm in its own epilogue).
pub fn eval_affine<T: Float>(bn: &BnParams<T>) -> (Vec<T>, Vec<T>) {
    (0..bn.gamma.len())
        .map(|c| {
            let scale = bn.gamma[c].to_f64() / (bn.var[c].to_f64() + bn.eps).sqrt();
            let shift = bn.beta[c].to_f64() - bn.mean[c].to_f64() * scale;
            (T::from_f64(scale), T::from_f64(shift))
        })
        .unzip()
}

/// Train mode: normalises with the batch's mean and biased variance over N, H and W, as
/// PyTorch does in the forward pass; running statistics are not updated. Needs more than
/// one value per channel, like PyTorch.
pub fn batch_norm_train<T: Float>(
    x: Tensor<T>,
    bn: &BnParams<T>,
    relu: bool,
) -> Result<Tensor<T>, String> {
    let n = x.shape[0];
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let count = n * inner;
    if count < 2 {
        return Err(format!(
            "batch norm in train mode needs more than one value per channel, but the batch has {n} sample(s) of {inner} value(s) per channel"
        ));
    }
    let data = &x.data;
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..n).map(|i| &data[(i * c + ch) * inner..(i * c + ch + 1) * inner]);
            let sum: f64 = planes.clone().flatten().map(|v| v.to_f64()).sum();
            let mean = sum / count as f64;
            let sq: f64 = planes.flatten().map(|v| (v.to_f64() - mean).powi(2)).sum();
            (mean, sq / count as f64)
        })
        .collect();
    let (scale, shift): (Vec<T>, Vec<T>) = stats
        .iter()
        .enumerate()
        .map(|(ch, &(mean, var))| {
            let scale = bn.gamma[ch].to_f64() / (var + bn.eps).sqrt();
            let shift = bn.beta[ch].to_f64() - mean * scale;
            (T::from_f64(scale), T::from_f64(shift))
        })
        .unzip();
    Ok(affine(x, &scale, &shift, relu))
}

/// `x * scale[c] + shift[c]` for every channel c, in place; with `relu`, also a ReLU in
/// the same pass (the executor fuses a BN whose only reader is a ReLU).
fn affine<T: Float>(mut x: Tensor<T>, scale: &[T], shift: &[T], relu: bool) -> Tensor<T> {
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    x.data.par_chunks_mut(inner.max(1) * c).for_each(|sample| {
        for (ch, plane) in sample.chunks_mut(inner.max(1)).enumerate() {
            let (a, b) = (scale[ch], shift[ch]);
            if relu {
                plane
                    .iter_mut()
                    .for_each(|v| *v = super::act::relu(*v * a + b));
            } else {
                plane.iter_mut().for_each(|v| *v = *v * a + b);
            }
        }
    });
    x
}
