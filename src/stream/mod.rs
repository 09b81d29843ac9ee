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
//! With a local proof, the rewrite is [`crate::transform`]'s, step by step, through a [`TensorStore`] that
//! knows how often each step touches each tensor: a tensor leaves the store for the output
//! after its last touch; one that a later step touches again waits in an unlinked scratch
//! file (f64, exactly as the in-memory path holds it), not in memory. Tensors no step
//! touches are copied byte for byte from the teacher's map. Every value goes through the
//! same arithmetic as [`crate::transform::widen`] followed by rounding to the teacher's
//! dtype, so the output is bit-identical to the in-memory path's.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::names::{self, Naming};
use crate::params::DType;
use crate::progress::Progress;
use crate::prove::{failure, Evidence, ProveOptions};
use crate::report::{Report, Site};
use crate::shards::{self, Source, Writer};
use crate::transform::{self, Plan, TensorStore, WidenArgs};

pub mod copy;
pub mod deepen;

/// Header bytes kept free for the evidence of a local proof.
const EVIDENCE_RESERVE: usize = 1 << 16;

/// A streamed widening's result.
pub struct Streamed {
    pub student: Graph,
    pub report: Report,
    /// The weight files written (shards and index, or one file).
    pub files: Vec<PathBuf>,
    pub dtype: DType,
}

/// Where a tensor's current value is.
enum Slot {
    /// In the teacher file, untouched.
    Teacher,
    /// In the scratch file at this offset, f64, with this shape.
    Scratch(u64, Vec<usize>),
    /// Final and written to the output.
    Written(Vec<usize>),
}

struct Store<'a> {
    src: &'a Source,
    writer: Writer,
    /// r2rc name -> file name.
    file_name: HashMap<String, String>,
    left: HashMap<String, usize>,
    slots: HashMap<String, Slot>,
    scratch: fs::File,
    scratch_end: u64,
    progress: Progress,
}

impl Store<'_> {
    fn fname<'b>(&'b self, name: &'b str) -> &'b str {
        self.file_name.get(name).map_or(name, |s| s.as_str())
    }

    fn current(&mut self, name: &str) -> Result<Option<ArrayD<f64>>> {
        let file = self.fname(name).to_string();
        match self.slots.get(name) {
            None => Ok(None),
            Some(Slot::Teacher) => {
                let t = self.src.decode(&file)?;
                self.src.release(&file);
                Ok(Some(t))
            }
            Some(Slot::Scratch(at, shape)) => {
                let n: usize = shape.iter().product();
                let mut buf = vec![0u8; n * 8];
                shards::read_at(&self.scratch, &mut buf, *at)
                    .map_err(|e| Error::io("the scratch file", e))?;
                let v = buf
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                Ok(Some(
                    ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches"),
                ))
            }
            Some(Slot::Written(shape)) => Ok(Some(self.writer.read_values(&file, &shape.clone())?)),
        }
    }
}

impl TensorStore for Store<'_> {
    fn take(&mut self, name: &str) -> Result<Option<ArrayD<f64>>> {
        if let Some(Slot::Written(_)) = self.slots.get(name) {
            return Err(Error::weights(format!(
                "tensor `{name}` was touched after it was final (a streaming plan error)"
            )));
        }
        self.current(name)
    }

    fn put(&mut self, name: &str, t: ArrayD<f64>) -> Result<()> {
        let left = self.left.get_mut(name).ok_or_else(|| {
            Error::weights(format!(
                "widening wrote tensor `{name}`, which its plan does not touch"
            ))
        })?;
        *left -= 1;
        let shape = t.shape().to_vec();
        if *left == 0 {
            let file = self.fname(name).to_string();
            self.writer.write_values(&file, &t)?;
            self.progress
                .inc((t.len() * self.writer.dtype().size()) as u64);
            self.slots.insert(name.to_string(), Slot::Written(shape));
        } else {
            let mut buf = Vec::with_capacity(t.len() * 8);
            for x in t.iter() {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            shards::write_at(&self.scratch, &buf, self.scratch_end)
                .map_err(|e| Error::io("the scratch file", e))?;
            self.slots
                .insert(name.to_string(), Slot::Scratch(self.scratch_end, shape));
            self.scratch_end += buf.len() as u64;
        }
        Ok(())
    }

    fn peek(&mut self, name: &str) -> Result<Option<ArrayD<f64>>> {
        self.current(name)
    }
}

/// An unlinked scratch file in `dir` (gone when closed, whatever happens).
fn scratch_file(dir: &Path) -> Result<fs::File> {
    let p = dir.join(format!(".r2rc-scratch.{}.tmp", std::process::id()));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .map_err(|e| Error::io(p.display(), e))?;
    let _ = fs::remove_file(&p);
    Ok(f)
}

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

/// Widens `graph` with the teacher tensors of `src` (in `naming`'s names) streamed into
/// `path` (sharded by `shard_size`); with `prove`, proves every step on its region
/// ([`crate::local_proof`]). `teacher` says where the weights came from, for the report.
#[allow(clippy::too_many_arguments)]
pub fn widen(
    graph: &Graph,
    src: &Source,
    naming: Naming,
    args: &WidenArgs,
    seed: u64,
    path: &Path,
    shard_size: Option<u64>,
    prove: Option<&ProveOptions>,
    teacher: &str,
) -> Result<Streamed> {
    let plan = transform::plan(graph, args)?;
    names::check_source(src, graph, naming)?;
    let dtype = src.dtype();
    let renames: HashMap<String, String> =
        names::tensor_renames(graph, naming)?.into_iter().collect();
    let theirs_student = names::renamed_graph(&plan.student, naming)?;
    let student_renames: HashMap<String, String> = names::tensor_renames(&plan.student, naming)?
        .into_iter()
        .collect();

    // Touches per tensor, over all steps.
    let specs: std::collections::HashSet<String> =
        graph.param_specs().into_iter().map(|s| s.name).collect();
    let has = |n: &str| specs.contains(n);
    let mut left: HashMap<String, usize> = HashMap::new();
    for &(id, _) in &plan.steps {
        for t in transform::space_tensors(graph, &plan.spaces.spaces[id], &has) {
            *left.entry(t).or_default() += 1;
        }
    }

    let tv_names = names::report_names(&[graph, &plan.student], naming);
    let mut report = widen_report(graph, &plan, args, seed, teacher, vec![], false);
    report.torchvision_names = tv_names.clone();
    let meta = report.metadata();
    let entries = shards::entries(&theirs_student);
    let total: u64 = entries.iter().map(|e| e.nbytes(dtype) as u64).sum();
    let reserve = if prove.is_some() { EVIDENCE_RESERVE } else { 0 };
    let writer = Writer::create(path, &entries, dtype, Some(&meta), shard_size, reserve)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut store = Store {
        src,
        writer,
        file_name: renames.clone(),
        left: left.clone(),
        slots: specs.iter().map(|n| (n.clone(), Slot::Teacher)).collect(),
        scratch: scratch_file(dir.unwrap_or(Path::new(".")))?,
        scratch_end: 0,
        progress: Progress::new("writing the student", total, true),
    };
    if prove.is_none() {
        let shapes: HashMap<String, Vec<usize>> = graph
            .param_specs()
            .into_iter()
            .map(|s| (s.name, s.slot.shape))
            .collect();
        let touches = transform::tensor_touches(graph, &plan, args, seed, &shapes);
        let order: Vec<String> = graph.param_specs().into_iter().map(|s| s.name).collect();
        let Store {
            writer,
            file_name,
            progress,
            ..
        } = store;
        let writer = per_tensor(
            src,
            writer,
            &order,
            &touches,
            &file_name,
            &student_renames,
            progress,
            &plan,
            args,
            seed,
        )?;
        let files = writer.finish()?;
        return Ok(Streamed {
            student: plan.student,
            report,
            files,
            dtype,
        });
    }
    // Untouched tensors: bytes straight from the teacher's map (checked for finiteness).
    for spec in graph.param_specs() {
        if left.contains_key(&spec.name) {
            continue;
        }
        let file = renames.get(&spec.name).unwrap_or(&spec.name).clone();
        let out = student_renames
            .get(&spec.name)
            .unwrap_or(&spec.name)
            .clone();
        copy_tensor(src, &mut store.writer, &mut store.progress, &file, &out)?;
    }
    let mut evidence: Vec<Vec<Evidence>> = Vec::new();
    for k in 0..plan.steps.len() {
        let space = &plan.spaces.spaces[plan.steps[k].0];
        store.progress.message(&format!("space {}", space.label));
        let before = match prove {
            Some(_) => Some(snapshot(
                &mut store,
                &transform::graph_after(graph, &plan, k)?,
                space,
            )?),
            None => None,
        };
        transform::apply_step(graph, &plan, k, &mut store, args, seed)?;
        if let (Some(opts), Some(before)) = (prove, before) {
            let g0 = transform::graph_after(graph, &plan, k)?;
            let g1 = transform::graph_after(graph, &plan, k + 1)?;
            let mut after = snapshot(&mut store, &g1, space)?;
            let mut before = before;
            crate::local_proof::round_all(&mut before, dtype);
            crate::local_proof::round_all(&mut after, dtype);
            let opts = &crate::local_proof::options_for(opts, args, dtype);
            let ev = crate::local_proof::prove_step(
                &g0,
                &g1,
                space,
                &mut |n| lookup(&before, n),
                &mut |n| lookup(&after, n),
                opts,
            )?;
            if plan.exact {
                if let Some(e) = failure(&ev) {
                    return Err(e);
                }
            }
            evidence.push(ev);
        }
    }
    let regions = evidence.len();
    let evidence = if regions > 0 {
        crate::local_proof::combine(evidence, regions)
    } else {
        vec![]
    };
    report = widen_report(graph, &plan, args, seed, teacher, evidence, prove.is_some());
    report.torchvision_names = tv_names;
    if prove.is_some() && !store.writer.set_metadata(&report.metadata())? {
        report.notes.push(
            "the proof evidence did not fit the safetensors header space kept for it; report.json holds it".into(),
        );
    }
    let Store { writer, .. } = store;
    let files = writer.finish()?;
    Ok(Streamed {
        student: plan.student,
        report,
        files,
        dtype,
    })
}

/// Writes the student in file order ([`Writer::sequential`]): a tensor no step touches is
/// copied from the teacher's map; a touched one is read from the teacher, widened by all its
/// steps in memory ([`transform::apply_touches`]) and encoded. A writer thread writes (and
/// copies) while this one computes the next tensor; at most one finished tensor waits.
#[allow(clippy::too_many_arguments)]
fn per_tensor(
    src: &Source,
    mut writer: Writer,
    order: &[String],
    touches: &[(String, Vec<transform::Touch>)],
    file_name: &HashMap<String, String>,
    out_name: &HashMap<String, String>,
    mut progress: Progress,
    plan: &Plan,
    args: &WidenArgs,
    seed: u64,
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
    let touched: HashMap<&str, &[transform::Touch]> = touches
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_slice()))
        .collect();
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
                let job = match touched.get(name.as_str()) {
                    None => Job::Copy(file.clone(), out),
                    Some(tc) => {
                        let t = src.decode(file)?;
                        src.release(file);
                        let t = transform::apply_touches(plan, args, seed, name, t, tc)?;
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

fn lookup(m: &BTreeMap<String, ArrayD<f64>>, n: &str) -> Result<ArrayD<f64>> {
    m.get(n)
        .cloned()
        .ok_or_else(|| Error::weights(format!("the local proof lacks tensor `{n}`")))
}

/// The region's tensors as they are now.
fn snapshot(
    store: &mut Store,
    g: &Graph,
    space: &crate::analysis::Space,
) -> Result<BTreeMap<String, ArrayD<f64>>> {
    let mut m = BTreeMap::new();
    for n in crate::local_proof::region_tensors(g, space) {
        if let Some(t) = store.peek(&n)? {
            m.insert(n, t);
        }
    }
    Ok(m)
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

/// The report of a widening planned as `plan`, with `evidence` (empty when not proved).
pub fn widen_report(
    graph: &Graph,
    plan: &Plan,
    args: &WidenArgs,
    seed: u64,
    teacher: &str,
    evidence: Vec<Evidence>,
    proved: bool,
) -> Report {
    let mut notes = plan.notes.clone();
    if !plan.exact && !evidence.is_empty() {
        let dev = evidence.iter().map(|e| e.max_rel_err).fold(0.0, f64::max);
        notes.push(format!(
            "{} is not function preserving: the rewritten regions deviate from the teacher's by up to {dev:.3e} (relative)",
            args.method.title()
        ));
    }
    if proved {
        notes.push(format!(
            "proved locally: each of the {} widened spaces on its region (its producers' inputs to its consumers' outputs), before and after its step",
            plan.steps.len()
        ));
    }
    Report {
        command: "widen".into(),
        method: args.method.name().into(),
        function_preserving: plan.exact,
        site: Site {
            target: args.target.show(),
            spaces: plan.changes.clone(),
        },
        name_map: graph
            .order()
            .into_iter()
            .map(|n| (graph.g[n].name.clone(), graph.g[n].name.clone()))
            .collect(),
        params_before: crate::stats::param_count(graph),
        params_after: crate::stats::param_count(&plan.student),
        macs_before: crate::stats::mac_count(graph),
        macs_after: crate::stats::mac_count(&plan.student),
        seed,
        init: format!("{:?}", args.init).to_lowercase(),
        teacher: teacher.into(),
        notes,
        proved: proved && plan.exact,
        evidence,
        torchvision_names: None,
    }
}
