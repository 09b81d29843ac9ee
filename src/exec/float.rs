//! The element types the executor runs in (f32 and f64) and their GEMM: the `gemm`
//! crate (pure Rust, runtime-dispatched AVX2/AVX-512/NEON kernels), measured here against
//! matrixmultiply 0.3 on the executor's shapes at 1.1-2.4x in f32 and 1.2-2.4x in f64.
//! In f64 on AVX-512 the product is r2rc's own (gemm64.rs).

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

    /// The slice as f32 when `Self` is f32 (the f32-only kernels), else `None`.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// The slice as f64 when `Self` is f64 (the f64-only kernels), else `None`.
    fn as_f64(s: &[Self]) -> Option<&[f64]>;
    fn as_f64_mut(s: &mut [Self]) -> Option<&mut [f64]>;
}

macro_rules! float_impl {
    ($t:ty, $name:literal, $as_f32:expr, $as_f32_mut:expr, $as_f64:expr, $as_f64_mut:expr) => {
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
            fn as_f32(s: &[Self]) -> Option<&[f32]> {
                $as_f32(s)
            }
            fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32_mut(s)
            }
            fn as_f64(s: &[Self]) -> Option<&[f64]> {
                $as_f64(s)
            }
            fn as_f64_mut(s: &mut [Self]) -> Option<&mut [f64]> {
                $as_f64_mut(s)
            }
        }
    };
}

float_impl!(f32, "f32", Some, Some, |_| None, |_| None);
float_impl!(f64, "f64", |_| None, |_| None, Some, Some);

/// The sizes of one product `C[m x n] = A[m x k] B[k x n]` and the leading dimensions of
/// its row-major operands. With `b_transposed`, `b` holds B^T as an `[n x k]` row-major
/// matrix (leading dim `ldb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub lda: usize,
    pub ldb: usize,
    pub b_transposed: bool,
    pub ldc: usize,
}

impl GemmDims {
    /// Unpadded operands: A `[m x k]`, B `[k x n]`, C `[m x n]`, rows back to back.
    pub fn dense(m: usize, k: usize, n: usize) -> Self {
        GemmDims {
            m,
            k,
            n,
            lda: k,
            ldb: n,
            b_transposed: false,
            ldc: n,
        }
    }

    /// Unpadded operands with B given transposed, as `[n x k]` (a linear layer's weight).
    pub fn dense_b_transposed(m: usize, k: usize, n: usize) -> Self {
        GemmDims {
            ldb: k,
            b_transposed: true,
            ..GemmDims::dense(m, k, n)
        }
    }
}

/// `C = A B` with the sizes and leading dimensions in `d` (see [`GemmDims`]).
pub fn gemm<T: Float>(d: &GemmDims, a: &[T], b: &[T], c: &mut [T]) {
    let &GemmDims {
        m,
        k,
        n,
        lda,
        ldb,
        b_transposed,
        ldc,
    } = d;
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
    let parallelism = parallelism(m, k, n);
    if let (Some(a), Some(b), Some(c), true) = (
        T::as_f64(a),
        T::as_f64(b),
        T::as_f64_mut(c),
        super::gemm64::available(),
    ) {
        let (rsb, csb) = (rsb as usize, csb as usize);
        let d = super::gemm64::Operands {
            m,
            k,
            n,
            lda,
            rsb,
            csb,
            ldc,
        };
        let parallel = !matches!(parallelism, gemm::Parallelism::None);
        super::gemm64::product(&d, a, b, c, parallel);
        return;
    }
    // SAFETY: the asserts above keep every addressed element inside its slice, and `c` is
    // a unique borrow, so it aliases neither input. `read_dst` false: C is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            false,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            csb,
            rsb,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Products below this many multiply-adds run on one thread (splitting them costs more
/// than it saves).
const PARALLEL_MACS: usize = 1 << 20;

/// One thread inside a rayon task (the caller already split the work: images, heads),
/// else every thread of the pool for a large product.
fn parallelism(m: usize, k: usize, n: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if rayon::current_thread_index().is_some() || threads < 2 || m * k * n < PARALLEL_MACS {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
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
        gemm(&GemmDims::dense(m, k, n), &a, &b, &mut c);
        gemm(&GemmDims::dense_b_transposed(m, k, n), &a, &bt, &mut ct);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-12);
                assert!((ct[i * n + j] - want).abs() < 1e-12);
            }
        }
    }
}
