//! LLaMA-Pro's deepening recipe (Wu et al. 2024, "LLaMA Pro: Progressive LLaMA with Block
//! Expansion"): a copy of the site transformer layer, norms and all, with its output
//! projections (attention `o`, MLP `down` / `fc2`) and their biases zeroed, so each
//! sublayer adds zero to the stream and the new layer starts as the identity. Unlike
//! NetMorph's zero-output layer, its producers start from trained weights. Transformer
//! layers only; [`super::deepen::transformer`] builds it.

use rand_chacha::ChaCha8Rng;

use super::deepen::transformer::{self, Fill};
use super::deepen::{Insertion, SiteInfo};
use crate::error::{Error, Result};

/// The copy of the site layer.
pub fn insertion(info: &SiteInfo, rng: &mut ChaCha8Rng) -> Result<Insertion> {
    if info.layer.is_none() {
        return Err(Error::usage(
            format!(
                "cannot insert a LLaMA-Pro copy after `{}`: copy duplicates a transformer layer with its output projections zeroed, and `{}` is not a transformer layer",
                info.site.label, info.site.label
            ),
            Some(
                "after a convolutional block or row use --method r2r or netmorph (exact)".into(),
            ),
        ));
    }
    transformer::insertion(info, Fill::Copy, rng)
}
