//! `Y = X W^T + b` in f32 for linear layers over many tokens: the `gemm` crate's kernel,
//! threaded by splitting the outputs into one column block per thread, each block a
//! single-threaded product. Measured against the crate's own threading (which packs the
//! whole right-hand side in a fresh buffer per call, 100 MB for GPT-2's tied head, and
//! splits 768-wide products poorly) on GPT-2 small at 256 tokens, 2 threads: page
//! clearing in the forward pass fell from 8% of the time to under 0.5%.
//!
//! The blocks have a fixed width, whatever the thread count: the crate's blocking, and so
//! the order of the sums, follows a block's width, and a run must give the same bits on
//! one thread as on many. f32 only: the f64 proofs keep today's arithmetic.

use rayon::prelude::*;

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_MACS: usize = 1 << 20;

/// Columns per block: eight 16-lane vectors, so that 768-wide projections make six
/// blocks to share among threads, while the left side is packed once per 128 columns.
const BLOCK: usize = 128;

/// The output as a raw pointer that tasks writing disjoint columns share.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own columns of y only (see `linear`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `y[m x n] = x[m x k] w[n x k]^T (+ bias[n])`, all row-major and dense.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: the bias alone.
        for row in y[..m * n].chunks_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(&b[..n]),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel =
        threads > 1 && rayon::current_thread_index().is_none() && m * k * n >= PARALLEL_MACS;
    let per = BLOCK;
    let out = Out(y.as_mut_ptr());
    let job = |c0: usize| {
        let c1 = (c0 + per).min(n);
        // Through a method, so that the closure captures the Sync wrapper, not its field.
        let out = out.ptr();
        // SAFETY: the asserts above keep rows 0..m, columns c0..c1 of y (leading dim n),
        // of x (m x k) and rows c0..c1 of w inside their slices; blocks write disjoint
        // columns. One thread per product (Parallelism::None).
        unsafe {
            gemm::gemm(
                m,
                c1 - c0,
                k,
                out.add(c0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr().add(c0 * k),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            if let Some(b) = bias {
                for r in 0..m {
                    let row = std::slice::from_raw_parts_mut(out.add(r * n + c0), c1 - c0);
                    row.iter_mut().zip(&b[c0..c1]).for_each(|(v, &bv)| *v += bv);
                }
            }
        }
    };
    let starts = (0..n).step_by(per);
    if parallel {
        starts.collect::<Vec<_>>().into_par_iter().for_each(job);
    } else {
        starts.for_each(job);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::random;
    use super::*;

    fn naive(x: &[f32], w: &[f32], b: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = Vec::with_capacity(m * n);
        for r in 0..m {
            for c in 0..n {
                let s: f64 = (0..k)
                    .map(|p| x[r * k + p] as f64 * w[c * k + p] as f64)
                    .sum();
                y.push(s + b.map_or(0.0, |b| b[c] as f64));
            }
        }
        y
    }

    #[test]
    fn matches_the_plain_product_on_awkward_shapes() {
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        // Edge rows and columns of every size, K below, at and past a vector, one big
        // enough to run in parallel and to take several row chunks.
        for (i, &(m, k, n)) in [
            (1, 1, 1),
            (3, 0, 5),
            (3, 5, 7),
            (4, 16, 6),
            (5, 17, 13),
            (9, 33, 11),
            (7, 100, 25),
            (2, 4096, 300),
            (300, 1030, 37),
        ]
        .iter()
        .enumerate()
        {
            let s = 10 * i as u64;
            let (x, w, b) = (
                f32s(random(m * k, s)),
                f32s(random(n * k, s + 1)),
                f32s(random(n, s + 2)),
            );
            for bias in [Some(&b[..]), None] {
                let mut y = vec![f32::NAN; m * n];
                linear(&x, &w, bias, &mut y, m, k, n);
                let want = naive(&x, &w, bias, m, k, n);
                for (j, (&g, &v)) in y.iter().zip(&want).enumerate() {
                    // f32 accumulation of k terms of size <= 1 (and the bias).
                    let tol = 2.0 * f32::EPSILON as f64 * (k + 1) as f64;
                    assert!((g as f64 - v).abs() <= tol, "{m}x{k}x{n} [{j}]: {g} vs {v}");
                }
            }
        }
    }

    #[test]
    fn one_thread_and_many_give_the_same_bits() {
        // Big enough to split; called from outside any pool it runs on the global pool
        // (every core), inside a one-thread pool on that thread alone.
        let (m, k, n) = (3, 4096, 300);
        let x: Vec<f32> = random(m * k, 7).into_iter().map(|v| v as f32).collect();
        let w: Vec<f32> = random(n * k, 8).into_iter().map(|v| v as f32).collect();
        let mut many = vec![0f32; m * n];
        linear(&x, &w, None, &mut many, m, k, n);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut one = vec![0f32; m * n];
        pool.install(|| linear(&x, &w, None, &mut one, m, k, n));
        assert_eq!(one, many);
    }
}

#[cfg(test)]
mod speed {
    use super::super::float::{gemm, GemmDims};
    use super::*;

    /// GFLOP/s of the general GEMM and of this split on GPT-2 small's shapes, T threads:
    /// `T=2 cargo test --release --lib dense_nt::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gpt2_shapes() {
        let threads = std::env::var("T").map_or(1, |v| v.parse().unwrap());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
        for (m, k, n) in [
            (256, 768, 768),
            (256, 768, 3072),
            (256, 3072, 768),
            (256, 768, 8192),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut y = vec![0f32; m * n];
            let time = |f: &mut dyn FnMut()| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                2.0 * (m * k * n) as f64 * 5.0 / t.elapsed().as_secs_f64() / 1e9
            };
            {
                let b = time(&mut || gemm(&GemmDims::dense_b_transposed(m, k, n), &x, &w, &mut y));
                let c = time(&mut || linear(&x, &w, None, &mut y, m, k, n));
                println!("{m}x{k}x{n}: crate-threaded {b:.1} GFLOP/s, split {c:.1}");
            }
        }
    }
}
