//! Winograd F(4x4, 3x3) convolution in f32 (Lavin & Gray 2016, "Fast Algorithms for
//! Convolutional Neural Networks", eq. 7-8 and the F(4x4, 3x3) matrices of section 4.2)
//! for 3x3, stride-1, undilated, ungrouped layers. Each 6x6 input tile d and 3x3 filter g
//! give a 4x4 output tile `Y = A^T [(G g G^T) . (B^T d B)] A`; summed over input channels,
//! the element-wise product is 36 independent matrix products `[tiles x Ci] x [Ci x Co]`,
//! 2.25 multiply-adds per output and input channel instead of 9.
//!
//! Transforms run 16 channels at a time (one vector of lanes per tile element) on a
//! channels-last copy of the image, so they vectorise without gathers; the products are
//! the crate's GEMM. The filters are transformed once per executor (in f64, then rounded).
//! Rounding differs from the direct sum (a few times f32's epsilon times the sum of
//! magnitudes), so only the f32 forward pass (`Executor::forward`) uses this; proofs and
//! f64 never do.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::float::{gemm, GemmDims};

/// Channels per vector of lanes.
const LANES: usize = 16;
/// Elements of a transformed tile (6 x 6).
const POS: usize = 36;
/// Tiles a chunk of images should hold at least, so each of the 36 products is large
/// enough to run near the GEMM's speed and the filters are read once per few images.
const CHUNK_TILES: usize = 512;

type Lanes = [f32; LANES];

/// A layer's transformed filters, made on first use and kept with the executor.
#[derive(Default)]
pub struct Cache(OnceLock<Filters>);

/// `U = G g G^T` for every (input, output) channel pair, laid out `[36][cip][cop]`, with
/// both channel counts rounded up to whole vectors (zero filters past the ends).
struct Filters {
    u: Vec<f32>,
    cip: usize,
    cop: usize,
}

/// The shape of one layer's run.
pub struct Shape {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub h: usize,
    pub w: usize,
    pub p: usize,
}

impl Shape {
    /// Output rows and columns.
    pub fn out(&self) -> (usize, usize) {
        (self.h + 2 * self.p - 2, self.w + 2 * self.p - 2)
    }
    /// Tile rows and columns of one image.
    fn tiles(&self) -> (usize, usize) {
        let (oh, ow) = self.out();
        (oh.div_ceil(4), ow.div_ceil(4))
    }
}

/// Whether the layer is a 3x3, stride-1, undilated, ungrouped convolution with an output.
pub fn fits(c: &crate::ir::Conv2d, h: usize, w: usize) -> bool {
    c.kernel == [3, 3]
        && c.stride == 1
        && c.dilation == 1
        && c.groups == 1
        && h + 2 * c.padding >= 3
        && w + 2 * c.padding >= 3
        && c.in_channels > 0
        && c.out_channels > 0
}

/// What runs on each output value, in the order of `conv::finish`: `+ bias[c]`, then
/// `* scale[c] + shift[c]` and a ReLU.
pub struct Finish<'a> {
    pub bias: Option<&'a [f32]>,
    pub scale_shift: Option<(&'a [f32], &'a [f32])>,
    pub relu: bool,
}

/// The convolution of `x` (`[N, Ci, H, W]`) with OIHW 3x3 weights `w` into `y`
/// (`[N, Co, OH, OW]`), then `fin`.
pub fn conv(x: &[f32], s: &Shape, w: &[f32], cache: &Cache, fin: &Finish, y: &mut [f32]) {
    let f = cache.0.get_or_init(|| filters(w, s.ci, s.co));
    let (oh, ow) = s.out();
    assert!(
        x.len() >= s.n * s.ci * s.h * s.w,
        "winograd: input too small"
    );
    assert!(
        y.len() >= s.n * s.co * oh * ow,
        "winograd: output too small"
    );
    assert!(
        f.u.len() == POS * f.cip * f.cop,
        "winograd: filters of another layer"
    );
    let (th, tw) = s.tiles();
    let per_image = th * tw;
    let images = CHUNK_TILES.div_ceil(per_image).clamp(1, s.n.max(1));
    // Per channel vector: bias, scale and shift of the epilogue (identity past the ends).
    let affine = |src: Option<&[f32]>, default: f32| -> Vec<Lanes> {
        (0..f.cop / LANES)
            .map(|b| {
                let mut v = [default; LANES];
                for (l, x) in v.iter_mut().enumerate() {
                    if let Some(&a) = src.and_then(|s| s.get(b * LANES + l)) {
                        *x = a;
                    }
                }
                v
            })
            .collect()
    };
    let bias_v = affine(fin.bias, 0.0);
    let scale_v = affine(fin.scale_shift.map(|e| e.0), 1.0);
    let shift_v = affine(fin.scale_shift.map(|e| e.1), 0.0);
    let relu = fin.relu;
    let out_plane = oh * ow;
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        let (v, m) = &mut *b;
        for first in (0..s.n).step_by(images) {
            let count = images.min(s.n - first);
            let tc = count * per_image;
            v.resize(POS * tc * f.cip, 0.0);
            m.resize(POS * tc * f.cop, 0.0);
            // Input tiles: one task per (image, channel vector), each writing its own
            // lanes of its own tiles.
            let vp = SharedOut(v.as_mut_ptr());
            let blocks = f.cip / LANES;
            (0..count * blocks).into_par_iter().for_each(|task| {
                let (i, cb) = (task / blocks, task % blocks);
                let img = &x[(first + i) * s.ci * s.h * s.w..][..s.ci * s.h * s.w];
                let task = InputTask {
                    img,
                    cb,
                    t0: i * per_image,
                    tc,
                    cip: f.cip,
                };
                with_pad(|pad| {
                    // SAFETY: task (i, cb) writes lanes cb*16.. of tiles i*per_image..
                    // (i+1)*per_image of each of the 36 matrices: no two tasks overlap,
                    // and `v` holds POS * tc * cip values.
                    unsafe { input_tiles(&task, s, pad, vp) }
                });
            });
            // The 36 products, one task each.
            let vr = &v[..];
            m.par_chunks_mut(tc * f.cop)
                .enumerate()
                .for_each(|(pos, mp)| {
                    let a = &vr[pos * tc * f.cip..][..tc * f.cip];
                    let u = &f.u[pos * f.cip * f.cop..][..f.cip * f.cop];
                    gemm(&GemmDims::dense(tc, f.cip, f.cop), a, u, mp);
                });
            // Output tiles: one task per (image, vector of output channels).
            let mr = &m[..];
            let ys = &mut y[first * s.co * out_plane..(first + count) * s.co * out_plane];
            ys.par_chunks_mut(s.co * out_plane)
                .enumerate()
                .flat_map(|(i, yi)| {
                    yi.par_chunks_mut(LANES * out_plane)
                        .enumerate()
                        .map(move |(cb, blk)| (i, cb, blk))
                })
                .for_each(|(i, cb, blk)| {
                    let ep = Affine {
                        bias: &bias_v[cb],
                        scale: &scale_v[cb],
                        shift: &shift_v[cb],
                        relu,
                    };
                    let task = OutputTask {
                        m: mr,
                        cb,
                        t0: i * per_image,
                        tc,
                        cop: f.cop,
                    };
                    with_pad(|stage| output_tiles(&task, s, &ep, stage, blk));
                });
        }
    });
}

thread_local! {
    /// The transformed inputs and products of the calling thread's last layer (kept, so
    /// that megabytes are not allocated and faulted in for every layer).
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static PAD: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer for a channels-last padded copy of 16 channels.
fn with_pad<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    PAD.with(|p| match p.try_borrow_mut() {
        Ok(mut p) => f(&mut p),
        Err(_) => f(&mut Vec::new()),
    })
}

/// A pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every user writes a part of the buffer no other task touches (see the callers).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Bias, batch-norm affine and ReLU for one vector of output channels.
struct Affine<'a> {
    bias: &'a Lanes,
    scale: &'a Lanes,
    shift: &'a Lanes,
    relu: bool,
}

/// `G g` for one column (or row) of a 3x3 filter, in f64.
fn g_col(g: [f64; 3]) -> [f64; 6] {
    let [g0, g1, g2] = g;
    [
        g0 / 4.0,
        -(g0 + g1 + g2) / 6.0,
        -(g0 - g1 + g2) / 6.0,
        g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
        g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
        g2,
    ]
}

fn filters(w: &[f32], ci: usize, co: usize) -> Filters {
    let (cip, cop) = (ci.next_multiple_of(LANES), co.next_multiple_of(LANES));
    let mut u = vec![0.0f32; POS * cip * cop];
    for o in 0..co {
        for c in 0..ci {
            let g = &w[(o * ci + c) * 9..][..9];
            let mut gg = [[0.0f64; 3]; 6];
            for j in 0..3 {
                let col = g_col([g[j] as f64, g[3 + j] as f64, g[6 + j] as f64]);
                for (row, v) in gg.iter_mut().zip(col) {
                    row[j] = v;
                }
            }
            for (i, row) in gg.iter().enumerate() {
                for (j, v) in g_col(*row).into_iter().enumerate() {
                    u[((i * 6 + j) * cip + c) * cop + o] = v as f32;
                }
            }
        }
    }
    Filters { u, cip, cop }
}

/// `B^T d` for one column (or row) of six vectors.
#[inline(always)]
fn bt(d: &[Lanes; 6]) -> [Lanes; 6] {
    let mut r = [[0.0f32; LANES]; 6];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        r[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        r[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        r[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `A^T m` for one column (or row) of six vectors.
#[inline(always)]
fn at(m: &[Lanes; 6]) -> [Lanes; 4] {
    let mut r = [[0.0f32; LANES]; 4];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (a, b) = (m1 + m2, m3 + m4);
        let (c, d) = (m1 - m2, m3 - m4);
        r[0][l] = m0 + a + b;
        r[1][l] = c + 2.0 * d;
        r[2][l] = a + 4.0 * b;
        r[3][l] = c + 8.0 * d + m5;
    }
    r
}

/// How the transforms run: with AVX-512 (one register per vector of lanes), AVX2 + FMA
/// (two), or plain Rust.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Plain,
}

fn isa() -> Isa {
    #[cfg(test)]
    if tests::PLAIN.load(std::sync::atomic::Ordering::Relaxed) {
        return Isa::Plain;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && super::direct_conv::available() {
            return Isa::Avx512;
        }
        if super::direct_conv::available() {
            return Isa::Avx2;
        }
    }
    Isa::Plain
}

/// One (image, vector of channels) task of the input transform.
struct InputTask<'a> {
    img: &'a [f32],
    cb: usize,
    /// This image's first tile among the chunk's `tc`.
    t0: usize,
    tc: usize,
    cip: usize,
}

/// Transforms every tile of channels `cb*16..` of one image into `v` (`[36][tc][cip]`).
/// The caller guarantees that no other task writes these lanes of these tiles and that
/// `v` holds `36 * tc * cip` values.
unsafe fn input_tiles(t: &InputTask, s: &Shape, pad: &mut Vec<f32>, v: SharedOut) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => input_tiles_avx512(t, s, pad, v),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => input_tiles_avx2(t, s, pad, v),
        _ => input_tiles_body::<false>(t, s, pad, v),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn input_tiles_avx512(t: &InputTask, s: &Shape, pad: &mut Vec<f32>, v: SharedOut) {
    input_tiles_body::<true>(t, s, pad, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_tiles_avx2(t: &InputTask, s: &Shape, pad: &mut Vec<f32>, v: SharedOut) {
    input_tiles_body::<true>(t, s, pad, v)
}

/// With `SIMD` (only inside an AVX2 function), the channels-last copy is made by 8x8
/// register transposes instead of one scalar store per value.
#[inline(always)]
unsafe fn input_tiles_body<const SIMD: bool>(
    t: &InputTask,
    s: &Shape,
    pad: &mut Vec<f32>,
    v: SharedOut,
) {
    let (th, tw) = s.tiles();
    // Channels-last, zero-padded copy of this vector of channels, large enough for every
    // 6x6 tile (rows and columns past the image read zero).
    let (hp, wp) = (4 * th + 2, 4 * tw + 2);
    let channels = LANES.min(s.ci.saturating_sub(t.cb * LANES));
    pad.resize(hp * wp * LANES, 0.0);
    if channels < LANES {
        pad.fill(0.0);
    } else {
        // Only the border: the image overwrites the rest.
        let (top, bottom) = (s.p * wp * LANES, (s.p + s.h) * wp * LANES);
        pad[..top].fill(0.0);
        pad[bottom..].fill(0.0);
        for r in s.p..s.p + s.h {
            pad[r * wp * LANES..(r * wp + s.p) * LANES].fill(0.0);
            pad[(r * wp + s.p + s.w) * LANES..(r + 1) * wp * LANES].fill(0.0);
        }
    }
    let planes = &t.img[t.cb * LANES * s.h * s.w..];
    for r in 0..s.h {
        let at = ((r + s.p) * wp + s.p) * LANES;
        let mut k0 = 0;
        #[cfg(target_arch = "x86_64")]
        if SIMD && channels == LANES {
            use std::arch::x86_64::*;
            while k0 + 8 <= s.w {
                for half in 0..2 {
                    let mut rows = [_mm256_setzero_ps(); 8];
                    for (c, row) in rows.iter_mut().enumerate() {
                        let src = &planes[((half * 8 + c) * s.h + r) * s.w + k0..][..8];
                        *row = _mm256_loadu_ps(src.as_ptr());
                    }
                    // Register k now holds pixel k0 + k's 8 channels.
                    let px = super::direct_conv::avx2::transpose(rows);
                    for (k, p) in px.iter().enumerate() {
                        let dst = &mut pad[at + (k0 + k) * LANES + half * 8..][..8];
                        _mm256_storeu_ps(dst.as_mut_ptr(), *p);
                    }
                }
                k0 += 8;
            }
        }
        for c in 0..channels {
            let row = &planes[(c * s.h + r) * s.w..][..s.w];
            for (k, &val) in row.iter().enumerate().skip(k0) {
                pad[at + k * LANES + c] = val;
            }
        }
    }
    // Every element of these is written for each tile before it is read: zeroed once
    // here, not per tile (a memset call per tile was a few percent of ResNet-18).
    let mut d = [[[0.0f32; LANES]; 6]; 6];
    let mut q = [[[0.0f32; LANES]; 6]; 6];
    for ty in 0..th {
        for tx in 0..tw {
            for (i, row) in d.iter_mut().enumerate() {
                let at = ((4 * ty + i) * wp + 4 * tx) * LANES;
                for (j, e) in row.iter_mut().enumerate() {
                    e.copy_from_slice(&pad[at + j * LANES..][..LANES]);
                }
            }
            // Columns, then rows: q[k][j] = (B^T d)[k][j], then (B^T d B)[k][l].
            for j in 0..6 {
                let col = bt(&[d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]]);
                for k in 0..6 {
                    q[k][j] = col[k];
                }
            }
            let tile = t.t0 + ty * tw + tx;
            for (k, row) in q.iter().enumerate() {
                for (l, e) in bt(row).iter().enumerate() {
                    let dst = v.0.add(((k * 6 + l) * t.tc + tile) * t.cip + t.cb * LANES);
                    std::ptr::copy_nonoverlapping(e.as_ptr(), dst, LANES);
                }
            }
        }
    }
}

/// One (image, vector of output channels) task of the output transform.
struct OutputTask<'a> {
    /// The products, `[36][tc][cop]`.
    m: &'a [f32],
    cb: usize,
    /// This image's first tile among the chunk's `tc`.
    t0: usize,
    tc: usize,
    cop: usize,
}

/// Transforms back the products of output channels `cb*16..` of one image's tiles and
/// writes them, with bias and epilogue, into `blk` (`[channels][OH*OW]`); `stage` is
/// scratch for one row of tiles, channels last.
fn output_tiles(t: &OutputTask, s: &Shape, ep: &Affine, stage: &mut Vec<f32>, blk: &mut [f32]) {
    match isa() {
        // SAFETY: the CPU has the features (isa() checked them).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { output_tiles_avx512(t, s, ep, stage, blk) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { output_tiles_avx2(t, s, ep, stage, blk) },
        _ => output_tiles_body::<false>(t, s, ep, stage, blk),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn output_tiles_avx512(
    t: &OutputTask,
    s: &Shape,
    ep: &Affine,
    stage: &mut Vec<f32>,
    blk: &mut [f32],
) {
    output_tiles_body::<true>(t, s, ep, stage, blk)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_tiles_avx2(
    t: &OutputTask,
    s: &Shape,
    ep: &Affine,
    stage: &mut Vec<f32>,
    blk: &mut [f32],
) {
    output_tiles_body::<true>(t, s, ep, stage, blk)
}

/// With `SIMD` (only inside an AVX2 function), a row of tiles goes from channels-last to
/// the output planes by 8x8 register transposes.
#[inline(always)]
fn output_tiles_body<const SIMD: bool>(
    t: &OutputTask,
    s: &Shape,
    ep: &Affine,
    stage: &mut Vec<f32>,
    blk: &mut [f32],
) {
    let (oh, ow) = s.out();
    let (th, tw) = s.tiles();
    let plane = oh * ow;
    let channels = blk.len() / plane;
    // One row of tiles: [4 rows][wq pixels][16 channels], wq a whole number of 8s.
    let wq = (4 * tw).next_multiple_of(8);
    stage.resize(4 * wq * LANES, 0.0);
    // Written whole for each tile before being read: zeroed once (see input_tiles_body).
    let mut mm = [[[0.0f32; LANES]; 6]; 6];
    let mut sr = [[[0.0f32; LANES]; 6]; 4];
    for ty in 0..th {
        for tx in 0..tw {
            let tile = t.t0 + ty * tw + tx;
            for (k, row) in mm.iter_mut().enumerate() {
                for (l, e) in row.iter_mut().enumerate() {
                    let at = ((k * 6 + l) * t.tc + tile) * t.cop + t.cb * LANES;
                    e.copy_from_slice(&t.m[at..][..LANES]);
                }
            }
            for l in 0..6 {
                let col = at(&[mm[0][l], mm[1][l], mm[2][l], mm[3][l], mm[4][l], mm[5][l]]);
                for r in 0..4 {
                    sr[r][l] = col[r];
                }
            }
            for (r, row) in sr.iter().enumerate() {
                for (q, e) in at(row).iter().enumerate() {
                    let dst = &mut stage[(r * wq + 4 * tx + q) * LANES..][..LANES];
                    for (l, x) in dst.iter_mut().enumerate() {
                        let v = (e[l] + ep.bias[l]) * ep.scale[l] + ep.shift[l];
                        *x = if ep.relu { super::act::relu(v) } else { v };
                    }
                }
            }
        }
        for r in 0..4 {
            let oy = 4 * ty + r;
            if oy >= oh {
                break;
            }
            let src = &stage[r * wq * LANES..][..wq * LANES];
            let mut x0 = 0;
            #[cfg(target_arch = "x86_64")]
            if SIMD {
                use std::arch::x86_64::*;
                // SAFETY: SIMD is set only inside functions with AVX2 enabled; loads read
                // 8 pixels of `src` (wq is a multiple of 8) and stores stay in `blk`.
                unsafe {
                    while x0 < ow {
                        let n = (ow - x0).min(8);
                        for half in 0..2 {
                            if half * 8 >= channels {
                                break;
                            }
                            let mut px = [_mm256_setzero_ps(); 8];
                            for (k, p) in px.iter_mut().enumerate() {
                                *p = _mm256_loadu_ps(src[(x0 + k) * LANES + half * 8..].as_ptr());
                            }
                            // Register c now holds channel half * 8 + c's 8 pixels.
                            let ch = super::direct_conv::avx2::transpose(px);
                            for (c, v) in ch.iter().enumerate().take(channels - half * 8) {
                                let dst = &mut blk[(half * 8 + c) * plane + oy * ow + x0..][..n];
                                if n == 8 {
                                    _mm256_storeu_ps(dst.as_mut_ptr(), *v);
                                } else {
                                    let mut tmp = [0.0f32; 8];
                                    _mm256_storeu_ps(tmp.as_mut_ptr(), *v);
                                    dst.copy_from_slice(&tmp[..n]);
                                }
                            }
                        }
                        x0 += n;
                    }
                }
            }
            for c in 0..channels {
                let dst = &mut blk[c * plane + oy * ow..][..ow];
                for (x, d) in dst.iter_mut().enumerate().skip(x0) {
                    *d = src[x * LANES + c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::{conv2d, Epilogue};
    use super::super::testutil::random;
    use super::super::Tensor;
    use super::{Cache, Finish, Shape};
    use crate::ir::Conv2d;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Makes the transforms take their plain-Rust path (the test of it sets this).
    pub(super) static PLAIN: AtomicBool = AtomicBool::new(false);

    /// `[n, ci, co, h, w, padding]`: channel counts off the 16-lane vector (in and out),
    /// maps that are not whole 4x4 tiles, one image, a 1x1 output, padding 0-2, and more
    /// tiles than one chunk.
    const SHAPES: [[usize; 6]; 9] = [
        [2, 3, 5, 7, 9, 1],
        [1, 17, 33, 6, 5, 1],
        [3, 16, 16, 8, 8, 1],
        [1, 20, 7, 3, 3, 0],
        [2, 9, 18, 5, 11, 2],
        [1, 64, 64, 14, 14, 1],
        [2, 33, 19, 10, 13, 0],
        [1, 1, 1, 1, 1, 1],
        [3, 8, 24, 50, 46, 1],
    ];

    /// Against the f64 im2col + GEMM path on the same values, with bias and a random
    /// batch-norm affine, with and without ReLU. F(4x4, 3x3) rounds a few times more than a
    /// direct sum (Lavin & Gray, table 6): within 2e-5 of the output's scale here.
    #[test]
    fn winograd_matches_the_im2col_path() {
        check_every_shape();
        // Again without the SIMD transposes and wide registers (CPUs without AVX2); one
        // test, so the flag does not change the other run's path.
        PLAIN.store(true, Ordering::Relaxed);
        check_every_shape();
        PLAIN.store(false, Ordering::Relaxed);
    }

    fn check_every_shape() {
        for (seed, &[n, ci, co, h, w, p]) in SHAPES.iter().enumerate() {
            for relu in [false, true] {
                let c = Conv2d {
                    in_channels: ci,
                    out_channels: co,
                    kernel: [3, 3],
                    stride: 1,
                    padding: p,
                    dilation: 1,
                    groups: 1,
                    bias: true,
                };
                let seed = seed as u64 * 5;
                let x = random(n * ci * h * w, seed);
                let wt = random(co * ci * 9, seed + 1);
                let b = random(co, seed + 2);
                let scale: Vec<f64> = random(co, seed + 3).iter().map(|v| v + 1.5).collect();
                let shift = random(co, seed + 4);
                let e64 = Epilogue {
                    scale: scale.clone(),
                    shift: shift.clone(),
                    relu,
                };
                let x64 = Tensor {
                    shape: vec![n, ci, h, w],
                    data: x.clone(),
                };
                let want = conv2d(&x64, &c, &wt, Some(&b), Some(&e64));
                let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                let (x32, w32, b32, sc32, sh32) = (f(&x), f(&wt), f(&b), f(&scale), f(&shift));
                let s = Shape { n, ci, co, h, w, p };
                let mut y = vec![f32::NAN; want.data.len()];
                let cache = Cache::default();
                let fin = Finish {
                    bias: Some(&b32),
                    scale_shift: Some((&sc32, &sh32)),
                    relu,
                };
                super::conv(&x32, &s, &w32, &cache, &fin, &mut y);
                // The cached filters give the same result a second time.
                let mut again = vec![f32::NAN; y.len()];
                super::conv(&x32, &s, &w32, &cache, &fin, &mut again);
                assert_eq!(y, again);
                let scale = want.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                let err = y
                    .iter()
                    .zip(&want.data)
                    .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
                assert!(
                    err <= 2e-5 * scale,
                    "{:?}: error {err} at scale {scale}",
                    [n, ci, co, h, w, p]
                );
            }
        }
    }
}
