//! Net2WiderNet (Chen et al. 2015) with one replica map `g` for the whole space: new
//! channel `C + j` copies channel `g(j)` in every producer, batch norm and PReLU of the
//! space, so it carries the same value everywhere, across residual adds and projection
//! shortcuts too; every consumer divides the columns of a channel and of its replicas by the
//! number of copies. Consumers change (paper Table 1).
//!
//! Replicas carry equal values, so they would stay symmetric under training. [`Noise`]
//! breaks the symmetry: `--noise` (cancelling, HyperCloning-style) gives the consumer
//! columns of a channel's `n` copies noise `N_1..N_n` with `sum N_i = 0`, so their outgoing
//! weights differ while their summed contribution, and the function, is unchanged;
//! producers' rows stay exact copies. `--noise-approx` (the Net2Net paper's) adds
//! independent noise to the new rows and columns, and the student is then only
//! approximately the teacher.

use ndarray::{ArrayD, Axis};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::Noise;
use crate::ir::ParamKind;
use crate::transform::fill::{block_index, cat, draw, std_of, Fill, FillCtx};

pub struct Net2Net {
    /// `g(j)` for each new channel `j`.
    map: Vec<usize>,
    /// Copies of each original channel, itself included.
    counts: Vec<usize>,
    noise: Option<Noise>,
}

impl Net2Net {
    /// The replica map is drawn from the step's own stream (`map_rng`), so every tensor of
    /// the space sees the same map.
    pub fn new(ctx: FillCtx, noise: Option<Noise>, map_rng: &mut ChaCha8Rng) -> Net2Net {
        use rand::Rng;
        let map: Vec<usize> = (0..ctx.e).map(|_| map_rng.random_range(0..ctx.c)).collect();
        let mut counts = vec![1; ctx.c];
        for &g in &map {
            counts[g] += 1;
        }
        Net2Net { map, counts, noise }
    }

    /// Whole-number duplication (a normalised stream, DESIGN.md "Norms are not
    /// channel-wise"): new channel `j` copies `j mod C`, so every channel has the same
    /// number of copies and the norms' statistics are kept. `ctx.e` must be a multiple of
    /// `ctx.c` (the plan refuses other amounts).
    pub fn whole_copies(ctx: FillCtx, noise: Option<Noise>) -> Net2Net {
        debug_assert!(ctx.e.is_multiple_of(ctx.c));
        let map: Vec<usize> = (0..ctx.e).map(|j| j % ctx.c).collect();
        let counts = vec![1 + ctx.e / ctx.c; ctx.c];
        Net2Net { map, counts, noise }
    }

    /// `--noise-approx`: independent noise on new weights (not exact).
    fn add_noise(&self, t: &mut ArrayD<f64>, scale_of: &ArrayD<f64>, rng: &mut ChaCha8Rng) {
        if let Some(Noise::Approx(sigma)) = self.noise.filter(|n| n.sigma() > 0.0) {
            let s = sigma * std_of(scale_of);
            for x in t.iter_mut() {
                *x += s * crate::params::normal(rng);
            }
        }
    }

    /// Each duplicated channel's copies, itself first, then its replicas in order.
    fn copy_sets(&self) -> Vec<Vec<usize>> {
        let c = self.counts.len();
        let mut sets: Vec<Vec<usize>> = (0..c).map(|i| vec![i]).collect();
        for (j, &g) in self.map.iter().enumerate() {
            sets[g].push(c + j);
        }
        sets.retain(|s| s.len() > 1);
        sets
    }

    /// `--noise`: adds zero-sum noise over each channel's copies to `out`, the noiseless
    /// consumer weight `[O, (C + E) * cols, ...]` widened from `w`. For every row, column of
    /// a channel's block and kernel position, its `n` copies get `N_1..N_n` (n normal draws
    /// less their mean, the last the negated sum of the others: `+N, -N` for two copies),
    /// scaled so each has standard deviation `sigma * std(w)`. Every row cancels on its own,
    /// so each row computes what it did, whatever other rows draw (a producer's replica
    /// rows, copied in an earlier step, stay exact too and now differ).
    fn cancel_noise(
        &self,
        out: ArrayD<f64>,
        w: &ArrayD<f64>,
        cols: usize,
        rng: &mut ChaCha8Rng,
    ) -> ArrayD<f64> {
        let Some(Noise::Cancelling(sigma)) = self.noise else {
            return out;
        };
        let s = sigma * std_of(w);
        let sets = self.copy_sets();
        let o = out.shape()[0];
        if s == 0.0 || sets.is_empty() || out.is_empty() {
            return out;
        }
        // Values per column: the kernel's positions.
        let block = cols * out.shape()[2..].iter().product::<usize>();
        let per_row: usize = sets.iter().map(|g| g.len() * block).sum();
        let z = draw(rng, o * per_row, 4, crate::params::normal);
        let mut out = out.as_standard_layout().into_owned();
        let row_len = out.len() / o;
        let flat = out.as_slice_mut().expect("standard layout");
        flat.par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(r, row)| {
                let mut z = &z[r * per_row..(r + 1) * per_row];
                for g in &sets {
                    let n = g.len();
                    let f = s * (n as f64 / (n - 1) as f64).sqrt();
                    for k in 0..block {
                        let mean = (0..n).map(|i| z[i * block + k]).sum::<f64>() / n as f64;
                        let mut sum = 0.0;
                        for (i, &ch) in g.iter().enumerate() {
                            let d = if i + 1 < n {
                                let d = z[i * block + k] - mean;
                                sum += d;
                                d
                            } else {
                                -sum
                            };
                            row[ch * block + k] += f * d;
                        }
                    }
                    z = &z[n * block..];
                }
            });
        out
    }
}

impl Fill for Net2Net {
    fn added(&self) -> usize {
        self.map.len()
    }

    fn rows(&self, w: &ArrayD<f64>, per: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let mut rows = w.select(Axis(0), &block_index(self.map.iter().copied(), per));
        self.add_noise(&mut rows, w, rng);
        rows
    }

    fn bias(&self, b: &ArrayD<f64>, per: usize, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        b.select(Axis(0), &block_index(self.map.iter().copied(), per))
    }

    fn features(&self, t: &ArrayD<f64>, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let mut new = t.select(Axis(t.ndim() - 1), &self.map);
        self.add_noise(&mut new, t, rng);
        new
    }

    fn norm(&self, _kind: ParamKind, t: &ArrayD<f64>, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        // Whole copies keep every mean and mean square: the norm's entries are copied too.
        let new = t.select(Axis(0), &self.map);
        cat(0, &[t, &new])
    }

    fn entries(
        &self,
        _kind: ParamKind,
        t: &ArrayD<f64>,
        cols: usize,
        _rng: &mut ChaCha8Rng,
    ) -> ArrayD<f64> {
        t.select(Axis(0), &block_index(self.map.iter().copied(), cols))
    }

    fn columns(&self, w: &ArrayD<f64>, cols: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let mut old = w.clone();
        for (c, &n) in self.counts.iter().enumerate() {
            if n > 1 {
                let mut block = old.slice_axis_mut(Axis(1), (c * cols..(c + 1) * cols).into());
                block.mapv_inplace(|x| x / n as f64);
            }
        }
        let mut new = old.select(Axis(1), &block_index(self.map.iter().copied(), cols));
        self.add_noise(&mut new, w, rng);
        self.cancel_noise(cat(1, &[&old, &new]), w, cols, rng)
    }
}
