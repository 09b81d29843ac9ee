//! Random padding, the baseline of the paper's experiments: new rows and new consumer
//! columns He-initialised, new batch-norm entries at their defaults. Not function
//! preserving; the proof only measures how far the student moves.

use ndarray::ArrayD;
use rand_chacha::ChaCha8Rng;

use crate::transform::fill::{cat, fan_in, he, with_dim, Fill, FillCtx};
use crate::transform::Init;

pub struct RandomPad {
    pub ctx: FillCtx,
}

impl RandomPad {
    /// He draws, or zeros under [`Init::Zero`] (the edit's linear part, for moments).
    fn he(&self, rng: &mut ChaCha8Rng, shape: &[usize], fan_in: usize) -> ArrayD<f64> {
        match self.ctx.init {
            Init::Zero => ArrayD::zeros(shape),
            _ => he(rng, shape, fan_in),
        }
    }
}

impl Fill for RandomPad {
    fn added(&self) -> usize {
        self.ctx.e
    }

    fn rows(&self, w: &ArrayD<f64>, per: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        self.he(
            rng,
            &with_dim(w, 0, self.ctx.e * per),
            fan_in(w, w.shape()[1]),
        )
    }

    fn features(&self, t: &ArrayD<f64>, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let last = t.ndim() - 1;
        self.ctx.free(rng, &with_dim(t, last, self.ctx.e), t, 1)
    }

    fn columns(&self, w: &ArrayD<f64>, cols: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let inputs = (self.ctx.c + self.ctx.e) * cols;
        let new = self.he(rng, &with_dim(w, 1, self.ctx.e * cols), fan_in(w, inputs));
        cat(1, &[w, &new])
    }
}
