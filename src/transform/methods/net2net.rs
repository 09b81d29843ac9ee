//! Net2WiderNet (Chen et al. 2015) with one replica map `g` for the whole space: new
//! channel `C + j` copies channel `g(j)` in every producer, batch norm and PReLU of the
//! space, so it carries the same value everywhere, across residual adds and projection
//! shortcuts too; every consumer divides the columns of a channel and of its replicas by the
//! number of copies. Consumers change (paper Table 1). `--noise` adds noise to the new
//! weights only, and the result is then only approximately the teacher.

use ndarray::{ArrayD, Axis};
use rand_chacha::ChaCha8Rng;

use crate::ir::ParamKind;
use crate::transform::fill::{block_index, cat, std_of, Fill, FillCtx};

pub struct Net2Net {
    /// `g(j)` for each new channel `j`.
    map: Vec<usize>,
    /// Copies of each original channel, itself included.
    counts: Vec<usize>,
    /// Noise, in kernel standard deviations.
    noise: Option<f64>,
}

impl Net2Net {
    /// The replica map is drawn from the step's own stream (`map_rng`), so every tensor of
    /// the space sees the same map.
    pub fn new(ctx: FillCtx, noise: Option<f64>, map_rng: &mut ChaCha8Rng) -> Net2Net {
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
    pub fn whole_copies(ctx: FillCtx, noise: Option<f64>) -> Net2Net {
        debug_assert!(ctx.e.is_multiple_of(ctx.c));
        let map: Vec<usize> = (0..ctx.e).map(|j| j % ctx.c).collect();
        let counts = vec![1 + ctx.e / ctx.c; ctx.c];
        Net2Net { map, counts, noise }
    }

    fn add_noise(&self, t: &mut ArrayD<f64>, scale_of: &ArrayD<f64>, rng: &mut ChaCha8Rng) {
        if let Some(sigma) = self.noise.filter(|s| *s > 0.0) {
            let s = sigma * std_of(scale_of);
            for x in t.iter_mut() {
                *x += s * crate::params::normal(rng);
            }
        }
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
        cat(1, &[&old, &new])
    }
}
