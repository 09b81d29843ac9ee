//! Kernel-size morphing: a `k x k` convolution becomes `K x K` by zero-padding its kernel
//! around the centre and adding `dilation * (K - k) / 2` to its padding, so every output
//! sees the same inputs through the same taps: exact for any input, in both modes. `K` must
//! be larger than `k` with the same parity (an even difference keeps the centre).

use std::collections::BTreeMap;

use ndarray::{s, ArrayD, IxDyn};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::{Graph, Op};
use crate::params::Params;

/// A kernel morph request: grow `layer`'s kernel to `kernel` x `kernel`.
#[derive(Debug, Clone, Serialize)]
pub struct MorphArgs {
    pub layer: String,
    pub kernel: usize,
}

/// The student of a kernel morph.
#[derive(Debug, Clone)]
pub struct Morphed {
    pub graph: Graph,
    pub params: Params,
    pub change: KernelChange,
}

/// What changed, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct KernelChange {
    pub layer: String,
    pub from: usize,
    pub to: usize,
    pub padding_from: usize,
    pub padding_to: usize,
}

/// Morphs layer `layer`'s kernel to `k_new x k_new`.
pub fn morph_kernel(graph: &Graph, params: &Params, layer: &str, k_new: usize) -> Result<Morphed> {
    params.check(graph)?;
    let m = morph_partial(graph, params, layer, k_new)?;
    m.params.check(&m.graph)?;
    Ok(m)
}

/// [`morph_kernel`] with `params` holding at least `layer.weight` (e.g. only it, for a
/// streamed morph): the result's params are `params` with that weight grown.
pub fn morph_partial(graph: &Graph, params: &Params, layer: &str, k_new: usize) -> Result<Morphed> {
    let Some(n) = graph.find(layer).filter(|&n| n != graph.input) else {
        let names: Vec<String> = graph
            .order()
            .into_iter()
            .filter(|&n| matches!(graph.g[n].op, Op::Conv2d(_)))
            .map(|n| graph.g[n].name.clone())
            .collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        return Err(super::target::no_such(graph, "layer", layer, &refs));
    };
    let Op::Conv2d(conv) = &graph.g[n].op else {
        return Err(Error::usage(
            format!(
                "`{layer}` is a {} layer; kernel morphing changes a convolution's kernel",
                graph.g[n].op.kind_name()
            ),
            Some("name a convolution such as `conv2_1.conv1`".into()),
        ));
    };
    let k = conv.kernel[0];
    if conv.kernel[0] != conv.kernel[1] {
        return Err(Error::usage(
            format!("`{layer}` has a non-square kernel"),
            None,
        ));
    }
    // A projection shortcut (conv, maybe + BN, into an add's shortcut port) is always a
    // 1x1 in the language (`.downsample.0`): a larger one could not be printed.
    let mut v = n;
    if let [bn] = graph.consumers(n)[..] {
        if matches!(graph.g[bn].op, Op::BatchNorm(_)) {
            v = bn;
        }
    }
    let shortcut = graph
        .consumers(v)
        .into_iter()
        .any(|c| matches!(graph.g[c].op, Op::Add) && graph.inputs(c).get(1) == Some(&v));
    if shortcut {
        return Err(Error::usage(
            format!(
                "cannot morph `{layer}`: it is a projection shortcut, which the .arch language always writes as a 1x1 convolution"
            ),
            Some("morph a convolution of the block's residual branch, e.g. its first layer".into()),
        ));
    }
    if k_new <= k {
        return Err(Error::usage(
            format!(
                "cannot morph `{layer}` from {k}x{k} to {k_new}x{k_new}: kernel morphing only grows a kernel (zero taps around it), it cannot shrink or keep it"
            ),
            Some(format!("give --kernel {}", k + 2)),
        ));
    }
    if (k_new - k) % 2 == 1 {
        return Err(Error::usage(
            format!(
                "cannot morph `{layer}` from {k}x{k} to {k_new}x{k_new}: the kernel must grow by an even amount so the old kernel stays centred (same parity)"
            ),
            Some(format!("give --kernel {} or {}", k_new - 1, k_new + 1)),
        ));
    }
    let d = (k_new - k) / 2;
    let mut g = graph.clone();
    let padding_from = conv.padding;
    let padding_to = conv.padding + conv.dilation * d;
    if let Op::Conv2d(c) = &mut g.g[n].op {
        c.kernel = [k_new, k_new];
        c.padding = padding_to;
    }
    super::reinfer_shapes(&mut g)?;
    let key = format!("{layer}.weight");
    let w = params
        .get(&key)
        .ok_or_else(|| Error::weights(format!("the weights lack `{key}`")))?;
    let sh = w.shape();
    let mut nw = ArrayD::zeros(IxDyn(&[sh[0], sh[1], k_new, k_new]));
    nw.slice_mut(s![.., .., d..d + k, d..d + k]).assign(w);
    let mut tensors: BTreeMap<String, ArrayD<f64>> = params.tensors.clone();
    tensors.insert(key, nw);
    let p = Params {
        tensors,
        dtype: params.dtype,
    };
    Ok(Morphed {
        graph: g,
        params: p,
        change: KernelChange {
            layer: layer.to_string(),
            from: k,
            to: k_new,
            padding_from,
            padding_to,
        },
    })
}
