//! Streaming widening: the teacher stays memory-mapped and is read one tensor at a time;
//! each student tensor is written to its place in the output as soon as it is final, so a
//! widening never holds both networks in memory.
//!
//! Without a proof, the student is written in file order: an untouched tensor is copied
//! from the teacher's map; a touched one is widened on its own by all its steps at once
//! ([`transform::tensor_touches`], [`transform::apply_touches`]: every call knows where its
//! draws start in its step's random stream), encoded and handed to a writer thread, which
//! writes through `O_DIRECT` where it can ([`Writer::sequential`]); nothing waits in a
//! scratch file.
//!
//! With a local proof, every step is proved first on its region
//! ([`crate::local_proof::prove_widening`]), from the teacher tensors the regions read,
//! computed by the same per-tensor rewrite; only then is the student written, as above.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Graph;
use crate::names::{self, Naming};
use crate::params::DType;
use crate::progress::Progress;
use crate::prove::ProveOptions;
use crate::report::{widen_report, StepReport};
use crate::shards::{self, Source, Writer};
use crate::transform::{Plan, WidenArgs, Widening};

pub mod copy;
pub mod deepen;
pub mod morph;

/// A streamed widening's result.
pub struct Streamed {
    pub student: Graph,
    pub report: StepReport,
    /// The weight files written (shards and index, or one file).
    pub files: Vec<PathBuf>,
    pub dtype: DType,
}

/// What every streamed rewrite step is given: the memory-mapped teacher and its naming,
/// the seed, the local proof's options (`None`: not proved), where the weights came from
/// (for the report) and the shard size of the output.
pub struct Job<'a> {
    pub src: &'a Source,
    pub naming: Naming,
    pub seed: u64,
    pub prove: Option<&'a ProveOptions>,
    pub teacher: &'a str,
    pub shard_size: Option<u64>,
}

/// The note of every streamed deepening and morph.
pub const STREAMED_NOTE: &str =
    "streamed: tensors the rewrite does not change were copied byte for byte from the teacher";

/// The weight files a streamed widening will write at `path` (for existence checks before
/// any work).
pub fn output_paths(
    plan: &Plan,
    src: &Source,
    path: &Path,
    naming: Naming,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    student_paths(&plan.student, src, path, naming, shard_size)
}

/// The weight files of `student` (in `src`'s dtype, `naming`'s names) at `path`.
pub fn student_paths(
    student: &Graph,
    src: &Source,
    path: &Path,
    naming: Naming,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    let theirs = names::renamed_graph(student, naming)?;
    Ok(shards::output_paths(
        path,
        &shards::entries(&theirs),
        src.dtype(),
        shard_size,
    ))
}

/// Widens `graph` with the teacher tensors of `job.src` streamed into `path`; with a
/// proof, proves every step on its region ([`crate::local_proof`]) before writing anything.
pub fn widen(graph: &Graph, job: &Job, args: &WidenArgs, path: &Path) -> Result<Streamed> {
    let Job {
        src,
        naming,
        seed,
        prove,
        teacher,
        shard_size,
    } = *job;
    names::check_source(src, graph, naming)?;
    let dtype = src.dtype();
    let specs: HashSet<String> = graph.param_specs().into_iter().map(|s| s.name).collect();
    let w = Widening::new(graph, args, seed, &|n| specs.contains(n))?;
    let renames: HashMap<String, String> =
        names::tensor_renames(graph, naming)?.into_iter().collect();
    let theirs_student = names::renamed_graph(&w.plan.student, naming)?;
    let student_renames: HashMap<String, String> = names::tensor_renames(&w.plan.student, naming)?
        .into_iter()
        .collect();
    let mut report = widen_report(graph, &w.plan, args, seed, teacher);
    let mut read = |n: &str| -> Result<ArrayD<f64>> {
        let file = renames.get(n).map_or(n, |s| s.as_str());
        let t = src.decode(file)?;
        src.release(file);
        Ok(t)
    };
    let how = crate::pipeline::widen_judged(args, &w.plan, dtype);
    crate::pipeline::judge(&mut report, how, prove, |o| {
        crate::local_proof::prove_widening(&w, &mut read, dtype, o)
    })?;
    if prove.is_some() {
        let note = crate::local_proof::widening_note(w.plan.steps.len());
        report.notes.push(note);
    }
    report.torchvision_names = names::report_names(&[graph, &w.plan.student], naming);
    report.notes.extend(src.notes());
    let entries = shards::entries(&theirs_student);
    let total: u64 = entries.iter().map(|e| e.nbytes(dtype) as u64).sum();
    let writer = Writer::create(
        path,
        &entries,
        dtype,
        Some(&report.metadata()),
        shard_size,
        0,
    )?;
    let order: Vec<String> = graph.param_specs().into_iter().map(|s| s.name).collect();
    let progress = Progress::new("writing the student", total, true);
    let writer = per_tensor(
        src,
        writer,
        &order,
        &w,
        &renames,
        &student_renames,
        progress,
    )?;
    let files = writer.finish()?;
    Ok(Streamed {
        student: w.plan.student,
        report,
        files,
        dtype,
    })
}

/// Writes the student in file order ([`Writer::sequential`]): a tensor no step touches is
/// copied from the teacher's map; a touched one is read from the teacher, widened by all its
/// steps in memory ([`Widening::tensor`]) and encoded. A writer thread writes (and copies)
/// while this one computes the next tensor; at most one finished tensor waits.
fn per_tensor(
    src: &Source,
    mut writer: Writer,
    order: &[String],
    w: &Widening,
    file_name: &HashMap<String, String>,
    out_name: &HashMap<String, String>,
    mut progress: Progress,
) -> Result<Writer> {
    /// What the writer thread does next.
    enum Job {
        /// Copy the teacher's tensor (file name) to the output (name).
        Copy(String, String),
        /// Write these bytes as the output's tensor.
        Bytes(String, Vec<u8>),
    }
    let dtype = writer.dtype();
    writer.sequential()?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(0);
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<Writer> {
            for job in rx {
                match job {
                    Job::Copy(file, out) => {
                        copy_tensor(src, &mut writer, &mut progress, &file, &out)?
                    }
                    Job::Bytes(out, bytes) => {
                        writer.write_part(&out, 0, &bytes, true)?;
                        progress.inc(bytes.len() as u64);
                    }
                }
            }
            Ok(writer)
        });
        let computed = || -> Result<()> {
            for name in order {
                let file = file_name.get(name).unwrap_or(name);
                let out = out_name.get(name).unwrap_or(name).clone();
                let job = if !w.touches(name) {
                    Job::Copy(file.clone(), out)
                } else {
                    {
                        let t = src.decode(file)?;
                        src.release(file);
                        let t = w.tensor(name, t, Widening::ALL)?;
                        let t = t.as_standard_layout();
                        let bytes =
                            shards::encode(t.as_slice().expect("standard layout"), dtype, false);
                        Job::Bytes(out, bytes)
                    }
                };
                if tx.send(job).is_err() {
                    // The writer stopped on an error, which its join reports.
                    return Ok(());
                }
            }
            Ok(())
        };
        let res = computed();
        drop(tx);
        let w = handle.join().expect("the writer thread does not panic");
        res?;
        w
    })
}

/// Copies an untouched tensor from the teacher (file name `file`) to the output (`out`),
/// in chunks, re-encoding only when its dtype is not the output's.
pub(crate) fn copy_tensor(
    src: &Source,
    writer: &mut Writer,
    progress: &mut Progress,
    file: &str,
    out: &str,
) -> Result<()> {
    let info = src.tensors[file].clone();
    let raw = src.bytes(file).expect("checked");
    let same = shards::float_dtype(info.dtype) == Some(writer.dtype())
        || info.dtype == safetensors::Dtype::I64;
    if !same {
        let t = src.decode(file)?;
        writer.write_values(out, &t)?;
    } else {
        let size = info.dtype.bitsize() / 8;
        let chunk = (8 << 20) / size * size;
        let mut at = 0;
        while at < raw.len() {
            let end = (at + chunk).min(raw.len());
            shards::decode_values(&raw[at..end], info.dtype, file, &src.shown)?;
            writer.write_part(out, at, &raw[at..end], end == raw.len())?;
            progress.inc((end - at) as u64);
            at = end;
        }
        if raw.is_empty() {
            writer.write_part(out, 0, &[], true)?;
        }
    }
    src.release(file);
    Ok(())
}
