//! Net2WiderNet (Chen et al. 2015) with one replica map `g` for the whole space: new
//! channel `C + j` copies channel `g(j)` in every producer, batch norm and PReLU of the
//! space, so it carries the same value everywhere, across residual adds and projection
//! shortcuts too; every consumer divides the columns of a channel and of its replicas by the
//! number of copies. Consumers change (paper Table 1). `--noise` adds noise to the new
//! weights only, and the result is then only approximately the teacher.

use ndarray::{ArrayD, Axis};

use super::{block_index, cat, std_of, tail, Fill, FillCtx, Part};
use crate::ir::ParamKind;

pub struct Net2Net {
    ctx: FillCtx,
    /// `g(j)` for each new channel `j`.
    map: Vec<usize>,
    /// Copies of each original channel, itself included.
    counts: Vec<usize>,
    /// Noise, in kernel standard deviations.
    noise: Option<f64>,
}

impl Net2Net {
    pub fn new(mut ctx: FillCtx, noise: Option<f64>) -> Net2Net {
        use rand::Rng;
        let map: Vec<usize> = (0..ctx.e).map(|_| ctx.rng.random_range(0..ctx.c)).collect();
        let mut counts = vec![1; ctx.c];
        for &g in &map {
            counts[g] += 1;
        }
        Net2Net {
            ctx,
            map,
            counts,
            noise,
        }
    }

    fn add_noise(&mut self, t: &mut ArrayD<f64>, scale_of: &ArrayD<f64>) {
        if let Some(sigma) = self.noise.filter(|s| *s > 0.0) {
            let s = sigma * std_of(scale_of);
            for x in t.iter_mut() {
                *x += s * crate::params::normal(&mut self.ctx.rng);
            }
        }
    }
}

impl Fill for Net2Net {
    fn rows(&mut self, w: &ArrayD<f64>) -> ArrayD<f64> {
        let mut rows = w.select(Axis(0), &self.map);
        self.add_noise(&mut rows, w);
        rows
    }

    fn bias(&mut self, b: &ArrayD<f64>) -> ArrayD<f64> {
        b.select(Axis(0), &self.map)
    }

    fn entries(&mut self, _kind: ParamKind, t: &ArrayD<f64>, cols: usize) -> ArrayD<f64> {
        t.select(Axis(0), &block_index(self.map.iter().copied(), cols))
    }

    fn columns(&mut self, w: &ArrayD<f64>, cols: usize) -> ArrayD<f64> {
        let mut old = w.clone();
        for (c, &n) in self.counts.iter().enumerate() {
            if n > 1 {
                let mut block = old.slice_axis_mut(Axis(1), (c * cols..(c + 1) * cols).into());
                block.mapv_inplace(|x| x / n as f64);
            }
        }
        let mut new = old.select(Axis(1), &block_index(self.map.iter().copied(), cols));
        self.add_noise(&mut new, w);
        cat(1, &[&old, &new])
    }

    fn words(&self, part: Part, shape: &[usize], cols: usize) -> u128 {
        // Only noise draws (two f64 per value); the map was drawn at construction.
        if self.noise.filter(|s| *s > 0.0).is_none() {
            return 0;
        }
        let e = self.ctx.e as u128;
        match part {
            Part::Rows => e * tail(shape, 1) * 4,
            Part::Columns => shape[0] as u128 * e * cols as u128 * tail(shape, 2) * 4,
            Part::Bias | Part::Entries => 0,
        }
    }

    fn rng(&mut self) -> &mut rand_chacha::ChaCha8Rng {
        &mut self.ctx.rng
    }
}
