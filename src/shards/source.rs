//! The tensors of a safetensors file or a sharded set, memory-mapped and read on demand:
//! opening checks that the set holds together (every shard present, every tensor where the
//! index says), then names are read through the checkpoint's [`Variants`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors};

use super::{decode_values, float_dtype, partial_prefix_hint, resolve, weights_err, Variants};
use crate::error::{Error, Result};
use crate::ir::{Graph, ParamKind};
use crate::params::DType;

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
