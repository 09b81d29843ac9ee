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
//!
//! The parts: `source.rs` reads a set or a file through memory maps (the [`Source`]),
//! `variants.rs` reads through a wrapper prefix and missing batch-norm counters,
//! `codec.rs` turns a tensor's bytes into f64 values and back, and `writer.rs` lays out
//! and writes a set ([`Writer`], [`save`]).

mod codec;
mod source;
mod variants;
mod writer;

#[cfg(test)]
mod tests;

pub(crate) use crate::params::float_dtype;
pub use codec::{
    check_finite, decode_values, encode, encode_append, encode_into, encode_padded, encode_to,
};
pub use source::{Source, TensorInfo, ZERO_FILE};
pub use variants::{partial_prefix_hint, Variants, WRAPPER_PREFIXES};
pub(crate) use writer::write_at;
pub use writer::{entries, header, output_paths, save, Entry, Writer};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::params::Params;

/// The suffix of an index file.
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";

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
