//! Wide 3x3 stride-1 convolutions in f64 as Winograd F(2x2, 3x3) (Lavin and Gray 2016):
//! 16 products of `[O, C] x [C, tiles]` on gemm64's kernel instead of one product 9C deep
//! per pixel, 2.25x fewer multiply-adds. The f64 proofs spend most of their time here.
//!
//! The transforms of F(2x2, 3x3) have entries 0, 1 and 1/2, so they round far less than
//! the larger tiles the f32 forward pass uses (winograd.rs); against the direct sum the
//! results differ by a few units in the last place (tested), far under every proof
//! tolerance (1e-9).

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm64::{self, Operands};
pub use super::winograd::Shape;
use crate::ir::Conv2d;

/// Input and output channels from which a layer runs here: narrower layers spend more in
/// the transforms than they save in the products.
const CHANNELS: usize = 64;

/// Tiles per image from which a layer runs here: on smaller maps (7x7 is 16 tiles) the 16
/// products each stream the whole transformed filter bank for a few columns, slower than
/// one product over the plain weights.
const MIN_TILES: usize = 32;

/// A layer's transformed filters `U = G g G^T`, laid out `[O][16][C]` (so that each of the
/// 16 products reads its `[O, C]` matrix in place, rows `16 C` apart), made on first use
/// and kept with the executor.
#[derive(Default)]
pub struct Cache(OnceLock<Vec<f64>>);

impl Cache {
    /// The filters of `w` (OIHW, `co x ci x 3 x 3`), transformed on the first call.
    pub fn filters(&self, w: &[f64], co: usize, ci: usize) -> &[f64] {
        self.0.get_or_init(|| filters(w, co, ci))
    }
}

/// Whether an f64 conv of this shape (on `h x w` inputs) runs here.
pub fn fits(c: &Conv2d, h: usize, w: usize) -> bool {
    c.kernel == [3, 3]
        && c.stride == 1
        && c.dilation == 1
        && c.groups == 1
        && c.in_channels >= CHANNELS
        && c.out_channels >= CHANNELS
        && h + 2 * c.padding >= 3
        && w + 2 * c.padding >= 3
        && (h + 2 * c.padding - 2).div_ceil(2) * (w + 2 * c.padding - 2).div_ceil(2) >= MIN_TILES
        && gemm64::available()
}

/// Tile rows and columns (2x2 outputs each) of one image.
fn tiles(s: &Shape) -> (usize, usize) {
    let (oh, ow) = s.out();
    (oh.div_ceil(2), ow.div_ceil(2))
}

thread_local! {
    /// The calling thread's transformed input, products and padded input plane.
    static SCRATCH: RefCell<(Vec<f64>, Vec<f64>, Vec<f64>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// One image: `x` is `[C, H, W]`, `u` the layer's [`Cache::filters`]; writes `y`
/// (`[O, OH, OW]`), without bias.
pub fn conv(x: &[f64], s: &Shape, u: &[f64], y: &mut [f64]) {
    let (th, tw) = tiles(s);
    let t = th * tw;
    SCRATCH.with(|cell| {
        let (v, m, padded) = &mut *cell.borrow_mut();
        v.resize(16 * s.ci * t, 0.0);
        m.resize(16 * s.co * t, 0.0);
        transform_input(x, s, v, padded);
        for xi in 0..16 {
            let d = Operands {
                m: s.co,
                k: s.ci,
                n: t,
                lda: 16 * s.ci,
                rsb: t,
                csb: 1,
                ldc: t,
            };
            gemm64::product(
                &d,
                &u[xi * s.ci..],
                &v[xi * s.ci * t..(xi + 1) * s.ci * t],
                &mut m[xi * s.co * t..(xi + 1) * s.co * t],
                false,
            );
        }
        transform_output(m, s, y);
    });
}

/// `U = G g G^T` for every (output, input) channel pair, `[O][16][C]`, output channels in
/// parallel.
fn filters(w: &[f64], co: usize, ci: usize) -> Vec<f64> {
    let mut u = vec![0.0; 16 * co * ci];
    u.par_chunks_mut(16 * ci).enumerate().for_each(|(o, uo)| {
        for c in 0..ci {
            let g = &w[(o * ci + c) * 9..][..9];
            // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2.
            let mut gg = [[0.0; 3]; 4];
            for j in 0..3 {
                let (a, b, e) = (g[j], g[3 + j], g[6 + j]);
                gg[0][j] = a;
                gg[1][j] = (a + b + e) * 0.5;
                gg[2][j] = (a - b + e) * 0.5;
                gg[3][j] = e;
            }
            for (i, [a, b, e]) in gg.into_iter().enumerate() {
                let row = [a, (a + b + e) * 0.5, (a - b + e) * 0.5, e];
                for (j, val) in row.into_iter().enumerate() {
                    uo[(i * 4 + j) * ci + c] = val;
                }
            }
        }
    });
    u
}

/// `V = B^T d B` for every channel and 4x4 input tile `d` (tiles 2 apart), `[16][C][tiles]`.
fn transform_input(x: &[f64], s: &Shape, v: &mut [f64], padded: &mut Vec<f64>) {
    let (th, tw) = tiles(s);
    let t = th * tw;
    // The plane with its zero border, and room for the last tile of an odd size.
    let (ph, pw) = (2 * th + 2, 2 * tw + 2);
    padded.clear();
    padded.resize(ph * pw, 0.0);
    for c in 0..s.ci {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for (r, row) in plane.chunks(s.w).enumerate() {
            padded[(r + s.p) * pw + s.p..][..s.w].copy_from_slice(row);
        }
        for ty in 0..th {
            for tx in 0..tw {
                let d = |i: usize, j: usize| padded[(2 * ty + i) * pw + 2 * tx + j];
                // B^T d, column by column: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3; then
                // the same on each row.
                let cols: [[f64; 4]; 4] = std::array::from_fn(|j| {
                    let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
                    [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
                });
                let at = ty * tw + tx;
                for i in 0..4 {
                    let [a, b, e, f] = cols.map(|c| c[i]);
                    let row = [a - e, b + e, e - b, b - f];
                    for (j, val) in row.into_iter().enumerate() {
                        v[((i * 4 + j) * s.ci + c) * t + at] = val;
                    }
                }
            }
        }
    }
}

/// `Y = A^T M A` for every output channel and tile, into `[O, OH, OW]` (the outputs of a
/// tile past an odd edge are dropped).
fn transform_output(m: &[f64], s: &Shape, y: &mut [f64]) {
    let (th, tw) = tiles(s);
    let t = th * tw;
    let (oh, ow) = s.out();
    for o in 0..s.co {
        let plane = &mut y[o * oh * ow..(o + 1) * oh * ow];
        for ty in 0..th {
            for tx in 0..tw {
                let at = ty * tw + tx;
                let mv = |i: usize, j: usize| m[((i * 4 + j) * s.co + o) * t + at];
                // A^T M, column by column: rows m0 + m1 + m2 and m1 - m2 - m3; then the
                // same on each row.
                let cols: [[f64; 2]; 4] = std::array::from_fn(|j| {
                    let (m0, m1, m2, m3) = (mv(0, j), mv(1, j), mv(2, j), mv(3, j));
                    [m0 + m1 + m2, m1 - m2 - m3]
                });
                for i in 0..2 {
                    let [a, b, e, f] = cols.map(|c| c[i]);
                    let oy = 2 * ty + i;
                    if oy >= oh {
                        continue;
                    }
                    plane[oy * ow + 2 * tx] = a + b + e;
                    if 2 * tx + 1 < ow {
                        plane[oy * ow + 2 * tx + 1] = b - e - f;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct sum in f64, for one image.
    fn direct(x: &[f64], s: &Shape, w: &[f64]) -> Vec<f64> {
        let (oh, ow) = s.out();
        let mut y = vec![0.0; s.co * oh * ow];
        for o in 0..s.co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0.0;
                    for c in 0..s.ci {
                        for ki in 0..3 {
                            for kj in 0..3 {
                                let (iy, ix) = (oy + ki, ox + kj);
                                if iy < s.p || ix < s.p || iy - s.p >= s.h || ix - s.p >= s.w {
                                    continue;
                                }
                                sum += x[(c * s.h + iy - s.p) * s.w + ix - s.p]
                                    * w[((o * s.ci + c) * 3 + ki) * 3 + kj];
                            }
                        }
                    }
                    y[(o * oh + oy) * ow + ox] = sum;
                }
            }
        }
        y
    }

    #[test]
    fn matches_the_direct_sum_on_even_odd_and_unpadded_maps() {
        if !gemm64::available() {
            return;
        }
        // Even, odd and unpadded maps (the kernel runs them whether or not `fits` would).
        for &(ci, co, h, w, p) in &[(64, 72, 6, 6, 1), (65, 64, 7, 5, 1), (64, 64, 5, 8, 0)] {
            let s = Shape {
                n: 1,
                ci,
                co,
                h,
                w,
                p,
            };
            let x: Vec<f64> = (0..ci * h * w).map(|i| (i as f64 * 0.77).sin()).collect();
            let wt: Vec<f64> = (0..co * ci * 9)
                .map(|i| (i as f64 * 1.31).cos() * 0.1 + 0.01)
                .collect();
            let want = direct(&x, &s, &wt);
            let (oh, ow) = s.out();
            let mut got = vec![f64::NAN; co * oh * ow];
            let u = Cache::default().filters(&wt, co, ci).to_vec();
            conv(&x, &s, &u, &mut got);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-13 * scale,
                    "{ci}->{co} {h}x{w} p{p} at {i}: {g} vs {e}"
                );
            }
        }
    }
}
