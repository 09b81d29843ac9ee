//! Random deepening, the baseline: a residual block shaped like R2DeeperR's with every
//! weight drawn independently (uniform, the previous block's last kernel's standard
//! deviation) and default batch norms. Not function preserving: its deviation is measured
//! and reported, never proved. After a transformer layer: a layer shaped like it with every
//! linear drawn ([`super::deepen::transformer`]).

use rand_chacha::ChaCha8Rng;

use super::deepen::transformer::{self, Fill};
use super::deepen::{
    block_nodes, default_params, uniform_like, Exactness, Insertion, Order, SiteInfo,
};
use super::r2r_deeper::residual_layers;
use crate::error::Result;

/// A randomly initialised residual block for the site.
pub fn insertion(info: &SiteInfo, width: Option<usize>, rng: &mut ChaCha8Rng) -> Result<Insertion> {
    if info.layer.is_some() {
        return transformer::insertion(info, Fill::Random, rng);
    }
    let g = info.graph;
    let c = info.site.channels();
    let layers = residual_layers(info, width, false, "random")?;
    let order = Order::at(g, &info.site);
    let nodes = block_nodes(c, &layers, true, g.defaults.eps, &g.defaults.act, order);
    let mut params = default_params(&nodes);
    let mut c_in = c;
    for (i, l) in layers.iter().enumerate() {
        let shape = [l.width, c_in / l.groups, l.kernel, l.kernel];
        let w = uniform_like(rng, &shape, info.scale);
        params.insert(format!("conv{}.weight", i + 1), w);
        c_in = l.width;
    }
    Ok(Insertion::block(
        nodes,
        params,
        Exactness::NotPreserving,
        vec!["a randomly initialised block is not function preserving".into()],
    ))
}
