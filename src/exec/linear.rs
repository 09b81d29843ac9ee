//! Fully connected layers: `y = x W^T + b` as one GEMM over the batch (and the tokens).

use super::dense_nt::Packed;
use super::float::{gemm, Float, GemmDims};
use super::Tensor;

/// PyTorch `nn.Linear` over the last axis: `x` is `[N, in]` or `[N, T, in]` (every token a
/// row of one GEMM), `w` is `(out, in)` row-major; the result is `[N, out]` or `[N, T, out]`.
/// In f32, `packed` keeps `w` in the kernel's layout between calls (it must serve this `w`
/// only).
pub fn linear<T: Float>(
    x: &Tensor<T>,
    out_features: usize,
    w: &[T],
    bias: Option<&[T]>,
    packed: &Packed,
) -> Tensor<T> {
    let inf = x.shape.last().copied().unwrap_or(1).max(1);
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("a value has a batch axis") = out_features;
    Tensor {
        shape,
        data: product(&x.data, x.data.len() / inf, out_features, w, bias, packed),
    }
}

/// `rows` rows of `x` times `w^T` (`w` is `(out, in)`), plus `bias` on every row.
fn product<T: Float>(
    x: &[T],
    rows: usize,
    out: usize,
    w: &[T],
    bias: Option<&[T]>,
    packed: &Packed,
) -> Vec<T> {
    let inf = x.len().checked_div(rows).unwrap_or(0);
    let mut y = vec![T::zero(); rows * out];
    if let (Some(x32), Some(w32), Some(y32)) = (T::as_f32(x), T::as_f32(w), T::as_f32_mut(&mut y)) {
        let b32 = bias.map(|b| T::as_f32(b).expect("f32 like the weights"));
        super::dense_nt::linear(x32, w32, b32, y32, rows, inf, out, packed);
        return y;
    }
    gemm(&GemmDims::dense_b_transposed(rows, inf, out), x, w, &mut y);
    if let Some(b) = bias {
        for row in y.chunks_mut(out) {
            row.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assert_close, random};
    use super::*;

    #[test]
    fn linear_over_the_last_axis_transforms_every_token() {
        let (n, t, i, o) = (2, 3, 5, 4);
        let x = Tensor {
            shape: vec![n, t, i],
            data: random(n * t * i, 1),
        };
        let w = random(o * i, 2);
        let b = random(o, 3);
        let y = linear(&x, o, &w, Some(&b), &Packed::default());
        assert_eq!(y.shape, vec![n, t, o]);
        let mut want = Vec::new();
        for tok in x.data.chunks(i) {
            for r in 0..o {
                want.push(b[r] + (0..i).map(|c| w[r * i + c] * tok[c]).sum::<f64>());
            }
        }
        assert_close(&y.data, &want, 1e-14);
        let nb = linear(&x, o, &w, None, &Packed::default());
        let less: Vec<f64> = want.iter().enumerate().map(|(k, v)| v - b[k % o]).collect();
        assert_close(&nb.data, &less, 1e-14);
    }
}
