//! The element types the executor runs in (f32 and f64) and their GEMM.

use std::cell::RefCell;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub};

/// A floating-point element type with a fast matrix product.
pub trait Float:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + MulAssign
    + Sum
{
    /// `f32` or `f64`.
    const NAME: &'static str;
    fn zero() -> Self;
    fn one() -> Self;
    fn neg_infinity() -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_finite(self) -> bool;
    fn is_nan(self) -> bool;
    /// `n` zeros; concrete so that the allocator hands out zeroed pages (no memset).
    fn zeros(n: usize) -> Vec<Self>;

    /// Runs `f` with this thread's two scratch buffers (kept between calls, so large
    /// im2col matrices are not allocated, zeroed and faulted in for every image).
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R;

    /// `C = A B + beta C` on strided matrices (matrixmultiply's `sgemm`/`dgemm`).
    ///
    /// # Safety
    /// Every element addressed through the pointers and strides must lie in its buffer,
    /// and `c` must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! float_impl {
    ($t:ty, $name:literal, $gemm:path) => {
        impl Float for $t {
            const NAME: &'static str = $name;
            fn zero() -> Self {
                0.0
            }
            fn one() -> Self {
                1.0
            }
            fn neg_infinity() -> Self {
                <$t>::NEG_INFINITY
            }
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn zeros(n: usize) -> Vec<Self> {
                vec![0.0; n]
            }
            fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R {
                thread_local! {
                    static SCRATCH: RefCell<(Vec<$t>, Vec<$t>)> = const { RefCell::new((Vec::new(), Vec::new())) };
                }
                SCRATCH.with(|s| match s.try_borrow_mut() {
                    Ok(mut s) => {
                        let (a, b) = &mut *s;
                        f(a, b)
                    }
                    // Re-entered on this thread (not done today): use fresh buffers.
                    Err(_) => f(&mut Vec::new(), &mut Vec::new()),
                })
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}

float_impl!(f32, "f32", matrixmultiply::sgemm);
float_impl!(f64, "f64", matrixmultiply::dgemm);

/// `C[m x n] = A[m x k] B[k x n]`, all row-major with leading dimensions `lda`, `ldb`, `ldc`.
/// With `b_transposed`, `b` holds B^T as an `[n x k]` row-major matrix (leading dim `ldb`).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    b_transposed: bool,
    c: &mut [T],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too small");
    if k == 0 {
        for row in 0..m {
            c[row * ldc..row * ldc + n].fill(T::zero());
        }
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "gemm: A too small");
    let (rsb, csb) = if b_transposed {
        assert!(b.len() >= (n - 1) * ldb + k, "gemm: B too small");
        (1, ldb as isize)
    } else {
        assert!(b.len() >= (k - 1) * ldb + n, "gemm: B too small");
        (ldb as isize, 1)
    };
    // SAFETY: the asserts above keep every addressed element inside its slice, and `c` is
    // a unique borrow, so it aliases neither input.
    unsafe {
        T::gemm(
            m,
            k,
            n,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            rsb,
            csb,
            T::zero(),
            c.as_mut_ptr(),
            ldc as isize,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_product_both_layouts() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f64> = (0..m * k).map(|i| i as f64 * 0.5 - 2.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64).sin()).collect();
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c = vec![9.0; m * n];
        let mut ct = vec![9.0; m * n];
        gemm(m, k, n, &a, k, &b, n, false, &mut c, n);
        gemm(m, k, n, &a, k, &bt, k, true, &mut ct, n);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-12);
                assert!((ct[i * n + j] - want).abs() < 1e-12);
            }
        }
    }
}
