//! Named parameter tensors in PyTorch layouts; init and safetensors IO.

use std::collections::BTreeMap;

use ndarray::ArrayD;

/// Element type of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
}

/// The tensors of a network by full name (`conv2_1.bn1.running_var`). Values are held in
/// f64; `dtype` remembers what the file used so outputs are written back in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub tensors: BTreeMap<String, ArrayD<f64>>,
    pub dtype: DType,
}
