//! Helpers the command-line tests share: running the binary from the crate root, reading
//! its output, naming examples and listing folders.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `r2rc ARGS` from the crate root.
pub fn r2rc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r2rc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// Runs `r2rc ARGS` and fails the test, with its stderr, unless it succeeds.
pub fn ok(args: &[&str]) -> Output {
    let o = r2rc(args);
    assert!(
        o.status.success(),
        "r2rc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `examples/NAME.arch`.
pub fn ex(name: &str) -> String {
    format!("examples/{name}.arch")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The names in a folder, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
