//! Random padding, the baseline of the paper's experiments: new rows and new consumer
//! columns He-initialised, new batch-norm entries at their defaults. Not function
//! preserving; the proof only measures how far the student moves.

use ndarray::ArrayD;

use super::{cat, default_entries, fan_in, tail, with_dim, Fill, FillCtx, Part};
use crate::ir::ParamKind;

pub struct RandomPad {
    ctx: FillCtx,
}

impl RandomPad {
    pub fn new(ctx: FillCtx) -> RandomPad {
        RandomPad { ctx }
    }
}

impl Fill for RandomPad {
    fn rows(&mut self, w: &ArrayD<f64>) -> ArrayD<f64> {
        self.ctx
            .he(&with_dim(w, 0, self.ctx.e), fan_in(w, w.shape()[1]))
    }

    fn bias(&mut self, _b: &ArrayD<f64>) -> ArrayD<f64> {
        ArrayD::zeros(ndarray::IxDyn(&[self.ctx.e]))
    }

    fn entries(&mut self, kind: ParamKind, _t: &ArrayD<f64>, cols: usize) -> ArrayD<f64> {
        default_entries(kind, self.ctx.e * cols)
    }

    fn columns(&mut self, w: &ArrayD<f64>, cols: usize) -> ArrayD<f64> {
        let inputs = (self.ctx.c + self.ctx.e) * cols;
        let new = self
            .ctx
            .he(&with_dim(w, 1, self.ctx.e * cols), fan_in(w, inputs));
        cat(1, &[w, &new])
    }

    fn words(&self, part: Part, shape: &[usize], cols: usize) -> u128 {
        // He draws: two f64 (Box-Muller) per value.
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
