//! `Y = X W^T + b` in f32 for linear layers over many tokens.
//!
//! Where AVX-512 is present: a kernel of this file. The weight is packed once per executor
//! into panels of `NR` output columns laid out `[k][NR]` (so a row of a panel is three
//! vectors), the left side once per call into panels of `MR` rows laid out `[k][MR]`; an
//! `MR x NR` tile keeps its 24 sums in registers over a chunk of `KC` steps (its left panel
//! in L1, the right panels of the task in L2). Threads take blocks of `GROUP` panels.
//! Every output is one chain of fused multiply-adds over k in order, then the bias, so the
//! bits do not depend on the blocking or on the thread count.
//!
//! Elsewhere: the `gemm` crate's kernel, threaded by splitting the outputs into column
//! blocks of a fixed width (the crate's blocking, and so the order of the sums, follows a
//! block's width, and a run must give the same bits on one thread as on many), each block
//! a single-threaded product (the crate's own threading packs the whole right-hand side in
//! a fresh buffer per call, 100 MB for GPT-2's tied head).
//!
//! f32 only: the f64 proofs keep today's arithmetic.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_MACS: usize = 1 << 20;

/// Columns per block of the `gemm` crate path: eight 16-lane vectors, so that 768-wide
/// projections make six blocks to share among threads.
const BLOCK: usize = 128;

/// Rows of a tile: 8 rows times 3 vectors are 24 sums, leaving registers for the three
/// right-hand vectors and a broadcast.
const MR: usize = 8;
/// Columns of a tile and of a packed weight panel.
const NR: usize = 48;
/// Steps of k per pass over a tile: a left panel chunk of 8 KB stays in L1, the `GROUP`
/// right panel chunks of a task (192 KB) in L2.
const KC: usize = 256;
/// Weight panels per task.
const GROUP: usize = 4;

/// A layer's weight packed for the AVX-512 kernel, made on first use and kept with the
/// executor.
#[derive(Default)]
pub struct Packed(OnceLock<PackedW>);

struct PackedW {
    /// Panel j, step p, column c at `(j * k + p) * NR + c`: `w[j * NR + c][p]`, zero past n.
    data: Vec<f32>,
    n: usize,
    k: usize,
}

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

use crate::cpu::avx512;

/// `y[m x n] = x[m x k] w[n x k]^T (+ bias[n])`, all row-major and dense. `packed` holds
/// (or receives) `w` in the kernel's layout; it must belong to this `w` only.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    packed: &Packed,
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
    let parallel = rayon::current_num_threads() > 1
        && rayon::current_thread_index().is_none()
        && m * k * n >= PARALLEL_MACS;
    if avx512() {
        let p = packed.0.get_or_init(|| pack_weight(w, n, k, parallel));
        if p.n == n && p.k == k {
            tiled(x, &p.data, bias, y, m, k, n, parallel);
        } else {
            // A cache made for another shape (not done by the executor): pack afresh.
            let p = pack_weight(w, n, k, parallel);
            tiled(x, &p.data, bias, y, m, k, n, parallel);
        }
        return;
    }
    crate_split(x, w, bias, y, m, k, n, parallel);
}

/// `w` (`n x k`) as panels of `NR` columns, `[k][NR]` each, zero past column n.
fn pack_weight(w: &[f32], n: usize, k: usize, parallel: bool) -> PackedW {
    let panels = n.div_ceil(NR);
    let mut data = vec![0f32; panels * k * NR];
    let one = |(j, panel): (usize, &mut [f32])| {
        let cols = NR.min(n - j * NR);
        for c in 0..cols {
            let row = &w[(j * NR + c) * k..(j * NR + c + 1) * k];
            for (p, &v) in row.iter().enumerate() {
                panel[p * NR + c] = v;
            }
        }
    };
    if parallel {
        data.par_chunks_mut(k * NR).enumerate().for_each(one);
    } else {
        data.chunks_mut(k * NR).enumerate().for_each(one);
    }
    PackedW { data, n, k }
}

/// `x` (`m x k`) as panels of `MR` rows, `[k][MR]` each, zero past row m, into `xp`
/// (reused between calls: a fresh buffer per call cost page faults).
fn pack_left(xp: &mut Vec<f32>, x: &[f32], m: usize, k: usize, parallel: bool) {
    let len = m.div_ceil(MR) * k * MR;
    if xp.len() < len {
        xp.resize(len, 0.0);
    }
    let one = |(i, panel): (usize, &mut [f32])| {
        let rows = MR.min(m - i * MR);
        let src = &x[i * MR * k..(i * MR + rows) * k];
        // Whole 8 x 8 blocks by register transposes (element by element, the packing
        // took 2-6% of a GPT-2 forward), the rest element by element.
        let done = if rows == MR && avx512() {
            // SAFETY: `src` holds MR rows of k values and `panel` k * MR values; AVX-512
            // implies AVX.
            unsafe { x86::pack_rows(src.as_ptr(), k, panel.as_mut_ptr()) }
        } else {
            0
        };
        for (p, dst) in panel.chunks_exact_mut(MR).enumerate().skip(done) {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = if r < rows { src[r * k + p] } else { 0.0 };
            }
        }
    };
    if parallel {
        xp[..len].par_chunks_mut(k * MR).enumerate().for_each(one);
    } else {
        xp[..len].chunks_mut(k * MR).enumerate().for_each(one);
    }
}

thread_local! {
    /// The packed left side of the calling thread's last product.
    static LEFT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The AVX-512 product on packed operands: tasks of `GROUP` weight panels.
#[allow(clippy::too_many_arguments)]
fn tiled(
    x: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    parallel: bool,
) {
    let mut xp = LEFT.with(|c| c.take());
    pack_left(&mut xp, x, m, k, parallel);
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    assert!(xp.len() >= mp * k * MR && wp.len() >= np * k * NR);
    let out = Out(y.as_mut_ptr());
    let job = |j0: usize| {
        let out = out.ptr();
        let j1 = (j0 + GROUP).min(np);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let last = p0 + kc == k;
            for i in 0..mp {
                let rows = MR.min(m - i * MR);
                for j in j0..j1 {
                    let cols = NR.min(n - j * NR);
                    // SAFETY: panel i of xp and j of wp hold k steps each (asserted above);
                    // the tile covers rows i*MR.. (< m) and columns j*NR.. (< n) of y, and
                    // tasks own disjoint panels j.
                    unsafe {
                        x86::tile(
                            rows,
                            kc,
                            xp.as_ptr().add((i * k + p0) * MR),
                            wp.as_ptr().add((j * k + p0) * NR),
                            out.add(i * MR * n + j * NR),
                            n,
                            cols,
                            p0 == 0,
                            bias.filter(|_| last).map(|b| b[j * NR..].as_ptr()),
                        );
                    }
                }
            }
        }
    };
    tasks((0..np).step_by(GROUP), parallel, job);
    LEFT.with(|c| c.replace(xp));
}

/// Runs `job` on every start, on the pool's threads when `parallel`.
fn tasks(starts: impl Iterator<Item = usize>, parallel: bool, job: impl Fn(usize) + Send + Sync) {
    if parallel {
        starts.collect::<Vec<_>>().into_par_iter().for_each(job);
    } else {
        starts.for_each(job);
    }
}

/// The gemm crate's kernel on column blocks of `BLOCK`, one single-threaded product each.
#[allow(clippy::too_many_arguments)]
fn crate_split(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    parallel: bool,
) {
    let out = Out(y.as_mut_ptr());
    let job = |c0: usize| {
        let c1 = (c0 + BLOCK).min(n);
        // Through a method, so that the closure captures the Sync wrapper, not its field.
        let out = out.ptr();
        // SAFETY: the asserts of `linear` keep rows 0..m, columns c0..c1 of y (leading
        // dim n), of x (m x k) and rows c0..c1 of w inside their slices; blocks write
        // disjoint columns. One thread per product (Parallelism::None).
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
    tasks((0..n).step_by(BLOCK), parallel, job);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Vectors per tile row.
    const NV: usize = NR / 16;

    /// One tile: `c[r][..cols] = (first ? 0 : c[r][..cols]) + sum_p a[p][r] b[p][..]`,
    /// then `+ bias[..cols]` when given, for rows `r < rows` (1..=MR).
    ///
    /// # Safety
    /// AVX-512F present; `a` holds `kc * MR`, `b` `kc * NR` values; rows `< rows` of `c`
    /// (leading dim `ldc`) and `bias` hold `cols` (<= NR) values.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        rows: usize,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        first: bool,
        bias: Option<*const f32>,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match rows {
                8 => tile_r::<8>(kc, a, b, c, ldc, cols, first, bias),
                7 => tile_r::<7>(kc, a, b, c, ldc, cols, first, bias),
                6 => tile_r::<6>(kc, a, b, c, ldc, cols, first, bias),
                5 => tile_r::<5>(kc, a, b, c, ldc, cols, first, bias),
                4 => tile_r::<4>(kc, a, b, c, ldc, cols, first, bias),
                3 => tile_r::<3>(kc, a, b, c, ldc, cols, first, bias),
                2 => tile_r::<2>(kc, a, b, c, ldc, cols, first, bias),
                _ => tile_r::<1>(kc, a, b, c, ldc, cols, first, bias),
            }
        }
    }

    /// Steps `p` of `MR` rows of `src` (leading dim `k`) as `dst[p * MR + r]`, eight steps
    /// at a time; returns the steps done (a multiple of 8, the rest is the caller's).
    ///
    /// # Safety
    /// AVX present; `src` holds `MR` rows of `k` values, `dst` `k * MR` values.
    #[target_feature(enable = "avx")]
    pub unsafe fn pack_rows(src: *const f32, k: usize, dst: *mut f32) -> usize {
        const { assert!(MR == 8) };
        let mut p = 0;
        // SAFETY: reads p..p + 8 of each row and writes steps p..p + 8, all below k.
        unsafe {
            while p + 8 <= k {
                let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * k + p)));
                let steps = super::super::direct_conv::avx2::transpose(r);
                for (j, &v) in steps.iter().enumerate() {
                    _mm256_storeu_ps(dst.add((p + j) * MR), v);
                }
                p += 8;
            }
        }
        p
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_r<const R: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        first: bool,
        bias: Option<*const f32>,
    ) {
        let mask = |v: usize| -> __mmask16 {
            let left = cols.saturating_sub(16 * v).min(16);
            ((1u32 << left) - 1) as __mmask16
        };
        let masks: [__mmask16; NV] = std::array::from_fn(mask);
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        // SAFETY (all pointer reads and writes): the bounds of the caller's contract;
        // masked lanes past `cols` are neither read nor written.
        unsafe {
            if !first {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (v, s) in row.iter_mut().enumerate() {
                        *s = _mm512_maskz_loadu_ps(masks[v], c.add(r * ldc + 16 * v));
                    }
                }
            }
            for p in 0..kc {
                let bp = b.add(p * NR);
                let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
                let ap = a.add(p * MR);
                for (r, row) in acc.iter_mut().enumerate() {
                    let ar = _mm512_set1_ps(*ap.add(r));
                    for (s, &bvv) in row.iter_mut().zip(&bv) {
                        *s = _mm512_fmadd_ps(ar, bvv, *s);
                    }
                }
            }
            if let Some(bias) = bias {
                for (v, &mk) in masks.iter().enumerate() {
                    let bv = _mm512_maskz_loadu_ps(mk, bias.add(16 * v));
                    for row in acc.iter_mut() {
                        row[v] = _mm512_add_ps(row[v], bv);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, &s) in row.iter().enumerate() {
                    _mm512_mask_storeu_ps(c.add(r * ldc + 16 * v), masks[v], s);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    /// Never called: `avx512()` is false off x86-64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        _: usize,
        _: usize,
        _: *const f32,
        _: *const f32,
        _: *mut f32,
        _: usize,
        _: usize,
        _: bool,
        _: Option<*const f32>,
    ) {
        unreachable!("the AVX-512 kernel runs on x86-64 only")
    }

    /// Never called: `avx512()` is false off x86-64.
    pub unsafe fn pack_rows(_: *const f32, _: usize, _: *mut f32) -> usize {
        unreachable!("the AVX-512 kernel runs on x86-64 only")
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

    fn f32s(v: Vec<f64>) -> Vec<f32> {
        v.into_iter().map(|x| x as f32).collect()
    }

    /// Every path this machine can run: `linear` itself (AVX-512 where present), the
    /// tiled kernel when AVX-512 is present, and the gemm crate split.
    fn paths(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let mut out = Vec::new();
        let mut y = vec![f32::NAN; m * n];
        linear(x, w, b, &mut y, m, k, n, &Packed::default());
        out.push(("linear", y));
        if k > 0 {
            let mut y = vec![f32::NAN; m * n];
            crate_split(x, w, b, &mut y, m, k, n, true);
            out.push(("gemm crate", y));
            if avx512() {
                for parallel in [false, true] {
                    let mut y = vec![f32::NAN; m * n];
                    let p = pack_weight(w, n, k, parallel);
                    tiled(x, &p.data, b, &mut y, m, k, n, parallel);
                    out.push(("avx512", y));
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_plain_product_on_awkward_shapes() {
        // Edge rows and columns of every size (tiles are 8 x 48), k below, at and past a
        // vector and past a chunk of 256 steps, one big enough to run in parallel and to
        // take several tasks.
        for (i, &(m, k, n)) in [
            (1, 1, 1),
            (3, 0, 5),
            (3, 5, 7),
            (4, 16, 6),
            (5, 17, 13),
            (9, 33, 11),
            (7, 100, 25),
            (8, 257, 48),
            (17, 300, 49),
            (1, 768, 97),
            (2, 4096, 300),
            (300, 1030, 37),
            (77, 513, 250),
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
                let want = naive(&x, &w, bias, m, k, n);
                for (path, y) in paths(&x, &w, bias, m, k, n) {
                    for (j, (&g, &v)) in y.iter().zip(&want).enumerate() {
                        // f32 accumulation of k terms of size <= 1 (and the bias).
                        let tol = 2.0 * f32::EPSILON as f64 * (k + 1) as f64;
                        assert!(
                            (g as f64 - v).abs() <= tol,
                            "{path} {m}x{k}x{n} [{j}]: {g} vs {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_left_side_packs_into_row_panels() {
        // Whole and partial panels, k below, at and past the 8-step blocks.
        for (m, k) in [(8, 8), (8, 3), (9, 17), (16, 24), (13, 40), (3, 9)] {
            let x = f32s(random(m * k, (m * k) as u64));
            // Stale values from a bigger earlier call must not survive.
            let mut xp = vec![f32::NAN; (m + MR) * k * MR];
            pack_left(&mut xp, &x, m, k, false);
            for i in 0..m.div_ceil(MR) {
                for p in 0..k {
                    for r in 0..MR {
                        let got = xp[(i * k + p) * MR + r];
                        let row = i * MR + r;
                        let want = if row < m { x[row * k + p] } else { 0.0 };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{m}x{k} panel {i} step {p} row {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_kept_packing_serves_later_calls() {
        let (m, k, n) = (11, 70, 60);
        let x = f32s(random(m * k, 3));
        let w = f32s(random(n * k, 4));
        let packed = Packed::default();
        let mut first = vec![0f32; m * n];
        linear(&x, &w, None, &mut first, m, k, n, &packed);
        let mut again = vec![0f32; m * n];
        linear(&x, &w, None, &mut again, m, k, n, &packed);
        assert_eq!(first, again);
        // Another shape through the same cache packs afresh rather than misread it.
        let (m2, k2, n2) = (3, 35, 120);
        let mut other = vec![0f32; m2 * n2];
        linear(&x, &w, None, &mut other, m2, k2, n2, &packed);
        let want = naive(&x, &w, None, m2, k2, n2);
        for (&g, &v) in other.iter().zip(&want) {
            assert!((g as f64 - v).abs() <= 1e-4, "{g} vs {v}");
        }
    }

    #[test]
    fn one_thread_and_many_give_the_same_bits() {
        // Big enough to split; called from outside any pool it runs on the global pool
        // (every core), inside a one-thread pool on that thread alone.
        let (m, k, n) = (3, 4096, 300);
        let x = f32s(random(m * k, 7));
        let w = f32s(random(n * k, 8));
        let mut many = vec![0f32; m * n];
        linear(&x, &w, None, &mut many, m, k, n, &Packed::default());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut one = vec![0f32; m * n];
        pool.install(|| linear(&x, &w, None, &mut one, m, k, n, &Packed::default()));
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
                let p = Packed::default();
                let c = time(&mut || linear(&x, &w, None, &mut y, m, k, n, &p));
                println!("{m}x{k}x{n}: crate-threaded {b:.1} GFLOP/s, this file {c:.1}");
            }
        }
    }
}
