//! What goes into new rows, entries and columns: the [`Fill`] trait each widening method
//! implements, its keyed random streams, and the array helpers the fills share.

use ndarray::{concatenate, ArrayD, Axis, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::chacha::Position;
use super::Init;
use crate::cpu::lanes_sum;
use crate::ir::ParamKind;

/// What a method puts into the new rows, entries and columns of one space. Every call gets
/// its own random stream, keyed by (seed, step, tensor, part) ([`keyed_rng`]), so a tensor
/// can be rewritten on its own, in any order, to the same bits.
pub trait Fill: Sync {
    /// `E`, the channels the space gains.
    fn added(&self) -> usize;
    /// New output rows `[E * per, ...]` of producer weight `w` (`[C * per, ...]`), where a
    /// channel owns `per` consecutive rows (a kv group of attention owns its heads' rows).
    fn rows(&self, w: &ArrayD<f64>, per: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64>;
    /// New entries `[E * per]` of a producer's bias `b` (`[C * per]`): zero unless the
    /// method copies.
    fn bias(&self, _b: &ArrayD<f64>, per: usize, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        ArrayD::zeros(IxDyn(&[self.added() * per]))
    }
    /// New features `[..., E]` of a writer whose features lie on the last axis (a token
    /// embedding `[V, C]`, a position table `[T, C]`, a class token `[C]`): zero unless the
    /// method copies or draws them.
    fn features(&self, t: &ArrayD<f64>, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        ArrayD::zeros(with_dim(t, t.ndim() - 1, self.added()))
    }
    /// The whole new scale (`weight`) or shift (`bias`) `[C + E]` of a layer or RMS norm
    /// reading the space, from `t` (`[C]`): new entries at their defaults unless the
    /// method copies or rescales.
    fn norm(&self, kind: ParamKind, t: &ArrayD<f64>, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        append0(t.clone(), &default_entries(kind, self.added()))
    }
    /// New entries `[E * cols]` of a channel-wise parameter `t` (`[C * cols]`): the
    /// parameter's defaults unless the method copies (defaults are equal for R2R's halves).
    fn entries(
        &self,
        kind: ParamKind,
        _t: &ArrayD<f64>,
        cols: usize,
        _rng: &mut ChaCha8Rng,
    ) -> ArrayD<f64> {
        default_entries(kind, self.added() * cols)
    }
    /// The whole new consumer weight `[O, (C + E) * cols, ...]` from `w` (`[O, C * cols, ...]`).
    fn columns(&self, w: &ArrayD<f64>, cols: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64>;
    /// How this fill's tensors can be computed range by range, for a streamed tensor
    /// ([`super::lazy`]); `None`: only whole.
    fn lazily(&self) -> Option<Lazily> {
        None
    }
}

/// The fills whose tensors [`super::lazy`] computes range by range.
#[derive(Debug, Clone, Copy)]
pub enum Lazily {
    /// R2WiderR: rows `[w; u; u]`, columns `[w, v, -v]` (`u`, `v` from [`FillCtx::free`]).
    R2r(FillCtx),
    /// A normalised stream's new features held at zero with R2R's readers (RMS norms):
    /// writers' rows and features zero, readers' columns `[w, v, -v]` as R2WiderR's.
    HeldZero(FillCtx),
}

impl Lazily {
    pub fn ctx(self) -> FillCtx {
        match self {
            Lazily::R2r(c) | Lazily::HeldZero(c) => c,
        }
    }
}

/// Which call of a [`Fill`] a tensor gets in a step, or the step's own draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Rows,
    Bias,
    Entries,
    Columns,
    /// A draw that belongs to the step, not to a tensor (Net2WiderNet's replica map).
    Step,
    // Later parts go after `Step`: a part's number keys its draws, so earlier ones keep
    // their bits.
    /// A writer's features on its last axis ([`Fill::features`]).
    Features,
    /// A norm's scale or shift ([`Fill::norm`]).
    Norm,
}

/// The random stream of one call: a function of (seed, step, tensor, part) only, so the
/// same call draws the same bits whatever ran before it (in memory, streamed, in parallel).
pub fn keyed_rng(seed: u64, step: usize, tensor: &str, part: Part) -> ChaCha8Rng {
    // FNV-1a: stable across Rust versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tensor.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(step as u64).to_le_bytes());
    key[16..24].copy_from_slice(&h.to_le_bytes());
    key[24..32].copy_from_slice(&(part as u64 + 1).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Shared sizes of a fill and its init rule.
#[derive(Debug, Clone, Copy)]
pub struct FillCtx {
    /// Channels before.
    pub c: usize,
    /// Channels added.
    pub e: usize,
    pub init: Init,
}

impl FillCtx {
    /// Free weights shaped like `shape`, scaled like `existing` (or He for `fan_in`).
    pub fn free(
        &self,
        rng: &mut ChaCha8Rng,
        shape: &[usize],
        existing: &ArrayD<f64>,
        fan_in: usize,
    ) -> ArrayD<f64> {
        let n: usize = shape.iter().product();
        let v = draw_sampled(rng, n, self.sampler(|| std_of(existing), fan_in));
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape")
    }

    /// How [`FillCtx::free`] draws each value, given the standard deviation of the
    /// existing weights (asked only by [`Init::Match`]) and the fan-in.
    pub fn sampler(&self, std: impl FnOnce() -> f64, fan_in: usize) -> Sampler {
        let he = || (2.0 / fan_in.max(1) as f64).sqrt();
        match self.init {
            Init::Match => {
                // U(-s*sqrt(3), s*sqrt(3)) has standard deviation s (the paper's section 6
                // writes s/sqrt(3), which would give s/3).
                let s = std();
                let s = if s > 0.0 { s } else { he() };
                Sampler::Uniform(s * 3f64.sqrt())
            }
            Init::He => Sampler::Normal(he()),
            Init::Zero => Sampler::Zero,
        }
    }
}

/// How one free value is drawn (the same bits as [`he`] and [`FillCtx::free`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// U(-b, b) from one f64 draw (two words).
    Uniform(f64),
    /// `s` times a standard normal (four words).
    Normal(f64),
    /// Zero, drawing nothing.
    Zero,
}

impl Sampler {
    /// RNG words per value.
    pub fn words(self) -> u128 {
        match self {
            Sampler::Uniform(_) => 2,
            Sampler::Normal(_) => 4,
            Sampler::Zero => 0,
        }
    }

    /// The next value from `rng`.
    pub fn value(self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Sampler::Uniform(b) => uniform(rng, -b, b),
            Sampler::Normal(s) => s * crate::params::normal(rng),
            Sampler::Zero => 0.0,
        }
    }

    /// Fills `out` with the next values from `rng`, as [`Sampler::value`] one after
    /// another would.
    pub fn fill(self, rng: &mut ChaCha8Rng, out: &mut [f64]) {
        let mut pos = Position::of(rng);
        self.fill_at(&mut pos, out);
        rng.set_word_pos(pos.word());
    }

    /// [`Sampler::fill`] from a stream's position, from its words in bulk
    /// ([`super::chacha`]): rand's `f64` is the top 53 bits of two consecutive words, low
    /// word first, times 2^-53.
    pub fn fill_at(self, pos: &mut Position, out: &mut [f64]) {
        let words = self.words() as usize;
        if words == 0 {
            out.fill(0.0);
            return;
        }
        // Pairs of words as rand reads a u64: the low word first.
        let mut buf = [0u64; 512];
        for c in out.chunks_mut(2 * buf.len() / words) {
            let buf = &mut buf[..words / 2 * c.len()];
            // SAFETY: the same memory as u32s (a smaller alignment, every bit pattern valid).
            let w =
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), 2 * buf.len()) };
            pos.fill(w);
            if cfg!(target_endian = "big") {
                buf.iter_mut().for_each(|u| *u = u.rotate_left(32));
            }
            match self {
                Sampler::Uniform(b) => uniforms(-b, b, buf, c),
                Sampler::Normal(s) => {
                    for (x, w) in c.iter_mut().zip(buf.chunks_exact(2)) {
                        *x = s * crate::params::box_muller(unit(w[0]), unit(w[1]));
                    }
                }
                Sampler::Zero => unreachable!("draws no words"),
            }
        }
    }
}

/// rand's f64 in [0, 1) from a u64: its top 53 bits times 2^-53.
#[inline(always)]
fn unit(u: u64) -> f64 {
    (u >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

crate::avx512_twice! {
    /// U(lo, hi) values from rand's u64 draws, as rand's `lo + (hi - lo) * f64` gives them.
    fn uniforms(lo: f64, hi: f64, draws: &[u64], out: &mut [f64]) {
        for (x, &u) in out.iter_mut().zip(draws) {
            *x = lo + (hi - lo) * unit(u);
        }
    }
}

/// `n` values of `s` from `rng`: [`draw`] with [`Sampler::fill`] (the same bits).
pub fn draw_sampled(rng: &mut ChaCha8Rng, n: usize, s: Sampler) -> Vec<f64> {
    let start = rng.get_word_pos();
    let mut v = vec![0.0; n];
    if n <= DRAW_CHUNK {
        s.fill(rng, &mut v);
        return v;
    }
    let base = rng.clone();
    v.par_chunks_mut(DRAW_CHUNK).enumerate().for_each(|(i, c)| {
        let mut r = base.clone();
        r.set_word_pos(start + (i * DRAW_CHUNK) as u128 * s.words());
        s.fill(&mut r, c);
    });
    rng.set_word_pos(start + n as u128 * s.words());
    v
}

/// He-normal weights for `shape` with `fan_in` (random padding).
pub fn he(rng: &mut ChaCha8Rng, shape: &[usize], fan_in: usize) -> ArrayD<f64> {
    let s = (2.0 / fan_in.max(1) as f64).sqrt();
    let n: usize = shape.iter().product();
    let v = draw_sampled(rng, n, Sampler::Normal(s));
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape")
}

/// Values per parallel chunk of [`draw`].
const DRAW_CHUNK: usize = 1 << 15;

/// `n` values `f(rng)`, each drawing exactly `words` RNG words: the same values as drawing
/// them one after another, computed in parallel chunks that each start the stream at their
/// first value's word; `rng` ends after the last value's words.
pub fn draw(
    rng: &mut ChaCha8Rng,
    n: usize,
    words: u128,
    f: impl Fn(&mut ChaCha8Rng) -> f64 + Sync,
) -> Vec<f64> {
    const CHUNK: usize = DRAW_CHUNK;
    let start = rng.get_word_pos();
    if n <= CHUNK {
        let v = (0..n).map(|_| f(rng)).collect();
        debug_assert_eq!(rng.get_word_pos(), start + n as u128 * words);
        return v;
    }
    let base = rng.clone();
    let mut v = vec![0.0; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut r = base.clone();
        r.set_word_pos(start + (i * CHUNK) as u128 * words);
        for x in c {
            *x = f(&mut r);
        }
    });
    rng.set_word_pos(start + n as u128 * words);
    v
}

pub(crate) fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    use rand::Rng;
    lo + (hi - lo) * rng.random::<f64>()
}

/// Population standard deviation of a tensor's values.
///
/// Computed in fixed chunks, each summed in 32 lanes (four chains of 8-wide adds, which
/// overlap: with one chain the sums waited on each add's latency): each chunk's sum and
/// squared deviations from its own mean, the chunks then combined in order (Chan et al.'s
/// pairwise update). The same bits however many threads run it, fast on the hundreds of
/// millions of values of a wide layer (a plain sequential sum was a tenth of a large
/// widening), and one pass over values that are computed on demand ([`chunk_moments`]; the
/// global mean first took a pass of its own).
pub fn std_of(t: &ArrayD<f64>) -> f64 {
    let t = t.as_standard_layout();
    let v = t.as_slice().expect("standard layout");
    let parts: Vec<Moments> = v.par_chunks(SUM_CHUNK).map(moments).collect();
    combined_std(&parts, v.len())
}

/// Values `[start, start + out.len())` of a tensor computed on demand.
pub type Values<'a> = dyn Fn(usize, &mut [f64]) -> crate::error::Result<()> + Sync + 'a;

/// Values per chunk of [`std_of`].
pub(crate) const SUM_CHUNK: usize = 1 << 16;

/// A chunk's sum, its squared deviations from its own mean, and its length.
pub(crate) type Moments = (f64, f64, usize);

crate::avx512_twice! {
    fn moments(c: &[f64]) -> Moments {
        let sum = lanes_sum::<32, f64>(c, |x| x);
        let mean = sum / c.len().max(1) as f64;
        (sum, lanes_sum::<32, f64>(c, |x| (x - mean) * (x - mean)), c.len())
    }
}

/// The standard deviation of `n` values from their chunks' [`Moments`], in order.
pub(crate) fn combined_std(parts: &[Moments], n: usize) -> f64 {
    let count = n.max(1) as f64;
    let mean = parts.iter().map(|p| p.0).sum::<f64>() / count;
    let squares: f64 = parts
        .iter()
        .map(|&(sum, m2, k)| {
            let d = sum / k.max(1) as f64 - mean;
            m2 + k as f64 * d * d
        })
        .sum();
    (squares / count).sqrt()
}

/// The [`Moments`] of each [`SUM_CHUNK`]-long chunk of `n` values that `get(start, out)`
/// computes range by range, in order, the first `known.len()` taken from `known` (whole
/// chunks of the same values, summed before). With [`combined_std`], [`std_of`]'s bits
/// without the values in memory at once.
pub(crate) fn chunk_moments(
    n: usize,
    get: &Values,
    known: &[Moments],
) -> crate::error::Result<Vec<Moments>> {
    (0..n.div_ceil(SUM_CHUNK))
        .into_par_iter()
        .map_init(Vec::new, |buf, k| {
            if let Some(&m) = known.get(k) {
                return Ok(m);
            }
            let start = k * SUM_CHUNK;
            buf.resize((n - start).min(SUM_CHUNK), 0.0);
            get(start, buf)?;
            Ok(moments(buf))
        })
        .collect()
}

/// The shape of `t` with dimension `axis` set to `len`.
pub fn with_dim(t: &ArrayD<f64>, axis: usize, len: usize) -> Vec<usize> {
    let mut s = t.shape().to_vec();
    s[axis] = len;
    s
}

/// Fan-in of a weight whose input dimension becomes `inputs`.
pub fn fan_in(t: &ArrayD<f64>, inputs: usize) -> usize {
    inputs * t.shape().iter().skip(2).product::<usize>()
}

/// Default entries of a channel-wise parameter (BN: gamma 1, beta 0, mean 0, var 1;
/// PReLU 0.25), `n` of them.
pub fn default_entries(kind: ParamKind, n: usize) -> ArrayD<f64> {
    let v = match kind {
        ParamKind::BnWeight | ParamKind::RunningVar => 1.0,
        ParamKind::PreluWeight => 0.25,
        _ => 0.0,
    };
    ArrayD::from_elem(IxDyn(&[n]), v)
}

/// Channel indices expanded to column indices, `cols` per channel.
pub fn block_index(channels: impl IntoIterator<Item = usize>, cols: usize) -> Vec<usize> {
    channels
        .into_iter()
        .flat_map(|c| c * cols..(c + 1) * cols)
        .collect()
}

/// `[a; b]` along axis 0, reusing `a`'s buffer (growing it in place when the allocator
/// can) instead of copying both.
pub fn append0(a: ArrayD<f64>, b: &ArrayD<f64>) -> ArrayD<f64> {
    let mut shape = a.shape().to_vec();
    if !a.is_standard_layout() || shape.is_empty() || b.shape().get(1..) != shape.get(1..) {
        return cat(0, &[&a, b]);
    }
    shape[0] += b.shape()[0];
    let n = a.len();
    // Standard layout: the elements are `n` consecutive values from the offset.
    let (mut v, offset) = a.into_raw_vec_and_offset();
    v.drain(..offset.unwrap_or(0));
    v.truncate(n);
    let b = b.as_standard_layout();
    v.extend_from_slice(b.as_slice().expect("standard layout"));
    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("length matches shape")
}

/// `[w, v, -v]` along axis 1 (R2WiderR's consumer columns), without materialising `-v`.
pub fn cat_pair(w: &ArrayD<f64>, v: &ArrayD<f64>) -> ArrayD<f64> {
    let (ws, vs) = (w.as_standard_layout(), v.as_standard_layout());
    let outer = w.shape()[0];
    if outer == 0 || w.ndim() < 2 {
        let minus = v.mapv(|x| -x);
        return cat(1, &[w, v, &minus]);
    }
    let (ws, vs) = (
        ws.as_slice().expect("standard"),
        vs.as_slice().expect("standard"),
    );
    let (a, b) = (ws.len() / outer, vs.len() / outer);
    let mut shape = w.shape().to_vec();
    shape[1] += 2 * v.shape()[1];
    let mut out = vec![0.0; outer * (a + 2 * b)];
    if a + 2 * b > 0 {
        out.par_chunks_mut(a + 2 * b)
            .enumerate()
            .for_each(|(o, row)| {
                row[..a].copy_from_slice(&ws[o * a..(o + 1) * a]);
                let src = &vs[o * b..(o + 1) * b];
                row[a..a + b].copy_from_slice(src);
                for (x, &y) in row[a + b..].iter_mut().zip(src) {
                    *x = -y;
                }
            });
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).expect("length matches shape")
}

/// `[a; b]` along `axis`.
pub fn cat(axis: usize, parts: &[&ArrayD<f64>]) -> ArrayD<f64> {
    // Standard-layout parts: each output block (one index of the axes before `axis`) is
    // the parts' blocks one after another, copied whole.
    let std: Vec<_> = parts.iter().map(|p| p.as_standard_layout()).collect();
    let slices: Option<Vec<&[f64]>> = std.iter().map(|p| p.as_slice()).collect();
    let outer: usize = parts[0].shape()[..axis].iter().product();
    if let (Some(slices), true) = (slices, outer > 0) {
        let mut shape = parts[0].shape().to_vec();
        shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
        debug_assert!(parts.iter().all(|p| p.ndim() == shape.len()
            && p.shape()
                .iter()
                .enumerate()
                .all(|(i, &d)| i == axis || d == shape[i])));
        let widths: Vec<usize> = slices.iter().map(|s| s.len() / outer).collect();
        let block: usize = widths.iter().sum();
        let total = outer * block;
        let mut v = Vec::with_capacity(total);
        if outer == 1 || block == 0 {
            for o in 0..outer {
                for (s, &w) in slices.iter().zip(&widths) {
                    v.extend_from_slice(&s[o * w..(o + 1) * w]);
                }
            }
        } else {
            v.resize(total, 0.0);
            v.par_chunks_mut(block).enumerate().for_each(|(o, out)| {
                let mut at = 0;
                for (s, &w) in slices.iter().zip(&widths) {
                    out[at..at + w].copy_from_slice(&s[o * w..(o + 1) * w]);
                    at += w;
                }
            });
        }
        return ArrayD::from_shape_vec(IxDyn(&shape), v).expect("length matches shape");
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(axis), &views).expect("parts agree off the axis")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bulk draws equal one call per value, from any word position (odd ones too),
    /// across buffer and parallel-chunk boundaries, and leave the stream where those
    /// calls would.
    #[test]
    fn bulk_draws_match_one_value_at_a_time() {
        for s in [Sampler::Uniform(0.37), Sampler::Normal(1.3), Sampler::Zero] {
            for (start, n) in [(0u128, 1usize), (1, 255), (7, 257), (64, 1000), (3, 70001)] {
                let mut a = keyed_rng(5, 2, "t.weight", Part::Columns);
                a.set_word_pos(start);
                let mut b = a.clone();
                let want: Vec<f64> = (0..n).map(|_| s.value(&mut a)).collect();
                let mut got = vec![f64::NAN; n];
                s.fill(&mut b, &mut got);
                assert!(want
                    .iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
                assert_eq!(a.get_word_pos(), b.get_word_pos());
                // And in parallel chunks, as `draw` does.
                let mut c = keyed_rng(5, 2, "t.weight", Part::Columns);
                c.set_word_pos(start);
                let par = draw_sampled(&mut c, n, s);
                let mut d = keyed_rng(5, 2, "t.weight", Part::Columns);
                d.set_word_pos(start);
                let seq = draw(&mut d, n, s.words(), |r| s.value(r));
                assert!(par
                    .iter()
                    .zip(&seq)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
                assert_eq!(c.get_word_pos(), d.get_word_pos());
            }
        }
    }

    /// std_of agrees with a plain two-pass standard deviation (summed exactly enough in
    /// f64 for the comparison) on sizes around the chunk length, offsets far from zero
    /// included (where a one-pass sum of squares would cancel).
    #[test]
    fn std_of_matches_the_two_pass_definition() {
        for (n, offset) in [
            (1usize, 0.0),
            (9, 3.0),
            (65536, 0.0),
            (65537, 1e3),
            (200_003, -7.5),
        ] {
            let mut r = keyed_rng(2, 0, "s", Part::Rows);
            let v = draw(&mut r, n, 2, |r| uniform(r, -0.2, 1.1) + offset);
            let mean = v.iter().sum::<f64>() / n as f64;
            let want = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt();
            let t = ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap();
            let got = std_of(&t);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1e-300),
                "{n}: {got} vs {want}"
            );
        }
        assert_eq!(std_of(&ArrayD::zeros(IxDyn(&[0]))), 0.0);
    }

    /// The chunked standard deviation has std_of's bits, computing every chunk or taking
    /// the front ones from an earlier pass over a prefix of the values (which `get` is then
    /// never asked for).
    #[test]
    fn chunk_moments_give_std_of() {
        for n in [0usize, 1, 9, 65535, 65536, 200_003] {
            let mut r = keyed_rng(1, 0, "s", Part::Rows);
            let v = draw(&mut r, n, 2, |r| uniform(r, -0.2, 1.1));
            let t = ArrayD::from_shape_vec(IxDyn(&[n]), v.clone()).unwrap();
            let want = std_of(&t).to_bits();
            // A prefix's whole chunks, summed on their own; `get` is not asked for them
            // again when they are known.
            let front = n * 2 / 3 / SUM_CHUNK * SUM_CHUNK;
            let get = |from: usize| {
                let v = &v;
                move |at: usize, out: &mut [f64]| {
                    assert!(at >= from, "chunk at {at} computed again");
                    out.copy_from_slice(&v[at..at + out.len()]);
                    Ok(())
                }
            };
            let all = chunk_moments(n, &get(0), &[]).unwrap();
            assert_eq!(combined_std(&all, n).to_bits(), want, "{n}");
            let known = chunk_moments(front, &get(0), &[]).unwrap();
            let parts = chunk_moments(n, &get(front), &known).unwrap();
            assert_eq!(
                combined_std(&parts, n).to_bits(),
                want,
                "{n}, {front} known"
            );
        }
    }
}
