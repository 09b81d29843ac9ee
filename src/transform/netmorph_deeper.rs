//! NetMorph deepening (Wei et al.). Two forms:
//!
//! - `netmorph`: an identity conv (centre tap 1, bias 0, no norm) followed by a PReLU with
//!   slope 1, which is the identity for any input, so it is exact everywhere, in both modes.
//! - `netmorph-dense`: a random orthogonal 1x1 conv `N` (no norm, no bias, no activation)
//!   whose readers' weights become `W N^T`: since `N^T N = I`, every reader computes what it
//!   did before, and the new layer is dense from the start. Readers must be convolutions or
//!   fc layers (through a flatten or a global average pool, which commute with a channel
//!   mix); an identity shortcut or a max pool reading the value refuses the insertion.
//!
//! Both insert a one-layer block without shortcut that ends in its own activation
//! (`[3x3, C, no norm, bias] x 1, shortcut none, act prelu`, and `[1x1, C, no norm,
//! no bias] x 1, shortcut none, act identity`), so the new block is named like every other
//! method's insertion (`conv3_3`), and the network's activation never ends it.
//!
//! After a transformer layer, `netmorph` inserts LLaMA-Pro's zero-output layer (random
//! q, k, v and MLP producers, output projections zero; [`super::deepen::transformer`]);
//! `netmorph-dense` is refused there (a norm and a residual add read the layer's output,
//! and neither can absorb a mix).
//!
//! `N` is the Q of a Householder QR of a seeded Gaussian matrix, with the signs of R's
//! diagonal moved into Q (a Haar-distributed orthogonal matrix).

use ndarray::{Array1, Array2, ArrayD, IxDyn};
use rand_chacha::ChaCha8Rng;

use super::deepen::transformer::{self, Fill};
use super::deepen::{
    block_nodes, default_params, identity_kernel, Exactness, Insertion, LayerSpec, Order, SiteInfo,
};
use crate::error::{Error, Result};
use crate::ir::{Activation, Graph, NodeIndex, Op};
use crate::params::Params;

/// The NetMorph layer for the site, as a one-layer block without shortcut that ends in
/// its own activation (`[3x3, C, no norm, bias] x 1, shortcut none, act prelu`), so it is
/// named like every other method's insertion: identity conv + PReLU(1).
pub fn insertion(info: &SiteInfo, rng: &mut ChaCha8Rng) -> Result<Insertion> {
    if info.layer.is_some() {
        return transformer::insertion(info, Fill::Zero, rng);
    }
    let g = info.graph;
    let c = info.site.channels();
    let layer = LayerSpec {
        kernel: 3,
        padding: 1,
        dilation: 1,
        width: c,
        groups: 1,
        norm: false,
        bias: true,
        act: None,
    };
    let post = Activation::Prelu { channels: c };
    let nodes = block_nodes(
        c,
        std::slice::from_ref(&layer),
        false,
        g.defaults.eps,
        &post,
        Order::at(g, &info.site),
    );
    let mut params = default_params(&nodes);
    params.insert("conv1.weight".into(), identity_kernel(c, 3));
    // The PReLU ends the block, or under `preact` starts it (`act` or `act1`).
    let prelu = nodes
        .iter()
        .find(|n| matches!(n.op, Op::Activation(Activation::Prelu { .. })))
        .map(|n| n.key.clone())
        .expect("the block has its PReLU");
    params.insert(
        format!("{prelu}.weight"),
        ArrayD::from_elem(IxDyn(&[c]), 1.0),
    );
    Ok(Insertion::block(
        nodes,
        params,
        Exactness::Exact,
        vec![
            "NetMorph layer: identity 3x3 conv, bias 0, PReLU slope 1 (the identity for any input)"
                .into(),
        ],
    ))
}

/// Why a reader of the site value cannot absorb a channel mix, if one cannot.
fn reader_problem(graph: &Graph, n: NodeIndex) -> Option<String> {
    let node = &graph.g[n];
    let fc_only = |m: NodeIndex| {
        let rs = graph.consumers(m);
        !rs.is_empty() && rs.iter().all(|&r| matches!(graph.g[r].op, Op::Linear(_)))
    };
    match &node.op {
        Op::Conv2d(c) if c.groups == 1 => None,
        Op::Conv2d(_) => Some(format!("`{}` is a grouped convolution", node.name)),
        Op::Flatten if fc_only(n) => None,
        Op::GlobalAvgPool => {
            let rs = graph.consumers(n);
            let ok = !rs.is_empty()
                && rs
                    .iter()
                    .all(|&r| matches!(graph.g[r].op, Op::Flatten) && fc_only(r));
            (!ok).then(|| {
                format!(
                    "`{}` (global pooling) is not read by an fc layer alone",
                    node.name
                )
            })
        }
        Op::Add => Some(format!(
            "`{}` adds it to another value (a shortcut)",
            node.name
        )),
        op => Some(format!(
            "`{}` ({}) does not mix channels linearly",
            node.name,
            op.kind_name()
        )),
    }
}

/// The NetMorph-dense layer for the site: a random orthogonal 1x1 conv N.
pub fn dense_insertion(info: &SiteInfo, rng: &mut ChaCha8Rng) -> Result<Insertion> {
    if info.layer.is_some() {
        return Err(transformer::refuse(
            info,
            "NetMorph-dense",
            "its orthogonal mix N must be absorbed by every layer reading the new output, but a transformer layer's output is read by a norm and a residual add, which cannot absorb a mix",
        ));
    }
    let g = info.graph;
    let c = info.site.channels();
    let readers = g.consumers(info.site.value);
    if readers.is_empty() {
        return Err(Error::usage(
            format!(
                "cannot insert NetMorph-dense after `{}`: it is the network output, so no layer can absorb N^T",
                info.site.label
            ),
            Some("use --method netmorph".into()),
        ));
    }
    if let Some(p) = readers.iter().find_map(|&r| reader_problem(g, r)) {
        return Err(Error::usage(
            format!(
                "cannot insert NetMorph-dense after `{}`: every layer reading it must absorb N^T, but {p}",
                info.site.label
            ),
            Some("use --method netmorph (identity conv + PReLU), which fits anywhere".into()),
        ));
    }
    let layer = LayerSpec {
        kernel: 1,
        padding: 0,
        dilation: 1,
        width: c,
        groups: 1,
        norm: false,
        bias: false,
        act: None,
    };
    // A one-layer block without shortcut ending in `act identity`, named like every other
    // method's insertion.
    let nodes = block_nodes(
        c,
        std::slice::from_ref(&layer),
        false,
        g.defaults.eps,
        &Activation::Identity,
        Order::at(g, &info.site),
    );
    let mut params = default_params(&nodes);
    let n = random_orthogonal(c, rng);
    let w = n
        .clone()
        .into_shape_with_order((c, c, 1, 1))
        .expect("c*c values")
        .into_dyn();
    params.insert("conv1.weight".into(), w);
    let names: Vec<String> = readers.iter().map(|&r| g.g[r].name.clone()).collect();
    Ok(Insertion {
        nodes,
        params,
        mix: Some(n),
        exactness: Exactness::Exact,
        notes: vec![format!(
            "NetMorph-dense: a random orthogonal 1x1 conv N ({c}x{c}); the weights of the layers reading `{}` ({}) are multiplied by N^T",
            info.site.label,
            names.join(", ")
        )],
    })
}

/// A seeded Haar-random orthogonal `n x n` matrix: Householder QR of a Gaussian matrix.
pub fn random_orthogonal(n: usize, rng: &mut ChaCha8Rng) -> Array2<f64> {
    let mut a = Array2::from_shape_fn((n, n), |_| crate::params::normal(rng));
    let mut vs: Vec<Array1<f64>> = Vec::with_capacity(n);
    let mut diag = vec![0.0; n];
    for k in 0..n {
        let x = a.slice(ndarray::s![k.., k]).to_owned();
        let norm = x.dot(&x).sqrt();
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        let mut v = x;
        v[0] -= alpha;
        let vn = v.dot(&v).sqrt();
        if vn > 0.0 {
            v /= vn;
            // A[k.., k..] -= 2 v (v^T A[k.., k..])
            let mut sub = a.slice_mut(ndarray::s![k.., k..]);
            let proj = v.dot(&sub);
            for (i, vi) in v.iter().enumerate() {
                let mut row = sub.row_mut(i);
                row.scaled_add(-2.0 * vi, &proj);
            }
        }
        diag[k] = a[[k, k]];
        vs.push(v);
    }
    // Q = H_0 H_1 ... H_{n-1}, applied to the identity from the right-most factor.
    let mut q = Array2::<f64>::eye(n);
    for k in (0..n).rev() {
        let v = &vs[k];
        if v.iter().all(|x| *x == 0.0) {
            continue;
        }
        let mut sub = q.slice_mut(ndarray::s![k.., ..]);
        let proj = v.dot(&sub);
        for (i, vi) in v.iter().enumerate() {
            sub.row_mut(i).scaled_add(-2.0 * vi, &proj);
        }
    }
    // Signs of R's diagonal into Q, so the distribution is uniform over O(n).
    for (k, d) in diag.iter().enumerate() {
        if *d < 0.0 {
            q.column_mut(k).mapv_inplace(|x| -x);
        }
    }
    q
}

/// Multiplies the weights of every layer reading `out` by `N^T` (through a flatten or a
/// global pool, each channel owns a block of columns). Returns the layers changed.
pub fn absorb(
    graph: &Graph,
    params: &mut Params,
    out: NodeIndex,
    n: &Array2<f64>,
) -> Result<Vec<String>> {
    let c = n.nrows();
    let mut changed = Vec::new();
    let mut fix = |name: &str, cols: usize, params: &mut Params| -> Result<()> {
        let key = format!("{name}.weight");
        let w = params
            .get(&key)
            .ok_or_else(|| Error::weights(format!("the weights lack `{key}`")))?
            // An earlier rewrite may have left it in another memory order; reshaping
            // needs row-major.
            .as_standard_layout()
            .into_owned();
        let shape = w.shape().to_vec();
        let o = shape[0];
        let rest: usize = shape.iter().skip(2).product::<usize>() * cols;
        // W as [O, C, rest] (a linear's columns are channel-major: C blocks of `cols`).
        let w3 = w
            .into_shape_with_order((o, c, rest))
            .map_err(|e| Error::weights(format!("`{key}`: {e}")))?;
        let mut nw = ndarray::Array3::<f64>::zeros((o, c, rest));
        for oi in 0..o {
            // W'[o, i, :] = sum_j N[i, j] W[o, j, :]
            let wo = w3.index_axis(ndarray::Axis(0), oi);
            nw.index_axis_mut(ndarray::Axis(0), oi).assign(&n.dot(&wo));
        }
        params.tensors.insert(
            key,
            nw.into_shape_with_order(IxDyn(&shape))
                .expect("same size")
                .into_dyn(),
        );
        changed.push(name.to_string());
        Ok(())
    };
    for r in graph.consumers(out) {
        match &graph.g[r].op {
            Op::Conv2d(_) => fix(&graph.g[r].name.clone(), 1, params)?,
            Op::Flatten => {
                let s = &graph.g[out].shape;
                let cols = s[1..].iter().product();
                for l in graph.consumers(r) {
                    fix(&graph.g[l].name.clone(), cols, params)?;
                }
            }
            Op::GlobalAvgPool => {
                for f in graph.consumers(r) {
                    for l in graph.consumers(f) {
                        fix(&graph.g[l].name.clone(), 1, params)?;
                    }
                }
            }
            op => {
                return Err(Error::usage(
                    format!(
                        "`{}` ({}) cannot absorb N^T",
                        graph.g[r].name,
                        op.kind_name()
                    ),
                    None,
                ))
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn householder_q_is_orthogonal() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1, 2, 5, 33] {
            let q = random_orthogonal(n, &mut rng);
            let i = q.t().dot(&q);
            let err = (&i - &Array2::<f64>::eye(n))
                .iter()
                .fold(0f64, |m, x| m.max(x.abs()));
            assert!(err < 1e-13, "n={n}: |Q^T Q - I| = {err}");
            // Not the identity: the mix is dense.
            if n > 1 {
                assert!(q.iter().filter(|x| x.abs() > 1e-3).count() > n);
            }
        }
    }
}
