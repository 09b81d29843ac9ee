//! Fully connected layer: `y = x W^T + b` as one GEMM over the batch.

use super::float::{gemm, Float, GemmDims};
use super::Tensor;

/// `x` is `[N, in]`, `w` is `(out, in)` row-major; the result is `[N, out]`.
pub fn linear<T: Float>(
    x: &Tensor<T>,
    out_features: usize,
    w: &[T],
    bias: Option<&[T]>,
) -> Tensor<T> {
    let n = x.shape[0];
    let inf = x.shape[1..].iter().product::<usize>();
    let mut y = vec![T::zero(); n * out_features];
    gemm(
        &GemmDims::dense_b_transposed(n, inf, out_features),
        &x.data,
        w,
        &mut y,
    );
    if let Some(b) = bias {
        for row in y.chunks_mut(out_features) {
            row.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
        }
    }
    Tensor {
        shape: vec![n, out_features],
        data: y,
    }
}
