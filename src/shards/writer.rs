//! Writing a checkpoint: the layout of a (possibly sharded) output, and the [`Writer`] that
//! puts tensors at their offsets in staged files and renames them into place at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::Dtype;

use super::{decode_values, encode, encode_into, INDEX_SUFFIX};
use crate::error::{Error, Result};
use crate::ir::{Graph, ParamKind};
use crate::outputs::Staged;
use crate::params::{DType, Params};

/// One tensor of a file to write.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub counter: bool,
}

impl Entry {
    fn dtype_name(&self, dtype: DType) -> &'static str {
        if self.counter {
            "I64"
        } else {
            dtype.safetensors_name()
        }
    }

    /// Bytes of the tensor's data in `dtype`.
    pub fn nbytes(&self, dtype: DType) -> usize {
        let n: usize = self.shape.iter().product();
        if self.counter {
            n.max(1) * 8
        } else {
            n * dtype.size()
        }
    }
}

/// The entries of `graph`'s tensors in its order (names as the graph gives them).
pub fn entries(graph: &Graph) -> Vec<Entry> {
    graph
        .param_specs()
        .into_iter()
        .map(|s| Entry {
            counter: s.slot.kind == ParamKind::NumBatchesTracked,
            name: s.name,
            shape: s.slot.shape,
        })
        .collect()
}

/// The header of a safetensors file holding `entries` in order, padded so the data starts
/// 8-byte aligned: the same bytes [`crate::params::to_bytes`] writes.
pub fn header(
    entries: &[Entry],
    dtype: DType,
    metadata: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let mut header = String::from("{");
    if let Some(meta) = metadata {
        let meta = serde_json::to_string(meta).expect("a string map serialises");
        header.push_str(&format!("\"__metadata__\":{meta}"));
    }
    let mut at = 0;
    for e in entries {
        if header.len() > 1 {
            header.push(',');
        }
        let key = serde_json::to_string(&e.name).expect("a string serialises");
        let n = e.nbytes(dtype);
        header.push_str(&format!(
            "{key}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{at},{}]}}",
            e.dtype_name(dtype),
            e.shape,
            at + n
        ));
        at += n;
    }
    header.push('}');
    while (header.len() + 8) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// The files a weights output at `path` becomes: `path` itself, or with a shard size that
/// the tensors exceed, `<stem>-0000K-of-0000N.safetensors` next to it and the index
/// `<stem>.safetensors.index.json` (what to check for existence before writing).
pub fn output_paths(
    path: &Path,
    entries: &[Entry],
    dtype: DType,
    shard_size: Option<u64>,
) -> Vec<PathBuf> {
    let groups = split(entries, dtype, shard_size);
    if groups.len() <= 1 {
        return vec![path.to_path_buf()];
    }
    let (dir, stem) = dir_stem(path);
    let n = groups.len();
    let mut v: Vec<PathBuf> = (1..=n).map(|k| dir.join(shard_name(&stem, k, n))).collect();
    v.push(dir.join(format!("{stem}{INDEX_SUFFIX}")));
    v
}

fn dir_stem(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let stem = name
        .strip_suffix(".safetensors")
        .unwrap_or(&name)
        .to_string();
    (dir, stem)
}

fn shard_name(stem: &str, k: usize, n: usize) -> String {
    format!("{stem}-{k:05}-of-{n:05}.safetensors")
}

/// Entries grouped into shards of at most `shard_size` data bytes (a larger tensor gets a
/// shard of its own), in order.
pub(super) fn split(entries: &[Entry], dtype: DType, shard_size: Option<u64>) -> Vec<Vec<Entry>> {
    let Some(max) = shard_size else {
        return vec![entries.to_vec()];
    };
    let mut groups: Vec<Vec<Entry>> = vec![vec![]];
    let mut size = 0u64;
    for e in entries {
        let n = e.nbytes(dtype) as u64;
        if size + n > max && !groups.last().expect("one group").is_empty() {
            groups.push(vec![]);
            size = 0;
        }
        size += n;
        groups.last_mut().expect("one group").push(e.clone());
    }
    groups
}

/// A set of output files being written: tensors go to their offsets in temporary files;
/// [`Writer::finish`] renames them into place once every tensor is written. Dropped
/// unfinished, it removes its temporary files.
pub struct Writer {
    /// Each output file, staged (nameless until persisted, gone if r2rc is killed).
    files: Vec<(Staged, PathBuf)>,
    /// Tensor -> (file, absolute offset, bytes, written).
    at: HashMap<String, (usize, u64, usize, bool)>,
    index: Option<(PathBuf, Vec<u8>)>,
    dtype: DType,
    counters: HashSet<String>,
    /// Per file: its entries and the header length reserved for it.
    heads: Vec<(Vec<Entry>, usize)>,
    /// Per file, after [`Writer::sequential`]: the direct writer it is written through,
    /// until the file has every byte (then it is finished and its buffer freed).
    direct: Vec<Option<crate::direct::Sequential>>,
    done: bool,
}

impl Writer {
    /// Starts writing `entries` (in `dtype`, counters as I64) at `path`, sharded by
    /// `shard_size` when given and exceeded. Every file gets `metadata`.
    pub fn create(
        path: &Path,
        entries: &[Entry],
        dtype: DType,
        metadata: Option<&BTreeMap<String, String>>,
        shard_size: Option<u64>,
        reserve: usize,
    ) -> Result<Writer> {
        let groups = split(entries, dtype, shard_size);
        let finals = output_paths(path, entries, dtype, shard_size);
        let mut w = Writer {
            files: Vec::new(),
            at: HashMap::new(),
            index: None,
            dtype,
            counters: entries
                .iter()
                .filter(|e| e.counter)
                .map(|e| e.name.clone())
                .collect(),
            heads: Vec::new(),
            direct: Vec::new(),
            done: false,
        };
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (k, group) in groups.iter().enumerate() {
            let fin = finals[k].clone();
            let shown = fin.display().to_string();
            let name = fin
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            w.files.push((Staged::create(&fin)?, fin));
            let mut head = header(group, dtype, metadata);
            if reserve > 0 {
                let len = head.len() + reserve.div_ceil(8) * 8;
                head = pad_header(head, len);
            }
            w.heads.push((group.clone(), head.len()));
            let mut off = head.len() as u64;
            for e in group {
                let n = e.nbytes(dtype);
                w.at.insert(e.name.clone(), (k, off, n, false));
                weight_map.insert(e.name.clone(), name.clone());
                off += n as u64;
                total += n as u64;
            }
            let f = w.files[k].0.as_file();
            f.set_len(off).map_err(|e| Error::io(&shown, e))?;
            write_at(f, &head, 0).map_err(|e| Error::io(&shown, e))?;
        }
        if groups.len() > 1 {
            let index = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            let text = serde_json::to_string_pretty(&index).expect("json") + "\n";
            w.index = Some((finals[finals.len() - 1].clone(), text.into_bytes()));
        }
        Ok(w)
    }

    /// The dtype floats are written in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// From now on, tensors come in file order: each file is written front to back with
    /// `O_DIRECT` where the file system takes it ([`crate::direct`]), skipping the page
    /// cache. A write out of order still lands (the file goes back to ordinary writes).
    pub fn sequential(&mut self) -> Result<()> {
        self.direct.clear();
        for (k, (staged, fin)) in self.files.iter().enumerate() {
            let f = staged.as_file();
            let mut head = vec![0u8; self.heads[k].1];
            read_at(f, &mut head, 0).map_err(|e| Error::io(fin.display(), e))?;
            let mut d = crate::direct::Sequential::new(f);
            if let Some(d) = &mut d {
                d.append(f, &head)
                    .map_err(|e| Error::io(fin.display(), e))?;
            }
            self.direct.push(d);
        }
        Ok(())
    }

    /// Writes `bytes` at `offset` within tensor `name`'s data; `last` marks it complete.
    pub fn write_part(
        &mut self,
        name: &str,
        offset: usize,
        bytes: &[u8],
        last: bool,
    ) -> Result<()> {
        let &(k, at, n, written) = self
            .at
            .get(name)
            .ok_or_else(|| Error::weights(format!("the output has no tensor `{name}`")))?;
        if written || offset + bytes.len() > n {
            return Err(Error::weights(format!(
                "tensor `{name}` was written twice or past its {n} bytes"
            )));
        }
        if last && offset + bytes.len() != n {
            // A short tensor would leave stale bytes (and end direct writes early).
            return Err(Error::weights(format!(
                "tensor `{name}` ends after {} of its {n} bytes",
                offset + bytes.len()
            )));
        }
        let (f, fin) = &self.files[k];
        let f = f.as_file();
        let pos = at + offset as u64;
        match self.direct.get_mut(k).and_then(|d| d.take()) {
            Some(mut d) if d.position() == pos => {
                d.append(f, bytes)
                    .map_err(|e| Error::io(fin.display(), e))?;
                self.direct[k] = Some(d);
                self.finish_if_complete(k)?;
            }
            other => {
                if let Some(d) = other {
                    // Out of order: what is buffered goes out, then ordinary writes.
                    let end = f.metadata().map_err(|e| Error::io(fin.display(), e))?.len();
                    d.finish(f, end).map_err(|e| Error::io(fin.display(), e))?;
                }
                write_at(f, bytes, pos).map_err(|e| Error::io(fin.display(), e))?;
                start_writeback(f, pos, bytes.len());
            }
        }
        if last {
            self.at.get_mut(name).expect("known").3 = true;
        }
        Ok(())
    }

    /// The bytes a buffer for [`Writer::write_padded`] reserves before tensor `name`'s
    /// data: the data's offset within its page of the file.
    pub fn pad(&self, name: &str) -> usize {
        self.at
            .get(name)
            .map_or(0, |a| (a.1 % crate::direct::ALIGN as u64) as usize)
    }

    /// Writes tensor `name` whole from `buf[pad..]`, where `pad` is [`Writer::pad`]. In
    /// order under [`Writer::sequential`], a page-aligned `buf` is written to the device
    /// straight from its memory (its first `pad` bytes are overwritten): a large tensor is
    /// not copied again on its way out.
    pub fn write_padded(&mut self, name: &str, buf: &mut [u8], pad: usize) -> Result<()> {
        let Some(&(k, at, n, false)) = self.at.get(name) else {
            return self.write_part(name, 0, buf.get(pad..).unwrap_or(&[]), true);
        };
        let in_place = buf.len() == pad + n
            && pad == self.pad(name)
            && self.direct[k].as_ref().is_some_and(|d| d.position() == at);
        if !in_place {
            return self.write_part(name, 0, buf.get(pad..).unwrap_or(&[]), true);
        }
        let (f, fin) = &self.files[k];
        let d = self.direct[k].as_mut().expect("checked above");
        d.append_aligned(f.as_file(), buf, pad)
            .map_err(|e| Error::io(fin.display(), e))?;
        self.at.get_mut(name).expect("known").3 = true;
        self.finish_if_complete(k)
    }

    /// Writes `buf[pad..]` at `offset` within tensor `name`'s data (`last` marks it
    /// complete), as [`Writer::write_part`] does; in order under [`Writer::sequential`],
    /// with `pad` the offset's place in its page, a page-aligned `buf` goes to the device
    /// straight from its memory (its first `pad` bytes are overwritten).
    pub fn write_part_padded(
        &mut self,
        name: &str,
        offset: usize,
        buf: &mut [u8],
        pad: usize,
        last: bool,
    ) -> Result<()> {
        let bytes = buf.len().saturating_sub(pad);
        let in_place = match self.at.get(name) {
            Some(&(k, at, n, false)) => {
                let pos = at + offset as u64;
                pad <= buf.len()
                    && offset + bytes <= n
                    && (!last || offset + bytes == n)
                    && pad as u64 == pos % crate::direct::ALIGN as u64
                    && self.direct[k].as_ref().is_some_and(|d| d.position() == pos)
            }
            _ => false,
        };
        if !in_place {
            return self.write_part(name, offset, buf.get(pad..).unwrap_or(&[]), last);
        }
        let k = self.at[name].0;
        let (f, fin) = &self.files[k];
        let d = self.direct[k].as_mut().expect("checked above");
        d.append_aligned(f.as_file(), buf, pad)
            .map_err(|e| Error::io(fin.display(), e))?;
        if last {
            self.at.get_mut(name).expect("known").3 = true;
        }
        self.finish_if_complete(k)
    }

    /// Finishes file `k`'s direct writer once it has every byte of the file (the file was
    /// sized at [`Writer::create`]): a sharded output then holds one writer's buffer at a
    /// time, not one per shard until the end.
    fn finish_if_complete(&mut self, k: usize) -> Result<()> {
        let Some(d) = self.direct[k].take() else {
            return Ok(());
        };
        // The length the file was sized to: its header and its tensors' bytes (known
        // here, so no stat per write).
        let (entries, head) = &self.heads[k];
        let end = (head + entries.iter().map(|e| e.nbytes(self.dtype)).sum::<usize>()) as u64;
        let (f, fin) = &self.files[k];
        if d.position() < end {
            self.direct[k] = Some(d);
            return Ok(());
        }
        d.finish(f.as_file(), end)
            .map_err(|e| Error::io(fin.display(), e))
    }

    /// How many files still have a direct writer (and its buffer).
    #[cfg(test)]
    pub(crate) fn direct_writers(&self) -> usize {
        self.direct.iter().flatten().count()
    }

    /// Writes tensor `name` from f64 values (rounded to the output dtype).
    pub fn write_values(&mut self, name: &str, t: &ArrayD<f64>) -> Result<()> {
        let counter = self.counters.contains(name);
        let buf = match t.as_slice() {
            Some(v) => encode(v, self.dtype, counter),
            None => {
                let mut buf = Vec::new();
                encode_into(t.iter().copied(), self.dtype, counter, &mut buf);
                buf
            }
        };
        let n = self.at.get(name).map_or(0, |a| a.2);
        if buf.len() != n {
            return Err(Error::weights(format!(
                "tensor `{name}` has {} bytes where the output expects {n}",
                buf.len()
            )));
        }
        self.write_part(name, 0, &buf, true)
    }

    /// Rewrites every file's metadata, when it fits the header length reserved at
    /// [`Writer::create`]; says whether it did.
    pub fn set_metadata(&mut self, metadata: &BTreeMap<String, String>) -> Result<bool> {
        let heads: Vec<Vec<u8>> = self
            .heads
            .iter()
            .map(|(group, len)| {
                let h = header(group, self.dtype, Some(metadata));
                if h.len() <= *len {
                    pad_header(h, *len)
                } else {
                    h
                }
            })
            .collect();
        if heads
            .iter()
            .zip(&self.heads)
            .any(|(h, (_, len))| h.len() != *len)
        {
            return Ok(false);
        }
        for (h, (f, fin)) in heads.iter().zip(&self.files) {
            write_at(f.as_file(), h, 0).map_err(|e| Error::io(fin.display(), e))?;
        }
        Ok(true)
    }

    /// Decodes tensor `name` back from what was written (for a proof that needs a
    /// tensor already final).
    pub fn read_values(&self, name: &str, shape: &[usize]) -> Result<ArrayD<f64>> {
        let &(k, at, n, written) = self
            .at
            .get(name)
            .ok_or_else(|| Error::weights(format!("the output has no tensor `{name}`")))?;
        if !written {
            return Err(Error::weights(format!(
                "tensor `{name}` is not written yet"
            )));
        }
        let (f, fin) = &self.files[k];
        let mut buf = vec![0u8; n];
        read_at(f.as_file(), &mut buf, at).map_err(|e| Error::io(fin.display(), e))?;
        let dtype = if self.counters.contains(name) {
            Dtype::I64
        } else {
            match self.dtype {
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                DType::F32 => Dtype::F32,
                DType::F64 => Dtype::F64,
            }
        };
        let v = decode_values(&buf, dtype, name, &fin.display().to_string())?;
        ArrayD::from_shape_vec(IxDyn(shape), v)
            .map_err(|_| Error::weights(format!("tensor `{name}` has another shape")))
    }

    /// Syncs and renames every file into place (the index last); fails, leaving the
    /// outputs untouched, when a tensor was not written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if let Some((name, _)) = self.at.iter().find(|(_, a)| !a.3) {
            return Err(Error::weights(format!(
                "tensor `{name}` of the output was never written; nothing was written"
            )));
        }
        for (k, d) in std::mem::take(&mut self.direct).into_iter().enumerate() {
            if let Some(d) = d {
                let (f, fin) = &self.files[k];
                let end = f
                    .as_file()
                    .metadata()
                    .map_err(|e| Error::io(fin.display(), e))?
                    .len();
                d.finish(f.as_file(), end)
                    .map_err(|e| Error::io(fin.display(), e))?;
            }
        }
        crate::outputs::pause_for_test("every tensor of the weights");
        let mut out = Vec::new();
        for (staged, fin) in std::mem::take(&mut self.files) {
            staged.persist()?;
            out.push(fin);
        }
        self.done = true;
        if let Some((path, bytes)) = self.index.take() {
            crate::params::write_atomic(&path, &bytes)?;
            out.push(path);
        }
        Ok(out)
    }
}

/// `head` (a header with its length prefix) padded with spaces to `len` bytes in all.
fn pad_header(mut head: Vec<u8>, len: usize) -> Vec<u8> {
    head.resize(len, b' ');
    let n = (len - 8) as u64;
    head[..8].copy_from_slice(&n.to_le_bytes());
    head
}

/// Starts writing a large range back to disk now (Linux), so that the sync before the
/// outputs are renamed into place finds little left to write.
#[cfg(target_os = "linux")]
fn start_writeback(f: &fs::File, at: u64, len: usize) {
    use std::os::fd::AsRawFd;
    if len < (1 << 20) {
        return;
    }
    // SAFETY: a plain syscall on an open descriptor; failure only loses the head start.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_f: &fs::File, _at: u64, _len: usize) {}

#[cfg(unix)]
pub(crate) fn read_at(f: &fs::File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

#[cfg(not(unix))]
pub(crate) fn read_at(mut f: &fs::File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(buf)
}

#[cfg(unix)]
pub(crate) fn write_at(f: &fs::File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, bytes, at)
}

#[cfg(not(unix))]
pub(crate) fn write_at(mut f: &fs::File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(at))?;
    f.write_all(bytes)
}

/// Writes `params` (names as `graph` gives them) at `path`, sharded by `shard_size` when
/// given; returns the files written.
pub fn save(
    params: &Params,
    graph: &Graph,
    path: &Path,
    metadata: Option<&BTreeMap<String, String>>,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    params.check(graph)?;
    let entries = entries(graph);
    let mut w = Writer::create(path, &entries, params.dtype, metadata, shard_size, 0)?;
    for e in &entries {
        w.write_values(&e.name, &params.tensors[&e.name])?;
    }
    w.finish()
}
