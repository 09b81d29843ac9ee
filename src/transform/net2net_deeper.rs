//! Net2DeeperNet (Chen et al.): a layer that starts as the identity: a conv whose every
//! channel's own kernel has its centre tap at 1, a batch norm that is the identity with its
//! running statistics (mean 0, var 1, gamma sqrt(1 + eps), beta 0), and the network's
//! activation, which must leave its input unchanged (ReLU on a value the sign analysis
//! proves non-negative). Exact in eval mode; in train mode the BN normalises with batch
//! statistics, so the layer is the identity only "in expectation" (paper Table 1): the
//! deviation is measured and reported. Refused after a transformer layer.

use ndarray::{ArrayD, IxDyn};

use super::deepen::transformer;
use super::deepen::{
    block_nodes, check_post_act, default_params, identity_kernel, Exactness, Insertion, LayerSpec,
    Order, SiteInfo,
};
use crate::error::Result;

/// The Net2DeeperNet layer for the site: a one-layer block without shortcut.
pub fn insertion(info: &SiteInfo) -> Result<Insertion> {
    if info.layer.is_some() {
        return Err(transformer::refuse(
            info,
            "Net2DeeperNet",
            "it inserts an identity convolution with a batch norm, which has no place in a layer over tokens, and its exactness rests on an activation that leaves its input unchanged",
        ));
    }
    let g = info.graph;
    check_post_act(info, "Net2DeeperNet")?;
    let c = info.site.channels();
    let layer = LayerSpec::plain(g, 3, c, false);
    let nodes = block_nodes(
        c,
        std::slice::from_ref(&layer),
        false,
        g.defaults.eps,
        &g.defaults.act,
        Order::at(g, &info.site),
    );
    let mut params = default_params(&nodes);
    params.insert("conv1.weight".into(), identity_kernel(c, 3));
    let mut notes = Vec::new();
    let exactness = if layer.norm {
        params.insert(
            "bn1.weight".into(),
            ArrayD::from_elem(IxDyn(&[c]), (1.0 + g.defaults.eps).sqrt()),
        );
        notes.push("Net2DeeperNet's batch norm is the identity with running statistics only: exact in eval mode, not in train mode".into());
        Exactness::EvalOnly
    } else {
        Exactness::Exact
    };
    Ok(Insertion::block(nodes, params, exactness, notes))
}
