//! NetMorph widening (Wei et al. 2016): free new rows, zero new consumer columns, so the
//! new channels are computed but read by nobody. Existing parameters are untouched.

use ndarray::ArrayD;
use rand_chacha::ChaCha8Rng;

use crate::transform::fill::{cat, fan_in, with_dim, Fill, FillCtx};

pub struct NetMorph {
    pub ctx: FillCtx,
}

impl Fill for NetMorph {
    fn added(&self) -> usize {
        self.ctx.e
    }

    fn rows(&self, w: &ArrayD<f64>, per: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let rows = self.ctx.e * per;
        self.ctx
            .free(rng, &with_dim(w, 0, rows), w, fan_in(w, w.shape()[1]))
    }

    fn columns(&self, w: &ArrayD<f64>, cols: usize, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let zeros = ArrayD::zeros(with_dim(w, 1, self.ctx.e * cols));
        cat(1, &[w, &zeros])
    }
}
