//! Emitters: the graph and its weights in formats other tools read (ONNX, graph JSON).

pub mod json;
pub mod onnx;
pub mod onnx_proto;
pub mod torch;

use std::path::Path;

use crate::error::{Error, Result};

pub use json::graph_json;
pub use onnx::to_onnx;
pub use torch::to_torch;

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then a
/// rename), keeping an existing file unless `force` is set.
pub fn write_new(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(Error::usage(
            format!("{} already exists", path.display()),
            Some("pass --force to overwrite it".into()),
        ));
    }
    crate::params::write_atomic(path, bytes)
}

/// A padded 3x3 convolution (dilation 1, one group) for the emitters' test graphs.
#[cfg(test)]
pub(crate) fn conv3x3(
    in_channels: usize,
    out_channels: usize,
    stride: usize,
    bias: bool,
) -> crate::ir::Op {
    crate::ir::Op::Conv2d(crate::ir::Conv2d {
        in_channels,
        out_channels,
        kernel: [3, 3],
        stride,
        padding: 1,
        dilation: 1,
        groups: 1,
        bias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_refuses_to_overwrite_without_force() {
        let dir = std::env::temp_dir().join(format!("r2rc-emit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.bin");
        let _ = std::fs::remove_file(&p);
        write_new(&p, b"one", false).unwrap();
        let err = write_new(&p, b"two", false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_new(&p, b"two", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // No temporary files are left in the folder.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
