//! Large checkpoints: sharded safetensors (Hugging Face's `model.safetensors.index.json`
//! layout) in and out, a lazy tensor source over memory-mapped files, and a positioned
//! writer that commits a whole set of files at once.
//!
//! An index is `{"metadata": {"total_size": N}, "weight_map": {tensor: shard file}}`;
//! shards are ordinary safetensors files in the index's folder, named
//! `<stem>-0000K-of-0000N.safetensors`. Reading checks that every shard exists, that
//! every tensor is in the shard the index names and in no other, and that no shard holds a
//! tensor the index does not list. Writing puts each file's header first (offsets are
//! known from the shapes), then tensors in any order at their offsets, into temporary
//! files; only when every tensor of every file is written are they renamed into place, the
//! index last, so an error or a kill never leaves a half-written set under the outputs'
//! names.

use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::ir::{Graph, ParamKind};
use crate::outputs::Staged;
use crate::params::{DType, Params};

/// The suffix of an index file.
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// Where a tensor's bytes lie.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into [`Source::files`], or [`ZERO_FILE`] for a counter the checkpoint lacks.
    pub file: usize,
    /// Absolute byte range in that file.
    pub start: usize,
    pub end: usize,
}

/// The tensors of one safetensors file or of a sharded set, memory-mapped and read on
/// demand.
pub struct Source {
    /// The files, as shown in errors, with their maps (`None` for an empty file).
    pub files: Vec<(String, Option<memmap2::Mmap>)>,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// What the user passed, for errors.
    pub shown: String,
    /// How the checkpoint's names were read ([`Variants`]), for [`Source::notes`].
    variants: Variants,
}

/// [`TensorInfo::file`] of a `num_batches_tracked` counter the checkpoint lacks: its bytes
/// are an int64 zero held by r2rc, in no file.
pub const ZERO_FILE: usize = usize::MAX;

/// The bytes of a counter read as 0 (an int64 scalar).
static ZERO_COUNTER: [u8; 8] = [0; 8];

/// Prefixes PyTorch's wrappers put before every name of a model's state_dict:
/// DistributedDataParallel and DataParallel (`module.`), torch.compile (`_orig_mod.`).
pub const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

/// How a checkpoint's tensor names differ from a plain state_dict's in ways PyTorch users
/// meet and r2rc reads through: a wrapper prefix on every name, and batch norms without
/// `num_batches_tracked` (checkpoints older than PyTorch 0.4.1, such as torchvision's
/// original ResNet weights; PyTorch's `load_state_dict` sets such counters to 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variants {
    /// The wrapper prefix every name carries (`module.`, or nested ones such as
    /// `module._orig_mod.`), read without it; empty when none.
    pub prefix: String,
    /// Counters `X.num_batches_tracked` (names without the prefix) the checkpoint lacks
    /// though it holds `X.running_mean` and `X.running_var`: read as 0.
    pub zero_counters: BTreeSet<String>,
}

impl Variants {
    /// The variants of a checkpoint holding tensors `names`.
    pub fn of(names: &[&str]) -> Variants {
        let mut prefix = String::new();
        // Peel wrappers while every name carries one (DDP around torch.compile nests).
        while let Some(p) = WRAPPER_PREFIXES.iter().find(|p| {
            !names.is_empty()
                && names.iter().all(|n| {
                    n.strip_prefix(prefix.as_str())
                        .is_some_and(|r| r.len() > p.len() && r.starts_with(**p))
                })
        }) {
            prefix.push_str(p);
        }
        let plain: HashSet<&str> = names.iter().map(|n| &n[prefix.len()..]).collect();
        let zero_counters = plain
            .iter()
            .filter_map(|n| n.strip_suffix(".running_mean"))
            .filter(|bn| {
                plain.contains(format!("{bn}.running_var").as_str())
                    && !plain.contains(format!("{bn}.num_batches_tracked").as_str())
            })
            .map(|bn| format!("{bn}.num_batches_tracked"))
            .collect();
        Variants {
            prefix,
            zero_counters,
        }
    }

    /// The name a tensor `name` of the network has in the checkpoint.
    pub fn file_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// What a command tells the user about reading `shown` this way (nothing for a plain
    /// state_dict).
    pub fn notes(&self, shown: &str) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.prefix.is_empty() {
            let what = match self.prefix.as_str() {
                "module." => "a DistributedDataParallel or DataParallel checkpoint",
                "_orig_mod." => "a torch.compile checkpoint",
                _ => "a checkpoint of a wrapped model",
            };
            notes.push(format!(
                "every tensor name in {shown} starts with `{}` ({what}): read without the prefix",
                self.prefix
            ));
        }
        if let Some(first) = self.zero_counters.iter().next() {
            let n = self.zero_counters.len();
            notes.push(format!(
                "{shown} lacks `num_batches_tracked` for {n} batch norm{} (`{first}`{}), as checkpoints older than PyTorch 0.4.1 do: read as 0, as PyTorch's load_state_dict does",
                if n == 1 { "" } else { "s" },
                if n == 1 { "" } else { " and others" },
            ));
        }
        notes
    }
}

/// A hint for a tensor `name` the checkpoint `shown` lacks when it holds it under a
/// wrapper prefix (`module.name`) that not every tensor name carries.
pub fn partial_prefix_hint(name: &str, has: impl Fn(&str) -> bool, shown: &str) -> Option<String> {
    let p = WRAPPER_PREFIXES
        .iter()
        .find(|p| has(&format!("{p}{name}")))?;
    Some(format!(
        "{shown} holds `{p}{name}`: some of its tensor names carry the `{p}` prefix of a wrapped model and others do not; r2rc strips a prefix only when every name has it (save the unwrapped model's state_dict, e.g. `model.module.state_dict()`)"
    ))
}

fn weights_err(message: String, hint: Option<&str>) -> Error {
    Error::Weights {
        message,
        hint: hint.map(Into::into),
    }
}

/// Whether `path` names a sharded set: a folder, or an index file.
pub fn is_sharded(path: &Path) -> bool {
    path.is_dir() || path.to_string_lossy().ends_with(".index.json")
}

/// The file a weights path stands for: an index or safetensors file as given; in a folder,
/// its only `*.safetensors.index.json`, else its only `*.safetensors`.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let shown = path.display().to_string();
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| Error::io(&shown, e))? {
        let p = entry.map_err(|e| Error::io(&shown, e))?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name.starts_with('.') {
            continue;
        }
        if name.ends_with(INDEX_SUFFIX) {
            indexes.push(p);
        } else if name.ends_with(".safetensors") {
            singles.push(p);
        }
    }
    indexes.sort();
    singles.sort();
    let list = |v: &[PathBuf]| {
        v.iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (indexes.len(), singles.len()) {
        (1, _) => Ok(indexes.remove(0)),
        (0, 1) => Ok(singles.remove(0)),
        (0, 0) => Err(weights_err(
            format!("folder {shown} holds no *{INDEX_SUFFIX} and no *.safetensors file"),
            Some("pass the weights file or the index file itself"),
        )),
        (0, _) => Err(weights_err(
            format!(
                "folder {shown} holds several safetensors files ({}) and no index naming which belong together",
                list(&singles)
            ),
            Some("pass one file, or the index of a sharded set"),
        )),
        _ => Err(weights_err(
            format!("folder {shown} holds several indexes ({})", list(&indexes)),
            Some("pass the index file itself"),
        )),
    }
}

fn map_file(path: &Path) -> Result<(String, Option<memmap2::Mmap>)> {
    let shown = path.display().to_string();
    let file = fs::File::open(path).map_err(|e| Error::io(&shown, e))?;
    let len = file.metadata().map_err(|e| Error::io(&shown, e))?.len();
    if len == 0 {
        return Ok((shown, None));
    }
    // SAFETY: the map is read-only; r2rc never writes to a file it reads (outputs go
    // through temporary files and renames, and an input is never an output).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&shown, e))?;
    Ok((shown, Some(map)))
}

/// The tensors of one mapped file: parsed and validated by the safetensors crate.
fn file_tensors(shown: &str, bytes: &[u8], file: usize) -> Result<Vec<(String, TensorInfo)>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        weights_err(
            format!("{shown}: not a readable safetensors file ({e})"),
            Some("write the file again with `r2rc init` or safetensors.torch.save_file"),
        )
    })?;
    let base = bytes.as_ptr() as usize;
    let mut v = Vec::new();
    for (name, view) in st.tensors() {
        let start = view.data().as_ptr() as usize - base;
        v.push((
            name,
            TensorInfo {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                file,
                start,
                end: start + view.data().len(),
            },
        ));
    }
    Ok(v)
}

#[derive(serde::Deserialize)]
struct IndexJson {
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
    weight_map: BTreeMap<String, String>,
}

impl Source {
    /// Opens a safetensors file, an index, or a folder holding one of them.
    pub fn open(path: &Path) -> Result<Source> {
        let path = resolve(path)?;
        let shown = path.display().to_string();
        if !shown.ends_with(".index.json") {
            let (shown, map) = map_file(&path)?;
            let tensors = file_tensors(&shown, map.as_deref().unwrap_or(&[]), 0)?;
            return Ok(Source {
                files: vec![(shown.clone(), map)],
                tensors: tensors.into_iter().collect(),
                shown,
                variants: Variants::default(),
            }
            .read_through_variants());
        }
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&shown, e))?;
        let index: IndexJson = serde_json::from_str(&text).map_err(|e| {
            weights_err(
                format!("{shown}: not a safetensors index ({e})"),
                Some("an index is {\"metadata\": {...}, \"weight_map\": {\"tensor\": \"shard file\"}}"),
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        // Shard names in index order of first appearance.
        let mut shard_names: Vec<&str> = Vec::new();
        for f in index.weight_map.values() {
            if !shard_names.contains(&f.as_str()) {
                shard_names.push(f);
            }
        }
        let mut files = Vec::new();
        let mut tensors: BTreeMap<String, TensorInfo> = BTreeMap::new();
        for (k, name) in shard_names.iter().enumerate() {
            let plain = Path::new(name)
                .file_name()
                .is_some_and(|f| f == std::ffi::OsStr::new(name));
            if !plain || *name == ".." || *name == "." {
                return Err(weights_err(
                    format!("{shown} names shard `{name}`, which is not a file name in the index's folder"),
                    Some("shards must lie next to their index"),
                ));
            }
            let p = dir.join(name);
            if !p.is_file() {
                let example = index
                    .weight_map
                    .iter()
                    .find(|(_, f)| f == name)
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default();
                return Err(weights_err(
                    format!(
                        "{shown} names shard {name} (holding `{example}` and others), but {} does not exist",
                        p.display()
                    ),
                    Some("the set is incomplete: copy every shard the index lists"),
                ));
            }
            let (fshown, map) = map_file(&p)?;
            for (t, info) in file_tensors(&fshown, map.as_deref().unwrap_or(&[]), k)? {
                if let Some(prev) = tensors.get(&t) {
                    return Err(weights_err(
                        format!(
                            "tensor `{t}` is stored in two shards: {} and {fshown}",
                            files
                                .get(prev.file)
                                .map(|(s, _): &(String, _)| s.as_str())
                                .unwrap_or("?")
                        ),
                        Some("each tensor of a sharded set lies in exactly one shard"),
                    ));
                }
                match index.weight_map.get(&t) {
                    Some(f) if f == name => {}
                    Some(f) => {
                        return Err(weights_err(
                            format!("shard {fshown} holds tensor `{t}`, which {shown} places in {f}"),
                            Some("each tensor of a sharded set lies in exactly one shard, the one its index names"),
                        ))
                    }
                    None => {
                        return Err(weights_err(
                            format!("shard {fshown} holds tensor `{t}`, which {shown} does not list"),
                            Some("write the index again, or the set is mixed with another checkpoint"),
                        ))
                    }
                }
                tensors.insert(t, info);
            }
            files.push((fshown, map));
        }
        if let Some((t, f)) = index
            .weight_map
            .iter()
            .find(|(t, _)| !tensors.contains_key(*t))
        {
            return Err(weights_err(
                format!("{shown} places tensor `{t}` in {f}, but that shard does not hold it"),
                Some("the shard belongs to another checkpoint or was written partially"),
            ));
        }
        Ok(Source {
            files,
            tensors,
            shown,
            variants: Variants::default(),
        }
        .read_through_variants())
    }

    /// The source under a plain state_dict's names: a wrapper prefix every name carries
    /// stripped, and counters the checkpoint lacks present as zeros ([`Variants`]). Runs
    /// after the set's own checks, which name tensors as the files do.
    fn read_through_variants(mut self) -> Source {
        let names: Vec<&str> = self.tensors.keys().map(|s| s.as_str()).collect();
        let v = Variants::of(&names);
        if !v.prefix.is_empty() {
            let n = v.prefix.len();
            self.tensors = std::mem::take(&mut self.tensors)
                .into_iter()
                .map(|(k, info)| (k[n..].to_string(), info))
                .collect();
        }
        for c in &v.zero_counters {
            self.tensors.insert(
                c.clone(),
                TensorInfo {
                    dtype: Dtype::I64,
                    shape: vec![],
                    file: ZERO_FILE,
                    start: 0,
                    end: ZERO_COUNTER.len(),
                },
            );
        }
        self.variants = v;
        self
    }

    /// What to tell the user about how the checkpoint was read: a stripped wrapper prefix,
    /// counters read as 0 ([`Variants::notes`]); empty for a plain state_dict.
    pub fn notes(&self) -> Vec<String> {
        self.variants.notes(&self.shown)
    }

    /// How the checkpoint's names were read.
    pub fn variants(&self) -> &Variants {
        &self.variants
    }

    /// The raw little-endian bytes of tensor `name`.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        if info.file == ZERO_FILE {
            return Some(&ZERO_COUNTER[info.start..info.end]);
        }
        let map = self.files[info.file].1.as_deref().unwrap_or(&[]);
        Some(&map[info.start..info.end])
    }

    /// Tells the system the pages of tensor `name` are no longer needed, so a streaming
    /// rewrite does not keep the whole teacher resident.
    pub fn release(&self, name: &str) {
        let Some(info) = self.tensors.get(name) else {
            return;
        };
        let Some((_, Some(map))) = self.files.get(info.file) else {
            return;
        };
        let page = 4096;
        let start = info.start.div_ceil(page) * page;
        let end = info.end / page * page;
        if end > start {
            // SAFETY: the map is a read-only shared file map: dropped pages are read again
            // from the file if touched, so no data is lost and no reference dangles.
            unsafe {
                let _ = map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                );
            }
        }
    }

    /// Checks every tensor `graph` needs: present, shaped and typed as it expects, and no
    /// other tensor. Reads no data.
    pub fn check(&self, graph: &Graph) -> Result<()> {
        let place = &self.shown;
        let specs = graph.param_specs();
        for spec in &specs {
            let counter = spec.slot.kind == ParamKind::NumBatchesTracked;
            let want = if counter {
                "I64"
            } else {
                "F32, F64, F16 or BF16"
            };
            let Some(info) = self.tensors.get(&spec.name) else {
                let hint = partial_prefix_hint(&spec.name, |n| self.tensors.contains_key(n), place);
                return Err(Error::Weights {
                    message: format!(
                        "{place} lacks tensor `{}` (expected shape {:?}, dtype {want})",
                        spec.name, spec.slot.shape
                    ),
                    hint: Some(hint.unwrap_or_else(|| {
                        "did you pass the weights of another architecture or of another --set?"
                            .into()
                    })),
                });
            };
            if info.shape != spec.slot.shape {
                return Err(weights_err(
                    format!(
                        "tensor `{}` in {place} has shape {:?} but the network expects {:?}",
                        spec.name, info.shape, spec.slot.shape
                    ),
                    Some("did you pass the weights of another architecture or of another --set?"),
                ));
            }
            let ok = if counter {
                info.dtype == Dtype::I64
            } else {
                float_dtype(info.dtype).is_some()
            };
            if !ok {
                return Err(weights_err(
                    format!(
                        "tensor `{}` in {place} has dtype {:?} but the network expects {want}",
                        spec.name, info.dtype
                    ),
                    Some("did you pass the weights of another architecture?"),
                ));
            }
        }
        let known: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        // A counter read as 0 is r2rc's, not the file's: an extra batch norm is named by
        // the statistics the file holds.
        if let Some(extra) = self
            .tensors
            .iter()
            .find(|(k, info)| info.file != ZERO_FILE && !known.contains(k.as_str()))
            .map(|(k, _)| k)
        {
            return Err(weights_err(
                format!(
                    "{place} holds tensor `{extra}`, which network `{}` does not have",
                    graph.name
                ),
                Some("did you pass the weights of another architecture?"),
            ));
        }
        Ok(())
    }

    /// The dtype most float bytes use (what outputs are written in).
    pub fn dtype(&self) -> DType {
        let mut by: HashMap<DType, usize> = HashMap::new();
        for info in self.tensors.values() {
            if let Some(d) = float_dtype(info.dtype) {
                *by.entry(d).or_default() += info.end - info.start;
            }
        }
        by.into_iter()
            .max_by_key(|(d, n)| (*n, d.size()))
            .map(|(d, _)| d)
            .unwrap_or(DType::F32)
    }

    /// Tensor `name` in f64, refusing non-finite values.
    pub fn decode(&self, name: &str) -> Result<ArrayD<f64>> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| weights_err(format!("{} lacks tensor `{name}`", self.shown), None))?;
        let raw = self.bytes(name).expect("known tensor");
        let values = decode_values(raw, info.dtype, name, &self.shown)?;
        Ok(ArrayD::from_shape_vec(IxDyn(&info.shape), values)
            .expect("safetensors checked the data length"))
    }
}

pub(crate) fn float_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F32 => Some(DType::F32),
        Dtype::F64 => Some(DType::F64),
        _ => None,
    }
}

/// Decodes little-endian values of `dtype` (I64 counters or floats), refusing non-finite
/// floats with the tensor's name and the value's flat index.
pub fn decode_values(raw: &[u8], dtype: Dtype, name: &str, place: &str) -> Result<Vec<f64>> {
    let v: Vec<f64> = match dtype {
        Dtype::I64 => {
            return Ok(raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect())
        }
        d @ (Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) => {
            crate::params::decode(raw, float_dtype(d).expect("a float dtype"))
        }
        other => {
            return Err(weights_err(
                format!("tensor `{name}` in {place} has dtype {other:?}, which r2rc cannot read"),
                None,
            ))
        }
    };
    // Chunked, and without an early exit inside a chunk, so the scan vectorises (a plain
    // `position_first` over values was a third of a large widening's compute time).
    let bad_chunk = v
        .par_chunks(PAR_CHUNK)
        .position_first(|c| c.iter().fold(false, |bad, x| bad | !x.is_finite()));
    if let Some(k) = bad_chunk {
        let pos = k * PAR_CHUNK
            + v[k * PAR_CHUNK..]
                .iter()
                .position(|x| !x.is_finite())
                .expect("the chunk holds one");
        return Err(weights_err(
            format!(
                "tensor `{name}` in {place} holds a non-finite value ({}) at flat index {pos}",
                v[pos]
            ),
            Some("the weights are damaged or training diverged"),
        ));
    }
    Ok(v)
}

/// Encodes `values` as `dtype` (floats) or I64 (`counter`), appending to `out`; the same
/// encoding as [`crate::params::to_bytes`].
pub fn encode_into(
    values: impl Iterator<Item = f64>,
    dtype: DType,
    counter: bool,
    out: &mut Vec<u8>,
) {
    if counter {
        for x in values {
            out.extend_from_slice(&(x.round() as i64).to_le_bytes());
        }
        return;
    }
    match dtype {
        DType::F16 => {
            values.for_each(|x| out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()))
        }
        DType::BF16 => {
            values.for_each(|x| out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()))
        }
        DType::F32 => values.for_each(|x| out.extend_from_slice(&(x as f32).to_le_bytes())),
        DType::F64 => values.for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
}

/// Values per parallel chunk when converting between f64 and a file's bytes.
const PAR_CHUNK: usize = 1 << 16;

/// `values` encoded as [`encode_into`] does, in parallel chunks for f32 (the common case
/// for large checkpoints).
pub fn encode(values: &[f64], dtype: DType, counter: bool) -> Vec<u8> {
    if counter || dtype != DType::F32 {
        let size = if counter { 8 } else { dtype.size() };
        let mut out = Vec::with_capacity(values.len() * size);
        encode_into(values.iter().copied(), dtype, counter, &mut out);
        return out;
    }
    let mut out = vec![0u8; values.len() * 4];
    out.par_chunks_mut(PAR_CHUNK * 4)
        .zip(values.par_chunks(PAR_CHUNK))
        .for_each(|(out, v)| {
            for (c, &x) in out.chunks_exact_mut(4).zip(v) {
                c.copy_from_slice(&(x as f32).to_le_bytes());
            }
        });
    out
}

/// Reads weights for `graph` from a sharded set (an index, or a folder), checking them as
/// [`crate::params::load`] checks a single file.
pub fn load(graph: &Graph, path: &Path) -> Result<Params> {
    load_with_notes(graph, path).map(|(p, _)| p)
}

/// [`load`], with what to tell the user about how the checkpoint was read
/// ([`Source::notes`]).
pub fn load_with_notes(graph: &Graph, path: &Path) -> Result<(Params, Vec<String>)> {
    let src = Source::open(path)?;
    src.check(graph)?;
    let mut tensors = BTreeMap::new();
    for spec in graph.param_specs() {
        tensors.insert(spec.name.clone(), src.decode(&spec.name)?);
    }
    let p = Params {
        tensors,
        dtype: src.dtype(),
    };
    Ok((p, src.notes()))
}

/// Parses a shard size: `2GB`, `500MB`, `1.5GiB`, `4096` (bytes). Decimal units are powers
/// of 1000, binary ones (`KiB`, `MiB`, `GiB`) of 1024, as Hugging Face reads them.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(Error::usage(
            format!("`{s}` is not a shard size"),
            Some("write a size such as 2GB, 500MB or 1GiB".into()),
        ));
    }
    Ok(bytes as u64)
}

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
fn header(entries: &[Entry], dtype: DType, metadata: Option<&BTreeMap<String, String>>) -> Vec<u8> {
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
fn split(entries: &[Entry], dtype: DType, shard_size: Option<u64>) -> Vec<Vec<Entry>> {
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
    /// Per file, after [`Writer::sequential`]: the direct writer it is written through.
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
        let (f, fin) = &self.files[k];
        let f = f.as_file();
        let pos = at + offset as u64;
        match self.direct.get_mut(k).and_then(|d| d.take()) {
            Some(mut d) if d.position() == pos => {
                d.append(f, bytes)
                    .map_err(|e| Error::io(fin.display(), e))?;
                self.direct[k] = Some(d);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::compile;

    fn example(name: &str) -> Graph {
        let path = format!("{}/examples/{name}.arch", env!("CARGO_MANIFEST_DIR"));
        compile(&fs::read_to_string(path).unwrap(), &[]).unwrap()
    }

    /// A safetensors file (through the reference writer) of `p`'s tensors renamed by
    /// `name` (None drops one): what PyTorch saves for such a state_dict.
    fn variant(p: &Params, name: impl Fn(&str) -> Option<String>) -> Vec<u8> {
        let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (k, t) in &p.tensors {
            let Some(n) = name(k) else { continue };
            let counter = k.ends_with(".num_batches_tracked");
            let dtype = if counter { Dtype::I64 } else { Dtype::F32 };
            let bytes = encode(&t.iter().copied().collect::<Vec<_>>(), DType::F32, counter);
            data.push((n, dtype, t.shape().to_vec(), bytes));
        }
        let views = data.iter().map(|(n, d, shape, b)| {
            let v = safetensors::tensor::TensorView::new(*d, shape.clone(), b).unwrap();
            (n.clone(), v)
        });
        safetensors::tensor::serialize(views, None).unwrap()
    }

    fn ddp(k: &str) -> Option<String> {
        Some(format!("module.{k}"))
    }

    fn no_counter(k: &str) -> Option<String> {
        (!k.ends_with(".num_batches_tracked")).then(|| k.to_string())
    }

    /// `p` with every counter set to `v` (the file's counters, or 0 where it lacks them).
    fn counters(mut p: Params, v: f64) -> Params {
        for (k, t) in p.tensors.iter_mut() {
            if k.ends_with(".num_batches_tracked") {
                t.fill(v);
            }
        }
        p
    }

    #[test]
    fn variants_find_a_prefix_every_name_has_and_missing_counters() {
        let v = Variants::of(&["module.a.weight", "module.bn.running_mean"]);
        assert_eq!(v.prefix, "module.");
        // The batch norm lacks running_var too: not a batch norm's statistics, no counter.
        assert!(v.zero_counters.is_empty());
        let v = Variants::of(&[
            "module._orig_mod.bn.running_mean",
            "module._orig_mod.bn.running_var",
            "module._orig_mod.bn2.running_mean",
            "module._orig_mod.bn2.running_var",
            "module._orig_mod.bn2.num_batches_tracked",
        ]);
        assert_eq!(v.prefix, "module._orig_mod.");
        let want: BTreeSet<String> = ["bn.num_batches_tracked".to_string()].into();
        assert_eq!(v.zero_counters, want);
        assert_eq!(v.file_name("bn.weight"), "module._orig_mod.bn.weight");
        let notes = v.notes("f.safetensors");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("`module._orig_mod.`"), "{notes:?}");
        assert!(
            notes[1].contains("1 batch norm (`bn.num_batches_tracked`)"),
            "{notes:?}"
        );
        // Only some names prefixed: nothing stripped. No names, or a bare prefix: none.
        assert_eq!(Variants::of(&["module.a", "b"]).prefix, "");
        assert_eq!(Variants::of(&["module."]).prefix, "");
        assert_eq!(Variants::of(&[]), Variants::default());
        assert!(Variants::default().notes("f").is_empty());
    }

    #[test]
    fn ddp_and_counterless_checkpoints_load_single_sharded_and_mapped() {
        let g = example("resnet_cifar10");
        let p = counters(crate::params::init(&g, 4, true), 7.0);
        let dir = tempfile::tempdir().unwrap();
        let bn = g
            .param_specs()
            .iter()
            .filter(|s| s.slot.kind == ParamKind::NumBatchesTracked)
            .count();
        type Rename = fn(&str) -> Option<String>;
        let both: Rename = |k| no_counter(k).map(|k| format!("module.{k}"));
        let plain: Rename = |k| Some(k.to_string());
        for (what, rename, counter, want_notes) in [
            ("plain", plain, 7.0, 0),
            ("ddp", ddp as Rename, 7.0, 1),
            ("no-counters", no_counter as Rename, 0.0, 1),
            ("both", both, 0.0, 2),
        ] {
            let want = counters(p.clone(), counter);
            // One file, in memory (params::load) and mapped (Source, as streaming reads).
            let single = dir.path().join(format!("{what}.safetensors"));
            fs::write(&single, variant(&p, rename)).unwrap();
            let (got, notes) = crate::params::load_with_notes(&g, &single).unwrap();
            assert_eq!(got, want, "{what}");
            assert_eq!(notes.len(), want_notes, "{what}: {notes:?}");
            if counter == 0.0 {
                let n = format!("{bn} batch norms");
                assert!(notes.iter().any(|s| s.contains(&n)), "{what}: {notes:?}");
            }
            let src = Source::open(&single).unwrap();
            src.check(&g).unwrap();
            assert_eq!(src.notes(), notes, "{what}");
            for spec in g.param_specs() {
                assert_eq!(src.decode(&spec.name).unwrap(), want.tensors[&spec.name]);
                src.release(&spec.name);
            }
            assert_eq!(
                src.bytes("conv1.bn.num_batches_tracked").unwrap(),
                &(counter as i64).to_le_bytes()
            );
            // Sharded: two shards and an index under the file's names.
            let set = dir.path().join(what);
            fs::create_dir(&set).unwrap();
            let mut weight_map = BTreeMap::new();
            let names: Vec<&String> = p.tensors.keys().collect();
            for (k, half) in names.chunks(names.len() / 2 + 1).enumerate() {
                let shard = format!("m-{k}.safetensors");
                let part = Params {
                    tensors: half
                        .iter()
                        .map(|n| ((*n).clone(), p.tensors[*n].clone()))
                        .collect(),
                    dtype: p.dtype,
                };
                fs::write(set.join(&shard), variant(&part, rename)).unwrap();
                for n in half {
                    if let Some(f) = rename(n) {
                        weight_map.insert(f, shard.clone());
                    }
                }
            }
            let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
            fs::write(set.join("m.safetensors.index.json"), index.to_string()).unwrap();
            let (got, sharded_notes) = crate::params::load_with_notes(&g, &set).unwrap();
            assert_eq!(got, want, "{what} sharded");
            assert_eq!(sharded_notes.len(), want_notes, "{what}: {sharded_notes:?}");
            assert_eq!(crate::params::load(&g, &set).unwrap(), want);
        }
    }

    #[test]
    fn a_prefix_on_some_names_only_is_refused_with_a_hint() {
        let g = example("resnet_cifar10");
        let p = crate::params::init(&g, 1, false);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.safetensors");
        let mixed = |k: &str| {
            Some(if k.starts_with("conv3_") {
                format!("module.{k}")
            } else {
                k.to_string()
            })
        };
        fs::write(&path, variant(&p, mixed)).unwrap();
        let e = crate::params::load(&g, &path).unwrap_err();
        assert!(e.to_string().contains("`conv3_1.conv1.weight`"), "{e}");
        let h = e.hint_text().unwrap_or_default();
        assert!(
            h.contains("`module.conv3_1.conv1.weight`") && h.contains("model.module.state_dict()"),
            "{h}"
        );
        let e = Source::open(&path).unwrap().check(&g).unwrap_err();
        assert!(
            e.hint_text()
                .unwrap_or_default()
                .contains("`module.` prefix"),
            "{e}"
        );
    }

    #[test]
    fn a_batch_norm_the_network_lacks_is_named_by_its_statistics() {
        // A counterless file with one more batch norm than the network: the refusal names
        // a tensor of the file, not the counter r2rc supplies.
        let g = example("resnet_cifar10");
        let mut p = crate::params::init(&g, 1, false);
        for s in ["running_mean", "running_var"] {
            let t = p.tensors[&format!("conv1.bn.{s}")].clone();
            p.tensors.insert(format!("extra.bn.{s}"), t);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.safetensors");
        fs::write(&path, variant(&p, no_counter)).unwrap();
        for e in [
            crate::params::load(&g, &path).unwrap_err(),
            Source::open(&path).unwrap().check(&g).unwrap_err(),
        ] {
            assert!(e.to_string().contains("`extra.bn.running_mean`"), "{e}");
        }
    }

    #[test]
    fn sizes_parse_like_hugging_face() {
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0GB").is_err());
    }

    #[test]
    fn shards_hold_at_most_the_size_and_big_tensors_alone() {
        let e = |n: &str, k: usize| Entry {
            name: n.into(),
            shape: vec![k],
            counter: false,
        };
        let v = vec![e("a", 10), e("b", 10), e("c", 100), e("d", 5)];
        let g = split(&v, DType::F32, Some(80));
        let names: Vec<Vec<&str>> = g
            .iter()
            .map(|s| s.iter().map(|e| e.name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
    }
}
