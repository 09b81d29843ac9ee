//! Direct 2-d convolution in f32 with AVX2 + FMA: no im2col matrix. Each task computes a
//! tile of 8 output pixels x 8 output channels in eight registers (one per pixel, the
//! channels across the lanes): per kernel tap it loads the 8 packed weights once and
//! broadcasts each pixel's input value from a zero-padded copy of the image, so any
//! stride, dilation and padding costs the same; the tile is transposed in registers and
//! stored as NCHW. Small channel counts (ResNetCifar at width 1/8: 8-64 channels on 4x4 to
//! 32x32 maps) spent most of their time building im2col matrices and packing GEMM panels.
//!
//! Sums run over the taps in the order (input channel, kernel row, kernel column), each
//! product added with one fused multiply-add, so results differ from the GEMM path by
//! rounding only; f64 (the proofs) never takes this path.

/// The sliding-window geometry of one group of one image.
pub(super) struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub s: usize,
    pub p: usize,
    pub d: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Output channels per register (eight f32 lanes).
const LANES: usize = 8;
/// Output pixels per tile (one accumulator register each).
const PIXELS: usize = 8;

/// Whether this CPU runs the kernel (x86-64 with AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What a layer computes once per call and every image shares: packed weights, the tap
/// offsets into the padded image, and each output pixel's window origin.
pub(super) struct Plan {
    /// Per group, `[ceil(cog / 8)][taps][8]`: the weights of 8 output channels for one
    /// tap side by side, zero past the last channel.
    packed: Vec<Vec<f32>>,
    /// Per tap `(channel, ki, kj)`, its offset in the padded image.
    taps: Vec<usize>,
    /// Per output pixel (row-major), the padded-image offset of its window's corner.
    origins: Vec<usize>,
    cog: usize,
    /// Padded height and width.
    hp: usize,
    wp: usize,
}

impl Plan {
    /// `w` is the layer's OIHW weight, `g` the geometry of one group, `cog` its outputs.
    pub fn new(w: &[f32], g: &Geometry, groups: usize, cog: usize) -> Plan {
        let taps_n = g.c * g.kh * g.kw;
        let blocks = cog.div_ceil(LANES);
        let packed = (0..groups)
            .map(|grp| {
                let wg = &w[grp * cog * taps_n..(grp + 1) * cog * taps_n];
                let mut p = vec![0.0f32; blocks * taps_n * LANES];
                for o in 0..cog {
                    let (b, lane) = (o / LANES, o % LANES);
                    for t in 0..taps_n {
                        p[(b * taps_n + t) * LANES + lane] = wg[o * taps_n + t];
                    }
                }
                p
            })
            .collect();
        let (hp, wp) = (g.h + 2 * g.p, g.w + 2 * g.p);
        let mut taps = Vec::with_capacity(taps_n);
        for ch in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    taps.push(ch * hp * wp + ki * g.d * wp + kj * g.d);
                }
            }
        }
        let origins = (0..g.oh * g.ow)
            .map(|q| (q / g.ow) * g.s * wp + (q % g.ow) * g.s)
            .collect();
        Plan {
            packed,
            taps,
            origins,
            cog,
            hp,
            wp,
        }
    }

    /// One group of one image: `x` is `[C, H, W]`, `y` receives `[cog, OH*OW]`; `pad`
    /// is scratch for the zero-padded copy of `x`.
    pub fn run(&self, x: &[f32], g: &Geometry, group: usize, y: &mut [f32], pad: &mut Vec<f32>) {
        let src: &[f32] = if g.p == 0 {
            x
        } else {
            pad.clear();
            pad.resize(g.c * self.hp * self.wp, 0.0);
            for ch in 0..g.c {
                for r in 0..g.h {
                    let at = (ch * self.hp + r + g.p) * self.wp + g.p;
                    pad[at..at + g.w].copy_from_slice(&x[(ch * g.h + r) * g.w..][..g.w]);
                }
            }
            pad
        };
        let ohw = self.origins.len();
        assert!(y.len() >= self.cog * ohw, "direct conv: output too small");
        // Every window lies inside the padded image (the output size says so), so the
        // largest origin plus the largest tap offset is in bounds.
        let last = self.origins.iter().max().copied().unwrap_or(0)
            + self.taps.iter().max().copied().unwrap_or(0);
        assert!(last < src.len(), "direct conv: window outside the input");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked `available()`; the asserts above bound every read,
        // and stores stay inside `y` (rows of `cog` channels by `ohw` pixels).
        unsafe {
            avx2::run(
                src,
                &self.packed[group],
                &self.taps,
                &self.origins,
                self.cog,
                y,
            )
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct convolution runs only where available() is true");
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{LANES, PIXELS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run(
        src: &[f32],
        packed: &[f32],
        taps: &[usize],
        origins: &[usize],
        cog: usize,
        y: &mut [f32],
    ) {
        let ohw = origins.len();
        let nt = taps.len();
        let blocks = cog.div_ceil(LANES);
        let x = src.as_ptr();
        // Tiles outer, channel blocks inner: the tile's input rows stay in L1 while the
        // group's weights (at most WEIGHTS_MAX, see conv.rs) come from L2. Blocks outer
        // measured slower on ResNet-18's layer 1 (CPU time 1.27x).
        for q0 in (0..ohw).step_by(PIXELS) {
            let np = (ohw - q0).min(PIXELS);
            // Pixels past the end repeat the last one (computed, never stored).
            let mut ptrs = [x; PIXELS];
            for (p, ptr) in ptrs.iter_mut().enumerate() {
                *ptr = x.add(origins[q0 + p.min(np - 1)]);
            }
            for b in 0..blocks {
                let acc = tile(&ptrs, packed.as_ptr().add(b * nt * LANES), taps);
                let rows = transpose(acc);
                let oc = (cog - b * LANES).min(LANES);
                for (lane, row) in rows.iter().enumerate().take(oc) {
                    let dst = y.as_mut_ptr().add((b * LANES + lane) * ohw + q0);
                    if np == PIXELS {
                        _mm256_storeu_ps(dst, *row);
                    } else {
                        let mut tmp = [0.0f32; PIXELS];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), *row);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, np);
                    }
                }
            }
        }
    }

    /// The 8 pixels' sums over every tap for 8 output channels: register p holds pixel p.
    #[inline(always)]
    unsafe fn tile(ptrs: &[*const f32; PIXELS], w: *const f32, taps: &[usize]) -> [__m256; 8] {
        let [p0, p1, p2, p3, p4, p5, p6, p7] = *ptrs;
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut a2 = _mm256_setzero_ps();
        let mut a3 = _mm256_setzero_ps();
        let mut a4 = _mm256_setzero_ps();
        let mut a5 = _mm256_setzero_ps();
        let mut a6 = _mm256_setzero_ps();
        let mut a7 = _mm256_setzero_ps();
        for (t, &o) in taps.iter().enumerate() {
            let wv = _mm256_loadu_ps(w.add(t * LANES));
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p0.add(o)), wv, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p1.add(o)), wv, a1);
            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p2.add(o)), wv, a2);
            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p3.add(o)), wv, a3);
            a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p4.add(o)), wv, a4);
            a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p5.add(o)), wv, a5);
            a6 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p6.add(o)), wv, a6);
            a7 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p7.add(o)), wv, a7);
        }
        [a0, a1, a2, a3, a4, a5, a6, a7]
    }

    /// 8x8 transpose: in, register p holds pixel p's 8 channels; out, register c holds
    /// channel c's 8 pixels.
    #[inline(always)]
    pub(in crate::exec) unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::conv2d;
    use super::super::testutil::{assert_close, random};
    use super::super::Tensor;
    use crate::ir::Conv2d;

    /// `[n, ci, h, w, co, k, stride, padding, dilation, groups]`: odd sizes, strides 1-3,
    /// padding past the kernel's reach, dilation, groups, channel counts off the lane
    /// width (in and out), 1x1, 3x3, 5x5 and 7x7 kernels, and maps smaller than one
    /// 8-pixel tile.
    const SHAPES: [[usize; 10]; 16] = [
        [2, 8, 8, 8, 8, 3, 1, 1, 1, 1],
        [3, 3, 17, 13, 8, 7, 2, 3, 1, 1],
        [2, 5, 15, 16, 11, 7, 2, 3, 2, 1],
        [1, 16, 4, 4, 16, 3, 1, 1, 1, 1],
        [2, 8, 9, 11, 24, 1, 2, 0, 1, 1],
        [2, 13, 6, 7, 19, 1, 1, 0, 1, 1],
        [1, 5, 10, 7, 11, 3, 1, 2, 2, 1],
        [2, 12, 7, 9, 16, 3, 2, 1, 1, 2],
        [2, 6, 9, 10, 27, 3, 2, 1, 1, 3],
        [1, 4, 3, 2, 9, 2, 1, 0, 1, 1],
        [2, 6, 12, 12, 12, 5, 3, 2, 1, 3],
        [1, 16, 6, 5, 32, 3, 1, 1, 1, 1],
        [1, 2, 1, 1, 8, 1, 1, 0, 1, 1],
        [1, 8, 5, 5, 8, 3, 1, 3, 2, 1],
        [2, 32, 8, 8, 64, 1, 1, 0, 1, 1],
        [2, 64, 4, 4, 64, 3, 1, 1, 1, 1],
    ];

    /// The kernel (run image by image and group by group, plus the bias) and the f32
    /// forward (which dispatches to it where it applies) against the f64 im2col + GEMM
    /// path on the same values; f32 products summed in f32 stay within 1e-5 here.
    #[test]
    fn direct_kernel_matches_the_im2col_path() {
        for (seed, &[n, ci, h, w, co, k, s, p, d, g]) in SHAPES.iter().enumerate() {
            let c = Conv2d {
                in_channels: ci,
                out_channels: co,
                kernel: [k, k],
                stride: s,
                padding: p,
                dilation: d,
                groups: g,
                bias: true,
            };
            let seed = seed as u64 * 3;
            let x = random(n * ci * h * w, seed);
            let wt = random(co * ci / g * k * k, seed + 1);
            let b = random(co, seed + 2);
            let x64 = Tensor {
                shape: vec![n, ci, h, w],
                data: x.clone(),
            };
            let want = conv2d(&x64, &c, &wt, Some(&b), None);
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let w32: Vec<f32> = wt.iter().map(|&v| v as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            let up = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let input = Tensor {
                shape: vec![n, ci, h, w],
                data: x32.clone(),
            };
            let got = conv2d(&input, &c, &w32, Some(&b32), None);
            assert_eq!(got.shape, want.shape, "{c:?}");
            assert_close(&up(&got.data), &want.data, 1e-5);
            if !super::available() {
                continue;
            }
            let [oh, ow] = [want.shape[2], want.shape[3]];
            let geo = super::Geometry {
                c: ci / g,
                h,
                w,
                kh: k,
                kw: k,
                s,
                p,
                d,
                oh,
                ow,
            };
            let (cig, cog, ohw) = (ci / g, co / g, oh * ow);
            let plan = super::Plan::new(&w32, &geo, g, cog);
            let mut y = vec![f32::NAN; n * co * ohw];
            let mut pad = Vec::new();
            for img in 0..n {
                for grp in 0..g {
                    let xg = &x32[(img * ci + grp * cig) * h * w..][..cig * h * w];
                    let yg = &mut y[(img * co + grp * cog) * ohw..][..cog * ohw];
                    plan.run(xg, &geo, grp, yg, &mut pad);
                }
            }
            for (i, v) in y.iter_mut().enumerate() {
                *v += b32[(i / ohw) % co];
            }
            assert_close(&up(&y), &want.data, 1e-5);
        }
    }

    /// The kernel itself (when this CPU has it) on a padded, strided, grouped layer, so the
    /// test cannot pass through the im2col path alone.
    #[test]
    fn plan_runs_one_group_like_the_reference_loop() {
        if !super::available() {
            return;
        }
        let g = super::Geometry {
            c: 3,
            h: 9,
            w: 6,
            kh: 3,
            kw: 2,
            s: 2,
            p: 1,
            d: 2,
            oh: (9 + 2 - 2 * 2 - 1) / 2 + 1,
            ow: (6 + 2 - 2 - 1) / 2 + 1,
        };
        let (groups, cog) = (2, 10);
        let taps = g.c * g.kh * g.kw;
        let x: Vec<f32> = random(groups * g.c * g.h * g.w, 7)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let w: Vec<f32> = random(groups * cog * taps, 8)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let plan = super::Plan::new(&w, &g, groups, cog);
        let ohw = g.oh * g.ow;
        let mut pad = Vec::new();
        for grp in 0..groups {
            let xg = &x[grp * g.c * g.h * g.w..][..g.c * g.h * g.w];
            let mut y = vec![f32::NAN; cog * ohw];
            plan.run(xg, &g, grp, &mut y, &mut pad);
            let mut want = vec![0.0f64; cog * ohw];
            for o in 0..cog {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = 0.0f64;
                        for ch in 0..g.c {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.s + ki * g.d) as isize - g.p as isize;
                                    let ix = (ox * g.s + kj * g.d) as isize - g.p as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = xg[(ch * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((grp * cog + o) * g.c + ch) * g.kh * g.kw
                                        + ki * g.kw
                                        + kj];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        want[o * ohw + oy * g.ow + ox] = acc;
                    }
                }
            }
            let got: Vec<f64> = y.iter().map(|&v| v as f64).collect();
            assert_close(&got, &want, 1e-5);
        }
    }
}
