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
            let (v, finite) =
                crate::params::decode_checked(raw, float_dtype(d).expect("a float dtype"));
            if finite {
                return Ok(v);
            }
            v
        }
        other => {
            return Err(weights_err(
                format!("tensor `{name}` in {place} has dtype {other:?}, which r2rc cannot read"),
                None,
            ))
        }
    };
    // Only for the error: where the first non-finite value is. Chunked, and without an
    // early exit inside a chunk, so the scan vectorises.
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

/// Checks that `raw` (little-endian values of `dtype`) holds no infinity or NaN, as
/// [`decode_values`] does and with its error, but from the bits alone: a tensor copied
/// unchanged is never decoded.
pub fn check_finite(raw: &[u8], dtype: Dtype, name: &str, place: &str) -> Result<()> {
    // A float is infinite or NaN when its exponent bits are all ones.
    fn scan<const N: usize>(raw: &[u8], exponent: u64) -> bool {
        raw.par_chunks(PAR_CHUNK * N).all(|c| {
            c.chunks_exact(N).fold(true, |ok, b| {
                let mut w = [0u8; 8];
                w[..N].copy_from_slice(b);
                ok & (u64::from_le_bytes(w) & exponent != exponent)
            })
        })
    }
    let finite = match dtype {
        Dtype::I64 => true,
        Dtype::F16 => scan::<2>(raw, 0x7c00),
        Dtype::BF16 => scan::<2>(raw, 0x7f80),
        Dtype::F32 => scan::<4>(raw, 0x7f80_0000),
        Dtype::F64 => scan::<8>(raw, 0x7ff0_0000_0000_0000),
        _ => false,
    };
    if finite {
        return Ok(());
    }
    // Where and what: the decoder's error.
    decode_values(raw, dtype, name, place).map(|_| ())
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

/// Encodes float `values` as `dtype` into `out` (`values.len() * dtype.size()` bytes):
/// the bytes [`encode_into`] appends.
pub fn encode_to(values: &[f64], dtype: DType, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        values.len() * dtype.size(),
        "the bytes of the values"
    );
    match dtype {
        DType::F16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::f16::from_f64(x).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::bf16::from_f64(x).to_le_bytes());
            }
        }
        DType::F32 => {
            for (o, &x) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&(x as f32).to_le_bytes());
            }
        }
        DType::F64 => {
            for (o, &x) in out.chunks_exact_mut(8).zip(values) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Values per parallel chunk when converting between f64 and a file's bytes.
const PAR_CHUNK: usize = 1 << 16;

/// `values` encoded as [`encode_into`] does, in parallel chunks for f32 (the common case
/// for large checkpoints).
pub fn encode(values: &[f64], dtype: DType, counter: bool) -> Vec<u8> {
    let mut out = Vec::new();
    encode_append(values, dtype, counter, &mut out);
    out
}

/// Appends `values` encoded as [`encode_into`] does to `out`; f32 is converted in
/// parallel chunks straight into `out`'s spare memory (no zero fill first).
pub fn encode_append(values: &[f64], dtype: DType, counter: bool, out: &mut Vec<u8>) {
    if counter || dtype != DType::F32 {
        let size = if counter { 8 } else { dtype.size() };
        out.reserve(values.len() * size);
        encode_into(values.iter().copied(), dtype, counter, out);
        return;
    }
    let n = values.len() * 4;
    out.reserve(n);
    let at = out.len();
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(PAR_CHUNK * 4)
        .zip(values.par_chunks(PAR_CHUNK))
        .for_each(|(out, v)| f32_bytes(v, out));
    // SAFETY: the zip covered all `n` spare bytes and `f32_bytes` wrote each.
    unsafe { out.set_len(at + n) };
}

/// `values` encoded as [`encode_into`] does, after `pad` zero bytes, in a buffer the
/// device writes from in large requests ([`crate::direct::DeviceBuffer`]); floats are
/// converted in parallel chunks.
pub fn encode_padded(
    values: &[f64],
    dtype: DType,
    counter: bool,
    pad: usize,
) -> std::io::Result<crate::direct::DeviceBuffer> {
    let size = if counter { 8 } else { dtype.size() };
    let mut out = crate::direct::DeviceBuffer::zeroed(pad + values.len() * size)?;
    if counter {
        // A step count: a handful of values.
        let mut v = Vec::new();
        encode_into(values.iter().copied(), dtype, true, &mut v);
        out[pad..].copy_from_slice(&v);
    } else {
        out[pad..]
            .par_chunks_mut(PAR_CHUNK * size)
            .zip(values.par_chunks(PAR_CHUNK))
            .for_each(|(out, v)| encode_to(v, dtype, out));
    }
    Ok(out)
}

/// Writes `v` as little-endian f32 into `out` (`4 * v.len()` bytes).
fn f32_bytes(v: &[f64], out: &mut [std::mem::MaybeUninit<u8>]) {
    assert_eq!(out.len(), v.len() * 4, "four bytes per value");
    let p = out.as_mut_ptr().cast::<[u8; 4]>();
    for (i, &x) in v.iter().enumerate() {
        // SAFETY: `i < v.len()`, so the 4 bytes at `4 * i` lie in `out` (checked above);
        // `[u8; 4]` has alignment 1.
        unsafe { p.add(i).write((x as f32).to_le_bytes()) };
    }
}
