//! Named parameter tensors in PyTorch layouts; init and safetensors IO.
//!
//! Files follow PyTorch's `state_dict` conventions: OIHW conv weights, `(out, in)` linear
//! weights, BN `weight`/`bias`/`running_mean`/`running_var` and an int64 scalar
//! `num_batches_tracked`. Saving writes keys in graph order, loading memory-maps the file
//! and checks it against [`Graph::param_specs`] before any tensor is used.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{Error, Result};
use crate::ir::{Graph, ParamKind, ParamSpec};

/// Element type of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    /// The safetensors dtype name (`F32`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// Parses the command-line spelling (`f32`, `f64`, `f16`, `bf16`).
    pub fn parse(s: &str) -> Result<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f32" | "float32" | "float" => Ok(DType::F32),
            "f64" | "float64" | "double" => Ok(DType::F64),
            _ => Err(Error::usage(
                format!("unknown dtype `{s}`"),
                Some("use one of f32, f64, f16, bf16".into()),
            )),
        }
    }

    /// `x` rounded to the nearest value this dtype can hold.
    pub fn round(self, x: f64) -> f64 {
        match self {
            DType::F16 => half::f16::from_f64(x).to_f64(),
            DType::BF16 => half::bf16::from_f64(x).to_f64(),
            DType::F32 => x as f32 as f64,
            DType::F64 => x,
        }
    }
}

/// The float dtype a safetensors dtype holds; `None` for integers and the rest.
pub(crate) fn float_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F32 => Some(DType::F32),
        Dtype::F64 => Some(DType::F64),
        _ => None,
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        })
    }
}

/// The tensors of a network by full name (`conv2_1.bn1.running_var`). Values are held in
/// f64; `dtype` remembers what the file used so outputs are written back in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub tensors: BTreeMap<String, ArrayD<f64>>,
    pub dtype: DType,
}

impl Params {
    /// The tensor with this full name.
    pub fn get(&self, name: &str) -> Option<&ArrayD<f64>> {
        self.tensors.get(name)
    }

    /// The same parameters stored as `dtype`: every value is rounded to what that dtype
    /// holds, so that saving and loading again gives back exactly these values.
    pub fn with_dtype(mut self, dtype: DType) -> Params {
        for t in self.tensors.values_mut() {
            t.mapv_inplace(|x| dtype.round(x));
        }
        self.dtype = dtype;
        self
    }

    /// Checks that the tensors are exactly those `graph` needs, with the right shapes.
    pub fn check(&self, graph: &Graph) -> Result<()> {
        self.check_covers(graph)?;
        let specs = graph.param_specs();
        let known: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(extra) = self.tensors.keys().find(|k| !known.contains(k.as_str())) {
            return Err(extra_tensor(extra, graph, "the parameters"));
        }
        Ok(())
    }

    /// [`Params::check`] without refusing extra tensors: every tensor `graph` needs is
    /// here with its shape (what running it needs; a local proof runs a region of a
    /// network on the whole network's tensors).
    pub fn check_covers(&self, graph: &Graph) -> Result<()> {
        let specs = graph.param_specs();
        for spec in &specs {
            match self.tensors.get(&spec.name) {
                None => return Err(missing(spec, "the parameters")),
                Some(t) if t.shape() != spec.slot.shape.as_slice() => {
                    return Err(misshaped(spec, t.shape(), "the parameters"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn expected_dtype(spec: &ParamSpec) -> &'static str {
    if spec.slot.kind == ParamKind::NumBatchesTracked {
        "I64"
    } else {
        "F32, F64, F16 or BF16"
    }
}

fn shape_text(s: &[usize]) -> String {
    if s.is_empty() {
        "[] (a scalar)".into()
    } else {
        format!("{s:?}")
    }
}

fn missing(spec: &ParamSpec, place: &str) -> Error {
    Error::Weights {
        message: format!(
            "{place} lack tensor `{}` (expected shape {}, dtype {})",
            spec.name,
            shape_text(&spec.slot.shape),
            expected_dtype(spec)
        ),
        hint: Some("did you pass the weights of another architecture or of another --set?".into()),
    }
}

fn misshaped(spec: &ParamSpec, found: &[usize], place: &str) -> Error {
    Error::Weights {
        message: format!(
            "tensor `{}` in {place} has shape {} but the network expects {} (dtype {})",
            spec.name,
            shape_text(found),
            shape_text(&spec.slot.shape),
            expected_dtype(spec)
        ),
        hint: Some("did you pass the weights of another architecture or of another --set?".into()),
    }
}

fn extra_tensor(name: &str, graph: &Graph, place: &str) -> Error {
    Error::Weights {
        message: format!(
            "{place} hold tensor `{name}`, which network `{}` does not have",
            graph.name
        ),
        hint: Some("did you pass the weights of another architecture?".into()),
    }
}

/// Draws from N(0, 1) (Box-Muller; rand 0.9 has no normal distribution without rand_distr).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Fan-in and fan-out of a weight as PyTorch computes them (`size(1) * receptive field`
/// and `size(0) * receptive field`).
fn fans(shape: &[usize]) -> (usize, usize) {
    let receptive: usize = shape.iter().skip(2).product();
    let fan_in = shape.get(1).copied().unwrap_or(1) * receptive;
    let fan_out = shape.first().copied().unwrap_or(1) * receptive;
    (fan_in.max(1), fan_out.max(1))
}

/// The most values r2rc holds in memory for one network (8 bytes each as f64: 8 GiB):
/// what a hostile `.arch` can make it allocate, with a clear refusal beyond.
pub const MAX_VALUES: u64 = 1 << 30;

/// Refuses a network whose weights plus, for `batch` inputs, its layer outputs would
/// exceed [`MAX_VALUES`]: every output when `keep_all` (a proof keeps them all to compare),
/// else a few of the largest (a forward pass frees values it no longer needs). `what`
/// names the use.
pub fn check_memory(graph: &Graph, batch: usize, keep_all: bool, what: &str) -> Result<()> {
    let params: u64 = graph
        .param_specs()
        .iter()
        .map(|s| {
            s.slot
                .shape
                .iter()
                .map(|&d| d as u64)
                .fold(1u64, u64::saturating_mul)
        })
        .fold(0u64, u64::saturating_add);
    let sizes = graph.g.node_weights().map(|n| {
        n.shape
            .iter()
            .map(|&d| d as u64)
            .fold(1u64, u64::saturating_mul)
    });
    let per_sample: u64 = if keep_all {
        sizes.fold(0u64, u64::saturating_add)
    } else {
        sizes.max().unwrap_or(0).saturating_mul(4)
    };
    let values = params.saturating_add(per_sample.saturating_mul(batch as u64));
    if values > MAX_VALUES {
        return Err(Error::usage(
            format!(
                "{what} would hold {} values ({} parameters, {} per input for {batch} input(s)), more than the {} r2rc allows in memory",
                crate::stats::thousands(values),
                crate::stats::thousands(params),
                crate::stats::thousands(per_sample),
                crate::stats::thousands(MAX_VALUES)
            ),
            Some("check the widths and the input size (`r2rc check` prints the parameter count)".into()),
        ));
    }
    Ok(())
}

/// Seeded PyTorch-style initial weights in f32.
///
/// Convs: kaiming normal, mode fan_out, ReLU gain (torchvision's ResNet init). Linear:
/// PyTorch's default U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. Conv bias:
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)). BN: gamma 1, beta 0, mean 0, var 1, counter 0.
/// PReLU: 0.25. With `random_stats` biases, BN affine parameters, running statistics
/// (var in [0.5, 2)) and PReLU slopes are random too, so that proofs cannot be fooled by
/// identity-looking statistics.
pub fn init(graph: &Graph, seed: u64, random_stats: bool) -> Params {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let specs = graph.param_specs();
    let mut tensors = BTreeMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let shape = &spec.slot.shape;
        let n: usize = shape.iter().product();
        let owner_weight = || {
            // The weight of the same layer, for the bias bound.
            specs[..i]
                .iter()
                .rev()
                .find(|s| s.node == spec.node && s.slot.suffix == "weight")
                .map(|s| s.slot.shape.clone())
                .unwrap_or_default()
        };
        let values: Vec<f64> = match spec.slot.kind {
            ParamKind::ConvWeight => {
                let std = (2.0 / fans(shape).1 as f64).sqrt();
                (0..n).map(|_| std * normal(&mut rng)).collect()
            }
            ParamKind::LinearWeight => {
                let b = 1.0 / (fans(shape).0 as f64).sqrt();
                (0..n).map(|_| uniform(&mut rng, -b, b)).collect()
            }
            ParamKind::Bias => {
                let b = 1.0 / (fans(&owner_weight()).0 as f64).sqrt();
                let b = if random_stats { b.max(0.1) } else { b };
                (0..n).map(|_| uniform(&mut rng, -b, b)).collect()
            }
            ParamKind::BnWeight if random_stats => {
                (0..n).map(|_| uniform(&mut rng, 0.5, 1.5)).collect()
            }
            ParamKind::BnWeight => vec![1.0; n],
            ParamKind::BnBias | ParamKind::RunningMean if random_stats => {
                (0..n).map(|_| uniform(&mut rng, -0.5, 0.5)).collect()
            }
            ParamKind::BnBias | ParamKind::RunningMean => vec![0.0; n],
            ParamKind::RunningVar if random_stats => {
                (0..n).map(|_| uniform(&mut rng, 0.5, 2.0)).collect()
            }
            ParamKind::RunningVar => vec![1.0; n],
            ParamKind::NumBatchesTracked => vec![0.0; n.max(1)],
            ParamKind::PreluWeight if random_stats => {
                (0..n).map(|_| uniform(&mut rng, 0.05, 0.5)).collect()
            }
            ParamKind::PreluWeight => vec![0.25; n],
        };
        let array = ArrayD::from_shape_vec(IxDyn(shape), values).expect("length matches shape");
        tensors.insert(spec.name.clone(), array);
    }
    Params {
        tensors,
        dtype: DType::F64,
    }
    .with_dtype(DType::F32)
}

/// The bytes of a safetensors file holding `params` (in `params.dtype`, counters as I64),
/// keys in the graph's order, with an optional `__metadata__` map.
pub fn to_bytes(
    params: &Params,
    graph: &Graph,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    params.check(graph)?;
    let dtype = params.dtype;
    let mut header = String::from("{");
    let mut data: Vec<u8> = Vec::new();
    if let Some(meta) = metadata {
        let meta = serde_json::to_string(meta).map_err(|e| Error::weights(e.to_string()))?;
        header.push_str(&format!("\"__metadata__\":{meta}"));
    }
    for spec in graph.param_specs() {
        let t = &params.tensors[&spec.name];
        let start = data.len();
        let name = if spec.slot.kind == ParamKind::NumBatchesTracked {
            for &x in t.iter() {
                data.extend_from_slice(&(x.round() as i64).to_le_bytes());
            }
            "I64"
        } else {
            for &x in t.iter() {
                match dtype {
                    DType::F16 => data.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
                    DType::BF16 => data.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
                    DType::F32 => data.extend_from_slice(&(x as f32).to_le_bytes()),
                    DType::F64 => data.extend_from_slice(&x.to_le_bytes()),
                }
            }
            dtype.safetensors_name()
        };
        if header.len() > 1 {
            header.push(',');
        }
        let key = serde_json::to_string(&spec.name).expect("a string serialises");
        header.push_str(&format!(
            "{key}:{{\"dtype\":\"{name}\",\"shape\":{:?},\"data_offsets\":[{start},{}]}}",
            spec.slot.shape,
            data.len()
        ));
    }
    header.push('}');
    // The data starts 8-byte aligned, as the reference writer does.
    while (header.len() + 8) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes `params` as a safetensors file at `path`: first to a temporary file in the same
/// folder, then renamed over `path`, so a reader (or a memory map of an input) never sees
/// a half-written file.
pub fn save(
    params: &Params,
    graph: &Graph,
    path: &Path,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let bytes = to_bytes(params, graph, metadata)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename
/// ([`crate::outputs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::outputs::write_atomic(path, bytes)
}

fn describe(e: SafeTensorError, len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => format!(
            "the file is {len} bytes long, too short for the 8-byte header length"
        ),
        SafeTensorError::HeaderTooLarge => {
            "the header length field is larger than 100 MB: the file is damaged or not safetensors"
                .into()
        }
        SafeTensorError::InvalidHeaderLength => format!(
            "the header length field points past the end of the file ({len} bytes): the file is truncated or damaged"
        ),
        SafeTensorError::InvalidHeader(_) => "the header is not valid UTF-8".into(),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            format!("the header is not valid safetensors JSON ({e})")
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the tensor data declared in the header does not match the file size ({len} bytes): the file is truncated or damaged"
        ),
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}` has invalid data offsets in the header")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's data offsets do not match its shape and dtype".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows".into(),
        other => format!("{other:?}"),
    }
}

/// Reads a weights file for `graph`: memory-maps it, parses it with the safetensors crate
/// and checks every tensor's presence, shape, dtype and finiteness. A folder or a
/// `*.safetensors.index.json` is read as a sharded set ([`crate::shards`]).
///
/// Checkpoints as PyTorch users have them are read too ([`crate::shards::Variants`]): a
/// wrapper prefix such as DistributedDataParallel's `module.` on every name is stripped,
/// and batch norms without `num_batches_tracked` get a counter of 0.
/// [`load_with_notes`] also says when either happened.
pub fn load(graph: &Graph, path: &Path) -> Result<Params> {
    load_with_notes(graph, path).map(|(p, _)| p)
}

/// [`load`], with what to tell the user about how the checkpoint was read (a stripped
/// wrapper prefix, counters read as 0); empty for a plain state_dict.
pub fn load_with_notes(graph: &Graph, path: &Path) -> Result<(Params, Vec<String>)> {
    // A folder or an index: a sharded set.
    if crate::shards::is_sharded(path) {
        return crate::shards::load_with_notes(graph, path);
    }
    let shown = path.display().to_string();
    let file = fs::File::open(path).map_err(|e| Error::io(&shown, e))?;
    let len = file.metadata().map_err(|e| Error::io(&shown, e))?.len() as usize;
    if len == 0 {
        return from_bytes_with_notes(graph, &[], &shown);
    }
    // SAFETY: the map is read-only and dropped before returning; r2rc never writes to a
    // file it reads (outputs go through a temporary file and a rename).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&shown, e))?;
    from_bytes_with_notes(graph, &map, &shown)
}

/// The `__metadata__` map of a safetensors file (empty when it has none).
pub fn load_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let shown = path.display().to_string();
    let bytes = fs::read(path).map_err(|e| Error::io(&shown, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::Weights {
        message: format!("{shown}: {}", describe(e, bytes.len())),
        hint: None,
    })?;
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

/// Parses and checks the bytes of a safetensors file; `shown` names it in errors.
pub fn from_bytes(graph: &Graph, bytes: &[u8], shown: &str) -> Result<Params> {
    from_bytes_with_notes(graph, bytes, shown).map(|(p, _)| p)
}

/// [`from_bytes`], with the notes of [`load_with_notes`].
pub fn from_bytes_with_notes(
    graph: &Graph,
    bytes: &[u8],
    shown: &str,
) -> Result<(Params, Vec<String>)> {
    if let Some(name) = duplicate_key(bytes) {
        return Err(Error::Weights {
            message: format!("{shown}: the header names tensor `{name}` twice"),
            hint: Some("a safetensors file holds each tensor once; write the file again".into()),
        });
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Weights {
        message: format!("{shown}: {}", describe(e, bytes.len())),
        hint: Some(
            "write the file again with `r2rc init` or from PyTorch's safetensors.torch.save_file"
                .into(),
        ),
    })?;
    let place = shown.to_string();
    let mut names = st.names();
    names.sort();
    let variants = crate::shards::Variants::of(&names);
    let specs = graph.param_specs();
    let mut tensors = BTreeMap::new();
    let mut dtypes: HashMap<DType, usize> = HashMap::new();
    for spec in &specs {
        let view = match st.tensor(&variants.file_name(&spec.name)) {
            Ok(view) => view,
            Err(_) if variants.zero_counters.contains(&spec.name) => {
                let zero = ArrayD::zeros(IxDyn(&spec.slot.shape));
                tensors.insert(spec.name.clone(), zero);
                continue;
            }
            Err(_) => {
                let mut e = missing(spec, &place);
                let has = |n: &str| names.binary_search(&n).is_ok();
                if let (Error::Weights { hint, .. }, Some(h)) = (
                    &mut e,
                    crate::shards::partial_prefix_hint(&spec.name, has, &place),
                ) {
                    *hint = Some(h);
                }
                return Err(e);
            }
        };
        if view.shape() != spec.slot.shape.as_slice() {
            return Err(misshaped(spec, view.shape(), &place));
        }
        let raw = view.data();
        let values: Vec<f64> = if spec.slot.kind == ParamKind::NumBatchesTracked {
            if view.dtype() != Dtype::I64 {
                return Err(wrong_dtype(spec, view.dtype(), &place));
            }
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect()
        } else {
            let dt =
                float_dtype(view.dtype()).ok_or_else(|| wrong_dtype(spec, view.dtype(), &place))?;
            *dtypes.entry(dt).or_default() += raw.len();
            let v = decode(raw, dt);
            if let Some(pos) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Weights {
                    message: format!(
                        "tensor `{}` in {place} holds a non-finite value ({}) at flat index {pos}",
                        spec.name, v[pos]
                    ),
                    hint: Some("the weights are damaged or training diverged".into()),
                });
            }
            v
        };
        let array = ArrayD::from_shape_vec(IxDyn(&spec.slot.shape), values)
            .expect("safetensors checked the data length");
        tensors.insert(spec.name.clone(), array);
    }
    let known: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let n = variants.prefix.len();
    if let Some(extra) = names.iter().map(|k| &k[n..]).find(|k| !known.contains(k)) {
        return Err(extra_tensor(extra, graph, &place));
    }
    // The file's dtype is the one most of its float bytes use.
    let dtype = dtypes
        .into_iter()
        .max_by_key(|(d, n)| (*n, d.size()))
        .map(|(d, _)| d)
        .unwrap_or(DType::F32);
    Ok((Params { tensors, dtype }, variants.notes(shown)))
}

fn wrong_dtype(spec: &ParamSpec, found: Dtype, place: &str) -> Error {
    Error::Weights {
        message: format!(
            "tensor `{}` in {place} has dtype {found:?} but the network expects {} (shape {})",
            spec.name,
            expected_dtype(spec),
            shape_text(&spec.slot.shape)
        ),
        hint: Some("did you pass the weights of another architecture?".into()),
    }
}

/// Little-endian floats of `dt` as f64 (f32, the common case, decoded in parallel).
pub(crate) fn decode(raw: &[u8], dt: DType) -> Vec<f64> {
    use rayon::prelude::*;
    match dt {
        DType::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::F32 => {
            const CHUNK: usize = 1 << 16;
            let mut v = vec![0.0; raw.len() / 4];
            v.par_chunks_mut(CHUNK)
                .zip(raw.par_chunks(CHUNK * 4))
                .for_each(|(out, raw)| {
                    for (x, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                        *x = f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64;
                    }
                });
            v
        }
        DType::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    }
}

/// The first top-level key the header of a safetensors file repeats (JSON parsers keep
/// the last silently), when the header is readable JSON.
fn duplicate_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = HashSet::new();
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if dup.is_none() && !seen.insert(k.clone()) {
                    dup = Some(k);
                }
            }
            Ok(dup)
        }
    }
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    let header = bytes.get(8..end)?;
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(Keys)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_rounding_is_idempotent() {
        for d in [DType::F16, DType::BF16, DType::F32, DType::F64] {
            let x = d.round(0.1234567891234);
            assert_eq!(d.round(x), x);
        }
        assert_eq!(DType::F16.round(1.0 + 1e-4), 1.0);
        assert_ne!(DType::F32.round(1.0 + 1e-4), 1.0);
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let v: Vec<f64> = (0..20000).map(|_| normal(&mut rng)).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }

    #[test]
    fn fans_follow_pytorch() {
        assert_eq!(fans(&[64, 3, 7, 7]), (3 * 49, 64 * 49));
        assert_eq!(fans(&[10, 512]), (512, 10));
    }

    #[test]
    fn shape_text_names_scalars() {
        assert_eq!(shape_text(&[]), "[] (a scalar)");
        assert_eq!(shape_text(&[3, 4]), "[3, 4]");
    }
}
