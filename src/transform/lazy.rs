//! A widened tensor computed range by range, for the streaming writer: R2WiderR's rows
//! (`[w; u; u]`) and columns (`[w, v, -v]`), and the zero rows and features of a stream
//! held at zero under RMS norms, as index maps over the teacher's values and the keyed
//! draws, so a tensor of hundreds of megabytes is written in small chunks
//! without the f64 intermediates of [`super::apply_touches`] (whose fresh pages cost more
//! than the arithmetic). Every value has the bits `apply_touches` gives it: draws come
//! from the same keyed streams at the same word positions ([`super::fill::draw`]), the
//! scales from [`chunk_moments`], which sums as [`super::std_of`] does (a scale pass after
//! a `[w; u; u]` touch takes the whole chunks of `w` from the pass before).

use super::chacha::{Position, Stream};
use super::fill::{
    chunk_moments, combined_std, draw_sampled, keyed_rng, Lazily, Moments, Part, Sampler, SUM_CHUNK,
};
use super::{whole, Touch};
use crate::error::Result;

/// The teacher's values `[start, start + out.len())`, in flat order.
pub use super::fill::Values as Base;

/// One touch as an index map from the tensor after it to the tensor before.
#[derive(Debug, Clone)]
enum Map {
    /// `[prev; u; u]`: `prev` has `n` values, `u` has `u`.
    Rows { n: usize, u: usize },
    /// Per row: `[prev_row (a), v_row (b), -v_row (b)]`.
    Columns { a: usize, b: usize },
    /// `[prev; 0]`: `prev` has `n` values, then `u` zeros (held rows).
    Zeros { n: usize, u: usize },
    /// Per row: `[prev_row (a), b zeros]` (held features).
    ZeroColumns { a: usize, b: usize },
}

impl Map {
    /// How many values at the front of the tensor the touch keeps where they were.
    fn kept_front(&self) -> usize {
        match *self {
            Map::Rows { n, .. } | Map::Zeros { n, .. } => n,
            Map::Columns { .. } | Map::ZeroColumns { .. } => 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    map: Map,
    /// The touch's free tensor (`u` or `v`, a fraction of the tensor).
    free: Free,
}

/// A free tensor's values.
#[derive(Debug, Clone)]
enum Free {
    /// Drawn whole: normal draws, whose log and cosine cost more than reading them back.
    Stored(Vec<f64>),
    /// Drawn where used from the stream's words (`start`: value 0's first), a value's bits the
    /// same wherever it is drawn: uniform draws, cheaper to draw again than to keep (a wide
    /// layer's are hundreds of megabytes).
    Keyed {
        stream: Stream,
        start: u128,
        sampler: Sampler,
    },
}

/// A widened tensor whose every value can be computed on its own.
#[derive(Debug, Clone)]
pub struct Lazy {
    layers: Vec<Layer>,
    shape: Vec<usize>,
}

impl Lazy {
    /// The tensor `name` (teacher shape `shape`, values from `base`) after `touches`,
    /// each with how its fill computes lazily (`None`: it does not); `None` when a touch is
    /// not one this can compute (then [`super::apply_touches`] does). Scales that depend
    /// on the values before a touch are computed here, from `base`.
    pub(super) fn new(
        seed: u64,
        name: &str,
        shape: &[usize],
        touches: &[(Touch, Option<Lazily>)],
        base: &Base,
        ready: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<Lazy>> {
        // First the maps, from the shapes alone: a tensor this cannot compute costs
        // nothing here.
        let mut plan = Vec::new();
        let mut shape = shape.to_vec();
        for (tc, how) in touches {
            let Some(how) = *how else { return Ok(None) };
            let ctx = how.ctx();
            let s = shape.clone();
            if !whole(tc) || ctx.e % 2 != 0 || s.len() < 2 || s.contains(&0) {
                return Ok(None);
            }
            let half = ctx.e / 2;
            let rest: usize = s[2..].iter().product();
            let n: usize = s.iter().product();
            let (map, fan_in, count) = match (tc.part, how) {
                // R2r::rows: u is `[half * per, s[1..]]`, fan-in from `s[1]`.
                (Part::Rows, Lazily::R2r(_)) => {
                    let rows = half * tc.cols;
                    let u = rows * s[1] * rest;
                    shape[0] += 2 * rows;
                    (Map::Rows { n, u }, s[1] * rest, u)
                }
                // Held::rows: `e * per` zero rows, nothing drawn.
                (Part::Rows, Lazily::HeldZero(_)) => {
                    let rows = ctx.e * tc.cols;
                    shape[0] += rows;
                    (
                        Map::Zeros {
                            n,
                            u: rows * s[1] * rest,
                        },
                        0,
                        0,
                    )
                }
                // Held::features on a 2-D table (an embedding): `e` zeros per row.
                (Part::Features, Lazily::HeldZero(_)) if s.len() == 2 => {
                    shape[1] += ctx.e;
                    (Map::ZeroColumns { a: s[1], b: ctx.e }, 0, 0)
                }
                // R2r::columns (and Held's, the same): v is `[s[0], half * cols, s[2..]]`.
                (Part::Columns, _) => {
                    let b = half * tc.cols * rest;
                    shape[1] += 2 * half * tc.cols;
                    let fan_in = (ctx.c + ctx.e) * tc.cols * rest;
                    (Map::Columns { a: n / s[0], b }, fan_in, s[0] * b)
                }
                _ => return Ok(None),
            };
            plan.push((tc, ctx, map, n, fan_in, count));
        }
        // Then each touch's scale (from the values before it) and free tensor. The teacher's
        // values must be finite (`ready` refuses them as the whole tensor's decoding does)
        // before anything reads them, except that a first scale pass that comes out finite
        // has shown it: a sum is finite only when every term is (one pass over the teacher
        // fewer, while the writer may be waiting for this tensor's bytes).
        let mut checked = false;
        let mut lazy = Lazy {
            layers: Vec::new(),
            shape,
        };
        // The last scale pass's level and chunk moments: a touch that keeps the front of
        // the tensor (`[w; u; u]`) leaves its whole chunks to the next pass as they were.
        let mut summed: Option<(usize, Vec<Moments>)> = None;
        for (tc, ctx, map, n, fan_in, count) in plan {
            if count == 0 {
                // Zeros: no scale pass, no draws.
                lazy.layers.push(Layer {
                    map,
                    free: Free::Stored(Vec::new()),
                });
                continue;
            }
            let level = lazy.layers.len();
            if level > 0 && !checked {
                ready()?;
                checked = true;
            }
            let known = match (summed.take(), level.checked_sub(1)) {
                (Some((l, mut parts)), Some(prev)) if l == prev => {
                    parts.truncate(lazy.layers[prev].map.kept_front() / SUM_CHUNK);
                    parts
                }
                _ => Vec::new(),
            };
            let mut failed = None;
            let sampler = ctx.sampler(
                || {
                    let get = |at, out: &mut [f64]| lazy.fill(level, at, out, base);
                    let std = chunk_moments(n, &get, &known).and_then(|parts| {
                        let s = combined_std(&parts, n);
                        if !checked && !s.is_finite() {
                            // Values not finite, or finite ones whose squares overflow.
                            ready()?;
                        }
                        checked = true;
                        summed = Some((level, parts));
                        Ok(s)
                    });
                    std.unwrap_or_else(|e| {
                        failed = Some(e);
                        0.0
                    })
                },
                fan_in,
            );
            if let Some(e) = failed {
                return Err(e);
            }
            let rng = &mut keyed_rng(seed, tc.step, name, tc.part);
            let free = match sampler {
                Sampler::Normal(_) => Free::Stored(draw_sampled(rng, count, sampler)),
                _ => {
                    let pos = Position::of(rng);
                    Free::Keyed {
                        stream: pos.stream(),
                        start: pos.word(),
                        sampler,
                    }
                }
            };
            lazy.layers.push(Layer { map, free });
        }
        if !checked {
            // No scale pass read the teacher (zeros, or an init that needs no scale); the
            // draws do not read it.
            ready()?;
        }
        Ok(Some(lazy))
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `[start, start + out.len())` of the tensor, in flat order.
    pub fn values(&self, start: usize, out: &mut [f64], base: &Base) -> Result<()> {
        self.fill(self.layers.len(), start, out, base)
    }

    /// [`Lazy::values`] rounded to f32, from an f32 teacher (`base` its values): the
    /// teacher's values pass through as they are, which is what f64 and back gives them.
    pub fn values_f32(
        &self,
        start: usize,
        out: &mut [f32],
        base: &(dyn Fn(usize, &mut [f32]) -> Result<()> + Sync),
    ) -> Result<()> {
        self.fill(self.layers.len(), start, out, base)
    }

    /// Values `[start, start + out.len())` of the tensor after its first `level` touches.
    fn fill<E: Element>(
        &self,
        level: usize,
        start: usize,
        out: &mut [E],
        base: &(dyn Fn(usize, &mut [E]) -> Result<()> + Sync),
    ) -> Result<()> {
        let Some(layer) = level.checked_sub(1).map(|l| &self.layers[l]) else {
            return base(start, out);
        };
        let mut at = start;
        let mut o = 0;
        while o < out.len() {
            let left = out.len() - o;
            let k = match layer.map {
                Map::Rows { n, u } => {
                    if at < n {
                        let k = (n - at).min(left);
                        self.fill(level - 1, at, &mut out[o..o + k], base)?;
                        k
                    } else {
                        let j = (at - n) % u;
                        let k = (u - j).min(left);
                        layer.draws(j, &mut out[o..o + k], false);
                        k
                    }
                }
                Map::Columns { a, b } => {
                    let (row, j) = (at / (a + 2 * b), at % (a + 2 * b));
                    if j < a {
                        let k = (a - j).min(left);
                        self.fill(level - 1, row * a + j, &mut out[o..o + k], base)?;
                        k
                    } else if j < a + b {
                        let k = (a + b - j).min(left);
                        layer.draws(row * b + j - a, &mut out[o..o + k], false);
                        k
                    } else {
                        let k = (a + 2 * b - j).min(left);
                        layer.draws(row * b + j - a - b, &mut out[o..o + k], true);
                        k
                    }
                }
                Map::Zeros { n, u } => {
                    if at < n {
                        let k = (n - at).min(left);
                        self.fill(level - 1, at, &mut out[o..o + k], base)?;
                        k
                    } else {
                        let k = (n + u - at).min(left);
                        out[o..o + k].fill(E::ZERO);
                        k
                    }
                }
                Map::ZeroColumns { a, b } => {
                    let (row, j) = (at / (a + b), at % (a + b));
                    if j < a {
                        let k = (a - j).min(left);
                        self.fill(level - 1, row * a + j, &mut out[o..o + k], base)?;
                        k
                    } else {
                        let k = (a + b - j).min(left);
                        out[o..o + k].fill(E::ZERO);
                        k
                    }
                }
            };
            at += k;
            o += k;
        }
        Ok(())
    }
}

/// The free values a thread drew last ([`Layer::draws`]): a column touch's row is
/// `[w, v, -v]`, so each `v` is asked for twice in a row and drawn once.
#[derive(Default)]
struct Drawn {
    /// The stream, its first word and the sampler (a later widening in this process may
    /// draw from the same stream at another scale).
    key: Option<(Stream, u128, Sampler)>,
    /// The index of `values[0]` in the free tensor.
    from: usize,
    values: Vec<f64>,
}

impl Drawn {
    fn to(&self) -> usize {
        self.from + self.values.len()
    }
}

thread_local! {
    static LAST: std::cell::RefCell<Drawn> = std::cell::RefCell::default();
}

/// What a tensor's values are computed in: f64, or f32 where both the teacher and the
/// output are f32.
trait Element: Copy {
    const ZERO: Self;
    /// `v` rounded to this type (as encoding the output rounds it).
    fn from_f64(v: f64) -> Self;
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Layer {
    /// Values `j, j + 1, ...` of the touch's free tensor into `out`, negated if `neg` (the
    /// same bits negated before or after rounding: rounding is symmetric).
    fn draws<E: Element>(&self, j: usize, out: &mut [E], neg: bool) {
        let put = |out: &mut [E], free: &[f64]| {
            if neg {
                out.iter_mut()
                    .zip(free)
                    .for_each(|(x, &v)| *x = E::from_f64(-v));
            } else {
                out.iter_mut()
                    .zip(free)
                    .for_each(|(x, &v)| *x = E::from_f64(v));
            }
        };
        match &self.free {
            Free::Stored(free) => put(out, &free[j..j + out.len()]),
            &Free::Keyed {
                stream,
                start,
                sampler,
            } => LAST.with_borrow_mut(|last| {
                let key = Some((stream, start, sampler));
                let held = last.key == key && last.from <= j && j + out.len() <= last.to();
                if !held {
                    last.key = key;
                    last.from = j;
                    last.values.resize(out.len(), 0.0);
                    let mut pos = Position::new(stream, start + j as u128 * sampler.words());
                    sampler.fill_at(&mut pos, &mut last.values);
                }
                put(out, &last.values[j - last.from..][..out.len()]);
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::transform::fill::{append0, cat, Fill, FillCtx};
    use crate::transform::norms::{self, Hold, Readers, StreamRule};
    use crate::transform::r2r::R2r;
    use crate::transform::Init;

    fn touch(step: usize, part: Part, cols: usize, width: usize) -> Touch {
        Touch {
            step,
            part,
            kind: None,
            cols,
            runs: vec![(0, width)],
            width,
            row_groups: 1,
        }
    }

    /// What `apply_touches` computes for whole touches of these fills.
    fn eager(seed: u64, name: &str, mut t: ArrayD<f64>, touches: &[(Touch, Lazily)]) -> Vec<f64> {
        for (tc, how) in touches {
            let fill: Box<dyn Fill> = match *how {
                Lazily::R2r(ctx) => Box::new(R2r::new(ctx)),
                Lazily::HeldZero(ctx) => {
                    let rule = StreamRule::Held {
                        hold: Hold::Zero,
                        readers: Readers::Pairs,
                        eps_scale: 0.5,
                    };
                    norms::fill(rule, ctx, None)
                }
            };
            let rng = &mut keyed_rng(seed, tc.step, name, tc.part);
            t = match tc.part {
                Part::Rows => {
                    let rows = fill.rows(&t, tc.cols, rng);
                    append0(t, &rows)
                }
                Part::Features => {
                    let nf = fill.features(&t, rng);
                    cat(t.ndim() - 1, &[&t, &nf])
                }
                _ => fill.columns(&t, tc.cols, rng),
            };
        }
        t.as_standard_layout().iter().copied().collect()
    }

    /// Every value of the lazy tensor, in pieces of awkward sizes, equals the eager one
    /// bit for bit: conv and linear shapes, rows before and after columns, several
    /// columns per channel, each init, tensors past the parallel chunk sizes, and a
    /// stream held at zero (readers, writers, an embedding) under R2WiderR's widths.
    #[test]
    fn lazy_values_match_apply_touches() {
        // (shape, [(part, cols, channels before, added, held at zero)])
        type Case = (Vec<usize>, Vec<(Part, usize, usize, usize, bool)>);
        // The same without the last field: R2WiderR's fill throughout.
        type R2rCase = (Vec<usize>, Vec<(Part, usize, usize, usize)>);
        let r2r = |cases: Vec<R2rCase>| {
            cases.into_iter().map(|(s, parts)| {
                let parts = parts.into_iter().map(|(p, k, c, e)| (p, k, c, e, false));
                (s, parts.collect())
            })
        };
        let mut cases: Vec<Case> = r2r(vec![
            (
                vec![5, 3, 3, 3],
                vec![(Part::Columns, 1, 3, 2), (Part::Rows, 1, 5, 4)],
            ),
            (
                vec![7, 11],
                vec![(Part::Rows, 1, 7, 2), (Part::Columns, 1, 11, 6)],
            ),
            (vec![6, 13], vec![(Part::Columns, 1, 13, 2)]),
            (vec![9, 4, 1, 1], vec![(Part::Rows, 3, 3, 2)]),
            (
                vec![3, 8, 5],
                vec![(Part::Columns, 2, 4, 2), (Part::Rows, 1, 3, 2)],
            ),
            // Over SUM_CHUNK and draw's parallel chunk, odd counts.
            (
                vec![131, 67, 3, 3],
                vec![(Part::Columns, 1, 67, 34), (Part::Rows, 1, 131, 66)],
            ),
            (vec![257, 301], vec![(Part::Rows, 1, 257, 128)]),
            // Draws past draw's parallel chunk (32768 values).
            (vec![200, 401], vec![(Part::Rows, 1, 200, 200)]),
            (vec![100, 701], vec![(Part::Columns, 1, 701, 702)]),
            // Rows first, past SUM_CHUNK: the columns' scale pass takes the teacher's
            // whole chunks from the rows' pass.
            (
                vec![300, 500],
                vec![(Part::Rows, 1, 300, 100), (Part::Columns, 1, 500, 200)],
            ),
        ])
        .collect();
        cases.extend([
            // A query (held stream's columns, then kv groups' rows), an output projection
            // (held rows, then R2WiderR's columns), an embedding (held features).
            (
                vec![8, 6],
                vec![(Part::Columns, 1, 6, 4, true), (Part::Rows, 4, 2, 2, false)],
            ),
            (
                vec![6, 8],
                vec![(Part::Rows, 1, 6, 4, true), (Part::Columns, 4, 2, 2, false)],
            ),
            (vec![13, 6], vec![(Part::Features, 1, 6, 4, true)]),
            (
                vec![301, 257],
                vec![
                    (Part::Columns, 1, 257, 128, true),
                    (Part::Rows, 1, 301, 100, false),
                ],
            ),
            (
                vec![257, 301],
                vec![
                    (Part::Rows, 1, 257, 200, true),
                    (Part::Columns, 1, 301, 98, false),
                ],
            ),
            (vec![1000, 67], vec![(Part::Features, 1, 67, 34, true)]),
        ]);
        let mut r = ChaCha8Rng::seed_from_u64(3);
        for init in [Init::Match, Init::He, Init::Zero] {
            for (shape, parts) in &cases {
                let n: usize = shape.iter().product();
                let w: Vec<f64> = (0..n)
                    .map(|_| (r.random::<f64>() - 0.3) * 0.7)
                    .map(|x| x as f32 as f64)
                    .collect();
                let t = ArrayD::from_shape_vec(IxDyn(shape), w.clone()).unwrap();
                let touches: Vec<(Touch, Lazily)> = parts
                    .iter()
                    .enumerate()
                    .map(|(k, &(part, cols, c, e, held))| {
                        let ctx = FillCtx { c, e, init };
                        let how = if held {
                            Lazily::HeldZero(ctx)
                        } else {
                            Lazily::R2r(ctx)
                        };
                        (touch(k, part, cols, c), how)
                    })
                    .collect();
                let want = eager(11, "l.weight", t, &touches);
                let base = |at: usize, out: &mut [f64]| -> Result<()> {
                    out.copy_from_slice(&w[at..at + out.len()]);
                    Ok(())
                };
                let lazy_touches: Vec<(Touch, Option<Lazily>)> =
                    touches.iter().map(|(t, c)| (t.clone(), Some(*c))).collect();
                let lazy = Lazy::new(11, "l.weight", shape, &lazy_touches, &base, &mut || Ok(()))
                    .unwrap()
                    .expect("whole touches of lazy fills");
                assert_eq!(lazy.len(), want.len(), "{shape:?} {init:?}");
                let mut got = vec![f64::NAN; want.len()];
                let mut at = 0;
                let mut step = 1;
                while at < got.len() {
                    let k = step.min(got.len() - at);
                    lazy.values(at, &mut got[at..at + k], &base).unwrap();
                    at += k;
                    step = step * 7 + 3;
                }
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{shape:?} {init:?} value {i}");
                }
                // From an f32 teacher into f32: what f64 and back gives, bit for bit.
                let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
                let base32 = |at: usize, out: &mut [f32]| -> Result<()> {
                    out.copy_from_slice(&w32[at..at + out.len()]);
                    Ok(())
                };
                let mut got32 = vec![f32::NAN; want.len()];
                for (k, chunk) in got32.chunks_mut(1000).enumerate() {
                    lazy.values_f32(k * 1000, chunk, &base32).unwrap();
                }
                for (i, (a, b)) in got32.iter().zip(&want).enumerate() {
                    let b = *b as f32;
                    assert_eq!(a.to_bits(), b.to_bits(), "{shape:?} {init:?} f32 value {i}");
                }
            }
        }
    }

    /// Two tensors drawn from the same stream at different scales (the same layer of two
    /// teachers, widened with the same seed in one process) each get their own values,
    /// read in turns on one thread.
    #[test]
    fn a_thread_keeps_no_draws_of_another_tensor() {
        let shape = [4usize, 6];
        let w: Vec<f64> = (0..24).map(|i| (i as f64 * 0.37).sin() * 0.5).collect();
        let w2: Vec<f64> = w.iter().map(|x| 3.0 * x).collect();
        let ctx = FillCtx {
            c: 6,
            e: 4,
            init: Init::Match,
        };
        let touches = [(touch(0, Part::Columns, 1, 6), Lazily::R2r(ctx))];
        let lazy_touches = [(touches[0].0.clone(), Some(touches[0].1))];
        let mut got = Vec::new();
        let mut want = Vec::new();
        let lazies: Vec<_> = [&w, &w2]
            .iter()
            .map(|w| {
                let base = |at: usize, out: &mut [f64]| -> Result<()> {
                    out.copy_from_slice(&w[at..at + out.len()]);
                    Ok(())
                };
                let t = ArrayD::from_shape_vec(IxDyn(&shape), w.to_vec()).unwrap();
                want.push(eager(5, "l.weight", t, &touches));
                Lazy::new(5, "l.weight", &shape, &lazy_touches, &base, &mut || Ok(()))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        for (lazy, w) in lazies.iter().zip([&w, &w2]) {
            let base = |at: usize, out: &mut [f64]| -> Result<()> {
                out.copy_from_slice(&w[at..at + out.len()]);
                Ok(())
            };
            // In order, then the second from its last row: where the first's last
            // draws were.
            let mut v = vec![f64::NAN; lazy.len()];
            let row = lazy.len() / shape[0];
            let (head, last) = v.split_at_mut(lazy.len() - row);
            if got.is_empty() {
                lazy.values(0, head, &base).unwrap();
                lazy.values(lazy.len() - row, last, &base).unwrap();
            } else {
                lazy.values(lazy.len() - row, last, &base).unwrap();
                lazy.values(0, head, &base).unwrap();
            }
            got.push(v);
        }
        assert_ne!(want[0], want[1]);
        assert_eq!(got, want);
    }

    /// The caller's finiteness check runs unless a first scale pass came out finite (which
    /// a non-finite teacher value cannot give), and its refusal comes back.
    #[test]
    fn a_finite_scale_pass_stands_for_the_finiteness_check() {
        let run = |w: [f64; 12], init: Init| {
            let base = |at: usize, out: &mut [f64]| -> Result<()> {
                out.copy_from_slice(&w[at..at + out.len()]);
                Ok(())
            };
            let ctx = Lazily::R2r(FillCtx { c: 3, e: 2, init });
            let touches = [(touch(0, Part::Rows, 1, 3), Some(ctx))];
            let mut asked = 0;
            let got = Lazy::new(1, "x", &[3, 4], &touches, &base, &mut || {
                asked += 1;
                if w.iter().all(|x| x.is_finite()) {
                    Ok(())
                } else {
                    Err(crate::error::Error::weights("x: not finite".to_string()))
                }
            });
            (got.map(|l| l.is_some()), asked)
        };
        let mut w = [0.25f64; 12];
        w[5] = -1.5;
        assert!(matches!(run(w, Init::Match), (Ok(true), 0)));
        // He's scale reads nothing: the check runs.
        assert!(matches!(run(w, Init::He), (Ok(true), 1)));
        for bad in [f64::NAN, f64::INFINITY] {
            w[7] = bad;
            for init in [Init::Match, Init::He] {
                let (got, asked) = run(w, init);
                assert_eq!(asked, 1, "{bad} {init:?}");
                let e = got
                    .expect_err("a non-finite teacher is refused")
                    .to_string();
                assert!(e.contains("not finite"), "{e}");
            }
        }
    }

    /// A touch this cannot compute (another fill, a split space, an odd count) gives
    /// `None`, and a base error comes back.
    #[test]
    fn lazy_declines_what_it_cannot_compute() {
        let w = [0.5f64; 12];
        let base = |at: usize, out: &mut [f64]| -> Result<()> {
            out.copy_from_slice(&w[at..at + out.len()]);
            Ok(())
        };
        let ctx = Lazily::R2r(FillCtx {
            c: 3,
            e: 2,
            init: Init::Match,
        });
        let t = touch(0, Part::Rows, 1, 3);
        let lazy = |touches: &[(Touch, Option<Lazily>)]| {
            let mut asked = false;
            let none = Lazy::new(1, "x", &[3, 4], touches, &base, &mut || {
                asked = true;
                Ok(())
            })
            .unwrap()
            .is_none();
            // Readiness (the caller's check of the teacher) is never asked of what this
            // declines.
            assert!(!(asked && none));
            none
        };
        assert!(lazy(&[(t.clone(), None)]));
        let mut split = t.clone();
        split.runs = vec![(0, 1), (2, 1)];
        assert!(lazy(&[(split, Some(ctx))]));
        let odd = FillCtx { e: 3, ..ctx.ctx() };
        assert!(lazy(&[(t.clone(), Some(Lazily::R2r(odd)))]));
        let mut bias = t.clone();
        bias.part = Part::Bias;
        assert!(lazy(&[(bias, Some(ctx))]));
        // R2WiderR has no features; held features only of a 2-D table.
        let mut features = t.clone();
        features.part = Part::Features;
        assert!(lazy(&[(features.clone(), Some(ctx))]));
        let held = Some(Lazily::HeldZero(ctx.ctx()));
        assert!(!lazy(&[(features.clone(), held)]));
        let deep = Lazy::new(1, "x", &[3, 2, 2], &[(features, held)], &base, &mut || {
            Ok(())
        });
        assert!(deep.unwrap().is_none());
        assert!(!lazy(&[(t.clone(), Some(ctx))]));
        let bad = |_: usize, _: &mut [f64]| -> Result<()> {
            Err(crate::error::Error::weights("unreadable".to_string()))
        };
        let ok = &mut || Ok(());
        assert!(Lazy::new(1, "x", &[3, 4], &[(t.clone(), Some(ctx))], &bad, ok).is_err());
        // (He's scale reads no values, so the caller's check runs.)
        let he = Lazily::R2r(FillCtx {
            init: Init::He,
            ..ctx.ctx()
        });
        let refuse = &mut || Err(crate::error::Error::weights("not finite".to_string()));
        assert!(Lazy::new(1, "x", &[3, 4], &[(t, Some(he))], &base, refuse).is_err());
    }
}
