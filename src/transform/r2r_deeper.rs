//! R2DeeperR (paper sections 4.3-4.4, appendix C.3): a new residual block whose branch is
//! exactly zero. Its first conv has output rows `[U; U]`, every middle conv rows `[W; W]`
//! (so each hidden volume holds two equal halves, and batch norms and activations keep them
//! equal), and its last conv input columns `[V, -V]`, which cancel the halves: the branch
//! is 0, the last BN with beta 0 and running mean 0 keeps it 0 in both modes, and the
//! post-add activation sees the block input, which it must leave unchanged (ReLU on a
//! value the sign analysis proves non-negative). Existing tensors are untouched.
//!
//! After a transformer layer the analogue is a new layer whose paired heads and hidden
//! units cancel in its output projections ([`super::deepen::transformer`]).

use rand_chacha::ChaCha8Rng;

use super::cat;
use super::deepen::transformer::{self, Fill};
use super::deepen::{
    block_nodes, check_post_act, default_params, uniform_like, Exactness, Insertion, LayerSpec,
    SiteInfo,
};
use crate::error::{Error, Result};
use crate::ir::Activation;

/// Initial scale (gamma) of the new block's last batch norm: small, see `r2r_deeper`.
pub const LAST_BN_SCALE: f64 = 1e-3;

/// The layers of a block inserted at the site: a copy of the site block's layers (strides
/// 1, same padding) when the site is a block of two or more layers, else two 3x3 layers.
/// Hidden widths are `width`, else the site block's hidden widths, else the stream width.
/// `even`: R2DeeperR splits every hidden volume into two halves.
pub fn residual_layers(
    info: &SiteInfo,
    width: Option<usize>,
    even: bool,
    title: &str,
) -> Result<Vec<LayerSpec>> {
    let g = info.graph;
    let c = info.site.channels();
    let mut layers = if info.template.len() >= 2 {
        info.template.clone()
    } else {
        vec![
            LayerSpec::plain(g, 3, c, true),
            LayerSpec::plain(g, 3, c, false),
        ]
    };
    let n = layers.len();
    for (i, l) in layers.iter_mut().enumerate() {
        if l.kernel % 2 == 0 {
            return Err(Error::usage(
                format!(
                    "cannot insert a {title} block after `{}`: its {}x{} kernels cannot keep the feature map's size, so the block would change the shape",
                    info.site.label, l.kernel, l.kernel
                ),
                Some("deepening inserts shape-preserving layers only".into()),
            ));
        }
        l.padding = l.dilation * (l.kernel - 1) / 2;
        if i + 1 < n {
            if let Some(w) = width {
                l.width = w;
            }
            if width.is_none() && info.template.len() < 2 {
                l.width = c;
            }
        } else {
            l.width = c;
            // The branch must end at 0: drop a last activation that moves 0.
            if matches!(l.act, Some(Activation::Sigmoid)) {
                l.act = None;
            }
        }
    }
    for l in &layers[..n - 1] {
        if l.width == 0 {
            return Err(Error::usage("--width must be at least 1", None));
        }
        if even && l.width % 2 == 1 {
            return Err(Error::usage(
                format!(
                    "{title} needs an even hidden width (its first conv has rows [U; U] and its last columns [V, -V]), but the block inserted after `{}` would be {} wide",
                    info.site.label, l.width
                ),
                Some(format!("pass --width {}", l.width + 1)),
            ));
        }
    }
    Ok(layers)
}

/// The R2DeeperR block for the site.
pub fn insertion(info: &SiteInfo, width: Option<usize>, rng: &mut ChaCha8Rng) -> Result<Insertion> {
    if info.layer.is_some() {
        return transformer::insertion(info, Fill::R2r, rng);
    }
    let g = info.graph;
    check_post_act(info, "R2DeeperR")?;
    let c = info.site.channels();
    let layers = residual_layers(info, width, true, "R2DeeperR")?;
    let nodes = block_nodes(c, &layers, true, g.defaults.eps, &g.defaults.act);
    let mut params = default_params(&nodes);
    let s = info.scale;
    let n = layers.len();
    let mut c_in = c;
    for (i, l) in layers.iter().enumerate() {
        let k = l.kernel;
        let w = if i + 1 < n {
            // Rows [U; U]: the two halves of the hidden volume are equal.
            let u = uniform_like(rng, &[l.width / 2, c_in, k, k], s);
            cat(0, &[&u, &u])
        } else {
            // Columns [V, -V]: the halves cancel, the branch is exactly 0.
            let v = uniform_like(rng, &[c, c_in / 2, k, k], s);
            cat(1, &[&v, &(-&v)])
        };
        params.insert(format!("conv{}.weight", i + 1), w);
        c_in = l.width;
    }
    // Biases stay 0 (equal halves); BNs keep their defaults (equal halves, and the last
    // one has beta 0 and running mean 0), except the last one's scale: its input is exactly
    // 0, so batch norm divides the first gradient step's tiny change by sqrt(eps) and, with
    // scale 1, turns the branch into unit-variance noise (measured: a grown digits net fell
    // from 92% to 38% validation accuracy after one SGD step). A small scale keeps the
    // function (the branch is 0 either way) and lets training grow the branch gradually.
    let last_bn = format!("bn{n}.weight");
    if let Some(gamma) = params.get_mut(&last_bn) {
        gamma.fill(LAST_BN_SCALE);
    }
    Ok(Insertion::block(nodes, params, Exactness::Exact, vec![format!(
            "R2DeeperR block: {} layers, hidden width {}, new weights U(-s*sqrt(3), s*sqrt(3)) with s = {s:.4e}, the standard deviation of the previous block's last kernel",
            n,
            layers[0].width
        )]))
}
