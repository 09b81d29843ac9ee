//! NetMorph widening (Wei et al. 2016): free new rows, zero new consumer columns, so the
//! new channels are computed but read by nobody. Existing parameters are untouched.

use ndarray::ArrayD;

use super::{cat, default_entries, fan_in, tail, with_dim, Fill, FillCtx, Part};
use crate::ir::ParamKind;

pub struct NetMorph {
    ctx: FillCtx,
}

impl NetMorph {
    pub fn new(ctx: FillCtx) -> NetMorph {
        NetMorph { ctx }
    }
}

impl Fill for NetMorph {
    fn rows(&mut self, w: &ArrayD<f64>) -> ArrayD<f64> {
        self.ctx
            .free(&with_dim(w, 0, self.ctx.e), w, fan_in(w, w.shape()[1]))
    }

    fn bias(&mut self, _b: &ArrayD<f64>) -> ArrayD<f64> {
        ArrayD::zeros(ndarray::IxDyn(&[self.ctx.e]))
    }

    fn entries(&mut self, kind: ParamKind, _t: &ArrayD<f64>, cols: usize) -> ArrayD<f64> {
        default_entries(kind, self.ctx.e * cols)
    }

    fn columns(&mut self, w: &ArrayD<f64>, cols: usize) -> ArrayD<f64> {
        let zeros = ArrayD::zeros(with_dim(w, 1, self.ctx.e * cols));
        cat(1, &[w, &zeros])
    }

    fn words(&self, part: Part, shape: &[usize], _cols: usize) -> u128 {
        match part {
            Part::Rows => self.ctx.e as u128 * tail(shape, 1) * self.ctx.words_per_value(),
            Part::Bias | Part::Entries | Part::Columns => 0,
        }
    }

    fn rng(&mut self) -> &mut rand_chacha::ChaCha8Rng {
        &mut self.ctx.rng
    }
}
