//! 2-d convolution: in f32 on AVX2 + FMA a direct kernel (direct_conv.rs), otherwise (f64,
//! other CPUs) im2col + GEMM; one image, or a group of small images, per task. The f32
//! forward pass runs wide 3x3 stride-1 layers as Winograd F(4x4, 3x3) (winograd.rs).

use rayon::prelude::*;

use super::direct_conv::{self, Geometry};
use super::float::{gemm, Float, GemmDims};
use super::Tensor;
use super::{winograd, winograd64};
use crate::ir::Conv2d;

/// What runs on each image's output while it is still in cache: an eval-mode batch norm
/// (`v * scale[c] + shift[c]`, the same arithmetic as the unfused pass) and maybe a ReLU.
pub struct Epilogue<T> {
    pub scale: Vec<T>,
    pub shift: Vec<T>,
    pub relu: bool,
}

/// [`conv2d`] with Winograd for wide 3x3 stride-1 layers, their filters transformed once
/// into `cache`: F(4x4, 3x3) in an f32 forward pass (`WINOGRAD_CHANNELS`), F(2x2, 3x3) in
/// every f64 run (winograd64.rs); anything else as `conv2d`.
pub fn conv2d_fast<T: Float>(
    x: &Tensor<T>,
    c: &Conv2d,
    w: &[T],
    bias: Option<&[T]>,
    epilogue: Option<&Epilogue<T>>,
    cache: (&winograd::Cache, &winograd64::Cache),
) -> Tensor<T> {
    let [n, ci, h, wd] = x.dims4();
    if let (true, Some(xf), Some(wf)) =
        (winograd64::fits(c, h, wd), T::as_f64(&x.data), T::as_f64(w))
    {
        let s = winograd64::Shape {
            n,
            ci,
            co: c.out_channels,
            h,
            w: wd,
            p: c.padding,
        };
        let (oh, ow) = s.out();
        let u = cache.1.filters(wf, c.out_channels, ci);
        let mut out = T::zeros(n * c.out_channels * oh * ow);
        each_block(&mut out, c.out_channels * oh * ow, n, |img, y| {
            let yf = T::as_f64_mut(y).expect("T is f64: as_f64 answered");
            winograd64::conv(&xf[img * ci * h * wd..][..ci * h * wd], &s, u, yf);
            finish(y, oh * ow, bias, epilogue);
        });
        return Tensor {
            shape: vec![n, c.out_channels, oh, ow],
            data: out,
        };
    }
    let wide = c.in_channels >= WINOGRAD_CHANNELS && c.out_channels >= WINOGRAD_CHANNELS;
    if let (true, true, Some(xf), Some(wf)) = (
        wide,
        winograd::fits(c, h, wd),
        T::as_f32(&x.data),
        T::as_f32(w),
    ) {
        let s = winograd::Shape {
            n,
            ci,
            co: c.out_channels,
            h,
            w: wd,
            p: c.padding,
        };
        let (oh, ow) = (h + 2 * c.padding - 2, wd + 2 * c.padding - 2);
        fn as32<T: Float>(v: &[T]) -> &[f32] {
            T::as_f32(v).expect("T is f32: as_f32 answered")
        }
        let fin = winograd::Finish {
            bias: bias.map(as32::<T>),
            scale_shift: epilogue.map(|e| (as32(&e.scale), as32(&e.shift))),
            relu: epilogue.is_some_and(|e| e.relu),
        };
        let mut out = T::zeros(n * c.out_channels * oh * ow);
        let yf = T::as_f32_mut(&mut out).expect("T is f32: as_f32 answered");
        winograd::conv(xf, &s, wf, cache.0, &fin, yf);
        return Tensor {
            shape: vec![n, c.out_channels, oh, ow],
            data: out,
        };
    }
    conv2d(x, c, w, bias, epilogue)
}

/// Input and output channels from which a 3x3 stride-1 layer runs as Winograd in the
/// forward pass.
const WINOGRAD_CHANNELS: usize = 64;

/// PyTorch `conv2d`: cross-correlation with zero padding, stride, dilation and groups.
/// `x` is `[N, C, H, W]`, `w` is OIHW, the result `[N, O, OH, OW]`.
pub fn conv2d<T: Float>(
    x: &Tensor<T>,
    c: &Conv2d,
    w: &[T],
    bias: Option<&[T]>,
    epilogue: Option<&Epilogue<T>>,
) -> Tensor<T> {
    let [n, ci, h, wd] = x.dims4();
    let [kh, kw] = c.kernel;
    let (s, p, d, g) = (c.stride, c.padding, c.dilation, c.groups);
    let oh = (h + 2 * p - d * (kh - 1) - 1) / s + 1;
    let ow = (wd + 2 * p - d * (kw - 1) - 1) / s + 1;
    let co = c.out_channels;
    let (cig, cog) = (ci / g, co / g);
    let kk = cig * kh * kw;
    let ohw = oh * ow;
    // A 1x1, stride-1, unpadded conv reads the input planes as they are.
    let direct = kh == 1 && kw == 1 && s == 1 && p == 0;
    let geo = Geometry {
        c: cig,
        h,
        w: wd,
        kh,
        kw,
        s,
        p,
        d,
        oh,
        ow,
    };
    let mut out = T::zeros(n * co * ohw);
    let finish = |y: &mut [T]| finish(y, ohw, bias, epilogue);
    // The direct kernel threads over images only; a batch smaller than the thread count
    // takes the GEMM, which threads inside the product.
    if let (Some(xf), Some(wf)) = (T::as_f32(&x.data), T::as_f32(w)) {
        if use_direct(&geo, cog) && super::parallel_images(n) {
            let plan = direct_conv::Plan::new(wf, &geo, g, cog);
            out.par_chunks_mut(co * ohw)
                .enumerate()
                .for_each(|(img, y)| {
                    f32::with_scratch(|pad, _| {
                        let yf = T::as_f32_mut(y).expect("T is f32: as_f32 answered");
                        for grp in 0..g {
                            let xg = &xf[(img * ci + grp * cig) * h * wd..][..cig * h * wd];
                            let yg = &mut yf[grp * cog * ohw..][..cog * ohw];
                            plan.run(xg, &geo, grp, yg, pad);
                        }
                    });
                    finish(y);
                });
            return Tensor {
                shape: vec![n, co, oh, ow],
                data: out,
            };
        }
    }
    let threads = rayon::current_num_threads().max(1);
    // Images per GEMM: small feature maps share one product so the weights are packed
    // once per group rather than once per image, keeping enough groups for the threads.
    let per_group = if ohw >= GROUP_COLUMNS {
        1
    } else {
        GROUP_COLUMNS.div_ceil(ohw).min(n.div_ceil(threads)).max(1)
    };
    if per_group == 1 {
        let image = |img: usize, y: &mut [T], buf: &mut Vec<T>| {
            let xi = &x.data[img * ci * h * wd..(img + 1) * ci * h * wd];
            for grp in 0..g {
                let xg = &xi[grp * cig * h * wd..(grp + 1) * cig * h * wd];
                let cols: &[T] = if direct {
                    xg
                } else {
                    buf.resize(kk * ohw, T::zero());
                    im2col(xg, &geo, buf, ohw);
                    buf
                };
                let wg = &w[grp * cog * kk..(grp + 1) * cog * kk];
                let yg = &mut y[grp * cog * ohw..(grp + 1) * cog * ohw];
                gemm(&GemmDims::dense(cog, kk, ohw), wg, cols, yg);
            }
            finish(y);
        };
        each_block(&mut out, co * ohw, n, |img, y| {
            T::with_scratch(|buf, _| image(img, y, buf))
        });
    } else {
        let group = |first: usize, y: &mut [T], cols: &mut Vec<T>, prod: &mut Vec<T>| {
            let count = y.len() / (co * ohw);
            let ld = count * ohw;
            cols.resize(kk * ld, T::zero());
            prod.resize(cog * ld, T::zero());
            for grp in 0..g {
                for i in 0..count {
                    let img = first + i;
                    let xg = &x.data
                        [(img * ci + grp * cig) * h * wd..(img * ci + (grp + 1) * cig) * h * wd];
                    im2col(xg, &geo, &mut cols[i * ohw..], ld);
                }
                let wg = &w[grp * cog * kk..(grp + 1) * cog * kk];
                gemm(&GemmDims::dense(cog, kk, ld), wg, cols, prod);
                // [O, images * HW] back to [images, O, HW].
                for i in 0..count {
                    for o in 0..cog {
                        let dst = (i * co + grp * cog + o) * ohw;
                        y[dst..dst + ohw]
                            .copy_from_slice(&prod[o * ld + i * ohw..o * ld + (i + 1) * ohw]);
                    }
                }
            }
            y.chunks_mut(co * ohw).for_each(finish);
        };
        each_block(
            &mut out,
            per_group * co * ohw,
            n.div_ceil(per_group),
            |k, y| T::with_scratch(|cols, prod| group(k * per_group, y, cols, prod)),
        );
    }
    Tensor {
        shape: vec![n, co, oh, ow],
        data: out,
    }
}

/// Runs `f` on each `len`-long block of `out` (an image's output, or a group's) with its
/// index, on the pool's threads when the `blocks` of them are enough to share
/// ([`super::parallel_images`]).
fn each_block<T: Float>(
    out: &mut [T],
    len: usize,
    blocks: usize,
    f: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    if super::parallel_images(blocks) {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(k, y)| f(k, y));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(k, y)| f(k, y));
    }
}

/// Bias, then the fused batch norm and ReLU, on one image's `[O, HW]` output.
pub(super) fn finish<T: Float>(
    y: &mut [T],
    ohw: usize,
    bias: Option<&[T]>,
    epilogue: Option<&Epilogue<T>>,
) {
    for (o, plane) in y.chunks_mut(ohw).enumerate() {
        if let Some(b) = bias {
            let bv = b[o];
            plane.iter_mut().for_each(|v| *v += bv);
        }
        if let Some(e) = epilogue {
            let (a, b) = (e.scale[o], e.shift[o]);
            if e.relu {
                plane
                    .iter_mut()
                    .for_each(|v| *v = super::act::relu(*v * a + b));
            } else {
                plane.iter_mut().for_each(|v| *v = *v * a + b);
            }
        }
    }
}

/// Columns one GEMM should have at least before images are grouped.
const GROUP_COLUMNS: usize = 1024;

/// Whether the direct kernel runs this layer (f32 only; the caller checks the type): at
/// least one full block of 8 output channels, and a group's weights small enough
/// (`WEIGHTS_MAX`) to stay in L2 while every 8-pixel tile streams them. Larger layers
/// (ResNet-18 from layer 2 on) run faster as GEMMs.
/// Whether an f32 forward runs this conv (on `h x w` inputs) with the direct kernel, image
/// by image, when images run in parallel: not Winograd, and within the kernel's limits.
pub(super) fn takes_direct_kernel(c: &Conv2d, h: usize, w: usize) -> bool {
    let wide = c.in_channels >= WINOGRAD_CHANNELS && c.out_channels >= WINOGRAD_CHANNELS;
    if wide && winograd::fits(c, h, w) {
        return false;
    }
    let [kh, kw] = c.kernel;
    let (s, p, d) = (c.stride, c.padding, c.dilation);
    if h + 2 * p < d * (kh - 1) + 1 || w + 2 * p < d * (kw - 1) + 1 || c.groups == 0 {
        return false;
    }
    let geo = Geometry {
        c: c.in_channels / c.groups,
        h,
        w,
        kh,
        kw,
        s,
        p,
        d,
        oh: (h + 2 * p - d * (kh - 1) - 1) / s + 1,
        ow: (w + 2 * p - d * (kw - 1) - 1) / s + 1,
    };
    use_direct(&geo, c.out_channels / c.groups)
}

fn use_direct(g: &Geometry, cog: usize) -> bool {
    direct_conv::available()
        && cog >= 8
        && g.oh * g.ow > 0
        && cog * g.c * g.kh * g.kw <= WEIGHTS_MAX
}

/// Weights per group (f32 values) up to which the direct kernel runs: 160 KB, which
/// covers ResNetCifar-18 at width 1/8 and ResNet-18's stem and layer 1 (where the direct
/// kernel used about as much CPU time as the GEMM; layer 2's 576 KB took 1.3x).
const WEIGHTS_MAX: usize = 40 * 1024;

/// Unfolds `x` (`[C, H, W]`) into `dst` as a `[C*kh*kw, OH*OW]` matrix whose rows start
/// `ld` apart; padding reads 0.
fn im2col<T: Float>(x: &[T], g: &Geometry, dst: &mut [T], ld: usize) {
    let ohw = g.oh * g.ow;
    let mut row = 0;
    for ch in 0..g.c {
        let src = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let dst = &mut dst[row * ld..row * ld + ohw];
                row += 1;
                // Output columns whose input column lies inside the image: [lo, hi).
                let off = (kj * g.d) as isize - g.p as isize;
                let lo = if off < 0 {
                    ((-off) as usize).div_ceil(g.s)
                } else {
                    0
                };
                let hi = if (g.w as isize) > off {
                    ((g.w as isize - off) as usize).div_ceil(g.s).min(g.ow)
                } else {
                    0
                }
                .max(lo.min(g.ow));
                let lo = lo.min(hi);
                // One fill for the whole tap when it touches padding, instead of short
                // fills per output row (tiny maps made those calls a third of the time;
                // zeroing only the padding, row by row, measured 1.3x slower on
                // ResNetCifar-18 at width 1/8).
                let rows_out = (0..g.oh).any(|oy| {
                    let ih = (oy * g.s + ki * g.d) as isize - g.p as isize;
                    ih < 0 || ih >= g.h as isize
                });
                if lo > 0 || hi < g.ow || rows_out {
                    dst.fill(T::zero());
                }
                for oy in 0..g.oh {
                    let ih = (oy * g.s + ki * g.d) as isize - g.p as isize;
                    let drow = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                    if ih < 0 || ih >= g.h as isize || hi <= lo {
                        continue;
                    }
                    let srow = &src[ih as usize * g.w..(ih as usize + 1) * g.w];
                    if g.s == 1 {
                        let start = (lo as isize + off) as usize;
                        drow[lo..hi].copy_from_slice(&srow[start..start + hi - lo]);
                    } else {
                        for (ox, v) in drow[lo..hi].iter_mut().enumerate() {
                            *v = srow[(((lo + ox) * g.s) as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}
