//! Streamed rewrite steps: the teacher stays memory-mapped ([`Mapped`]) and is read one
//! tensor at a time; each student tensor is written to its place in the output as soon as
//! it is final, so a step never holds both networks in memory.
//!
//! [`step`] plans the same [`Patch`] as the in-memory pipeline, proves it on its region
//! (`--prove local`: from the teacher tensors the region reads, computed by the same
//! per-tensor edits; in full, both networks loaded for the proof only, where that costs
//! less and fits: [`crate::pipeline::cheaper_proof`]) or not at all, and then [`write`]s the student in file order: a
//! tensor no edit makes is copied from the teacher's map; an edited one is computed on its
//! own ([`Patch::tensor`]: its draws are keyed by seed, step, tensor and part), encoded and
//! handed to a writer thread, which writes through `O_DIRECT` where it can
//! ([`Writer::sequential`]).
//!
//! Files are read and written by the naming's layout ([`names::stored`]): under GPT-2's
//! and timm's, one file tensor may hold several r2rc tensors (fused q, k, v), transposed
//! or reshaped. The teacher splits such a tensor to read a part; the writer joins a
//! student tensor's parts, each made as above, so every layout streams, sharded or not,
//! with the bytes the in-memory path writes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::ArrayD;

use crate::direct::DeviceBuffer;
use crate::error::Result;
use crate::ir::Graph;
use crate::names::layout::Stored;
use crate::names::{self, Naming};
use crate::params::{DType, Params};
use crate::patch::{Patch, Step, Teacher, TensorId};
use crate::pipeline::{judge_patch, Proof};
use crate::progress::Progress;
use crate::prove::ProveOptions;
use crate::report::StepReport;
use crate::shards::{self, Source, Writer};
use crate::transform::lazy::Lazy;

/// A streamed step's result.
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

/// The note of every streamed step.
pub const STREAMED_NOTE: &str =
    "streamed: tensors the rewrite does not change were copied byte for byte from the teacher";

/// A memory-mapped teacher read by r2rc names. Under a naming that renames, each r2rc
/// tensor is a file tensor of its own; under a layout that fuses, transposes or reshapes
/// (GPT-2's `c_attn`, timm's `qkv` and `cls_token`), an r2rc tensor is a part of one: it is
/// read by decoding that file tensor alone and splitting it as the layout says.
pub struct Mapped<'a> {
    pub src: &'a Source,
    /// The file's tensors, with the r2rc tensors each holds.
    stored: Vec<Stored>,
    /// r2rc tensor name -> (index into `stored`, part).
    part: HashMap<String, (usize, usize)>,
    /// The parts of the last fused file tensor read: its parts are read one after another
    /// (q, k, v), so it is decoded once for all of them.
    last: Mutex<Option<(usize, Vec<ArrayD<f64>>)>>,
}

impl<'a> Mapped<'a> {
    /// The teacher of `graph` in `src`, whose tensors carry `naming`'s names (checked).
    pub fn new(src: &'a Source, graph: &Graph, naming: Naming) -> Result<Mapped<'a>> {
        names::check_source(src, graph, naming)?;
        let stored = names::stored(graph, naming)?;
        let part = names::part_index(&stored);
        Ok(Mapped {
            src,
            stored,
            part,
            last: Mutex::new(None),
        })
    }

    /// The file's name of the r2rc tensor `name` (the tensor holding it).
    pub fn file_name<'n>(&'n self, name: &'n str) -> &'n str {
        self.part
            .get(name)
            .map_or(name, |&(i, _)| self.stored[i].name.as_str())
    }

    /// The teacher's file tensor that student file tensor `s` is a byte-for-byte copy of:
    /// every part of `s` is a teacher tensor no edit changes, and they are exactly the
    /// parts of one teacher file tensor, in order and laid out alike.
    fn whole(&self, patch: &Patch, s: &Stored) -> Option<&str> {
        let mut at: Option<usize> = None;
        for (k, (name, shape)) in s.parts.iter().enumerate() {
            let id = TensorId::parse(name);
            if patch.edits.contains_key(&id) {
                return None;
            }
            let &(i, j) = self.part.get(&patch.source_of(&id).to_string())?;
            if j != k || at.is_some_and(|a| a != i) || self.stored[i].parts[j].1 != *shape {
                return None;
            }
            at = Some(i);
        }
        let t = &self.stored[at?];
        let alike = t.parts.len() == s.parts.len()
            && t.shape == s.shape
            && t.transpose == s.transpose
            && t.axis == s.axis;
        alike.then_some(t.name.as_str())
    }
}

impl Teacher for Mapped<'_> {
    fn dtype(&self) -> DType {
        self.src.dtype()
    }

    fn has(&self, id: &TensorId) -> bool {
        self.src
            .tensors
            .contains_key(self.file_name(&id.to_string()))
    }

    fn read(&self, id: &TensorId) -> Result<ArrayD<f64>> {
        let name = id.to_string();
        let Some(&(i, k)) = self.part.get(&name) else {
            // Not the network's: the source says the file lacks it.
            return self.src.decode(&name);
        };
        let s = &self.stored[i];
        if s.is_plain() {
            let t = self.src.decode(&s.name)?;
            self.src.release(&s.name);
            return Ok(t);
        }
        if let Some((j, parts)) = &*self.last.lock().expect("not poisoned") {
            if *j == i {
                return Ok(parts[k].clone());
            }
        }
        let t = self.src.decode(&s.name)?;
        self.src.release(&s.name);
        let parts: Vec<ArrayD<f64>> = s.split(&t).into_iter().map(|(_, p)| p).collect();
        let out = parts[k].clone();
        *self.last.lock().expect("not poisoned") = Some((i, parts));
        Ok(out)
    }
}

/// The weight files of `student` (in `src`'s dtype, `naming`'s names and layout) at
/// `path`.
pub fn student_paths(
    student: &Graph,
    src: &Source,
    path: &Path,
    naming: Naming,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    Ok(shards::output_paths(
        path,
        &names::file_entries(student, naming)?,
        src.dtype(),
        shard_size,
    ))
}

/// Runs `step` on the teacher in `job.src`: plans it, asks `place` where the student's
/// weights go (it checks the outputs before any work), proves it on its region
/// (`job.prove`), then writes the student there.
pub fn step(
    graph: &Graph,
    job: &Job,
    step: &Step,
    place: &mut dyn FnMut(&Graph) -> Result<PathBuf>,
) -> Result<Streamed> {
    step_with_state(graph, job, step, place, None)
}

/// [`step`], also writing the student's optimizer state at `optimizer.1` from the
/// teacher's (`optimizer.0`, checked against `graph`), tensor by tensor after the weights
/// ([`crate::optim::write_streamed`]); its path is listed last in [`Streamed::files`].
pub fn step_with_state(
    graph: &Graph,
    job: &Job,
    step: &Step,
    place: &mut dyn FnMut(&Graph) -> Result<PathBuf>,
    optimizer: Option<(&crate::optim::State, &Path)>,
) -> Result<Streamed> {
    let teacher = Mapped::new(job.src, graph, job.naming)?;
    let patch = Patch::plan(graph, step, job.seed, &teacher, job.teacher)?;
    let path = place(&patch.student)?;
    let (proof, note) = crate::pipeline::cheaper_proof(&patch, Proof::new(job.prove, true));
    let mut report = judge_patch(&patch, proof, |o| match proof {
        Proof::Full(_) => {
            // Both networks whole, in memory, only for the proof; the writing below still
            // streams from the teacher's map.
            let tp = whole_teacher(graph, &teacher)?;
            let sp = patch.student_params(&tp)?;
            patch.prove_full(&tp, &sp, o)
        }
        _ => patch.prove_local(&teacher, o),
    })?;
    report.notes.extend(note);
    report.notes.push(STREAMED_NOTE.into());
    report.torchvision_names = names::report_names(&[graph, &patch.student], job.naming);
    let files = write(
        &patch,
        &teacher,
        &report.metadata(),
        job.naming,
        &path,
        job.shard_size,
    )?;
    let mut files = files;
    if let Some((state, at)) = optimizer {
        files.push(crate::optim::write_streamed(&patch, state, at, job.naming)?);
    }
    Ok(Streamed {
        student: patch.student,
        report,
        files,
        dtype: job.src.dtype(),
    })
}

/// Every tensor of `graph` read from the teacher's map.
fn whole_teacher(graph: &Graph, teacher: &Mapped) -> Result<Params> {
    let tensors = graph
        .param_specs()
        .iter()
        .map(|s| Ok((s.name.clone(), teacher.read(&TensorId::parse(&s.name))?)))
        .collect::<Result<_>>()?;
    Ok(Params {
        tensors,
        dtype: teacher.dtype(),
    })
}

/// Writes the student of `patch` at `path` (sharded by `shard_size`, in `naming`'s names
/// and layout) with `metadata`, in file order ([`Writer::sequential`]): a file tensor
/// whose every part no edit changes, laid out as one teacher file tensor, is copied from
/// the teacher's map; any other is made from its r2rc parts (each computed by
/// [`Patch::tensor`] or read from the teacher), joined as the layout says, and encoded.
/// A writer thread writes (and copies) while this one computes ahead, up to [`AHEAD`]
/// bytes, so that the device stays busy through a tensor's scale pass and draws. Returns
/// the files written.
pub fn write(
    patch: &Patch,
    teacher: &Mapped,
    metadata: &BTreeMap<String, String>,
    naming: Naming,
    path: &Path,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    /// What the writer thread does next.
    enum Job {
        /// Copy the teacher's tensor (file name) to the output (name).
        Copy(String, String),
        /// Write these bytes, after the first `pad` ([`Writer::pad`]), as the output's
        /// tensor.
        Bytes(String, DeviceBuffer, usize),
        /// Write these bytes, after the first `pad`, at this offset in the output's
        /// tensor (`true`: its last); the buffer comes back for the next part.
        Part(String, usize, DeviceBuffer, usize, bool),
    }
    let metadata = &crate::hf_config_out::file_metadata(metadata, naming);
    let src = teacher.src;
    let dtype = src.dtype();
    let stored = names::stored(&patch.student, naming)?;
    let entries = names::file_entries(&patch.student, naming)?;
    let total: u64 = entries.iter().map(|e| e.nbytes(dtype) as u64).sum();
    let mut writer = Writer::create(path, &entries, dtype, Some(metadata), shard_size, 0)?;
    writer.sequential()?;
    let pads: Vec<usize> = entries.iter().map(|e| writer.pad(&e.name)).collect();
    let mut progress = Progress::new("writing the student", total, true);
    impl Job {
        /// The memory this job holds until written.
        fn bytes(&self) -> usize {
            match self {
                Job::Copy(..) => 0,
                Job::Bytes(_, b, _) | Job::Part(_, _, b, _, _) => b.len(),
            }
        }
    }
    let (sender, rx) = std::sync::mpsc::channel::<Job>();
    let (back, spare) = std::sync::mpsc::channel::<DeviceBuffer>();
    let queued = &Queued::new(AHEAD);
    let widened_ahead = &Queued::new(PREPARED_AHEAD);
    // `false`: the writer stopped (on an error, which its join reports).
    let tx = move |job: Job| {
        queued.add(job.bytes());
        sender.send(job).is_ok()
    };
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<Writer> {
            let res = (|| {
                for job in rx {
                    let n = job.bytes();
                    match job {
                        Job::Copy(file, out) => {
                            copy_tensor(src, &mut writer, &mut progress, &file, &out)?
                        }
                        Job::Bytes(out, mut bytes, pad) => {
                            writer.write_padded(&out, &mut bytes, pad)?;
                            progress.inc((bytes.len() - pad) as u64);
                        }
                        Job::Part(out, at, mut bytes, pad, last) => {
                            writer.write_part_padded(&out, at, &mut bytes, pad, last)?;
                            progress.inc((bytes.len() - pad) as u64);
                            // The computing side may have finished: then the buffer goes.
                            let _ = back.send(bytes);
                        }
                    }
                    queued.done(n);
                }
                Ok(())
            })();
            // Stopped on an error: the computing side must not wait for room.
            queued.close();
            res.map(|()| writer)
        });
        // The next widened tensors' scale passes run on a thread of their own while this
        // one computes the current tensor's values, so that the writer does not wait for
        // them (a wide layer's take a tenth of a second). It runs ahead by widened tensors,
        // not by entries: counted by entries, the norm parameters between two wide layers
        // held it back until the first was nearly written, and the writer then idled
        // through the second's scale passes (50 ms at a time in a 1 GB widen).
        let (ready, prepared) = std::sync::mpsc::channel();
        let (stored, entries) = (&stored, &entries);
        let background = background_pool();
        s.spawn(move || {
            let prepare_in_background = |st| match &background {
                Some(pool) => pool.install(|| prepare(patch, teacher, st)),
                None => prepare(patch, teacher, st),
            };
            for (st, entry) in stored.iter().zip(entries) {
                let p = if entry.counter {
                    Ok(None)
                } else {
                    prepare_in_background(st)
                };
                if matches!(p, Ok(Some(_))) {
                    // Waits while PREPARED_AHEAD are prepared and their values not all
                    // computed (their stored draws stay in memory until then).
                    widened_ahead.add(1);
                }
                if ready.send(p).is_err() {
                    // The computing side stopped.
                    break;
                }
            }
        });
        let computed = || -> Result<()> {
            for ((st, entry), &pad) in stored.iter().zip(entries).zip(&pads) {
                let out = st.name.clone();
                let ahead = prepared.recv().expect("one per stored tensor")?;
                if let Some(p) = ahead {
                    let send =
                        &mut |at, bytes, last| tx(Job::Part(out.clone(), at, bytes, pad, last));
                    let written = write_prepared(&p, dtype, &spare, pad, send);
                    widened_ahead.done(1);
                    written?;
                    src.release(p.file);
                    continue;
                }
                let job = match teacher.whole(patch, st) {
                    Some(file) => Job::Copy(file.to_string(), out),
                    None => {
                        let mut parts = BTreeMap::new();
                        for (name, _) in &st.parts {
                            let t = patch.tensor(&TensorId::parse(name), teacher)?;
                            parts.insert(name.clone(), t);
                        }
                        let t = if st.is_plain() {
                            parts.pop_first().expect("one part").1
                        } else {
                            st.join(&parts)?
                        };
                        let t = t.as_standard_layout();
                        let values = t.as_slice().expect("standard layout");
                        // Encoded after `pad` spare bytes, so that the writer can write
                        // the buffer to the device in place.
                        let bytes = shards::encode_padded(values, dtype, entry.counter, pad)
                            .map_err(no_buffer)?;
                        Job::Bytes(out, bytes, pad)
                    }
                };
                if !tx(job) {
                    // The writer stopped on an error, which its join reports.
                    return Ok(());
                }
            }
            Ok(())
        };
        let res = computed();
        // The preparing thread must not wait for room that will not come.
        widened_ahead.close();
        drop(prepared);
        // The writer's loop ends when the sender, which `tx` owns, goes.
        drop(tx);
        let w = handle.join().expect("the writer thread does not panic");
        res?;
        w
    })?
    .finish()
}

/// Encoded bytes the computing side may hand the writer thread ahead of the device: about
/// 0.15 s of writing at 1.6 GB/s, which covers the scale pass and draws of the next widened
/// tensor (the writer idled 1.1 s of a 2.7 s 1.1 GB widen with one chunk ahead).
const AHEAD: usize = 256 << 20;

/// Threads for the scale passes, as many as rayon's, at a lower priority than the ones
/// that compute values. In one pool, a big tensor's scale passes took every thread for up
/// to 0.1 s (rayon finishes the job a thread holds before it takes another) while the
/// values the writer was waiting for queued behind them; at low priority they take only
/// the time the values leave. `None` where no pool could be made: then rayon's own.
fn background_pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("r2rc-scales-{i}"))
        .start_handler(|_| lower_priority())
        .build()
        .ok()
}

/// Lowers the calling thread's scheduling priority by 10 nice levels (on Linux, where
/// each thread has its own, and `PRIO_PROCESS` of 0 is the calling thread); elsewhere
/// nothing.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority and setpriority take no pointers; a failure leaves the priority.
    unsafe {
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (nice + 10).min(19));
    }
}

/// Widened tensors whose scale passes may be done before the writer has the earlier ones
/// (the one being computed included): as many as when the preparing thread ran one stored
/// tensor ahead, so no more stored draws are held.
const PREPARED_AHEAD: usize = 2;

/// Bytes queued for the writer thread and not yet written: [`Queued::add`] waits while
/// they would pass the limit (one job of any size may always wait alone).
struct Queued {
    bytes: Mutex<Option<usize>>,
    written: std::sync::Condvar,
    limit: usize,
}

impl Queued {
    fn new(limit: usize) -> Self {
        Queued {
            bytes: Mutex::new(Some(0)),
            written: std::sync::Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<usize>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for room for `n` more bytes and counts them; returns at once once closed.
    fn add(&self, n: usize) {
        let mut q = self.lock();
        while let Some(b) = *q {
            if b == 0 || b + n <= self.limit {
                *q = Some(b + n);
                return;
            }
            q = self.written.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// `n` bytes were written.
    fn done(&self, n: usize) {
        if let Some(b) = self.lock().as_mut() {
            *b -= n;
        }
        self.written.notify_one();
    }

    /// The writer stopped: no one waits for room any more.
    fn close(&self) {
        *self.lock() = None;
        self.written.notify_one();
    }
}

/// Values per chunk of a lazily computed tensor (32 MB in f64; the chunk's bytes go to
/// the writer while the next is computed).
const LAZY_CHUNK: usize = 1 << 22;

/// A plain float teacher tensor's values, read from its bytes.
#[derive(Clone, Copy)]
struct TeacherValues<'t> {
    raw: &'t [u8],
    dtype: DType,
}

impl TeacherValues<'_> {
    /// Values `[at, at + out.len())` in f64.
    fn f64s(&self, at: usize, out: &mut [f64]) -> Result<()> {
        let len = out.len();
        if self.dtype == DType::F32 {
            f32_to_f64(self.raw[at * 4..(at + len) * 4].as_chunks::<4>().0, out);
        } else {
            let size = self.dtype.size();
            let raw = &self.raw[at * size..(at + len) * size];
            out.copy_from_slice(&crate::params::decode_checked(raw, self.dtype).0);
        }
        Ok(())
    }

    /// Values `[at, at + out.len())` of an f32 teacher.
    fn f32s(&self, at: usize, out: &mut [f32]) -> Result<()> {
        let (values, _) = self.raw[at * 4..(at + out.len()) * 4].as_chunks::<4>();
        for (x, &b) in out.iter_mut().zip(values) {
            *x = f32::from_le_bytes(b);
        }
        Ok(())
    }
}

crate::avx512_twice! {
    /// Little-endian f32 values widened to f64.
    fn f32_to_f64(raw: &[[u8; 4]], out: &mut [f64]) {
        for (x, &b) in out.iter_mut().zip(raw) {
            *x = f32::from_le_bytes(b) as f64;
        }
    }
}

/// A widened student tensor whose scale passes and stored draws are done ([`prepare`]):
/// what is left is computing its values chunk by chunk ([`write_prepared`]).
struct Prepared<'t> {
    lazy: Lazy,
    teacher: TeacherValues<'t>,
    /// The teacher's file tensor, released once read.
    file: &'t str,
}

/// The [`Lazy`] of student file tensor `st` when it is one widened tensor that
/// [`Patch::lazy`] computes range by range from a plain float teacher tensor; `None` when
/// it is not (then nothing was read).
fn prepare<'t>(patch: &Patch, teacher: &'t Mapped, st: &Stored) -> Result<Option<Prepared<'t>>> {
    if !st.is_plain() {
        return Ok(None);
    }
    let name = &st.parts[0].0;
    let id = TensorId::parse(name);
    let Some(&(i, 0)) = teacher.part.get(name) else {
        return Ok(None);
    };
    let file = &teacher.stored[i];
    let src = teacher.src;
    let info = &src.tensors[&file.name];
    let Some(dtype) = shards::float_dtype(info.dtype) else {
        return Ok(None);
    };
    if !file.is_plain() || !patch.edits.contains_key(&id) {
        return Ok(None);
    }
    let raw = src.bytes(&file.name).expect("a known tensor");
    let values = TeacherValues { raw, dtype };
    // Refused as the whole tensor's decoding refuses it (non-finite values), before the
    // scales read it.
    let ready = &mut || shards::check_finite(raw, info.dtype, &file.name, &src.shown);
    let Some(lazy) = patch.lazy(&id, &info.shape, &|at, out| values.f64s(at, out), ready)? else {
        return Ok(None);
    };
    if lazy.shape() != st.shape.as_slice() {
        return Ok(None);
    }
    Ok(Some(Prepared {
        lazy,
        teacher: values,
        file: &file.name,
    }))
}

/// The error for a buffer of the student's bytes that could not be mapped.
fn no_buffer(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::usage(
        format!("could not map a buffer for the student's bytes: {e}"),
        Some("free some memory and run again".to_string()),
    )
}

/// Computes a [`Prepared`] tensor chunk by chunk in `dtype`, handing each chunk's bytes
/// (after `pad` spare bytes, in a buffer from `spare` when one came back) to `send`
/// (offset in the tensor's bytes, buffer, whether last; `false` back: the writer
/// stopped). Every chunk but the last is whole pages, so `pad` ([`Writer::pad`]) holds for
/// each and the writer writes them in place.
fn write_prepared(
    p: &Prepared,
    dtype: DType,
    spare: &std::sync::mpsc::Receiver<DeviceBuffer>,
    pad: usize,
    send: &mut dyn FnMut(usize, DeviceBuffer, bool) -> bool,
) -> Result<()> {
    use rayon::prelude::*;
    let (lazy, teacher) = (&p.lazy, p.teacher);
    let base = |at: usize, out: &mut [f64]| teacher.f64s(at, out);
    let base_f32 = |at: usize, out: &mut [f32]| teacher.f32s(at, out);
    let size = dtype.size();
    let n = lazy.len();
    let mut at = 0;
    while at < n {
        let len = (n - at).min(LAZY_CHUNK);
        // A buffer that comes back is not zeroed again (every byte after `pad` is written
        // below). A new one is a fresh mapping, zero untouched, so its pages are first
        // touched by the pieces below, on every core, and not by a zero fill on this
        // thread: up to 16 of them are made while the writer's queue fills, and filling
        // each took 8 ms, in which the writer could run dry.
        let mut bytes = match spare.try_recv() {
            Ok(b) => b,
            // Room for any pad: a buffer that comes back serves every tensor's chunks.
            Err(_) => DeviceBuffer::zeroed(crate::direct::ALIGN + len * size).map_err(no_buffer)?,
        };
        bytes.resize(pad + len * size).map_err(no_buffer)?;
        // Each piece's values stay in the core's cache between computing and encoding.
        const SUB: usize = 1 << 15;
        let pieces = bytes[pad..].par_chunks_mut(SUB * size).enumerate();
        if teacher.dtype == DType::F32 && dtype == DType::F32 {
            // f32 to f32: the teacher's values are copied, not taken through f64 and back
            // (the same bits; a third of the values pass). Each piece is computed in a
            // buffer that stays in the core's cache, then stored to the output without
            // reading the output first ([`crate::cpu::copy_streaming`]).
            pieces.try_for_each_init(Vec::new, |values, (k, out)| {
                values.resize(out.len() / 4, 0f32);
                lazy.values_f32(at + k * SUB, values, &base_f32)?;
                if cfg!(target_endian = "little") {
                    // The values' own bytes are the encoding.
                    // SAFETY: an f32 slice's memory is readable as bytes.
                    let (_, bytes, _) = unsafe { values.align_to::<u8>() };
                    crate::cpu::copy_streaming(out, bytes);
                } else {
                    for (o, v) in out.as_chunks_mut::<4>().0.iter_mut().zip(values.iter()) {
                        *o = v.to_le_bytes();
                    }
                }
                Ok::<_, crate::error::Error>(())
            })?;
        } else {
            pieces.try_for_each_init(Vec::new, |values, (k, out)| {
                values.resize(out.len() / size, 0.0);
                lazy.values(at + k * SUB, values, &base)?;
                shards::encode_to(values, dtype, out);
                Ok::<_, crate::error::Error>(())
            })?;
        }
        let last = at + len == n;
        if !send(at * size, bytes, last) {
            // The writer stopped on an error, which its join reports.
            break;
        }
        at += len;
    }
    Ok(())
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
        // Checked whole (an error gives the value's index in the tensor), then written
        // in chunks.
        shards::check_finite(raw, info.dtype, file, &src.shown)?;
        let size = info.dtype.bitsize() / 8;
        let chunk = (8 << 20) / size * size;
        let mut at = 0;
        while at < raw.len() {
            let end = (at + chunk).min(raw.len());
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

#[cfg(test)]
mod tests {
    use super::Queued;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The scale passes' threads run 10 nice levels below the caller's (19 at most), so
    /// the values the writer waits for go first.
    #[test]
    #[cfg(target_os = "linux")]
    fn scale_passes_run_at_a_lower_priority() {
        // SAFETY: getpriority takes no pointers.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let own = nice();
        let pool = super::background_pool().expect("a thread pool");
        let theirs = pool.broadcast(|_| nice());
        assert_eq!(theirs.len(), rayon::current_num_threads());
        assert!(
            theirs.iter().all(|&n| n == (own + 10).min(19)),
            "{own} {theirs:?}"
        );
        assert_eq!(nice(), own, "the caller's priority is unchanged");
    }

    #[test]
    fn the_queue_holds_at_most_its_limit_and_never_blocks_once_closed() {
        let q = Queued::new(100);
        q.add(60);
        q.add(40);
        let added = AtomicUsize::new(0);
        std::thread::scope(|s| {
            // No room for 10 more until 50 are written.
            let waiting = s.spawn(|| {
                q.add(10);
                added.store(1, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(added.load(Ordering::SeqCst), 0, "added past the limit");
            q.done(50);
            waiting.join().unwrap();
        });
        assert_eq!(*q.lock(), Some(60));
        // A job bigger than the limit waits alone.
        q.done(60);
        q.add(1000);
        assert_eq!(*q.lock(), Some(1000));
        // The writer stopped: adding returns at once.
        q.close();
        q.add(1000);
        assert_eq!(*q.lock(), None);
    }
}
