//! R2WiderR (paper eq. 8-9, appendix C.1-C.2): `2H` new channels in two halves L and R.
//! Every producer gets the same new rows `U` for both halves, so `x_L = x_R` in every value
//! of the space (channel-wise ops and residual adds keep them equal; batch norm gets equal
//! entries for both halves); every consumer gets columns `V` for L and `-V` for R, so their
//! contributions cancel exactly. Existing parameters are untouched.

use ndarray::ArrayD;
use rand_chacha::ChaCha8Rng;

use crate::transform::fill::{cat, cat_pair, fan_in, with_dim, Fill, FillCtx, Lazily};

pub struct R2r {
    ctx: FillCtx,
}

impl R2r {
    /// `ctx.e` must be even (the caller rounds or refuses).
    pub fn new(ctx: FillCtx) -> R2r {
        debug_assert!(ctx.e.is_multiple_of(2), "R2WiderR adds channels in pairs");
        R2r { ctx }
    }
}

impl Fill for R2r {
    fn added(&self) -> usize {
        self.ctx.e
    }

    fn rows(&self, w: &ArrayD<f64>, per: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        // Channel j of L pairs with channel j of R: rows j*per.. of both halves.
        let half = self.ctx.e / 2 * per;
        let u = self
            .ctx
            .free(rng, &with_dim(w, 0, half), w, fan_in(w, w.shape()[1]));
        cat(0, &[&u, &u])
    }

    fn columns(&self, w: &ArrayD<f64>, cols: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let half = self.ctx.e / 2;
        let inputs = (self.ctx.c + self.ctx.e) * cols;
        let v = self
            .ctx
            .free(rng, &with_dim(w, 1, half * cols), w, fan_in(w, inputs));
        cat_pair(w, &v)
    }

    fn lazily(&self) -> Option<Lazily> {
        Some(Lazily::R2r(self.ctx))
    }
}
