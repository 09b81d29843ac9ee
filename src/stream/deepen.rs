//! Streaming deepening: a deepening changes few tensors (the inserted layers', and for
//! NetMorph-dense its readers'), so the teacher stays memory-mapped, only the tensors the
//! method reads ([`deepen::needed_tensors`]) are decoded, and every other student tensor is
//! copied byte for byte from the teacher's map to the output, one at a time. The bytes are
//! those the in-memory path writes (its f64 values round-trip the teacher's dtype exactly).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::ir::Graph;
use crate::names::{self, Naming};
use crate::params::{DType, Params};
use crate::progress::Progress;
use crate::shards::{self, Source, Writer};
use crate::transform::deepen::{self, DeepenArgs, Deepened, StepReport};

/// A streamed deepening's result.
pub struct Streamed {
    pub student: Graph,
    pub report: StepReport,
    /// The weight files written (shards and index, or one file).
    pub files: Vec<PathBuf>,
    pub dtype: DType,
}

/// The weight files the streamed deepening `d` will write at `path` (for existence checks
/// before any work).
pub fn output_paths(
    d: &Deepened,
    src: &Source,
    path: &Path,
    naming: Naming,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    crate::stream::student_paths(&d.graph, src, path, naming, shard_size)
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
    let theirs = names::renamed_graph(graph, naming)?;
    src.check(&theirs)?;
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
/// `shard_size`), with `report` in its metadata: its new and changed tensors from `d`,
/// every other one copied from the teacher tensors of `src` (in `naming`'s names).
pub fn deepen(
    graph: &Graph,
    d: Deepened,
    report: StepReport,
    src: &Source,
    naming: Naming,
    path: &Path,
    shard_size: Option<u64>,
) -> Result<Streamed> {
    let dtype = src.dtype();
    let theirs_student = names::renamed_graph(&d.graph, naming)?;
    let entries = shards::entries(&theirs_student);
    let total: u64 = entries.iter().map(|e| e.nbytes(dtype) as u64).sum();
    let mut writer = Writer::create(
        path,
        &entries,
        dtype,
        Some(&report.metadata()),
        shard_size,
        0,
    )?;
    // The loop below writes in file order, so the output can skip the page cache.
    writer.sequential()?;
    let mut progress = Progress::new("writing the student", total, true);
    let teacher_file: HashMap<String, String> =
        names::tensor_renames(graph, naming)?.into_iter().collect();
    let student_file: HashMap<String, String> = names::tensor_renames(&d.graph, naming)?
        .into_iter()
        .collect();
    // Student layer -> teacher layer, for the tensors that move unchanged.
    let old_name: HashMap<&str, &str> = d
        .name_map
        .iter()
        .map(|(old, new)| (new.as_str(), old.as_str()))
        .collect();
    let rewritten: HashSet<&str> = d
        .inserted
        .iter()
        .chain(&d.changed)
        .map(|s| s.as_str())
        .collect();
    for spec in d.graph.param_specs() {
        let out = student_file.get(&spec.name).unwrap_or(&spec.name);
        let (layer, suffix) = spec
            .name
            .rsplit_once('.')
            .expect("a tensor name is layer.suffix");
        if rewritten.contains(layer) {
            let t = d.params.get(&spec.name).ok_or_else(|| {
                crate::Error::weights(format!(
                    "the deepening did not produce tensor `{}`",
                    spec.name
                ))
            })?;
            writer.write_values(out, t)?;
            progress.inc((t.len() * dtype.size()) as u64);
        } else {
            let from = format!("{}.{suffix}", old_name.get(layer).unwrap_or(&layer));
            let file = teacher_file.get(&from).unwrap_or(&from);
            crate::stream::copy_tensor(src, &mut writer, &mut progress, file, out)?;
        }
    }
    let files = writer.finish()?;
    Ok(Streamed {
        student: d.graph,
        report,
        files,
        dtype,
    })
}
