//! `C = A B` in f64 where AVX-512 is present: the product behind every f64 layer, so
//! behind the proofs (where convolutions are most of the time).
//!
//! A is read where it lies (a convolution's weights, `[O, C*kh*kw]`): a tile broadcasts one
//! value from each of its `MR` rows per step of k, eight sequential streams that the
//! prefetcher follows, so no weight is ever repacked. B is packed per block of `NC`
//! columns and `KC` steps into panels of `NR` columns laid out `[k][NR]` (the block stays
//! in L2 while every row panel of A passes over it). An `MR x NR` tile keeps its 24 sums in
//! registers. Every output is one chain of fused multiply-adds over k in order, so the bits
//! do not depend on the blocking or on the thread count.
//!
//! Measured on `widen examples/resnet50.arch --layer conv3_2 --by 1.5` (f64 proof,
//! 2 cores, Zen 4): its convolutions took 0.93 s with the `gemm` crate and 0.81-0.85 s
//! here. Both kernels run at about 23 G multiply-adds/s per core on large products (the
//! FMA units' limit); the gain is in narrow tiles for the last columns (a 7x7 map is 49
//! columns: 24 + 24 + 8 here, 3 x 24 before) and in not repacking the weights.

use std::cell::RefCell;

use rayon::prelude::*;

/// Rows of a tile (8 broadcasts of A per step).
const MR: usize = 8;
/// Columns of a tile: three 8-lane vectors, so 24 sums plus three B vectors and a
/// broadcast fit in the 32 registers.
const NR: usize = 24;
/// Steps of k per packed block: a tile's A chunk (8 rows x 256 steps, 16 KB) stays in L1.
const KC: usize = 256;
/// Columns per packed block: 8 panels, so a packed block (384 KB) stays in L2.
const NC: usize = 8 * NR;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    crate::cpu::avx512()
}

/// The operands of one product: element `(i, p)` of A at `a[i * lda + p]`, `(p, j)` of B at
/// `b[p * rsb + j * csb]`, `(i, j)` of C at `c[i * ldc + j]`.
#[derive(Clone, Copy)]
pub struct Operands {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub lda: usize,
    pub rsb: usize,
    pub csb: usize,
    pub ldc: usize,
}

/// C as a raw pointer that tasks writing disjoint column blocks share.
#[derive(Clone, Copy)]
struct Out(*mut f64);
// SAFETY: every task writes its own columns of C only (see `product`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn ptr(self) -> *mut f64 {
        self.0
    }
}

thread_local! {
    /// The calling thread's packed block of B.
    static PACKED: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// `C = A B` (C only written). The caller checks [`available`], that k, m and n are not 0
/// and that every addressed element lies inside its slice. `parallel` splits the column
/// blocks among the pool's threads.
pub fn product(d: &Operands, a: &[f64], b: &[f64], c: &mut [f64], parallel: bool) {
    let out = Out(c.as_mut_ptr());
    let job = |j0: usize| {
        let out = out.ptr();
        let nc = NC.min(d.n - j0);
        PACKED.with(|cell| {
            let mut packed = cell.borrow_mut();
            for p0 in (0..d.k).step_by(KC) {
                let kc = KC.min(d.k - p0);
                pack(&mut packed, b, d, p0, kc, j0, nc);
                for i in (0..d.m).step_by(MR) {
                    let rows = MR.min(d.m - i);
                    for (panel, j) in (j0..j0 + nc).step_by(NR).enumerate() {
                        // SAFETY: the caller keeps rows i..i+rows, steps p0..p0+kc of A and
                        // rows i.., columns j..j+cols of C inside their slices; the packed
                        // panel holds kc * NR values; tasks own disjoint column blocks.
                        unsafe {
                            x86::tile(&Tile {
                                rows,
                                kc,
                                a: a.as_ptr().add(i * d.lda + p0),
                                lda: d.lda,
                                b: packed.as_ptr().add(panel * KC * NR),
                                c: out.add(i * d.ldc + j),
                                ldc: d.ldc,
                                cols: NR.min(d.n - j),
                                first: p0 == 0,
                            });
                        }
                    }
                }
            }
        });
    };
    let starts = (0..d.n).step_by(NC);
    if parallel {
        starts.collect::<Vec<_>>().into_par_iter().for_each(job);
    } else {
        starts.for_each(job);
    }
}

/// Steps `p0..p0 + kc` of B's columns `j0..j0 + nc` as panels of `NR` columns (`KC * NR`
/// apart), `[p][NR]` each, zero past column n.
fn pack(
    packed: &mut Vec<f64>,
    b: &[f64],
    d: &Operands,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
) {
    let panels = nc.div_ceil(NR);
    if packed.len() < panels * KC * NR {
        packed.resize(panels * KC * NR, 0.0);
    }
    for (panel, dst) in packed.chunks_mut(KC * NR).take(panels).enumerate() {
        let j = j0 + panel * NR;
        let cols = NR.min(d.n - j);
        for (p, row) in dst.chunks_mut(NR).take(kc).enumerate() {
            let src = (p0 + p) * d.rsb + j * d.csb;
            if d.csb == 1 {
                row[..cols].copy_from_slice(&b[src..src + cols]);
            } else {
                for (q, v) in row[..cols].iter_mut().enumerate() {
                    *v = b[src + q * d.csb];
                }
            }
            row[cols..].fill(0.0);
        }
    }
}

/// One tile: `c[r][..cols] = (first ? 0 : c[r][..cols]) + sum_p a[r][p] b[p][..]` for rows
/// `r < rows` (1..=MR), A's rows `lda` apart, B packed `[kc][NR]`.
struct Tile {
    rows: usize,
    kc: usize,
    a: *const f64,
    lda: usize,
    b: *const f64,
    c: *mut f64,
    ldc: usize,
    cols: usize,
    first: bool,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, MR, NR};
    use std::arch::x86_64::*;

    /// Vectors per tile row.
    const NV: usize = NR / 8;

    /// Computes `t`.
    ///
    /// # Safety
    /// AVX-512F present; rows `< t.rows` of `t.a` hold `t.kc` values, `t.b` holds
    /// `t.kc * NR`; rows `< t.rows` of `t.c` (leading dim `t.ldc`) hold `t.cols` (<= NR).
    pub unsafe fn tile(t: &Tile) {
        // A tile of fewer columns takes fewer vectors (the last panel of a 7x7 map has one).
        // SAFETY: forwarded from the caller.
        unsafe {
            match t.cols.div_ceil(8) {
                3 => rows_of::<3>(t),
                2 => rows_of::<2>(t),
                _ => rows_of::<1>(t),
            }
        }
    }

    /// [`tile`] with `V` vectors per row.
    unsafe fn rows_of<const V: usize>(t: &Tile) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match t.rows {
                8 => tile_r::<8, V>(t),
                7 => tile_r::<7, V>(t),
                6 => tile_r::<6, V>(t),
                5 => tile_r::<5, V>(t),
                4 => tile_r::<4, V>(t),
                3 => tile_r::<3, V>(t),
                2 => tile_r::<2, V>(t),
                _ => tile_r::<1, V>(t),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile_r<const R: usize, const V: usize>(t: &Tile) {
        const { assert!(R <= MR && V <= NV) };
        let &Tile {
            kc,
            a,
            lda,
            b,
            c,
            ldc,
            cols,
            first,
            ..
        } = t;
        let mask = |v: usize| -> __mmask8 {
            let left = cols.saturating_sub(8 * v).min(8);
            ((1u32 << left) - 1) as __mmask8
        };
        let masks: [__mmask8; V] = std::array::from_fn(mask);
        let mut acc = [[_mm512_setzero_pd(); V]; R];
        // SAFETY (all pointer reads and writes): the bounds of the caller's contract;
        // masked lanes past `cols` are neither read nor written.
        unsafe {
            let arow: [*const f64; R] = std::array::from_fn(|r| a.add(r * lda));
            if !first {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (v, s) in row.iter_mut().enumerate() {
                        *s = _mm512_maskz_loadu_pd(masks[v], c.add(r * ldc + 8 * v));
                    }
                }
            }
            for p in 0..kc {
                let bp = b.add(p * NR);
                let bv: [__m512d; V] = std::array::from_fn(|v| _mm512_loadu_pd(bp.add(8 * v)));
                for (row, ar) in acc.iter_mut().zip(&arow) {
                    let x = _mm512_set1_pd(*ar.add(p));
                    for (s, &bvv) in row.iter_mut().zip(&bv) {
                        *s = _mm512_fmadd_pd(x, bvv, *s);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, &s) in row.iter().enumerate() {
                    _mm512_mask_storeu_pd(c.add(r * ldc + 8 * v), masks[v], s);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    /// Never called: `available()` is false off x86-64.
    pub unsafe fn tile(_: &super::Tile) {
        unreachable!("the AVX-512 kernel runs on x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with many significant bits (so a missed or repeated term shows).
    fn values(len: usize, seed: u64) -> Vec<f64> {
        (0..len)
            .map(|i| ((i as f64 + 0.37) * (seed as f64 + 1.618)).sin() * 1.7 - 0.2)
            .collect()
    }

    /// The exact chain the kernel computes: one fused multiply-add per step, in order.
    fn chain(d: &Operands, a: &[f64], b: &[f64], i: usize, j: usize) -> f64 {
        (0..d.k).fold(0.0, |s, p| {
            a[i * d.lda + p].mul_add(b[p * d.rsb + j * d.csb], s)
        })
    }

    #[test]
    fn products_match_the_fused_chain_bit_for_bit_on_edge_shapes() {
        if !available() {
            return;
        }
        // Tails in every dimension, k past one KC block, n past one NC block, padded
        // leading dimensions and a transposed B.
        for &(m, k, n, transposed) in &[
            (1, 1, 1, false),
            (13, 300, 50, false),
            (8, 256, 24, false),
            (17, 513, 2 * NC + 5, false),
            (9, 70, 31, true),
        ] {
            let (lda, ldc) = (k + 3, n + 2);
            let (rsb, csb) = if transposed { (1, k + 1) } else { (n + 4, 1) };
            let d = Operands {
                m,
                k,
                n,
                lda,
                rsb,
                csb,
                ldc,
            };
            let a = values(m * lda, 1);
            let b = values((k - 1) * rsb + (n - 1) * csb + 1, 2);
            for parallel in [false, true] {
                let mut c = vec![7.0; m * ldc];
                product(&d, &a, &b, &mut c, parallel);
                for i in 0..m {
                    for j in 0..ldc {
                        let want = if j < n { chain(&d, &a, &b, i, j) } else { 7.0 };
                        assert_eq!(
                            c[i * ldc + j].to_bits(),
                            want.to_bits(),
                            "{m}x{k}x{n} at ({i}, {j}), parallel {parallel}"
                        );
                    }
                }
            }
        }
    }
}
