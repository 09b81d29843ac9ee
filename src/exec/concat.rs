//! Concatenation along the channel axis (`torch.cat(xs, 1)`), DenseNet's join.

use rayon::prelude::*;

use super::float::Float;
use super::Tensor;

/// `[N, C0, H, W]`, `[N, C1, H, W]`... to `[N, C0 + C1 + ..., H, W]`, inputs in port
/// order. In NCHW each image's channels are contiguous, so every image of the output is
/// its inputs' image blocks one after another.
pub fn concat<T: Float>(inputs: &[&Tensor<T>]) -> Result<Tensor<T>, String> {
    let first = inputs.first().ok_or("a concatenation needs inputs")?;
    let n = first.shape[0];
    let rest = &first.shape[2..];
    let mut channels = 0;
    for x in inputs {
        if x.shape.len() != first.shape.len() || x.shape[0] != n || x.shape[2..] != *rest {
            return Err(format!(
                "cannot concatenate values of shapes {:?} and {:?} along the channels",
                first.shape, x.shape
            ));
        }
        channels += x.shape[1];
    }
    let pixels: usize = rest.iter().product();
    let per_image = channels * pixels;
    let mut data = T::zeros(n * per_image);
    if per_image > 0 {
        data.par_chunks_mut(per_image)
            .enumerate()
            .for_each(|(img, out)| {
                let mut at = 0;
                for x in inputs {
                    let len = x.shape[1] * pixels;
                    out[at..at + len].copy_from_slice(&x.data[img * len..(img + 1) * len]);
                    at += len;
                }
            });
    }
    let mut shape = vec![n, channels];
    shape.extend_from_slice(rest);
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::testutil::random;

    fn tensor<T: Float>(shape: &[usize], seed: u64) -> Tensor<T> {
        let len = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: random(len, seed).into_iter().map(T::from_f64).collect(),
        }
    }

    /// Element (img, ch, y, x) of the output is element (img, ch - offset, y, x) of the
    /// input whose channels cover `ch`, checked index by index (f32 and f64).
    fn check<T: Float>() {
        let a: Tensor<T> = tensor(&[3, 2, 4, 5], 1);
        let b: Tensor<T> = tensor(&[3, 3, 4, 5], 2);
        let c: Tensor<T> = tensor(&[3, 1, 4, 5], 3);
        let out = concat(&[&a, &b, &c]).unwrap();
        assert_eq!(out.shape, vec![3, 6, 4, 5]);
        for img in 0..3 {
            for ch in 0..6 {
                let (src, k) = match ch {
                    0..=1 => (&a, ch),
                    2..=4 => (&b, ch - 2),
                    _ => (&c, ch - 5),
                };
                let cs = src.shape[1];
                for p in 0..20 {
                    assert_eq!(
                        out.data[(img * 6 + ch) * 20 + p],
                        src.data[(img * cs + k) * 20 + p]
                    );
                }
            }
        }
    }

    #[test]
    fn stacks_channels_image_by_image() {
        check::<f32>();
        check::<f64>();
    }

    #[test]
    fn refuses_maps_of_different_sizes() {
        let a: Tensor<f64> = tensor(&[2, 2, 4, 4], 1);
        let b: Tensor<f64> = tensor(&[2, 2, 4, 5], 2);
        let e = concat(&[&a, &b]).unwrap_err();
        assert!(e.contains("[2, 2, 4, 4] and [2, 2, 4, 5]"), "{e}");
    }
}
