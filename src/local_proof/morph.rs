//! Local proof of a kernel morph (`morph --prove local`): only the morphed convolution
//! changes, so running it alone, teacher's kernel and student's, on random values shaped
//! like its input proves the whole morph (exact for any input, so every mode is required).

use crate::error::{Error, Result};
use crate::ir::{Activation, Graph, Op};
use crate::params::Params;
use crate::prove::{check_equivalence, Evidence, ProveOptions};
use crate::transform::morph_kernel::Morphed;

use super::deepen::region;

/// Proves the morph `m` of `teacher` on its convolution; `tp` needs only that layer's
/// tensors.
pub fn prove(
    teacher: &Graph,
    tp: &Params,
    m: &Morphed,
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    let layer = &m.change.layer;
    let lacks = || Error::weights(format!("the network lacks layer `{layer}`"));
    let t_conv = teacher.find(layer).ok_or_else(lacks)?;
    let s_conv = m.graph.find(layer).ok_or_else(lacks)?;
    let t_in = teacher.inputs(t_conv)[0];
    let s_in = m.graph.inputs(s_conv)[0];
    let shape = teacher.g[t_in].shape.clone();
    let first = Op::Activation(Activation::Identity);
    let same = |n: &str| n.to_string();
    let t_region = region(teacher, t_in, &[t_conv], &shape, &first, &same)?;
    let s_region = region(&m.graph, s_in, &[s_conv], &shape, &first, &same)?;
    // The conv keeps its name in both regions, which run on the tensors as they are.
    check_equivalence(&t_region, tp, &s_region, &m.params, opts)
}
