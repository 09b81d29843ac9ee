//! A tensor's little-endian bytes to f64 values and back, for the dtypes a checkpoint
//! holds (floats, and I64 batch-norm counters).

use rayon::prelude::*;
use safetensors::tensor::Dtype;

use super::weights_err;
use crate::error::Result;
use crate::params::{float_dtype, DType};

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
