//! Streaming deepening: a deepening changes few tensors (the inserted layers', and for
//! NetMorph-dense its readers'), so the teacher stays memory-mapped, only the tensors the
//! method reads ([`deepen::needed_tensors`]) are decoded, and every other student tensor is
//! copied byte for byte from the teacher's map to the output, one at a time. The bytes are
//! those the in-memory path writes (its f64 values round-trip the teacher's dtype exactly).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::{Job, Streamed, STREAMED_NOTE};
use crate::error::Result;
use crate::ir::Graph;
use crate::names::{self, Naming};
use crate::params::Params;
use crate::pipeline::{deepen_judged, judge};
use crate::report::{deepen_report, StepReport};
use crate::shards::Source;
use crate::transform::deepen::{self, DeepenArgs, Deepened};

/// A streamed deepening of the teacher in `job.src`: planned, proved locally (the inserted
/// layers), then written where `place` says once it has checked the student's outputs.
pub fn step(
    graph: &Graph,
    job: &Job,
    args: &DeepenArgs,
    place: &mut dyn FnMut(&Graph) -> Result<PathBuf>,
) -> Result<Streamed> {
    let (d, mut partial) = plan(graph, job.src, args, job.seed, job.naming)?;
    // Only NetMorph-dense's proof reads teacher tensors (its readers); free the others.
    if !args.method.info().mixes {
        partial.tensors.clear();
    }
    let path = place(&d.graph)?;
    let site = deepen::resolve_site(graph, &args.after)?;
    let mut report = deepen_report(graph, &d, args, job.seed, job.teacher);
    let how = deepen_judged(args, job.src.dtype());
    judge(&mut report, how, job.prove, |o| {
        crate::local_proof::deepen::prove(graph, &partial, &d, &site, o)
    })?;
    drop(partial);
    report.notes.push(STREAMED_NOTE.into());
    if job.prove.is_some() {
        report.notes.push(crate::local_proof::LOCAL_NOTE.into());
    }
    report.torchvision_names = names::report_names(&[graph, &d.graph], job.naming);
    write(graph, d, report, job, &path)
}

/// The deepening of `graph` as `args` asks, computed from the teacher tensors it reads
/// only (decoded from `src`, in `naming`'s names), and those tensors (what a local proof
/// needs of the teacher). The deepening's params hold the new and changed tensors, rounded
/// to `src`'s dtype as they will be written.
pub fn plan(
    graph: &Graph,
    src: &Source,
    args: &DeepenArgs,
    seed: u64,
    naming: Naming,
) -> Result<(Deepened, Params)> {
    names::check_source(src, graph, naming)?;
    let renames: HashMap<String, String> =
        names::tensor_renames(graph, naming)?.into_iter().collect();
    let site = deepen::resolve_site(graph, &args.after)?;
    let mut tensors = BTreeMap::new();
    for name in deepen::needed_tensors(graph, &site, args.method) {
        let file = renames.get(&name).unwrap_or(&name);
        tensors.insert(name.clone(), src.decode(file)?);
        src.release(file);
    }
    let partial = Params {
        tensors,
        dtype: src.dtype(),
    };
    let mut d = deepen::deepen_partial(graph, &partial, args, seed)?;
    d.params = d.params.with_dtype(src.dtype());
    Ok((d, partial))
}

/// Writes the student of `d` ([`plan`]'s deepening of `graph`) into `path` (sharded by
/// `job.shard_size`), with `report` in its metadata: its new and changed tensors from `d`,
/// every other one copied from the teacher tensors of `job.src`.
pub fn write(
    graph: &Graph,
    d: Deepened,
    report: StepReport,
    job: &Job,
    path: &Path,
) -> Result<Streamed> {
    let rewritten: HashSet<&str> = d
        .inserted
        .iter()
        .chain(&d.changed)
        .map(|s| s.as_str())
        .collect();
    let files = crate::stream::copy::write(
        &crate::stream::copy::Rewrite {
            teacher: graph,
            student: &d.graph,
            new: &d.params,
            rewritten: &rewritten,
            name_map: &d.name_map,
        },
        &report.metadata(),
        job.src,
        job.naming,
        path,
        job.shard_size,
    )?;
    Ok(Streamed {
        student: d.graph,
        report,
        files,
        dtype: job.src.dtype(),
    })
}
