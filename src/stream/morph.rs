//! Streaming kernel morph: only the morphed convolution's tensors are decoded and grown;
//! every other tensor is copied byte for byte from the teacher's map.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use super::{Job, Streamed, STREAMED_NOTE};
use crate::error::Result;
use crate::ir::Graph;
use crate::names;
use crate::params::Params;
use crate::pipeline::{judge, morph_judged};
use crate::report::morph_report;
use crate::transform::morph_kernel::morph_partial;

/// A streamed kernel morph of `layer` to `kernel` x `kernel`: the conv's tensors decoded and
/// grown, proved on the conv alone (`job.prove`), then written where `place` says once it
/// has checked the student's outputs; every other tensor copied.
pub fn step(
    graph: &Graph,
    job: &Job,
    layer: &str,
    kernel: usize,
    place: &mut dyn FnMut(&Graph) -> Result<PathBuf>,
) -> Result<Streamed> {
    let src = job.src;
    names::check_source(src, graph, job.naming)?;
    let renames: BTreeMap<String, String> = names::tensor_renames(graph, job.naming)?
        .into_iter()
        .collect();
    // The layer's tensors (weight, and bias if any; all are rewritten as one layer). An
    // unknown or non-conv layer is refused by morph_partial with the reason.
    let mut tensors = BTreeMap::new();
    let prefix = format!("{layer}.");
    for spec in graph.param_specs() {
        if spec.name.starts_with(&prefix) {
            let file = renames.get(&spec.name).unwrap_or(&spec.name);
            tensors.insert(spec.name.clone(), src.decode(file)?);
            src.release(file);
        }
    }
    let partial = Params {
        tensors,
        dtype: src.dtype(),
    };
    let m = morph_partial(graph, &partial, layer, kernel)?;
    let path = place(&m.graph)?;
    let mut report = morph_report(graph, &m, job.teacher, job.prove.map_or(0, |o| o.seed));
    judge(&mut report, morph_judged(src.dtype()), job.prove, |o| {
        crate::local_proof::morph::prove(graph, &partial, &m, o)
    })?;
    report.notes.push(STREAMED_NOTE.into());
    if job.prove.is_some() {
        report.notes.push(crate::local_proof::LOCAL_NOTE.into());
    }
    report.torchvision_names = names::report_names(&[graph, &m.graph], job.naming);
    let rewritten: HashSet<&str> = HashSet::from([layer]);
    let files = super::copy::write(
        &super::copy::Rewrite {
            teacher: graph,
            student: &m.graph,
            new: &m.params,
            rewritten: &rewritten,
            name_map: &BTreeMap::new(),
        },
        &report.metadata(),
        src,
        job.naming,
        &path,
        job.shard_size,
    )?;
    Ok(Streamed {
        student: m.graph,
        report,
        files,
        dtype: src.dtype(),
    })
}
