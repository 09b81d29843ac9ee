//! numpy arrays <-> r2rc's f64 tensors. In: float32, float64 and int64 arrays (counters),
//! read in place and converted once into the f64 values r2rc computes in (that conversion
//! is the only copy). Out: float64 tensors hand their buffer to numpy (no copy); float32,
//! float16 and bfloat16 weights become float32 arrays (one conversion; the values are
//! already rounded to the dtype, so torch's cast back to half precision is exact); batch
//! counters become int64.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{ArrayD, IxDyn};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use r2rc::params::DType;

/// A dict `name -> numpy array` as r2rc tensors.
pub fn tensors_in(dict: &Bound<'_, PyDict>) -> PyResult<BTreeMap<String, ArrayD<f64>>> {
    let mut out = BTreeMap::new();
    for (k, v) in dict.iter() {
        let name: String = k.extract()?;
        let t = if let Ok(a) = v.extract::<PyReadonlyArrayDyn<f32>>() {
            values(&a, |x| x as f64)
        } else if let Ok(a) = v.extract::<PyReadonlyArrayDyn<f64>>() {
            values(&a, |x| x)
        } else if let Ok(a) = v.extract::<PyReadonlyArrayDyn<i64>>() {
            values(&a, |x| x as f64)
        } else {
            return Err(PyTypeError::new_err(format!(
                "tensor `{name}` is a {}, not a float32, float64 or int64 numpy array",
                v.get_type().name()?
            )));
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// The values of `a` (any layout: a contiguous array is read as one slice) as f64.
fn values<T: numpy::Element + Copy>(
    a: &PyReadonlyArrayDyn<'_, T>,
    f: impl Fn(T) -> f64,
) -> ArrayD<f64> {
    let shape = a.shape().to_vec();
    let data: Vec<f64> = match a.as_slice() {
        Ok(s) => s.iter().map(|&x| f(x)).collect(),
        Err(_) => a.as_array().iter().map(|&x| f(x)).collect(),
    };
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("the array's own shape")
}

/// r2rc tensors as a dict `name -> numpy array`: `counters` as int64, the rest as `dtype`
/// holds them (float64, else float32).
pub fn tensors_out<'py>(
    py: Python<'py>,
    tensors: BTreeMap<String, ArrayD<f64>>,
    dtype: DType,
    counters: &BTreeSet<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, t) in tensors {
        let t = if t.is_standard_layout() {
            t
        } else {
            t.as_standard_layout().into_owned()
        };
        let shape = t.shape().to_vec();
        let (v, offset) = t.into_raw_vec_and_offset();
        debug_assert!(
            offset.unwrap_or(0) == 0,
            "a standard-layout array starts its buffer"
        );
        let array = if counters.contains(&name) {
            let v: Vec<i64> = v.into_iter().map(|x| x as i64).collect();
            PyArray1::from_vec(py, v).reshape(shape)?.into_any()
        } else if dtype == DType::F64 {
            PyArray1::from_vec(py, v).reshape(shape)?.into_any()
        } else {
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            PyArray1::from_vec(py, v).reshape(shape)?.into_any()
        };
        dict.set_item(name, array)?;
    }
    Ok(dict)
}
