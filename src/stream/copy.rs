//! Writing a student that is the teacher with a few layers rewritten (a deepening, a
//! kernel morph): the rewritten layers' tensors come from memory, every other tensor is
//! copied byte for byte from the teacher's map, in file order (so the output can skip the
//! page cache, [`Writer::sequential`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::names::{self, Naming};
use crate::params::Params;
use crate::progress::Progress;
use crate::shards::{self, Source, Writer};

/// What changed between teacher and student.
pub struct Rewrite<'a> {
    pub teacher: &'a Graph,
    pub student: &'a Graph,
    /// Every tensor of the rewritten layers, under the student's names.
    pub new: &'a Params,
    /// Student layers whose tensors come from `new`.
    pub rewritten: &'a HashSet<&'a str>,
    /// Teacher layer -> student layer, for every layer renamed.
    pub name_map: &'a BTreeMap<String, String>,
}

/// Writes the student of `r` at `path` (sharded by `shard_size`) with `metadata`, the
/// teacher's tensors read from `src` (in `naming`'s names); returns the files written.
pub fn write(
    r: &Rewrite,
    metadata: &BTreeMap<String, String>,
    src: &Source,
    naming: Naming,
    path: &Path,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    let dtype = src.dtype();
    let theirs_student = names::renamed_graph(r.student, naming)?;
    let entries = shards::entries(&theirs_student);
    let total: u64 = entries.iter().map(|e| e.nbytes(dtype) as u64).sum();
    let mut writer = Writer::create(path, &entries, dtype, Some(metadata), shard_size, 0)?;
    // The loop below writes in file order, so the output can skip the page cache.
    writer.sequential()?;
    let mut progress = Progress::new("writing the student", total, true);
    let teacher_file: HashMap<String, String> = names::tensor_renames(r.teacher, naming)?
        .into_iter()
        .collect();
    let student_file: HashMap<String, String> = names::tensor_renames(r.student, naming)?
        .into_iter()
        .collect();
    // Student layer -> teacher layer, for the tensors that move unchanged.
    let old_name: HashMap<&str, &str> = r
        .name_map
        .iter()
        .map(|(old, new)| (new.as_str(), old.as_str()))
        .collect();
    for spec in r.student.param_specs() {
        let out = student_file.get(&spec.name).unwrap_or(&spec.name);
        let (layer, suffix) = spec
            .name
            .rsplit_once('.')
            .expect("a tensor name is layer.suffix");
        if r.rewritten.contains(layer) {
            let t = r.new.get(&spec.name).ok_or_else(|| {
                Error::weights(format!(
                    "the rewrite did not produce tensor `{}`",
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
    writer.finish()
}
