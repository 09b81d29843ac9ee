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
use crate::ir::{Graph, Op, ParamKind, ParamSpec};

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

/// Draws from N(0, 1) (Box-Muller's cosine output; rand 0.9 has no normal distribution
/// without rand_distr). Takes exactly four words: rewrites' parallel draws rely on it.
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let a = rng.random::<f64>();
    box_muller(a, rng.random::<f64>())
}

/// [`normal`]'s value from its two uniform draws in [0, 1).
pub(crate) fn box_muller(a: f64, b: f64) -> f64 {
    let u1 = 1.0 - a; // (0, 1]: ln stays finite
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
}

/// Two independent draws from N(0, 1): both outputs of one Box-Muller transform, in f32
/// arithmetic (init's values are f32; f32's log and sin_cos are about twice as fast). The
/// uniforms are f64 draws, so the tails reach 8.5 standard deviations.
pub(crate) fn normal_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    let u1 = (1.0 - rng.random::<f64>()) as f32; // (0, 1]: ln stays finite
    let u2 = rng.random::<f64>() as f32;
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (2.0 * std::f32::consts::PI * u2).sin_cos();
    (r * c, r * s)
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

/// Whether two tensors have the same shape and the same bits in every element (so -0.0
/// and 0.0 differ, and a NaN equals itself): whether a run reading either computes the
/// same. Compared in blocks without an early exit inside a block, so that it vectorises.
pub fn same_bits(a: &ArrayD<f64>, b: &ArrayD<f64>) -> bool {
    if a.shape() != b.shape() {
        return false;
    }
    match (a.as_slice(), b.as_slice()) {
        (Some(x), Some(y)) => x.chunks(64).zip(y.chunks(64)).all(|(p, q)| {
            p.iter()
                .zip(q)
                .fold(0u64, |d, (u, v)| d | (u.to_bits() ^ v.to_bits()))
                == 0
        }),
        _ => a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()),
    }
}

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
/// Convs: kaiming normal with ReLU gain, by fan_out (torchvision's ResNet and ResNeXt
/// init) or, in a network that concatenates (DenseNet), by fan_in as torchvision's
/// DenseNet does: its 1x1 convs read up to 8x more channels than they write, and fan_out
/// scaling compounds through the concatenations to logits near 1e7. Linear:
/// PyTorch's default U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. Conv bias:
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)). BN: gamma 1, beta 0, mean 0, var 1, counter 0.
/// PReLU: 0.25. With `random_stats` biases, BN affine parameters, running statistics
/// (var in [0.5, 2)) and PReLU slopes are random too, so that proofs cannot be fooled by
/// identity-looking statistics.
///
/// Each tensor draws from its own stream keyed by (seed, tensor name) ([`init_rng`]), in
/// fixed chunks that each start at their own word: tensors and chunks fill in parallel,
/// and a tensor's values depend on nothing else (not the thread count, not the other
/// tensors), as rewrites' draws do.
pub fn init(graph: &Graph, seed: u64, random_stats: bool) -> Params {
    use rayon::prelude::*;
    let init = Init::new(graph, seed, random_stats);
    let tensors = init
        .tensors
        .par_iter()
        .map(|(name, _)| (name.clone(), init.tensor(name).expect("one of the graph's")))
        .collect();
    Params {
        tensors,
        dtype: DType::F32,
    }
}

/// What [`init`] makes of each tensor of a graph, so that a writer can make them one at a
/// time ([`Init::tensor`]) with the same values.
pub struct Init {
    seed: u64,
    /// Tensor name -> (rule, shape, values).
    tensors: BTreeMap<String, (Rule, Vec<usize>, usize)>,
}

impl Init {
    pub fn new(graph: &Graph, seed: u64, random_stats: bool) -> Init {
        let specs = graph.param_specs();
        let conv_fan = if graph.g.node_weights().any(|n| n.op == Op::Concat) {
            ConvFan::In
        } else {
            ConvFan::Out
        };
        let tensors = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let owner_weight = || {
                    // The weight of the same layer, for the bias bound.
                    specs[..i]
                        .iter()
                        .rev()
                        .find(|s| s.node == spec.node && s.slot.suffix == "weight")
                        .map(|s| s.slot.shape.clone())
                        .unwrap_or_default()
                };
                let shape = &spec.slot.shape;
                let rule = init_rule(spec.slot.kind, shape, owner_weight, conv_fan, random_stats);
                let n: usize = shape.iter().product();
                let n = if spec.slot.kind == ParamKind::NumBatchesTracked {
                    n.max(1)
                } else {
                    n
                };
                (spec.name.clone(), (rule, shape.clone(), n))
            })
            .collect();
        Init { seed, tensors }
    }

    /// Tensor `name` (an r2rc name) as [`init`] makes it; `None` if the graph has none.
    pub fn tensor(&self, name: &str) -> Option<ArrayD<f64>> {
        let (rule, shape, n) = self.tensors.get(name)?;
        let values = fill(*rule, *n, self.seed, name);
        Some(ArrayD::from_shape_vec(IxDyn(shape), values).expect("length matches shape"))
    }
}

/// How [`init`] fills one tensor.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// N(0, std^2).
    Normal(f64),
    /// U(lo, hi).
    Uniform(f64, f64),
    Const(f64),
}

/// Which fan a conv weight's kaiming init scales by (see [`init`]).
#[derive(Debug, Clone, Copy)]
enum ConvFan {
    In,
    Out,
}

fn init_rule(
    kind: ParamKind,
    shape: &[usize],
    owner_weight: impl Fn() -> Vec<usize>,
    conv_fan: ConvFan,
    random_stats: bool,
) -> Rule {
    match kind {
        ParamKind::ConvWeight => {
            let (fan_in, fan_out) = fans(shape);
            let fan = match conv_fan {
                ConvFan::In => fan_in,
                ConvFan::Out => fan_out,
            };
            Rule::Normal((2.0 / fan as f64).sqrt())
        }
        ParamKind::LinearWeight => {
            let b = 1.0 / (fans(shape).0 as f64).sqrt();
            Rule::Uniform(-b, b)
        }
        ParamKind::Bias => {
            let b = 1.0 / (fans(&owner_weight()).0 as f64).sqrt();
            let b = if random_stats { b.max(0.1) } else { b };
            Rule::Uniform(-b, b)
        }
        ParamKind::BnWeight if random_stats => Rule::Uniform(0.5, 1.5),
        ParamKind::BnWeight => Rule::Const(1.0),
        ParamKind::BnBias | ParamKind::RunningMean if random_stats => Rule::Uniform(-0.5, 0.5),
        ParamKind::BnBias | ParamKind::RunningMean => Rule::Const(0.0),
        ParamKind::RunningVar if random_stats => Rule::Uniform(0.5, 2.0),
        ParamKind::RunningVar => Rule::Const(1.0),
        ParamKind::NumBatchesTracked => Rule::Const(0.0),
        ParamKind::PreluWeight if random_stats => Rule::Uniform(0.05, 0.5),
        ParamKind::PreluWeight => Rule::Const(0.25),
    }
}

/// The stream [`init`] draws tensor `name` from: a function of (seed, name) only. The last
/// key word tells it apart from every rewrite's keyed streams (whose last word is a small
/// part number).
pub(crate) fn init_rng(seed: u64, name: &str) -> ChaCha8Rng {
    // FNV-1a: stable across Rust versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[16..24].copy_from_slice(&h.to_le_bytes());
    key[24..32].copy_from_slice(b"r2rcinit");
    ChaCha8Rng::from_seed(key)
}

/// Values per chunk of [`fill`]: each chunk starts the tensor's stream at its own word,
/// so chunks fill in parallel to the same bits as one after another.
const INIT_CHUNK: usize = 1 << 14;

/// `n` values of `rule` from tensor `name`'s stream, rounded to f32. Every value takes two
/// words (one f64); normals come in Box-Muller pairs (four words, both outputs used).
fn fill(rule: Rule, n: usize, seed: u64, name: &str) -> Vec<f64> {
    use rayon::prelude::*;
    if let Rule::Const(c) = rule {
        return vec![c as f32 as f64; n];
    }
    let base = init_rng(seed, name);
    let mut v = vec![0.0; n];
    v.par_chunks_mut(INIT_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = base.clone();
            rng.set_word_pos((i * INIT_CHUNK) as u128 * 2);
            match rule {
                Rule::Normal(std) => {
                    let mut pairs = chunk.chunks_exact_mut(2);
                    for p in &mut pairs {
                        let (a, b) = normal_pair(&mut rng);
                        p[0] = (std * a as f64) as f32 as f64;
                        p[1] = (std * b as f64) as f32 as f64;
                    }
                    if let [x] = pairs.into_remainder() {
                        *x = (std * normal_pair(&mut rng).0 as f64) as f32 as f64;
                    }
                }
                Rule::Uniform(lo, hi) => {
                    for x in chunk {
                        *x = uniform(&mut rng, lo, hi) as f32 as f64;
                    }
                }
                Rule::Const(_) => unreachable!("filled above"),
            }
        });
    v
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
    let specs = graph.param_specs();
    // The header first (offsets follow from the lengths), then every tensor encoded
    // straight into the one output buffer.
    let mut header = String::from("{");
    if let Some(meta) = metadata {
        let meta = serde_json::to_string(meta).map_err(|e| Error::weights(e.to_string()))?;
        header.push_str(&format!("\"__metadata__\":{meta}"));
    }
    let mut at = 0;
    for spec in &specs {
        let t = &params.tensors[&spec.name];
        let (name, size) = if spec.slot.kind == ParamKind::NumBatchesTracked {
            ("I64", 8)
        } else {
            (dtype.safetensors_name(), dtype.size())
        };
        let end = at + t.len() * size;
        if header.len() > 1 {
            header.push(',');
        }
        let key = serde_json::to_string(&spec.name).expect("a string serialises");
        header.push_str(&format!(
            "{key}:{{\"dtype\":\"{name}\",\"shape\":{:?},\"data_offsets\":[{at},{end}]}}",
            spec.slot.shape
        ));
        at = end;
    }
    header.push('}');
    // The data starts 8-byte aligned, as the reference writer does.
    while (header.len() + 8) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + at);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for spec in &specs {
        let t = params.tensors[&spec.name].as_standard_layout();
        let counter = spec.slot.kind == ParamKind::NumBatchesTracked;
        let values = t.as_slice().expect("standard layout");
        crate::shards::encode_append(values, dtype, counter, &mut out);
    }
    debug_assert_eq!(out.len(), 8 + header.len() + at);
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
            let (v, finite) = decode_checked(raw, dt);
            let bad = if finite {
                None
            } else {
                v.iter().position(|x| !x.is_finite())
            };
            if let Some(pos) = bad {
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

/// Values per parallel chunk when decoding f32.
const DECODE_CHUNK: usize = 1 << 16;

/// Little-endian floats of `dt` as f64, and whether every value is finite. f32 is decoded and checked in one
/// parallel pass straight into the new vector's memory (no zero fill, no second pass over
/// the f64 values: a large widening decodes gigabytes).
pub(crate) fn decode_checked(raw: &[u8], dt: DType) -> (Vec<f64>, bool) {
    use rayon::prelude::*;
    let v: Vec<f64> = match dt {
        DType::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::F32 => {
            let n = raw.len() / 4;
            let mut v: Vec<f64> = Vec::with_capacity(n);
            let finite = v.spare_capacity_mut()[..n]
                .par_chunks_mut(DECODE_CHUNK)
                .zip(raw[..n * 4].par_chunks(DECODE_CHUNK * 4))
                .map(|(out, raw)| {
                    // Exponent bits all ones: infinite or NaN. Or-ed without an early exit
                    // so the loop vectorises.
                    let mut bad = false;
                    for (x, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                        let bits = u32::from_le_bytes(c.try_into().expect("4 bytes"));
                        bad |= bits & 0x7f80_0000 == 0x7f80_0000;
                        x.write(f32::from_bits(bits) as f64);
                    }
                    !bad
                })
                .reduce(|| true, |a, b| a & b);
            // SAFETY: the zip covered all `n` slots (raw holds n * 4 bytes) and wrote each.
            unsafe { v.set_len(n) };
            return (v, finite);
        }
        DType::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    };
    let finite = v.iter().fold(true, |ok, x| ok & x.is_finite());
    (v, finite)
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
    fn normal_pairs_have_unit_variance_and_no_correlation() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let v: Vec<(f64, f64)> = (0..20000)
            .map(|_| {
                let (a, b) = normal_pair(&mut rng);
                (a as f64, b as f64)
            })
            .collect();
        let n = v.len() as f64;
        for x in [
            v.iter().map(|p| p.0).collect::<Vec<_>>(),
            v.iter().map(|p| p.1).collect(),
        ] {
            let mean = x.iter().sum::<f64>() / n;
            let var = x.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            assert!(mean.abs() < 0.03, "mean {mean}");
            assert!((var - 1.0).abs() < 0.05, "var {var}");
        }
        // The sine and cosine outputs of one transform are independent draws.
        let corr = v.iter().map(|p| p.0 * p.1).sum::<f64>() / n;
        assert!(corr.abs() < 0.03, "correlation {corr}");
    }

    /// A small network with every kind of tensor init fills, the first conv large enough
    /// to span several chunks (and an odd count, so a lone normal ends it).
    fn init_graph() -> Graph {
        let src =
            "arch T\ninput 3x33x33\n\nconv1  33x33  5x5, 1025\nhead   1x1    avg pool, 10-d fc\n";
        crate::lower::compile(src, &[]).expect("compiles")
    }

    #[test]
    fn init_is_deterministic_per_seed_and_independent_of_threads() {
        let g = init_graph();
        let conv = &g.param_specs()[0];
        assert!(conv.slot.shape.iter().product::<usize>() > 4 * INIT_CHUNK);
        let on = |threads: usize, seed: u64| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool")
                .install(|| init(&g, seed, true))
        };
        let one = on(1, 5);
        assert_eq!(one, on(3, 5), "the thread count changed the values");
        assert_eq!(one, init(&g, 5, true), "a second run changed the values");
        let other = on(2, 6);
        for (name, t) in &one.tensors {
            let random = t
                .iter()
                .any(|&x| x != t.iter().next().copied().unwrap_or(x));
            if random {
                assert_ne!(
                    t, &other.tensors[name],
                    "seed 6 repeated seed 5 for `{name}`"
                );
            }
        }
        // Every value is an f32, and the conv's draws have He's standard deviation.
        assert!(one
            .tensors
            .values()
            .all(|t| t.iter().all(|&x| x as f32 as f64 == x)));
        let w = &one.tensors[&conv.name];
        let n = w.len() as f64;
        let std = (w.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
        let he = (2.0 / fans(&conv.slot.shape).1 as f64).sqrt();
        assert!((std / he - 1.0).abs() < 0.01, "std {std} against He's {he}");
    }

    #[test]
    fn init_streams_are_keyed_by_tensor_name() {
        // Two tensors of one seed draw different values (not one stream restarted).
        let a: Vec<f64> = fill(Rule::Uniform(0.0, 1.0), 64, 3, "a.weight");
        let b: Vec<f64> = fill(Rule::Uniform(0.0, 1.0), 64, 3, "b.weight");
        assert_ne!(a, b);
        assert_eq!(a, fill(Rule::Uniform(0.0, 1.0), 64, 3, "a.weight"));
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
