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

use ndarray::{ArrayD, Axis, IxDyn};
use rand_chacha::ChaCha8Rng;

use super::deepen::transformer::{self, Fill};
use super::deepen::{
    block_nodes, check_post_act, default_params, uniform_like, Exactness, Insertion, LayerSpec,
    Order, SiteInfo,
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
        // Under `preact` every layer of a block has its activation, the last too.
        vec![
            LayerSpec::plain(g, 3, c, true),
            LayerSpec::plain(g, 3, c, g.defaults.preact && !info.site.inside),
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
            // The branch must end at 0: drop a last activation that moves 0 (a
            // pre-activated layer's comes before its conv).
            if matches!(l.act, Some(Activation::Sigmoid)) && !g.defaults.preact {
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

/// How many equal-sized chunks each hidden volume of `layers` pairs inside: a grouped
/// conv writing or reading it splits it into its groups, and R2DeeperR's two halves must
/// then lie inside each group (ResNeXt's cardinality is kept, not dropped). Refuses widths
/// that do not split into pairs inside every group, and two different group counts on one
/// volume.
fn pairing_chunks(info: &SiteInfo, layers: &[LayerSpec]) -> Result<Vec<usize>> {
    let mut chunks = Vec::new();
    for (i, pair) in layers.windows(2).enumerate() {
        let (a, b) = (pair[0].groups, pair[1].groups);
        if a > 1 && b > 1 && a != b {
            return Err(Error::usage(
                format!(
                    "cannot insert an R2DeeperR block after `{}`: its hidden volume {} is written by a conv of {a} groups and read by one of {b}, and R2DeeperR's pairs must lie inside the groups of both",
                    info.site.label,
                    i + 1
                ),
                Some("insert after a block whose consecutive grouped convs have the same cardinality".into()),
            ));
        }
        let g = a.max(b);
        let w = pair[0].width;
        if !w.is_multiple_of(2 * g) {
            return Err(Error::usage(
                format!(
                    "R2DeeperR needs every group of the inserted block's hidden volume {} to split into two equal halves, but {w} channels in {g} groups do not",
                    i + 1
                ),
                Some(format!(
                    "pass --width {} (a multiple of 2 x {g} groups)",
                    w.next_multiple_of(2 * g)
                )),
            ));
        }
        chunks.push(g);
    }
    Ok(chunks)
}

/// Rows of a conv writing a paired volume (`out` channels in `chunks` chunks, each the
/// halves L and R): row `o` of each chunk's R half is row `o` of its L half, drawn once.
fn paired_rows(rng: &mut ChaCha8Rng, shape: [usize; 4], chunks: usize, s: f64) -> ArrayD<f64> {
    let [out, cols, k, _] = shape;
    let u = uniform_like(rng, &[out / 2, cols, k, k], s);
    let (size, half) = (out / chunks, out / chunks / 2);
    let mut w = ArrayD::zeros(IxDyn(&shape));
    for o in 0..out {
        let q = o / size * half + o % size % half;
        w.index_axis_mut(Axis(0), o)
            .assign(&u.index_axis(Axis(0), q));
    }
    w
}

/// Columns of a conv of `groups` groups reading a paired volume: the column of an R
/// channel is minus its L partner's (same chunk, same group), so each group's
/// contributions cancel.
fn cancelling_columns(
    rng: &mut ChaCha8Rng,
    shape: [usize; 4],
    chunks: usize,
    groups: usize,
    s: f64,
) -> ArrayD<f64> {
    let [out, cols, k, _] = shape;
    let v = uniform_like(rng, &[out, cols / 2, k, k], s);
    // Chunk size of the volume, and how many chunks one group holds.
    let size = cols * groups / chunks;
    let half = size / 2;
    let mut w = ArrayD::zeros(IxDyn(&shape));
    for j in 0..cols {
        let (p, q) = (j % size, j / size * half + j % size % half);
        let col = v.index_axis(Axis(1), q);
        if p < half {
            w.index_axis_mut(Axis(1), j).assign(&col);
        } else {
            w.index_axis_mut(Axis(1), j).assign(&(-&col));
        }
    }
    w
}

/// The R2DeeperR block for the site.
pub fn insertion(info: &SiteInfo, width: Option<usize>, rng: &mut ChaCha8Rng) -> Result<Insertion> {
    if info.layer.is_some() {
        return transformer::insertion(info, Fill::R2r, rng);
    }
    let g = info.graph;
    let order = Order::at(g, &info.site);
    // A pre-activated block has no activation after its add: its output is the site value
    // plus a zero branch whatever the sign.
    if order == Order::ConvFirst {
        check_post_act(info, "R2DeeperR")?;
    }
    let c = info.site.channels();
    let layers = residual_layers(info, width, true, "R2DeeperR")?;
    let chunks = pairing_chunks(info, &layers)?;
    let nodes = block_nodes(c, &layers, true, g.defaults.eps, &g.defaults.act, order);
    let mut params = default_params(&nodes);
    let s = info.scale;
    let n = layers.len();
    let mut c_in = c;
    for (i, l) in layers.iter().enumerate() {
        let shape = [l.width, c_in / l.groups, l.kernel, l.kernel];
        let w = if i + 1 < n {
            // Rows [U; U] inside each chunk: the two halves of the hidden volume are equal.
            paired_rows(rng, shape, chunks[i], s)
        } else {
            // Columns [V, -V] inside each chunk: the halves cancel, the branch is exactly 0.
            cancelling_columns(rng, shape, chunks[i - 1], l.groups, s)
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
    // (Under `preact` the last BN comes before the last conv, whose output is 0 anyway.)
    let last_bn = format!("bn{n}.weight");
    if let Some(gamma) = params
        .get_mut(&last_bn)
        .filter(|_| order == Order::ConvFirst)
    {
        gamma.fill(LAST_BN_SCALE);
    }
    Ok(Insertion::block(nodes, params, Exactness::Exact, vec![format!(
            "R2DeeperR block: {} layers, hidden width {}, new weights U(-s*sqrt(3), s*sqrt(3)) with s = {s:.4e}, the standard deviation of the previous block's last kernel",
            n,
            layers[0].width
        )]))
}
